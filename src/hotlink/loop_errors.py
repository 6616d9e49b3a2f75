"""Quiet reports of resource exhaustion from the event loop, for the relay and the client.

When a process runs out of file descriptors (or the system out of buffers), asyncio's accept
loop stops accepting for a second and tries again, which is what we want; but it also hands
every failure to the loop's exception handler, which logs a traceback each time: thousands of
lines a second under a connection flood, or from a client whose descriptors a hostile peer
used up. :func:`accept_error_handler` logs one line per interval instead, with a count of
what it left out, and passes every other report on to the default handler.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

LIMIT_LOG_INTERVAL = 10.0  # seconds between two reports of the same limit

# What asyncio's accept loop reports when the process (or system) is out of descriptors or
# buffers.
ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

LoopExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]


class Throttle:
    """At most one log line per ``interval`` seconds; counts the ones left out."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._skipped = 0

    def ready(self) -> int | None:
        """None: stay quiet. Else log now; the value is how many were left out before."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._skipped += 1
            return None
        self._last = now
        skipped, self._skipped = self._skipped, 0
        return skipped


def accept_error_handler(
    log: logging.Logger,
    on_failure: Callable[[], None] | None = None,
    interval: float = LIMIT_LOG_INTERVAL,
) -> LoopExceptionHandler:
    """An event-loop exception handler that logs failed accepts to ``log`` once per
    ``interval``. Everything else goes to the loop's default handler. ``on_failure`` is
    called for every failed accept (a metric)."""
    throttle = Throttle(interval)

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, ValueError) and _is_accept_retry(context):
            # After a failed accept asyncio retries the listener a second later; a listener
            # closed meanwhile (shutdown) has no descriptor left to retry: nothing is wrong.
            log.debug("accept retry of a closed listener skipped")
            return
        if (
            "socket" not in context
            or not isinstance(exc, OSError)
            or exc.errno not in ACCEPT_RESOURCE_ERRNOS
        ):
            loop.default_exception_handler(context)
            return
        if on_failure is not None:
            on_failure()
        skipped = throttle.ready()
        if skipped is None:
            return
        log.warning(
            "cannot accept new connections: %s; retrying every second%s",
            exc.strerror or exc,
            f" ({skipped} more failed accepts since the last report)" if skipped else "",
        )

    return handle


def _is_accept_retry(context: dict[str, Any]) -> bool:
    """Whether the failed callback is asyncio's retry of a listener after a failed accept
    (``BaseSelectorEventLoop._start_serving``, scheduled with ``call_later``)."""
    callback = getattr(context.get("handle"), "_callback", None)
    return getattr(callback, "__name__", "") == "_start_serving"
