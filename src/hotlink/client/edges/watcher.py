"""One file watcher per client daemon: what changed in the datasites tree, and when to look
at all of it again.

Walking a SyftBox tree of 100,000 files costs about 0.2 s of CPU, so the consumers (the TCP
proxy, the IPC hub, the ACL publisher) no longer walk it on a timer. Instead the kernel tells
us what changed (inotify on Linux, through watchfiles and the Rust ``notify`` crate), and a
consumer looks only at the changed paths (:class:`~.discovery.FileIndex`): a new marker is
picked up within about 100 ms, and an idle client costs nearly nothing.

Events can be missed: the kernel's queue overflows under a burst, a watch limit
(``fs.inotify.max_user_watches``) is reached, or the tree is on a file system without events
(some network mounts). So every ``rescan_interval`` s each consumer walks its part of the
tree anyway (the safety rescan), and when events cannot be had at all we say so once and fall
back to a full walk every ``fallback_interval`` s, trying events again every
``retry_interval`` s.

The ``notify`` crate follows symlinked folders that exist when it starts (it watches what
they point at); the walk never does. So a reported path whose folders below the datasites
folder are not all real directories is dropped, with the walk's own check
(:func:`~.discovery.plain_folder`). Only names some consumer asked for pass, plus folders
appearing or anything going away (a folder moved in or out carries files no event names);
everything under the client's own ``.syftbox`` folder is ignored.

The events come from a thread of our own (:class:`_EventThread`: it builds the watcher, which
walks the tree, and waits in the Rust code, all off the event loop); :meth:`TreeWatcher.run`
is the daemon's task and owns that thread: cancelling it stops and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from .changes import ChangeFeed
from .discovery import SKIP_DIRS, inside, plain_folder

log = logging.getLogger("hotlink.watcher")

# Every consumer walks its part of the tree this often, events or not (missed events). A walk
# of a 100,000-file tree costs about half a second of CPU; every 5 minutes that is 0.2 % of a
# core, and events are missed rarely (a burst that overflows the kernel's queue).
RESCAN_INTERVAL = 300.0
# Without events: a full walk this often (a new marker takes up to this long).
FALLBACK_INTERVAL = 5.0
# Without events: try to get them again this often.
RETRY_INTERVAL = 300.0
# The Rust side wakes every STEP_MS to look for events and returns a batch once a step brought
# nothing new, or after DEBOUNCE_MS of continuous changes.
STEP_MS = 50
DEBOUNCE_MS = 200
# How long stopping waits for the event thread (building the watcher cannot be interrupted).
JOIN_TIMEOUT = 5.0

# watchfiles' change kinds (watchfiles.Change).
_ADDED, _MODIFIED = 1, 2


class _EventThread(threading.Thread):
    """Builds the watcher and hands batches of relevant changed paths to the loop."""

    def __init__(self, watcher: TreeWatcher, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="hotlink-file-events", daemon=True)
        self.watcher = watcher
        self.loop = loop
        self.names = watcher.names
        self.stop = threading.Event()
        # Set on the loop: None once watching, or the error that prevented it.
        self.ready: asyncio.Future[BaseException | None] = loop.create_future()
        # Set on the loop when the thread ends: the error that ended it, None when stopped.
        self.ended: asyncio.Future[BaseException | None] = loop.create_future()

    def _tell(self, fut: asyncio.Future[BaseException | None], value: BaseException | None) -> None:
        def settle() -> None:
            if not fut.done():
                fut.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(settle)

    def run(self) -> None:
        error: BaseException | None = None
        try:
            # Imported here: only the daemon's watcher thread needs the Rust extension.
            from watchfiles._rust_notify import RustNotify

            # Not the crate's polling (it stats every file on each poll; our fallback walks
            # instead), unless the kernel has no inotify at all: then the crate polls by
            # itself, at our fallback interval. Errors are not ignored: watchfiles' "ignore
            # permission denied" ignores every error, a watch limit reached included.
            poll_ms = int(self.watcher.fallback_interval * 1000)
            notify = RustNotify([self.watcher.root], False, False, poll_ms, True, False)
        except Exception as exc:
            self._tell(self.ready, exc)
            self._tell(self.ended, exc)
            return
        try:
            self._tell(self.ready, None)
            while not self.stop.is_set():
                raw = notify.watch(DEBOUNCE_MS, STEP_MS, 0, self.stop)
                if isinstance(raw, set):
                    paths = self.relevant(raw)
                    if paths:
                        with contextlib.suppress(RuntimeError):
                            self.loop.call_soon_threadsafe(self.watcher.dispatch, paths)
        except Exception as exc:
            error = exc
        finally:
            notify.close()
            self._tell(self.ended, error)

    def relevant(self, raw: Iterable[tuple[int, str]]) -> set[str]:
        """The paths of a batch some consumer may care about (blocking I/O: lstat)."""
        root = self.watcher.root
        datasites = Path(root)
        plain: dict[str, bool] = {}  # folder -> reached without a link
        out: set[str] = set()
        for change, path in raw:
            if not inside(path, root):
                continue
            if path != root:
                if SKIP_DIRS.intersection(os.path.relpath(path, root).split(os.sep)):
                    continue
                if os.path.basename(path) not in self.names:
                    if change == _MODIFIED:
                        continue  # a file's data or a folder's metadata
                    if change == _ADDED and not _is_dir(path):
                        continue  # a file of no interest (gone again: still a candidate)
                folder = os.path.dirname(path)
                ok = plain.get(folder)
                if ok is None:
                    ok = plain[folder] = plain_folder(datasites, Path(folder))
                if not ok:
                    continue  # reached through a symlinked folder, or its folder is gone
            out.add(path)
        return out


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return True  # gone again: it may have been a folder


class TreeWatcher:
    """File-system events for ``datasites``, dispatched to the consumers' feeds, plus the
    safety rescan; ``events=False`` skips events and walks every ``fallback_interval`` s.

    Register every consumer (:meth:`feed`) before :meth:`run` starts."""

    def __init__(
        self,
        datasites: Path,
        *,
        rescan_interval: float = RESCAN_INTERVAL,
        fallback_interval: float = FALLBACK_INTERVAL,
        retry_interval: float = RETRY_INTERVAL,
        events: bool = True,
    ) -> None:
        self.root = os.path.abspath(datasites)
        self.rescan_interval = rescan_interval
        self.fallback_interval = fallback_interval
        self.retry_interval = retry_interval
        self.events = events
        self.feeds: list[ChangeFeed] = []
        self.names: frozenset[str] = frozenset()
        # "starting", "events" (events and the safety rescan) or "polling" (walks only).
        self.mode = "starting"
        self.rescans = 0  # full rescans asked of the consumers (safety or fallback)
        self.batches = 0  # batches of changed paths dispatched
        self._thread: _EventThread | None = None
        self._warned = False

    def feed(self, *, names: Iterable[str], scopes: Sequence[Path] = ()) -> ChangeFeed:
        """A new consumer's feed: changes to files called one of ``names`` below ``scopes``
        (default: anywhere), and the folders around them."""
        feed = ChangeFeed(names=names, scopes=scopes)
        self.feeds.append(feed)
        self.names = self.names.union(feed.names)
        return feed

    def dispatch(self, paths: Iterable[str]) -> None:
        """Hand changed paths to the feeds that want them (on the loop)."""
        paths = list(paths)
        self.batches += 1
        log.debug("file events: %d changed paths", len(paths))
        for feed in self.feeds:
            wanted = [p for p in paths if feed.wants(p, self.names)]
            if wanted:
                feed.post(wanted)

    def rescan_all(self) -> None:
        self.rescans += 1
        for feed in self.feeds:
            feed.post_full()

    async def run(self) -> None:
        """The daemon's task: events while they work, walks when they do not; cancel it to
        stop."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self.events:
                    error = await self._watch(loop)
                    self._report(error)
                self.mode = "polling"
                await self._poll(self.retry_interval if self.events else None)
        finally:
            await self._stop_thread()

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> BaseException:
        """Serve events until they fail; the error that ended them."""
        thread = self._thread = _EventThread(self, loop)
        thread.start()
        error = await thread.ready
        if error is not None:
            await self._stop_thread()
            return error
        if self._warned:
            log.info("file events for %s work again", self.root)
            self._warned = False
        elif self.batches == 0 and self.rescans == 0:
            log.info(
                "watching %s for markers and ACL files (and looking at all of it every %.0f s)",
                self.root,
                self.rescan_interval,
            )
        self.mode = "events"
        # Anything written before the watches were in place raised no event.
        self.rescan_all()
        while True:
            try:
                async with asyncio.timeout(self.rescan_interval):
                    error = await asyncio.shield(thread.ended)
            except TimeoutError:
                self.rescan_all()  # the safety rescan
                continue
            await self._stop_thread()
            # A thread that ended without an error was stopped: only we stop it.
            return error or RuntimeError("the event thread ended")

    def _report(self, error: BaseException) -> None:
        text = str(error) or type(error).__name__
        if self._warned:
            log.debug("file events still unavailable: %s", text)
            return
        self._warned = True
        hint = ""
        if "limit" in text.lower() or "No space left" in text:
            hint = " (raise the limit: sysctl fs.inotify.max_user_watches)"
        was = "stopped" if self.mode == "events" else "are unavailable"
        log.warning(
            "file events for %s %s: %s%s; looking for markers and ACL files with a full walk "
            "every %.0f s instead (trying events again every %.0f s)",
            self.root,
            was,
            text,
            hint,
            self.fallback_interval,
            self.retry_interval,
        )

    async def _poll(self, duration: float | None) -> None:
        """A full rescan every ``fallback_interval`` s, for ``duration`` s (None: for good)."""
        loop = asyncio.get_running_loop()
        end = None if duration is None else loop.time() + duration
        while end is None or loop.time() < end:
            self.rescan_all()
            await asyncio.sleep(self.fallback_interval)

    async def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.stop.set()
        # Returns within STEP_MS once watching; building the watcher cannot be interrupted.
        await asyncio.to_thread(thread.join, JOIN_TIMEOUT)
        if thread.is_alive():
            log.warning("the file event thread did not stop within %.0f s", JOIN_TIMEOUT)
