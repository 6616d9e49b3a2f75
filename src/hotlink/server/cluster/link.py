"""The links between replicas: an outbox per receiver written by one task, and the inbox
read by another. This module moves bytes; what the records mean is the node's business.

Writer: records for each receiver are collected during a turn of the event loop and sent
as one XADD per receiver on the next turn, all in one pipeline over one Redis connection,
so the order of a receiver's entries is the order of the calls. An entry that fails (Redis
unreachable) is kept with its number and sent again: the receiver drops what it had
already (:class:`~.records.LinkSeq`). What waits for one receiver is bounded; past the bound
the link is given up (the node closes the sessions that crossed it) rather than growing.

Reader: ``XREAD BLOCK`` on our inbox from the last entry seen, trimming what was read.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import records
from .keys import Keys

log = logging.getLogger("hotlink.server.cluster")

RETRY_PAUSE = 0.25  # seconds between tries while Redis does not answer
MAX_ENTRY_BYTES = 1 << 20  # records joined into one entry, at most (one more goes over)
INBOX_MAXLEN = 100_000  # entries kept in an inbox at most (a backstop; readers trim)
READ_COUNT = 64  # entries per XREAD
READ_BLOCK_MS = 1000


@dataclass
class _Link:
    """What we owe one receiver: its epoch, the last number used, entries not yet sent."""

    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    seq: int = 0
    # (seq, packed records, their size as counted): packed, not yet in Redis
    entries: list[tuple[int, bytes, int]] = field(default_factory=list)
    records: list[tuple[records.Record, int]] = field(default_factory=list)  # not packed yet
    size: int = 0  # bytes of entries and records, as counted by ``send``
    overflowed: bool = False


StateOp = Callable[[Any], None]  # adds commands to a pipeline


class Outbox:
    """Entries for each receiver, sent in order by one task (see the module text)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        me: str,
        *,
        max_bytes: int,
        on_health: Callable[[bool, str], None],
        on_overflow: Callable[[str], None],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._me = me
        self.max_bytes = max_bytes
        self._on_health = on_health
        self._on_overflow = on_overflow
        self._links: dict[str, _Link] = {}
        self._ops: list[StateOp] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent_records = 0
        self.sent_bytes = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def send(self, dst: str, record: records.Record, size: int = 64) -> None:
        """Queue ``record`` for replica ``dst`` (``size``: about its bytes, for the bound)."""
        link = self._links.get(dst)
        if link is None:
            link = self._links[dst] = _Link()
        if link.overflowed:
            return
        link.records.append((record, size))
        link.size += size
        if link.size > self.max_bytes:
            link.overflowed = True
            link.records.clear()
            link.entries.clear()
            link.size = 0
            self._on_overflow(dst)
            return
        self._wake.set()

    def state(self, op: StateOp) -> None:
        """Queue commands on shared state (in order with each other, before this turn's
        entries)."""
        self._ops.append(op)
        self._wake.set()

    def forget(self, dst: str) -> None:
        """Drop what waits for ``dst``; later records start a new link (a new epoch)."""
        self._links.pop(dst, None)

    def backlog(self) -> int:
        """Bytes waiting for all receivers."""
        return sum(link.size for link in self._links.values())

    async def flush(self) -> None:
        """Wait until everything queued so far is in Redis (for a clean shutdown)."""
        while self._ops or any(link.records or link.entries for link in self._links.values()):
            self._wake.set()
            await asyncio.sleep(0.01)

    def _pack(self) -> None:
        for link in self._links.values():
            if not link.records:
                continue
            batch: list[records.Record] = []
            batch_size = 0
            for record, size in link.records:
                batch.append(record)
                batch_size += size
                if batch_size >= MAX_ENTRY_BYTES:
                    link.seq += 1
                    link.entries.append((link.seq, records.pack(batch), batch_size))
                    batch, batch_size = [], 0
            if batch:
                link.seq += 1
                link.entries.append((link.seq, records.pack(batch), batch_size))
            link.records.clear()

    async def _run(self) -> None:
        healthy = True
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Let the rest of this turn (and its callbacks) queue what they will.
            await asyncio.sleep(0)
            self._pack()
            ops, self._ops = self._ops, []
            sending = {
                dst: (link, list(link.entries)) for dst, link in self._links.items() if link.entries
            }
            if not ops and not sending:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for op in ops:
                op(pipe)
            for dst, (link, entries) in sending.items():
                for seq, data, _size in entries:
                    pipe.xadd(
                        self._keys.inbox(dst),
                        {"f": self._me, "e": link.epoch, "s": seq, "r": data},
                        maxlen=INBOX_MAXLEN,
                        approximate=True,
                    )
            try:
                await pipe.execute()
            except (RedisError, OSError) as exc:
                if healthy:
                    healthy = False
                    self._on_health(False, f"writer: {exc}")
                self._ops[:0] = ops
                self._wake.set()
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if not healthy:
                healthy = True
                self._on_health(True, "writer")
            for dst, (link, entries) in sending.items():
                if self._links.get(dst) is not link:
                    continue  # forgotten meanwhile (a new link has its own numbers)
                done = {entry[0] for entry in entries}
                link.entries = [entry for entry in link.entries if entry[0] not in done]
                link.size -= sum(entry[2] for entry in entries)
                self.sent_bytes += sum(len(entry[1]) for entry in entries)
                self.sent_records += len(entries)


Handler = Callable[[str, str, int, bytes], Awaitable[None] | None]


class Inbox:
    """Reads our inbox in order and hands each entry to ``handle(src, epoch, seq, data)``."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        me: str,
        handle: Handler,
        on_health: Callable[[bool, str], None],
    ) -> None:
        self._redis = redis
        self._key = keys.inbox(me)
        self._handle = handle
        self._on_health = on_health
        self._last_id = b"0"
        self._task: asyncio.Task[None] | None = None
        self.received_entries = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-reader")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        healthy = True
        while True:
            try:
                reply: Any = await self._redis.xread(
                    {self._key: self._last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                )
                if reply:
                    # What we read is ours alone: trim it so the inbox stays small.
                    for _name, entries in reply:
                        for entry_id, fields in entries:
                            self._last_id = entry_id
                            await self._entry(fields)
                    await self._redis.xtrim(self._key, minid=self._last_id)
            except (RedisError, OSError) as exc:
                if healthy:
                    healthy = False
                    self._on_health(False, f"reader: {exc}")
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if not healthy:
                healthy = True
                self._on_health(True, "reader")

    async def _entry(self, fields: dict[bytes, bytes]) -> None:
        self.received_entries += 1
        try:
            src = fields[b"f"].decode()
            epoch = fields[b"e"].decode()
            seq = int(fields[b"s"])
            data = fields[b"r"]
        except (KeyError, ValueError, UnicodeDecodeError):
            log.error("cluster inbox: dropped a malformed entry (fields %s)", sorted(fields))
            return
        result = self._handle(src, epoch, seq, data)
        if result is not None:
            await result
