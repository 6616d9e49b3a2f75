"""One client daemon per data dir: an exclusive ``flock`` on ``<data-dir>/.hotlink.lock``.

Two daemons on one tree would both publish its ACLs, both listen on its tunnel ports and
both answer its sessions. The lock is held for the daemon's life; the kernel drops it when
the process ends however it ends, so a crashed daemon never leaves a stale lock behind. The
file holds the owner's pid, for the one line a second daemon prints. It is never deleted:
unlinking a lock file lets a newcomer lock a fresh inode while an older one still holds the
old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".hotlink.lock"


class DataDirLocked(Exception):
    """Another process holds the data dir's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        who = f"another hotlink client (pid {pid})" if pid else "another hotlink client"
        super().__init__(f"{who} is already running on {data_dir} (lock {data_dir / LOCK_FILE})")
        self.pid = pid


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_FILE


def _open(data_dir: Path) -> int:
    # No symlink is followed: the lock is this tree's own file.
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(lock_path(data_dir), flags, 0o600)


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class DataDirLock:
    """The held lock; :meth:`release` (or leaving the ``with`` block, or exiting) frees it."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Lock ``data_dir`` without waiting. Raises :class:`DataDirLocked` when another
        process holds it, ``OSError`` when the file cannot be created."""
        fd = _open(data_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(fd)
            os.close(fd)
            raise DataDirLocked(data_dir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(data_dir, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_holder(data_dir: Path) -> int | None:
    """The pid of the daemon running on ``data_dir`` (0 if it has not written it yet), or
    None when none runs; for commands that talk to the daemon. A probe: a shared lock taken
    and dropped at once."""
    try:
        fd = os.open(lock_path(data_dir), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_in(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
