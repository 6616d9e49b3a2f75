"""Finding files by name in the local datasites tree: ACL files, IPC and tunnel markers.

The ACL publisher, the IPC hub and the TCP proxy each poll for their files every 250 ms; they
share this walk so that all of them skip the client's own ``.syftbox`` folder and see the
files in the same (sorted) order on every pass.

Other parties' files land in this tree, so the walk trusts no link: it never descends into a
symlinked folder (nor starts below one), and it yields only regular files. A symlink or a
FIFO with a wanted name is skipped with one warning per path: an ACL file that is a link
would publish whatever it points at, and a FIFO would block whoever reads it. The callers read
what it yields with :func:`hotlink.client.localfs.read_regular_file`, which checks all that
again at the moment of reading. The walk does blocking I/O: callers run it off the event loop.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("hotlink.discovery")

# Folders that hold the client's own state, never shared files or markers.
SKIP_DIRS = frozenset({".syftbox"})
# Paths already warned about (bounded: past this many, the set starts over).
WARNED_MAX = 4096


class WarnOnce:
    """Remembers which keys were reported, so a file seen every 250 ms is reported once.

    Bounded: when full it forgets everything (a rare repeat beats unbounded memory). Walks
    run in worker threads, hence the lock."""

    def __init__(self, limit: int = WARNED_MAX) -> None:
        self.limit = limit
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def first(self, key: str) -> bool:
        with self._lock:
            if key in self._keys:
                return False
            if len(self._keys) >= self.limit:
                self._keys.clear()
            self._keys.add(key)
            return True


_warned = WarnOnce()


def _warn(rel: str, what: str) -> None:
    if _warned.first(f"{rel}\x00{what}"):
        log.warning("ignoring %s: %s", rel, what)


def _plain_folder(datasites: Path, folder: Path) -> bool:
    """Whether every segment from ``datasites`` down to ``folder`` is a real directory."""
    try:
        rel = Path(os.path.abspath(folder)).relative_to(os.path.abspath(datasites))
    except ValueError:
        return False
    here = datasites
    for segment in rel.parts:
        here = here / segment
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            return False
        if stat.S_ISLNK(mode):
            _warn(os.path.relpath(here, datasites), "a symlinked folder is never searched")
            return False
        if not stat.S_ISDIR(mode):
            return False
    return True


def find_named(datasites: Path, name: str, under: Path | None = None) -> Iterator[tuple[str, str]]:
    """``(full path, datasite-relative path)`` of each regular file called ``name`` below
    ``under`` (default: the whole tree), sorted, top-down; the relative path uses ``/`` on
    every platform. Symlinked folders are not entered; links and special files named
    ``name`` are skipped (one warning per path)."""
    top = under if under is not None else datasites
    if under is not None and not _plain_folder(datasites, under):
        return
    stack = [str(top)]
    while stack:
        dirpath = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # gone or unreadable: as os.walk, skip it
        subdirs: list[str] = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIP_DIRS:
                        subdirs.append(entry.path)
                    continue
                if entry.name != name:
                    continue
                rel = os.path.relpath(entry.path, datasites).replace(os.sep, "/")
                if entry.is_symlink():
                    _warn(rel, "a symlink (ACL files and markers must be regular files)")
                elif not entry.is_file(follow_symlinks=False):
                    _warn(rel, "not a regular file")
                else:
                    yield entry.path, rel
            except OSError:
                continue
        # Depth first in sorted order, as os.walk top-down with sorted dirnames.
        stack.extend(reversed(subdirs))
