"""Per-stream reorder buffer for HotlinkData seqs (PROTOCOL.md §4.6, DECISIONS.md #17).

Frames of one stream arrive out of order (the reference server reorders, and P2P and the
WebSocket fallback overlap) and sometimes twice. The buffer hands out payloads strictly in
seq order, drops duplicates, and bounds what it holds. A hole that never fills is not
waited on forever: :meth:`ReorderBuffer.check` raises :class:`GapTimeout` and the caller
closes the stream loudly, since a stream with a hole in it is worse than no stream.
Time is passed in by the caller; this module never reads a clock.
"""

from __future__ import annotations

from .errors import ProtocolError


class ReorderOverflow(ProtocolError):
    """More out-of-order data than the bounds allow: the stream cannot be kept whole."""


class GapTimeout(ProtocolError):
    """A missing seq did not arrive within the gap timeout."""


class ReorderBuffer:
    def __init__(
        self,
        *,
        next_seq: int = 1,
        max_pending: int = 4096,
        max_pending_bytes: int = 64 * 1024 * 1024,
        gap_timeout: float = 30.0,
    ) -> None:
        self._next_seq = next_seq
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.gap_timeout = gap_timeout
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self._gap_since: float | None = None
        self.duplicates = 0
        self.delivered = 0

    @property
    def next_seq(self) -> int:
        """The seq the stream is waiting for."""
        return self._next_seq

    @property
    def pending(self) -> int:
        """Frames held because an earlier seq is missing."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def gap_since(self) -> float | None:
        """When the current wait for ``next_seq`` began, or None if nothing is held."""
        return self._gap_since

    def has(self, seq: int) -> bool:
        """Whether ``seq`` was delivered already or is held (a new copy is a duplicate)."""
        return seq < self._next_seq or seq in self._pending

    def push(self, seq: int, payload: bytes, now: float) -> list[bytes]:
        """Add one frame; return the payloads that are now ready, in seq order."""
        if self.has(seq):
            self.duplicates += 1
            return []
        if seq != self._next_seq:
            self._hold(seq, payload, now)
            return []
        ready = [payload]
        seq += 1
        pending = self._pending
        while seq in pending:
            held = pending.pop(seq)
            self._pending_bytes -= len(held)
            ready.append(held)
            seq += 1
        self._next_seq = seq
        self.delivered += len(ready)
        # Progress was made; if frames are still held, a new wait starts now.
        self._gap_since = now if pending else None
        return ready

    def _hold(self, seq: int, payload: bytes, now: float) -> None:
        # Delivering seq needs every seq between next_seq and it held at the same time.
        if seq - self._next_seq > self.max_pending:
            raise ReorderOverflow(
                f"seq {seq} is {seq - self._next_seq} ahead of the expected {self._next_seq}; "
                f"at most {self.max_pending} frames may be held"
            )
        if len(self._pending) >= self.max_pending:
            raise ReorderOverflow(
                f"{len(self._pending)} frames held waiting for seq {self._next_seq}; "
                f"the limit is {self.max_pending}"
            )
        if self._pending_bytes + len(payload) > self.max_pending_bytes:
            raise ReorderOverflow(
                f"{self._pending_bytes + len(payload)} bytes held waiting for seq "
                f"{self._next_seq}; the limit is {self.max_pending_bytes}"
            )
        self._pending[seq] = payload
        self._pending_bytes += len(payload)
        if self._gap_since is None:
            self._gap_since = now

    def check(self, now: float) -> None:
        """Raise :class:`GapTimeout` if the wait for ``next_seq`` reached the gap timeout."""
        if self._gap_since is not None and now - self._gap_since >= self.gap_timeout:
            raise GapTimeout(
                f"seq {self._next_seq} missing for {now - self._gap_since:.1f} s "
                f"with {len(self._pending)} later frames held"
            )
