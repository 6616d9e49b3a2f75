"""Which replicas are alive, from what a heartbeat reads in Redis (no I/O here).

Each replica refreshes a key with a TTL; one whose key is missing is lost. Only a replica
that has itself reached Redis for a whole TTL may declare another lost: one that just came
back from an outage would otherwise take every peer for dead, their keys not yet renewed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Changes:
    found: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


class Membership:
    def __init__(self, me: str, ttl: float) -> None:
        self.me = me
        self.ttl = ttl
        self.known: set[str] = set()
        self._healthy_since: float | None = None

    def redis_down(self) -> None:
        self._healthy_since = None

    def observe(self, now: float, alive: dict[str, bool]) -> Changes:
        """One heartbeat's reading: every registered replica and whether its key exists."""
        if self._healthy_since is None:
            self._healthy_since = now
        may_declare = now - self._healthy_since >= self.ttl
        changes = Changes()
        for ref, live in sorted(alive.items()):
            if ref == self.me:
                continue
            if live and ref not in self.known:
                self.known.add(ref)
                changes.found.append(ref)
            elif not live and may_declare:
                # Registered but dead: ours to report if we knew it, and to clean up anyway.
                self.known.discard(ref)
                changes.lost.append(ref)
        for ref in sorted(self.known - alive.keys()):
            # Unregistered (reaped by another replica, or said goodbye).
            if may_declare:
                self.known.discard(ref)
                changes.lost.append(ref)
        return changes

    def forget(self, ref: str) -> None:
        self.known.discard(ref)

    def forget_all(self) -> list[str]:
        gone = sorted(self.known)
        self.known.clear()
        return gone
