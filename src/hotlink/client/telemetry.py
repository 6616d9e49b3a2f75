"""Hotlink telemetry: counters for every packet on every path (PROTOCOL.md §7).

Written to ``{datasite}/.syftbox/hotlink_telemetry.json`` atomically (temp file + rename), at
most once a second while something changes, and at least every 3 s. Besides the reference's
fields, each live session carries ``transport`` (``ws`` or ``p2p-*``, DECISIONS.md).

The file keeps the reference's shape. Counters the file does not carry (bytes per path, frames
as they arrive from the network) are kept here for the client's ``/metrics``
(:mod:`hotlink.client.control`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("hotlink.telemetry")

# Event-driven writes at most this often; a forced write at least this often.
MIN_WRITE_INTERVAL = 1.0
FORCE_WRITE_INTERVAL = 3.0
_POLL = 0.25

# Counters the WebRTC transport bumps through Telemetry.incr (names from PROTOCOL.md §7).
EVENT_COUNTERS = (
    "p2p_offers",
    "p2p_answers_ok",
    "p2p_answers_err",
    "ws_fallbacks",
    "strict_violations",
    # Ours: times a sender had used up its credit and waited for the receiving app.
    "flow_waits",
)


class Telemetry:
    def __init__(
        self,
        path: Path | None,
        *,
        enabled: bool = True,
        bench_strict: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.enabled = enabled
        self.bench_strict = bench_strict
        self._clock = clock
        self.started_ms = int(clock() * 1000)
        self.tx_packets = 0
        self.tx_bytes = 0
        self.tx_p2p_packets = 0
        self.tx_ws_packets = 0
        self.tx_p2p_bytes = 0
        self.tx_ws_bytes = 0
        self._tx_send_ms_total = 0.0
        self.tx_max_send_ms = 0.0
        self.rx_packets = 0
        self.rx_bytes = 0
        self._rx_write_ms_total = 0.0
        self.rx_max_write_ms = 0.0
        # Frames as they arrive from the network, per path (duplicates included), before the
        # reorder buffer and the app: rx_* above counts what the apps took.
        self.arrived_frames: dict[str, int] = {"ws": 0, "p2p": 0}
        self.arrived_bytes: dict[str, int] = {"ws": 0, "p2p": 0}
        self.events: dict[str, int] = dict.fromkeys(EVENT_COUNTERS, 0)
        self.sessions_source: Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = (
            lambda: ([], [])
        )
        self.proxies_source: Callable[[], list[dict[str, Any]]] = list
        self._dirty = True
        self._last_write = 0.0
        self.writes = 0

    # ------------------------------------------------------------ counting

    def record_tx(self, nbytes: int, send_ms: float, via: str) -> None:
        """One frame sent; ``via`` is ``ws`` or ``p2p``."""
        self.tx_packets += 1
        self.tx_bytes += nbytes
        if via == "ws":
            self.tx_ws_packets += 1
            self.tx_ws_bytes += nbytes
        else:
            self.tx_p2p_packets += 1
            self.tx_p2p_bytes += nbytes
        self._tx_send_ms_total += send_ms
        self.tx_max_send_ms = max(self.tx_max_send_ms, send_ms)
        self._dirty = True

    def record_rx(self, nbytes: int, write_ms: float) -> None:
        """One frame delivered to the local app (TCP write or IPC write)."""
        self.rx_packets += 1
        self.rx_bytes += nbytes
        self._rx_write_ms_total += write_ms
        self.rx_max_write_ms = max(self.rx_max_write_ms, write_ms)
        self._dirty = True

    def record_received(self, nbytes: int, via: str) -> None:
        """One frame of a live inbound session arrived over ``via`` (``ws`` or ``p2p``)."""
        self.arrived_frames[via] = self.arrived_frames.get(via, 0) + 1
        self.arrived_bytes[via] = self.arrived_bytes.get(via, 0) + nbytes

    def incr(self, name: str, n: int = 1) -> None:
        """Bump one of :data:`EVENT_COUNTERS` (or a new counter, which is then reported too)."""
        self.events[name] = self.events.get(name, 0) + n
        self._dirty = True

    def changed(self) -> None:
        """Something in the live snapshot changed (a session opened or closed)."""
        self._dirty = True

    # ------------------------------------------------------------ the document

    def snapshot(self) -> dict[str, Any]:
        sessions_in, sessions_out = self.sessions_source()
        proxies = self.proxies_source()
        connected = sum(1 for s in (*sessions_in, *sessions_out) if s.get("webrtc") == "connected")
        doc: dict[str, Any] = {
            "mode": (
                "disabled"
                if not self.enabled
                else "hotlink_p2p_strict"
                if self.bench_strict
                else "hotlink_p2p"
            ),
            "bench_strict": self.bench_strict,
            "started_ms": self.started_ms,
            "updated_ms": int(self._clock() * 1000),
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "tx_p2p_packets": self.tx_p2p_packets,
            "tx_ws_packets": self.tx_ws_packets,
            "tx_avg_send_ms": (
                round(self._tx_send_ms_total / self.tx_packets, 3) if self.tx_packets else 0.0
            ),
            "tx_max_send_ms": int(self.tx_max_send_ms),
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "rx_avg_write_ms": (
                round(self._rx_write_ms_total / self.rx_packets, 3) if self.rx_packets else 0.0
            ),
            "rx_max_write_ms": int(self.rx_max_write_ms),
        }
        doc.update(self.events)
        doc["webrtc_connected"] = connected
        doc["live"] = {
            "inbound": len(sessions_in),
            "outbound_accepted": sum(1 for s in sessions_out if s.get("status") == "accepted"),
            "outbound_pending": sum(1 for s in sessions_out if s.get("status") == "pending"),
            "webrtc_connected": connected,
            "tcp_proxies": len(proxies),
            "sessions_in": sessions_in,
            "sessions_out": sessions_out,
            "proxies": proxies,
        }
        return doc

    def summary(self, doc: dict[str, Any]) -> str:
        live = doc["live"]
        p2p = f"p2p:UP({doc['webrtc_connected']})" if doc["webrtc_connected"] else "p2p:off"
        return (
            f"hotlink | ↑tx {doc['tx_packets']} {_human(doc['tx_bytes'])}"
            f"(p2p:{doc['tx_p2p_packets']}/ws:{doc['tx_ws_packets']}) | "
            f"↓rx {doc['rx_packets']} {_human(doc['rx_bytes'])} | {p2p} | "
            f"sess in:{live['inbound']} out:{live['outbound_accepted']}/"
            f"{live['outbound_pending']} wait"
        )

    # ------------------------------------------------------------ writing

    def write(self) -> None:
        """Write the file now (atomically). Errors are logged, never raised."""
        if self.path is None:
            return
        doc = self.snapshot()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc, indent=2))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("telemetry write failed: %s", exc)
            return
        self._dirty = False
        self._last_write = time.monotonic()
        self.writes += 1
        log.debug("%s", self.summary(doc))

    def due(self, now: float) -> bool:
        """Whether the writer loop should write at monotonic time ``now``."""
        since = now - self._last_write
        return since >= FORCE_WRITE_INTERVAL or (self._dirty and since >= MIN_WRITE_INTERVAL)

    async def run(self) -> None:
        """Writer loop; the daemon owns this task and cancels it on shutdown."""
        self.write()
        try:
            while True:
                await asyncio.sleep(_POLL)
                if self.due(time.monotonic()):
                    self.write()
        finally:
            self.write()


def _human(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f}KB"
    return f"{n / (1024 * 1024):.1f}MB"
