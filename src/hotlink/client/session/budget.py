"""What inbound sessions may hold for their apps, per peer and in total: one memory ledger.

Each inbound session already bounds itself (flow control's hard limit, 2 windows + 8 MiB by
default), but sessions are cheap to open: without a shared bound, one peer could open many
and hold that much in each behind a missing seq. The :class:`MemoryBudget` is the client's
one ledger for that memory:

* at most ``sessions_per_peer`` live inbound sessions per peer and ``sessions_total`` in all:
  an Open past either is refused (:meth:`MemoryBudget.open` raises, the manager Rejects);
* at most ``bytes_per_peer`` held by one peer's sessions together and ``bytes_total`` by all:
  a frame that would go past either is refused (:meth:`BudgetLease.charge` raises) and the
  session that received it is closed loudly, as for its own bound. Nothing waits: the
  WebSocket and data-channel readers that take frames are shared by every session.

A session holds what it received and its app has not taken yet (in its reorder buffer or
its delivery queue), charged at its size plus :data:`ITEM_OVERHEAD` for the Python objects
that carry it, so a flood of tiny frames is bounded by the memory it really costs.

Flow control keeps sessions that follow it far below these bounds (a window plus one frame
each); the defaults (:meth:`BudgetLimits.for_window`) leave room for
:data:`STREAMS_PER_PEER` such streams from one peer, so the budgets bite only senders that
ignore credit. One peer can take at most half of the total, so it takes at least two peers
at their limit to refuse a third peer's frames.

Plain bookkeeping: no I/O, no clock, no asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...protocol.flow import DEFAULT_WINDOW, MAX_FRAME, MIB

# What the objects that hold one frame cost beyond its bytes (measured on CPython 3.12: about
# 120 bytes for the bytes header, the delivery record, its time stamp and the queue or dict
# slot), rounded up.
ITEM_OVERHEAD = 128
# Concurrent streams from one peer, each holding a full window plus one frame, that the
# default per-peer byte budget leaves room for.
STREAMS_PER_PEER = 8
SESSIONS_PER_PEER = 64
# Same as the relay's sessions per connection: more could not be routed to us anyway.
SESSIONS_TOTAL = 1024
BYTES_TOTAL_MIN = 256 * MIB


def held_cost(nbytes: int) -> int:
    """What holding one item of ``nbytes`` costs in the budget."""
    return nbytes + ITEM_OVERHEAD


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    sessions_per_peer: int = SESSIONS_PER_PEER
    sessions_total: int = SESSIONS_TOTAL
    bytes_per_peer: int = STREAMS_PER_PEER * (DEFAULT_WINDOW + MAX_FRAME)  # 128 MiB
    bytes_total: int = BYTES_TOTAL_MIN  # 256 MiB

    def __post_init__(self) -> None:
        for name in ("sessions_per_peer", "sessions_total", "bytes_per_peer", "bytes_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @classmethod
    def for_window(cls, window: int) -> BudgetLimits:
        """The defaults for a flow-control window: room for :data:`STREAMS_PER_PEER` streams
        per peer that follow credit (each holds at most a window plus the frame that may
        overshoot it), and a total of twice that, at least 256 MiB."""
        per_peer = STREAMS_PER_PEER * (window + MAX_FRAME)
        return cls(bytes_per_peer=per_peer, bytes_total=max(BYTES_TOTAL_MIN, 2 * per_peer))


class BudgetExceeded(Exception):
    """A session or a frame does not fit the budget; the message says which bound."""

    def __init__(self, reason: str, *, scope: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.scope = scope  # "peer" or "total"


@dataclass(slots=True)
class _PeerUse:
    sessions: int = 0
    held: int = 0


class MemoryBudget:
    """The client's ledger of inbound sessions and the bytes they hold, per peer and in all."""

    def __init__(self, limits: BudgetLimits | None = None) -> None:
        self.limits = limits or BudgetLimits()
        self._peers: dict[str, _PeerUse] = {}
        self.sessions = 0
        self.held = 0
        self.refused_opens = 0
        self.refused_frames = 0

    def sessions_of(self, peer: str) -> int:
        use = self._peers.get(peer)
        return use.sessions if use is not None else 0

    def held_by(self, peer: str) -> int:
        use = self._peers.get(peer)
        return use.held if use is not None else 0

    @property
    def peers(self) -> int:
        """Peers with at least one live session."""
        return len(self._peers)

    def open(self, peer: str) -> BudgetLease:
        """A lease for one new inbound session from ``peer``; BudgetExceeded past the caps."""
        limits = self.limits
        if self.sessions_of(peer) >= limits.sessions_per_peer:
            self.refused_opens += 1
            raise BudgetExceeded(
                f"too many sessions from {peer or 'this peer'} "
                f"(at most {limits.sessions_per_peer} at once)",
                scope="peer",
            )
        if self.sessions >= limits.sessions_total:
            self.refused_opens += 1
            raise BudgetExceeded(
                f"too many inbound sessions (at most {limits.sessions_total} at once)",
                scope="total",
            )
        use = self._peers.setdefault(peer, _PeerUse())
        use.sessions += 1
        self.sessions += 1
        return BudgetLease(self, peer, use)

    def _charge(self, lease: BudgetLease, nbytes: int) -> None:
        use = lease._use
        limits = self.limits
        if use.held + nbytes > limits.bytes_per_peer:
            self.refused_frames += 1
            raise BudgetExceeded(
                f"memory budget of {lease.peer or 'this peer'} reached ({use.held} bytes held "
                f"by its sessions, the bound is {limits.bytes_per_peer})",
                scope="peer",
            )
        if self.held + nbytes > limits.bytes_total:
            self.refused_frames += 1
            raise BudgetExceeded(
                f"the client's memory budget for inbound sessions is reached ({self.held} "
                f"bytes held, the bound is {limits.bytes_total})",
                scope="total",
            )
        use.held += nbytes
        self.held += nbytes
        lease.held += nbytes

    def _release(self, lease: BudgetLease, nbytes: int) -> None:
        nbytes = min(nbytes, lease.held)  # never below zero, whatever a caller does
        lease.held -= nbytes
        lease._use.held -= nbytes
        self.held -= nbytes

    def _close(self, lease: BudgetLease) -> None:
        self._release(lease, lease.held)
        use = lease._use
        use.sessions -= 1
        self.sessions -= 1
        if use.sessions == 0:
            # A peer without sessions leaves no trace: the map stays as small as what is live.
            del self._peers[lease.peer]


class BudgetLease:
    """One inbound session's share of a :class:`MemoryBudget`; :meth:`close` gives it back."""

    def __init__(self, budget: MemoryBudget, peer: str, use: _PeerUse) -> None:
        self.budget = budget
        self.peer = peer
        self._use = use
        self.held = 0
        self.closed = False

    def charge(self, nbytes: int) -> None:
        """Hold ``nbytes`` more; BudgetExceeded (nothing charged) if that goes past a bound."""
        if self.closed:
            raise BudgetExceeded("the session has ended", scope="peer")
        self.budget._charge(self, nbytes)

    def release(self, nbytes: int) -> None:
        """``nbytes`` are no longer held (the app took them)."""
        if not self.closed:
            self.budget._release(self, nbytes)

    def close(self) -> None:
        """The session ended: everything it held and its session slot go back. Idempotent."""
        if not self.closed:
            self.closed = True
            self.budget._close(self)
