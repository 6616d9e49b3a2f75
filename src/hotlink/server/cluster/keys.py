"""Names of the Redis keys a cluster uses, all under one prefix (``hl`` by default)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "hl"

    @property
    def nodes(self) -> str:
        """SET of the replicas that joined and were not reaped."""
        return f"{self.prefix}:nodes"

    def node(self, ref: str) -> str:
        """A replica's liveness key (a TTL, refreshed by its heartbeat)."""
        return f"{self.prefix}:node:{ref}"

    def inbox(self, ref: str) -> str:
        """A replica's inbox stream."""
        return f"{self.prefix}:in:{ref}"

    def session(self, sid: str) -> str:
        """Who opened session ``sid`` and where it is homed (its claim)."""
        return f"{self.prefix}:sess:{sid}"

    def user_sessions(self, user: str) -> str:
        """HASH of replica -> sessions ``user`` opened there (a per-user cap)."""
        return f"{self.prefix}:usess:{user}"

    @property
    def acls(self) -> str:
        """HASH of ACL file path -> text, for replicas that join later."""
        return f"{self.prefix}:acl"
