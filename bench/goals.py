"""The issue's goals, as ratios measured within one run (issue 7):

* P2P throughput >= 80 % of the backend's raw data channel;
* P2P round-trip p50 <= the raw data channel's + 150 us (64 B messages);
* on the WAN shape, P2P round trip <= 0.3 x the WebSocket-relay round trip.

A goal whose inputs are missing (a path failed, or the "P2P" row actually ran over the
WebSocket because no data channel opened) is reported as not measured, never as met.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .paths import PathResult

THROUGHPUT_RATIO = 0.80
RTT_EXTRA_MS = 0.150
WAN_RTT_RATIO = 0.3


@dataclass
class Goal:
    name: str
    target: str
    measured: str
    met: bool | None  # None: could not be measured in this run

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _find(results: Sequence[PathResult], group: str, kind: str, backend: str = "") -> PathResult:
    for r in results:
        if r.group == group and r.kind == kind and (not backend or r.backend == backend):
            return r
    return PathResult("missing", group, kind, backend, error="not run")


def _why_not(*rows: PathResult) -> str | None:
    for r in rows:
        if r.error:
            return f"{r.name}: {r.error}"
        if r.kind == "p2p" and not r.is_p2p:
            path = ", ".join(f"{d} {k}" for d, k in r.transport.items()) or "unknown"
            return f"{r.name} did not run peer to peer ({path})"
    return None


def evaluate(results: Sequence[PathResult]) -> list[Goal]:
    goals: list[Goal] = []
    for backend in ("libdatachannel", "aiortc"):
        p2p = _find(results, "loopback", "p2p", backend)
        raw = _find(results, "loopback", "raw-dc", backend)
        why = _why_not(p2p, raw)
        if why is None and p2p.throughput_mb_s and raw.throughput_mb_s:
            ratio = p2p.throughput_mb_s / raw.throughput_mb_s
            goals.append(
                Goal(
                    f"P2P throughput vs raw data channel ({backend})",
                    f">= {THROUGHPUT_RATIO:.0%}",
                    f"{ratio:.0%} ({p2p.throughput_mb_s:.1f} / {raw.throughput_mb_s:.1f} MB/s)",
                    ratio >= THROUGHPUT_RATIO,
                )
            )
        else:
            goals.append(
                Goal(
                    f"P2P throughput vs raw data channel ({backend})",
                    f">= {THROUGHPUT_RATIO:.0%}",
                    why or "no data",
                    None,
                )
            )
        p50, raw_p50 = p2p.rtt_p50(64), raw.rtt_p50(64)
        name = f"P2P RTT p50 vs raw data channel ({backend}, 64 B)"
        target = f"<= raw + {RTT_EXTRA_MS * 1000:.0f} us"
        if why is None and p50 is not None and raw_p50 is not None:
            extra = p50 - raw_p50
            goals.append(
                Goal(
                    name,
                    target,
                    f"raw + {extra * 1000:.0f} us ({p50:.3f} vs {raw_p50:.3f} ms)",
                    extra <= RTT_EXTRA_MS,
                )
            )
        else:
            goals.append(Goal(name, target, why or "no data", None))
    wan_p2p = _find(results, "wan", "p2p")
    wan_ws = _find(results, "wan", "ws")
    why = _why_not(wan_p2p, wan_ws)
    p2p_p50, ws_p50 = wan_p2p.rtt_p50(64), wan_ws.rtt_p50(64)
    name = "WAN shape: P2P RTT vs WebSocket-relay RTT (64 B, p50)"
    target = f"<= {WAN_RTT_RATIO} x"
    if why is None and p2p_p50 and ws_p50:
        ratio = p2p_p50 / ws_p50
        goals.append(
            Goal(
                name,
                target,
                f"{ratio:.2f} x ({p2p_p50:.1f} vs {ws_p50:.1f} ms)",
                ratio <= WAN_RTT_RATIO,
            )
        )
    else:
        goals.append(Goal(name, target, why or "no data", None))
    return goals
