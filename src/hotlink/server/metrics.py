"""Prometheus metrics of one relay (``GET /metrics``).

Each app gets its own ``CollectorRegistry``: several servers in one test process must not
share counters, and the global registry would make a second app fail to register.

The counters of messages and bytes by type are bumped for every frame the relay reads and
every frame it queues, so they are plain integers in lists indexed by type
(:class:`TypeCounters`), turned into Prometheus samples only when someone reads them: a
labelled Prometheus counter costs a label lookup and a lock per increment, which on the
data path was as much as routing the frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..protocol.messages import MsgType

__all__ = ["CONTENT_TYPE_LATEST", "ClusterStats", "RelayMetrics", "TypeCounters"]

_TYPES = len(MsgType)


class TypeCounters(Collector):
    """Two counters labelled by message type, messages and their bytes, kept as plain ints.

    Exported as the counters ``<messages>`` and ``<bytes>`` with a ``type`` label, like a
    labelled ``prometheus_client.Counter``; a type appears once it was counted, and its
    ``_created`` time is when a collection first saw it.
    """

    def __init__(self, messages: tuple[str, str], size: tuple[str, str]) -> None:
        self._messages_name, self._messages_doc = messages
        self._bytes_name, self._bytes_doc = size
        self.messages = [0] * _TYPES
        self.bytes = [0] * _TYPES
        self._created: list[float | None] = [None] * _TYPES

    def count(self, typ: MsgType, size: int, messages: int = 1) -> None:
        """``messages`` more messages of ``typ`` (``size`` bytes together)."""
        self.messages[typ] += messages
        self.bytes[typ] += size

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(self._messages_name, self._messages_doc, labels=["type"])
        size = CounterMetricFamily(self._bytes_name, self._bytes_doc, labels=["type"])
        for typ in MsgType:
            if not self.messages[typ]:
                continue
            created = self._created[typ]
            if created is None:
                created = self._created[typ] = time.time()
            messages.add_metric([typ.name], self.messages[typ], created=created)
            size.add_metric([typ.name], self.bytes[typ], created=created)
        yield messages
        yield size


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
        self.received_by_type = TypeCounters(
            ("hotlink_received_messages", "Messages decoded from clients"),
            ("hotlink_received_bytes", "Frame bytes decoded from clients"),
        )
        r.register(self.received_by_type)
        self.relayed_by_type = TypeCounters(
            (
                "hotlink_relayed_messages",
                "Messages queued to clients (forwarded and server-originated)",
            ),
            ("hotlink_relayed_bytes", "Frame bytes queued to clients"),
        )
        r.register(self.relayed_by_type)
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

    def add_cluster(self, stats: Callable[[], ClusterStats]) -> None:
        """Export a cluster replica's figures (read from ``stats`` at each scrape)."""
        self.registry.register(_ClusterCollector(stats))

    def received(self, typ: MsgType, size: int) -> None:
        self.received_by_type.count(typ, size)

    def relayed(self, typ: MsgType, size: int) -> None:
        self.relayed_by_type.count(typ, size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class ClusterStats:
    """What a cluster replica reports (see ``server.cluster.node``)."""

    nodes: int
    redis_up: bool
    remote_connections: int
    entries_sent: int
    bytes_sent: int
    entries_received: int
    backlog_bytes: int
    gaps: int
    lost_nodes: int


class _ClusterCollector(Collector):
    def __init__(self, stats: Callable[[], ClusterStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "hotlink_cluster_nodes", "Replicas this one sees, itself included", s.nodes
        )
        yield GaugeMetricFamily(
            "hotlink_cluster_redis_up", "1 while Redis answers, 0 while not", int(s.redis_up)
        )
        yield GaugeMetricFamily(
            "hotlink_cluster_remote_connections",
            "WebSocket connections held by the other replicas",
            s.remote_connections,
        )
        yield GaugeMetricFamily(
            "hotlink_cluster_backlog_bytes",
            "Bytes waiting to be written to other replicas' inboxes",
            s.backlog_bytes,
        )
        for name, doc, value in (
            ("hotlink_cluster_entries_sent", "Inbox entries written for other replicas",
             s.entries_sent),
            ("hotlink_cluster_sent_bytes", "Bytes of inbox entries written", s.bytes_sent),
            ("hotlink_cluster_entries_received", "Inbox entries read", s.entries_received),
            ("hotlink_cluster_gaps", "Links found to have lost entries (their sessions closed)",
             s.gaps),
            ("hotlink_cluster_lost_nodes", "Replicas found dead (their sessions closed)",
             s.lost_nodes),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value)
