"""Files another party may plant in the datasites tree: FIFOs, links, nested JSON, big files.

:class:`FifoGuard` keeps a test from hanging forever on code that blocks on a FIFO: if the
test is still running after ``after`` s, it opens the FIFO's write end and closes it, which
ends any blocked read with EOF; ``fired`` then says the code under test was stuck.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

NESTED_JSON = "[" * 50_000  # under the 64 KiB marker cap; RecursionError in json.loads


def make_fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


class FifoGuard:
    def __init__(self, fifos: list[Path], after: float) -> None:
        self.fifos = fifos
        self.after = after
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(self.after):
            return
        self.fired = True
        while not self._stop.is_set():
            for fifo in self.fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno not in (errno.ENXIO, errno.ENOENT):
                        raise
                    continue
                os.close(fd)  # a blocked reader sees EOF
            self._stop.wait(0.05)

    @contextlib.contextmanager
    def running(self) -> Iterator[FifoGuard]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def fifo_guard(*fifos: Path, after: float = 10.0) -> contextlib.AbstractContextManager[FifoGuard]:
    return FifoGuard(list(fifos), after).running()


def exists(path: Path) -> bool:
    """``path.exists()`` without following a last-segment link (for async tests)."""
    return os.path.lexists(path)


def names(folder: Path) -> list[str]:
    """The sorted entry names of ``folder`` (for async tests)."""
    return sorted(os.listdir(folder))
