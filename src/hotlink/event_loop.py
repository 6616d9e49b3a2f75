"""Which asyncio event loop a daemon runs on (``--event-loop``, ``SYFTBOX_HOTLINK_EVENT_LOOP``).

uvloop (libuv) moves bytes between sockets with less Python per read and write than
asyncio's own selector loop, which is most of what the relay and a client do. It is opt-in
(the ``uvloop`` extra; Windows has none): out of file descriptors, libuv accepts new
connections and closes them at once, where asyncio's loop leaves them in the backlog and the
daemon reports it (docs/DECISIONS-LOCAL.md "Event loop"). ``asyncio`` is the default,
``uvloop`` requires it, ``auto`` takes it when it imports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal

EventLoop = Literal["auto", "asyncio", "uvloop"]
EVENT_LOOPS: tuple[EventLoop, ...] = ("auto", "asyncio", "uvloop")


class EventLoopError(RuntimeError):
    """``uvloop`` was asked for and cannot be imported."""


def loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``choice``; None means asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise EventLoopError(f"event loop 'uvloop' asked for, but {exc}") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def is_uvloop(obj: object) -> bool:
    """Whether ``obj`` (a loop, a transport) is uvloop's, which does not subclass asyncio's
    classes though it behaves as them."""
    return type(obj).__module__.startswith("uvloop")


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``, for the start-up log line and status."""
    return "uvloop" if is_uvloop(loop) else "asyncio"


def run[T](main: Coroutine[Any, Any, T], choice: EventLoop) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    try:
        factory = loop_factory(choice)
    except EventLoopError:
        main.close()
        raise
    return asyncio.run(main, loop_factory=factory)
