"""Finding files by name in the local datasites tree: ACL files, IPC and tunnel markers.

The ACL publisher, the IPC hub and the TCP proxy each keep a :class:`FileIndex` of their
files: a full walk (:func:`find_named`) when they start and on the file watcher's slow safety
rescan, and in between only the paths the watcher reported changed
(:mod:`.watcher`). They share this walk so that all of them skip the client's own
``.syftbox`` folder and see the files in the same order on every pass.

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
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

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


def plain_folder(datasites: Path, folder: Path) -> bool:
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
    if under is not None and not plain_folder(datasites, under):
        return
    stack = [str(top)]
    while stack:
        dirpath = stack.pop()
        subdirs: list[str] = []
        matches: list[os.DirEntry[str]] = []
        try:
            # Only what is kept gets sorted: sorting every entry costs a quarter of the walk.
            with os.scandir(dirpath) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if entry.name not in SKIP_DIRS:
                                subdirs.append(entry.path)
                        elif entry.name == name:
                            matches.append(entry)
                    except OSError:
                        continue
        except OSError:
            continue  # gone or unreadable: as os.walk, skip it
        for entry in sorted(matches, key=lambda e: e.name):
            rel = os.path.relpath(entry.path, datasites).replace(os.sep, "/")
            try:
                if entry.is_symlink():
                    _warn(rel, "a symlink (ACL files and markers must be regular files)")
                elif not entry.is_file(follow_symlinks=False):
                    _warn(rel, "not a regular file")
                else:
                    yield entry.path, rel
            except OSError:
                continue
        # Depth first in sorted order, as os.walk top-down with sorted dirnames.
        subdirs.sort(reverse=True)
        stack.extend(subdirs)


def tree_order(rel: str) -> tuple[tuple[int, str], ...]:
    """Sort key giving :func:`find_named`'s order: a folder's files (by name) before its
    subfolders (by name, each one depth first)."""
    parts = rel.split("/")
    return (*((1, p) for p in parts[:-1]), (0, parts[-1]))


def _regular(datasites: Path, path: str) -> str | None:
    """The datasite-relative path of ``path`` when it is a regular file, else None (a link
    or a special file is warned about once per path)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return os.path.relpath(path, datasites).replace(os.sep, "/")
    if not stat.S_ISDIR(mode):
        rel = os.path.relpath(path, datasites).replace(os.sep, "/")
        if stat.S_ISLNK(mode):
            _warn(rel, "a symlink (ACL files and markers must be regular files)")
        else:
            _warn(rel, "not a regular file")
    return None


def named_file(datasites: Path, path: str) -> tuple[str, str] | None:
    """``(full path, datasite-relative path)`` when ``path`` is a regular file whose every
    folder below ``datasites`` is a real directory, else None; a link or a special file is
    skipped with the walk's warning (once per path)."""
    if not plain_folder(datasites, Path(os.path.dirname(path))):
        return None
    rel = _regular(datasites, path)
    return None if rel is None else (path, rel)


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (both absolute, compared lexically)."""
    return path == folder or path.startswith(folder + os.sep)


# A folder modified less than this long before it was listed is listed again on the next
# walk: a change in the same tick of the file system's clock leaves its mtime as it was.
RACY_NS = 2_000_000_000


class _Listing(NamedTuple):
    """What a folder held when it was listed (names only: a big tree has many folders)."""

    key: int  # its ctime: any change of its entries or attributes sets it (utime cannot)
    stable: bool  # not modified within RACY_NS before it was listed
    subdirs: tuple[str, ...]  # real folders in it (no links, none of SKIP_DIRS), sorted
    named: tuple[str, ...]  # entries with the wanted name that are not folders


class FileIndex:
    """The regular files called ``name`` below ``scopes`` (default: the whole datasites
    tree), found by a walk (:meth:`rescan`) and kept current from the paths a file watcher
    reports changed (:meth:`update`).

    A changed path may be the file itself (looked at alone), a folder (walked: it may have
    been moved in with files inside, and no event names those files), or something gone
    (what was known at or below it is dropped). A change above a scope (say the datasite
    folder moved away) looks at the whole scope again.

    The walks remember each folder's listing with its stat, and list a folder again only
    when its stat changed (adding, removing or renaming an entry changes a folder's mtime),
    so a rescan of an unchanged tree costs one ``lstat`` per folder: no folder is opened,
    which also spares the file watcher an event for every folder read. Same rules as
    :func:`find_named`: no symlinked folder is entered, only regular files are found.
    Blocking I/O: call it from one worker thread at a time.
    """

    def __init__(self, datasites: Path, name: str, scopes: Sequence[Path] | None = None) -> None:
        # Absolute, so that the paths found compare with the paths a watcher reports.
        self._root = os.path.abspath(datasites)
        self.datasites = Path(self._root)
        self.name = name
        self.scopes = tuple(os.path.abspath(s) for s in scopes) if scopes else (self._root,)
        self.files: dict[str, str] = {}  # datasite-relative path -> full path
        self._listings: dict[str, _Listing] = {}
        self.listed = 0  # folders read (opened and listed) so far

    def rescan(self) -> None:
        files: dict[str, str] = {}
        for scope in self.scopes:
            for full, rel in self._walk(scope):
                files.setdefault(rel, full)
        self.files = files

    def update(self, paths: Iterable[str]) -> None:
        for path in sorted({os.path.abspath(p) for p in paths}):
            for scope in self.scopes:
                if inside(path, scope):
                    self._refresh(path)
                    break
                if inside(scope, path):
                    self._refresh(scope)
                    break

    def sorted_files(self) -> list[tuple[str, str]]:
        """``(full path, relative path)`` in the walk's order."""
        return [(self.files[rel], rel) for rel in sorted(self.files, key=tree_order)]

    def _refresh(self, path: str) -> None:
        below = path + os.sep
        for rel, full in list(self.files.items()):
            if full == path or full.startswith(below):
                del self.files[rel]
        rel_parts = os.path.relpath(path, self._root).split(os.sep)
        if SKIP_DIRS.intersection(rel_parts):
            return
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            self._forget(path, set())
            return  # gone: nothing to find
        if stat.S_ISDIR(mode):
            for full, rel in self._walk(path):
                self.files[rel] = full
        elif os.path.basename(path) == self.name:
            found = named_file(self.datasites, path)
            if found is not None:
                self.files[found[1]] = found[0]

    def _walk(self, top: str) -> Iterator[tuple[str, str]]:
        """``(full path, relative path)`` of the files below ``top``, as :func:`find_named`
        finds them, listing only the folders that changed."""
        if top != self._root and not plain_folder(self.datasites, Path(top)):
            self._forget(top, set())
            return
        started = time.time_ns()
        visited: set[str] = set()
        stack = [top]
        while stack:
            folder = stack.pop()
            listing = self._listing(folder, started)
            if listing is None:
                continue
            visited.add(folder)
            # Plain concatenation: a rescan of a big tree spends its time per folder.
            for name in listing.named:
                full = f"{folder}{os.sep}{name}"
                rel = _regular(self.datasites, full)
                if rel is not None:
                    yield full, rel
            stack.extend(f"{folder}{os.sep}{name}" for name in reversed(listing.subdirs))
        self._forget(top, visited)

    def _forget(self, top: str, keep: set[str]) -> None:
        """Drop the listings of folders at or below ``top`` that are not in ``keep``."""
        stale = self._listings.keys() - keep
        for folder in stale if top == self._root else [f for f in stale if inside(f, top)]:
            del self._listings[folder]

    def _listing(self, folder: str, started: int) -> _Listing | None:
        try:
            st = os.lstat(folder)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None  # replaced by a link or a file since its parent was listed
        key = st.st_ctime_ns
        cached = self._listings.get(folder)
        if cached is not None and cached.key == key and cached.stable:
            return cached
        subdirs: list[str] = []
        named: list[str] = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if entry.name not in SKIP_DIRS:
                                subdirs.append(entry.name)
                        elif entry.name == self.name:
                            named.append(entry.name)
                    except OSError:
                        continue
        except OSError:
            return None  # gone or unreadable: as os.walk, skip it
        self.listed += 1
        # Modified shortly before this walk began: a change within the same tick of the
        # file system's clock would leave the stat as it is, so list it again next time.
        stable = started - max(st.st_mtime_ns, st.st_ctime_ns) >= RACY_NS
        listing = _Listing(key, stable, tuple(sorted(subdirs)), tuple(named))
        self._listings[folder] = listing
        return listing
