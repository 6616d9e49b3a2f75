"""Waits written once for both worlds: a thread that may sleep, and an event loop.

A wait is a generator that looks, yields how long to sleep before the next look, and
returns what it waited for; :func:`block` runs it in a thread that may sleep,
:func:`wait_async` inside an event loop (polling without blocking the loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator

POLL_S = 0.05


def polls[T](
    probe: Callable[[], T | None],
    timeout: float,
    failure: Callable[[], Exception],
    *,
    gone: Callable[[], bool] = lambda: False,
    interval: float = POLL_S,
) -> Generator[float, None, T]:
    """Until ``probe()`` returns something: raise ``failure()`` after ``timeout`` seconds or
    as soon as ``gone()`` (the process we wait on has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline or gone():
            raise failure()
        yield interval


def block[T](waiting: Generator[float, None, T]) -> T:
    """Run a wait in this thread, sleeping between looks."""
    while True:
        try:
            delay = next(waiting)
        except StopIteration as done:
            return done.value
        time.sleep(delay)


async def wait_async[T](waiting: Generator[float, None, T]) -> T:
    """Run a wait inside the event loop, without blocking it."""
    while True:
        try:
            delay = next(waiting)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(delay)
