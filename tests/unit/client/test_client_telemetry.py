"""Telemetry: the PROTOCOL.md §7 document, atomic writes, and the write schedule."""

from __future__ import annotations

import json
from pathlib import Path

from hotlink.client.telemetry import FORCE_WRITE_INTERVAL, MIN_WRITE_INTERVAL, Telemetry

FIELDS = {
    "mode", "bench_strict", "started_ms", "updated_ms", "tx_packets", "tx_bytes",
    "tx_p2p_packets", "tx_ws_packets", "tx_avg_send_ms", "tx_max_send_ms", "rx_packets",
    "rx_bytes", "rx_avg_write_ms", "rx_max_write_ms", "p2p_offers", "p2p_answers_ok",
    "p2p_answers_err", "ws_fallbacks", "strict_violations", "flow_waits", "webrtc_connected",
    "live",
}  # fmt: skip
LIVE = {
    "inbound", "outbound_accepted", "outbound_pending", "webrtc_connected", "tcp_proxies",
    "sessions_in", "sessions_out", "proxies",
}  # fmt: skip


def test_document_has_every_field_and_counts(tmp_path: Path) -> None:
    t = Telemetry(tmp_path / "t.json", clock=lambda: 1000.0)
    t.record_tx(100, 2.0, "ws")
    t.record_tx(50, 4.0, "p2p")
    t.record_rx(70, 1.0)
    t.incr("ws_fallbacks")
    t.sessions_source = lambda: (
        [{"sid": "a", "webrtc": "connected", "transport": "p2p-host"}],
        [
            {"sid": "b", "status": "accepted", "webrtc": "none", "transport": "ws"},
            {"sid": "c", "status": "pending", "webrtc": "none", "transport": "ws"},
        ],
    )
    t.proxies_source = lambda: [{"port": 1, "from": "a", "to": "b", "connected": True}]
    doc = t.snapshot()
    assert set(doc) == FIELDS and set(doc["live"]) == LIVE
    assert (doc["tx_packets"], doc["tx_bytes"]) == (2, 150)
    assert (doc["tx_ws_packets"], doc["tx_p2p_packets"]) == (1, 1)
    assert doc["tx_avg_send_ms"] == 3.0 and doc["tx_max_send_ms"] == 4
    assert (doc["rx_packets"], doc["rx_bytes"]) == (1, 70)
    assert doc["ws_fallbacks"] == 1
    assert doc["webrtc_connected"] == 1
    live = doc["live"]
    assert (live["inbound"], live["outbound_accepted"], live["outbound_pending"]) == (1, 1, 1)
    assert live["tcp_proxies"] == 1
    assert doc["mode"] == "hotlink_p2p"
    assert doc["started_ms"] == doc["updated_ms"] == 1_000_000


def test_write_is_atomic_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "ds" / ".syftbox" / "hotlink_telemetry.json"
    t = Telemetry(path)
    t.record_tx(3, 1.0, "ws")
    t.write()
    assert json.loads(path.read_text())["tx_bytes"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["hotlink_telemetry.json"]


def test_schedule_rate_limits_changes_and_forces_a_periodic_write(tmp_path: Path) -> None:
    t = Telemetry(tmp_path / "t.json")
    t.write()
    written = t._last_write
    assert not t.due(written + MIN_WRITE_INTERVAL / 2)  # nothing changed
    t.record_rx(1, 0.1)
    assert not t.due(written + MIN_WRITE_INTERVAL / 2)  # changed, but too soon
    assert t.due(written + MIN_WRITE_INTERVAL)
    t.write()
    assert t.due(t._last_write + FORCE_WRITE_INTERVAL)  # unchanged, but forced


def test_disabled_and_strict_modes() -> None:
    assert Telemetry(None, enabled=False).snapshot()["mode"] == "disabled"
    assert Telemetry(None, bench_strict=True).snapshot()["mode"] == "hotlink_p2p_strict"
