"""Publishing the ACL files of our own datasite to the server (PROTOCOL.md §1.11, §3.2).

The server authorizes every hotlink message against the ACLs it holds, and it learns them
from ``FileWrite`` messages of the datasite's owner. After each (re)connect we send every
``syft.pub.yaml`` under our datasite and wait for its Ack; then, whenever the file watcher
reports a change in our datasite (or does its slow safety rescan), we send what changed. A
server restart forgets ACLs that were never stored, so re-publishing on every connect is what
makes sessions work again after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ..protocol.acl import MAX_ACL_BYTES as MAX_ACL_BYTES
from ..protocol.messages import Ack, Error, FileWrite, Message, Nack
from .edges.changes import FULL, ChangeFeed, Changes
from .edges.discovery import FileIndex
from .edges.watcher import TreeWatcher
from .localfs import TRANSIENT_ERRNOS, FileTooLarge, read_regular_file

log = logging.getLogger("hotlink.acl")

ACL_FILE = "syft.pub.yaml"
# Bigger ACL files than MAX_ACL_BYTES (the relay's own bound, imported above) are never sent:
# the relay would refuse them.
ACK_TIMEOUT = 5.0
# Without a file watcher (tests, tools): look at every ACL file this often.
POLL_INTERVAL = 0.25
# A write that got no Ack is sent again after RETRY_FIRST s, doubling up to RETRY_MAX s.
RETRY_FIRST = 1.0
RETRY_MAX = 300.0
# A failing round (an unexpected error) is reported at most this often, and the next round
# (looking at every file again) comes at most ROUND_RETRY s later.
ROUND_ERROR_REPORT_INTERVAL = 60.0
ROUND_RETRY = 5.0
# The shortest wait between rounds woken by a timer (a guard against a busy loop).
MIN_WAIT = 0.05

Stat = tuple[int, int, int]  # (inode, mtime_ns, size): a changed file changes one of them


@dataclass(frozen=True)
class AclFile:
    rel_path: str  # datasite-relative, starts with our email
    content: bytes
    etag: str  # MD5 hex, like the reference clients


def stat_files(index: FileIndex) -> dict[str, Stat]:
    """``rel_path -> (inode, mtime_ns, size)`` of the files in ``index`` (blocking I/O)."""
    found: dict[str, Stat] = {}
    for full, rel in index.sorted_files():
        try:
            st = os.lstat(full)
        except OSError:
            continue
        found[rel] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


def acl_index(datasites: Path, email: str) -> FileIndex:
    """The index of the ACL files in our own datasite."""
    return FileIndex(datasites, ACL_FILE, [datasites / email])


def scan_acl_files(datasites: Path, email: str) -> dict[str, Stat]:
    """``rel_path -> (inode, mtime_ns, size)`` of every ACL file in our datasite: regular
    files only, never through a symlink (blocking I/O: run it off the loop)."""
    index = acl_index(datasites, email)
    index.rescan()
    return stat_files(index)


def read_acl_file(datasites: Path, rel_path: str) -> AclFile:
    """The file's content, read safely (a regular file below ``datasites`` reached without a
    symlink, at most :data:`MAX_ACL_BYTES`); raises OSError (see :mod:`.edges.localfs`)."""
    content = read_regular_file(datasites / rel_path, MAX_ACL_BYTES, root=datasites)
    return AclFile(rel_path, content, hashlib.md5(content).hexdigest())


@dataclass
class _Failed:
    """Why a version of a file is not published, and when it may be sent again."""

    stat: Stat
    etag: str  # "" when it was never read (too big, unreadable)
    refused: bool  # the server said no (or it cannot be sent): wait for the file to change
    attempts: int = 0  # sends in a row that got no Ack
    retry_at: float = 0.0


def retry_delay(attempts: int) -> float:
    """Seconds before the next send of a file whose last ``attempts`` sends got no Ack."""
    return min(RETRY_MAX, RETRY_FIRST * 2.0 ** max(0, attempts - 1))


SendFn = Callable[[Message], Awaitable[None]]


def _look(index: FileIndex, changes: Changes) -> dict[str, Stat]:
    """Bring ``index`` up to date with ``changes`` and stat its files (blocking I/O)."""
    if changes.full:
        index.rescan()
    else:
        index.update(changes.paths)
    return stat_files(index)


class AclPublisher:
    """Owns one task per connection: publish everything, then what changes.

    A file the server refused (Nack or Error) is not sent again until it changes; one that
    got no Ack (a silent server, or the connection dropped) is sent again after
    :func:`retry_delay`, also across reconnects, so a file that upsets the server cannot make
    us send it in a loop. A file over :data:`MAX_ACL_BYTES` is never sent (one warning).
    Reads run off the event loop.
    """

    def __init__(
        self,
        datasites: Path,
        email: str,
        send: SendFn,
        *,
        watcher: TreeWatcher | None = None,
        poll_interval: float = POLL_INTERVAL,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self.datasites = datasites
        self.email = email
        self._send = send
        self.feed = (
            watcher.feed(names={ACL_FILE}, scopes=[datasites / email])
            if watcher is not None
            else ChangeFeed(poll_interval=poll_interval)
        )
        self.ack_timeout = ack_timeout
        self._task: asyncio.Task[None] | None = None
        self._by_id: dict[str, asyncio.Future[str]] = {}
        self._by_path: dict[str, asyncio.Future[str]] = {}
        # What this connection's server has from us: rel_path -> etag.
        self.published: dict[str, str] = {}
        self.rounds = 0
        self.passes = 0  # rounds done on any connection (tests wait on it)
        # Set once this connection's first publish round is over (Opens wait for it).
        self._first_round = asyncio.Event()
        # Files not published and why; kept across connections (see the class docstring).
        self.failed: dict[str, _Failed] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin (again) after a connect: the new server connection knows nothing yet."""
        self._cancel()
        self.published = {}
        self._first_round.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="acl-publisher")

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for fut in (*self._by_id.values(), *self._by_path.values()):
            if not fut.done():
                fut.set_result("disconnected")
        self._by_id.clear()
        self._by_path.clear()

    async def wait_published(self, within: float) -> bool:
        """Wait up to ``within`` s for this connection's first publish round to be over."""
        try:
            async with asyncio.timeout(within):
                await self._first_round.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        task = self._task
        self._first_round.clear()
        self._cancel()
        self._task = None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------ replies

    def handle_reply(self, message: Message) -> bool:
        """Ack/Nack/Error for one of our writes; True if it was ours."""
        payload = message.payload
        fut: asyncio.Future[str] | None = None
        outcome = "ok"
        if isinstance(payload, Ack):
            fut = self._by_id.get(payload.oid)
        elif isinstance(payload, Nack):
            fut = self._by_id.get(payload.oid)
            outcome = f"nack: {payload.err}"
        elif isinstance(payload, Error):
            fut = self._by_path.get(payload.pth)
            outcome = f"error {payload.cod}: {payload.msg}"
        if fut is None or fut.done():
            return False
        fut.set_result(outcome)
        return True

    # ------------------------------------------------------------ work

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # This connection's own index: a cancelled round of the last one may still be
        # walking in a worker thread.
        index = acl_index(self.datasites, self.email)
        seen: dict[str, Stat] = {}  # what this connection's server has, by file version
        current: dict[str, Stat] = {}
        changes = FULL  # a new connection gets every file
        first = True
        reported_at: float | None = None
        while True:
            failed = False
            try:
                if changes:
                    current = await asyncio.to_thread(_look, index, changes)
                for rel in sorted(current):
                    if seen.get(rel) != current[rel] and await self._publish(rel, current[rel]):
                        seen[rel] = current[rel]
                for rel in set(seen) - set(current):
                    log.info("acl removed locally (the server keeps it until deleted): %s", rel)
                    del seen[rel]
                for rel in set(self.failed) - set(current):
                    del self.failed[rel]
            except Exception as exc:  # one bad round must not stop publishing for good
                failed = True
                now = loop.time()
                if reported_at is None or now - reported_at >= ROUND_ERROR_REPORT_INTERVAL:
                    reported_at = now
                    log.error("acl publishing round failed: %s", exc, exc_info=exc)
                current = {}
            if first:
                first = False
                self.rounds += 1
                refused = sum(1 for f in self.failed.values() if f.refused)
                waiting = len(self.failed) - refused
                log.info(
                    "acls published: %d of %d files%s%s",
                    len(self.published),
                    len(current),
                    f" ({refused} refused until changed)" if refused else "",
                    f" ({waiting} waiting to retry)" if waiting else "",
                )
                self._first_round.set()
            self.passes += 1
            timeout = self._next_retry(seen, current, loop.time())
            if failed:
                timeout = ROUND_RETRY if timeout is None else min(timeout, ROUND_RETRY)
            changes = await self.feed.next(timeout)
            if failed:
                changes = FULL

    def _next_retry(
        self, seen: dict[str, Stat], current: dict[str, Stat], now: float
    ) -> float | None:
        """Seconds until the next file that got no Ack may be sent again (None: none)."""
        due = [
            f.retry_at
            for rel, f in self.failed.items()
            if not f.refused and rel in current and seen.get(rel) != current[rel]
        ]
        return max(MIN_WAIT, min(due) - now) if due else None

    def _hold(self, rel: str, stat: Stat, etag: str, reason: str) -> None:
        """This version is not sent again until the file changes."""
        self.failed[rel] = _Failed(stat, etag, refused=True)
        log.warning("acl %s is not published: %s (not sent again until it changes)", rel, reason)

    async def _publish(self, rel: str, stat: Stat) -> bool:
        """Publish one file if it should be; True when the server has this version."""
        loop = asyncio.get_running_loop()
        failed = self.failed.get(rel)
        if failed is not None and failed.stat == stat:
            if failed.refused or loop.time() < failed.retry_at:
                return False
        if stat[2] > MAX_ACL_BYTES:
            self._hold(rel, stat, "", f"{stat[2]} bytes; the limit is {MAX_ACL_BYTES}")
            return False
        try:
            acl = await asyncio.to_thread(read_acl_file, self.datasites, rel)
        except FileNotFoundError:
            return False  # removed meanwhile
        except FileTooLarge as exc:
            self._hold(rel, stat, "", str(exc))
            return False
        except OSError as exc:
            if exc.errno in TRANSIENT_ERRNOS:
                # Out of file descriptors or memory for a moment: nothing is wrong with the
                # file, so it is read again after the usual back-off.
                attempts = failed.attempts + 1 if failed is not None else 1
                self.failed[rel] = _Failed(
                    stat, "", refused=False, attempts=attempts,
                    retry_at=loop.time() + retry_delay(attempts),
                )  # fmt: skip
                if attempts == 1:
                    log.warning("acl %s cannot be read now: %s (trying again)", rel, exc)
                return False
            self._hold(rel, stat, "", str(exc))  # a link, a FIFO, unreadable
            return False
        if self.published.get(rel) == acl.etag:
            self.failed.pop(rel, None)  # back to what the server has
            return True
        if failed is not None and failed.etag == acl.etag:
            failed.stat = stat  # touched, same content
            if failed.refused or loop.time() < failed.retry_at:
                return False
            attempts = failed.attempts + 1
        else:
            attempts = 1  # new content: send it now
        # Recorded before sending: if the connection drops meanwhile (this task is then
        # cancelled), the next connection waits for the back-off too.
        self.failed[rel] = _Failed(
            stat, acl.etag, refused=False, attempts=attempts,
            retry_at=loop.time() + retry_delay(attempts),
        )  # fmt: skip
        outcome, refused = await self._send_and_wait(acl)
        if outcome == "ok":
            del self.failed[rel]
            self.published[rel] = acl.etag
            log.info("acl published %s", rel)
            return True
        if refused:
            self._hold(rel, stat, acl.etag, f"refused by the server: {outcome}")
        else:
            log.warning(
                "acl publish failed for %s: %s (retrying in %.0f s)",
                rel,
                outcome,
                retry_delay(attempts),
            )
        return False

    async def _send_and_wait(self, acl: AclFile) -> tuple[str, bool]:
        """``("ok", False)``, or the failure and whether the server refused the file."""
        rel = acl.rel_path
        message = Message.new(FileWrite(rel, acl.etag, len(acl.content), acl.content))
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._by_id[message.id] = fut
        self._by_path[rel] = fut
        try:
            await self._send(message)
            async with asyncio.timeout(self.ack_timeout):
                outcome = await fut
        except TimeoutError:
            outcome = f"no ack within {self.ack_timeout:.1f} s"
        except Exception as exc:  # NotConnected and friends: the next connect retries
            outcome = f"send failed: {exc}"
        finally:
            self._by_id.pop(message.id, None)
            if self._by_path.get(rel) is fut:
                del self._by_path[rel]
        return outcome, outcome.startswith(("nack:", "error "))
