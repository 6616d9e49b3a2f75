"""Prometheus metrics of one relay (``GET /metrics``).

Each app gets its own ``CollectorRegistry``: several servers in one test process must not
share counters, and the global registry would make a second app fail to register.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..protocol.messages import MsgType

__all__ = ["CONTENT_TYPE_LATEST", "RelayMetrics"]


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "hotlink_connections", "WebSocket connections open now", registry=r
        )
        self.connections_total = Counter(
            "hotlink_connections_accepted", "WebSocket connections accepted", registry=r
        )
        self.auth_failures = Counter(
            "hotlink_auth_failures", "Upgrades refused with HTTP 401/403", ["code"], registry=r
        )
        self.sessions = Gauge("hotlink_sessions", "Hotlink sessions open now", registry=r)
        self.received_messages = Counter(
            "hotlink_received_messages", "Messages decoded from clients", ["type"], registry=r
        )
        self.received_bytes = Counter(
            "hotlink_received_bytes", "Frame bytes decoded from clients", ["type"], registry=r
        )
        self.relayed_messages = Counter(
            "hotlink_relayed_messages",
            "Messages queued to clients (forwarded and server-originated)",
            ["type"],
            registry=r,
        )
        self.relayed_bytes = Counter(
            "hotlink_relayed_bytes", "Frame bytes queued to clients", ["type"], registry=r
        )
        self.rejects = Counter(
            "hotlink_rejects",
            "Inputs refused or dropped, by reason (Reject reasons, not participant, ...)",
            ["reason"],
            registry=r,
        )
        self.bad_input = Counter(
            "hotlink_bad_input",
            "Frames that could not be decoded or were too big",
            ["kind"],
            registry=r,
        )
        self.queue_drops = Counter(
            "hotlink_queue_drops",
            "Messages dropped because the receiver's send queue was full",
            registry=r,
        )
        self.broadcast_drops = Counter(
            "hotlink_broadcast_drops",
            "Broadcasts (Open fan-out, FileWrite, ACL manifest) dropped for a full receiver",
            registry=r,
        )
        self.connections_refused = Counter(
            "hotlink_connections_refused",
            "Upgrades refused by a connection cap (server_busy, too_many_connections)",
            ["code"],
            registry=r,
        )
        self.accept_errors = Counter(
            "hotlink_accept_errors",
            "accept() failures for lack of file descriptors or memory",
            registry=r,
        )
        self.slow_disconnects = Counter(
            "hotlink_slow_reader_disconnects",
            "Connections closed because a direct message did not fit their send queue",
            registry=r,
        )
        self.queued_bytes = Gauge(
            "hotlink_queued_bytes",
            "Bytes all connections hold for their peers, queued or in socket buffers "
            "(a frame shared by several receivers counted once)",
            registry=r,
        )
        self.budget_drops = Counter(
            "hotlink_budget_broadcast_drops",
            "Broadcasts dropped because the relay held --max-queued-bytes",
            registry=r,
        )
        self.budget_disconnects = Counter(
            "hotlink_budget_disconnects",
            "Connections closed because the relay held --max-queued-bytes and they held more "
            "than their share",
            registry=r,
        )
        self.internal_errors = Counter(
            "hotlink_internal_errors", "Unexpected exceptions while handling a message", registry=r
        )
        self.acl_files = Gauge("hotlink_acl_files", "ACL files loaded", registry=r)

    def received(self, typ: MsgType, size: int) -> None:
        self.received_messages.labels(typ.name).inc()
        self.received_bytes.labels(typ.name).inc(size)

    def relayed(self, typ: MsgType, size: int) -> None:
        self.relayed_messages.labels(typ.name).inc()
        self.relayed_bytes.labels(typ.name).inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
