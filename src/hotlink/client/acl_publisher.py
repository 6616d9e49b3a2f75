"""Publishing the ACL files of our own datasite to the server (PROTOCOL.md §1.11, §3.2).

The server authorizes every hotlink message against the ACLs it holds, and it learns them
from ``FileWrite`` messages of the datasite's owner. After each (re)connect we send every
``syft.pub.yaml`` under our datasite and wait for its Ack; then we poll for changes and send
what changed. A server restart forgets ACLs that were never stored, so re-publishing on
every connect is what makes sessions work again after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ..protocol.messages import Ack, Error, FileWrite, Message, Nack
from .edges.discovery import find_named

log = logging.getLogger("hotlink.acl")

ACL_FILE = "syft.pub.yaml"
MAX_ACL_BYTES = 4 * 1024 * 1024
ACK_TIMEOUT = 5.0
POLL_INTERVAL = 0.25


@dataclass(frozen=True)
class AclFile:
    rel_path: str  # datasite-relative, starts with our email
    content: bytes
    etag: str  # MD5 hex, like the reference clients


def scan_acl_files(datasites: Path, email: str) -> dict[str, tuple[int, int]]:
    """``rel_path -> (mtime_ns, size)`` of every ACL file in our datasite."""
    found: dict[str, tuple[int, int]] = {}
    for full, rel in find_named(datasites, ACL_FILE, under=datasites / email):
        try:
            st = os.stat(full)
        except OSError:
            continue
        found[rel] = (st.st_mtime_ns, st.st_size)
    return found


def read_acl_file(datasites: Path, rel_path: str) -> AclFile | None:
    try:
        content = (datasites / rel_path).read_bytes()
    except OSError:
        return None
    return AclFile(rel_path, content, hashlib.md5(content).hexdigest())


SendFn = Callable[[Message], Awaitable[None]]


class AclPublisher:
    """Owns one task per connection: publish everything, then poll for changes."""

    def __init__(
        self,
        datasites: Path,
        email: str,
        send: SendFn,
        *,
        poll_interval: float = POLL_INTERVAL,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self.datasites = datasites
        self.email = email
        self._send = send
        self.poll_interval = poll_interval
        self.ack_timeout = ack_timeout
        self._task: asyncio.Task[None] | None = None
        self._by_id: dict[str, asyncio.Future[str]] = {}
        self._by_path: dict[str, asyncio.Future[str]] = {}
        # What this connection's server has from us: rel_path -> etag.
        self.published: dict[str, str] = {}
        self.rounds = 0
        # Set once this connection's first publish round is over (Opens wait for it).
        self._first_round = asyncio.Event()

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
        seen: dict[str, tuple[int, int]] = {}
        first = True
        while True:
            current = scan_acl_files(self.datasites, self.email)
            changed = sorted(p for p, stat in current.items() if seen.get(p) != stat)
            failed = {rel for rel in changed if not await self._publish(rel)}
            for rel in set(seen) - set(current):
                log.info("acl removed locally (the server keeps it until deleted): %s", rel)
            # Failed files are retried on the next poll.
            seen = {p: s for p, s in current.items() if p not in failed}
            ok = not failed
            if first:
                first = False
                self.rounds += 1
                log.info(
                    "acls published: %d of %d files%s",
                    len(self.published),
                    len(current),
                    "" if ok else " (some failed, will retry)",
                )
                self._first_round.set()
            await asyncio.sleep(self.poll_interval)

    async def _publish(self, rel: str) -> bool:
        acl = read_acl_file(self.datasites, rel)
        if acl is None:
            return False
        if self.published.get(rel) == acl.etag:
            return True
        if len(acl.content) > MAX_ACL_BYTES:
            log.warning("acl %s is %d bytes; the limit is %d", rel, len(acl.content), MAX_ACL_BYTES)
            return False
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
        if outcome != "ok":
            log.warning("acl publish failed for %s: %s", rel, outcome)
            return False
        self.published[rel] = acl.etag
        log.info("acl published %s", rel)
        return True
