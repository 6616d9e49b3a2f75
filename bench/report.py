"""The benchmark's outputs: the machine it ran on, and the markdown table for the README."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from .flow import GRACE_FRAMES as GRACE
from .flow import FlowConfig, FlowResults, SharedWsResult, SlowReaderResult
from .goals import Goal
from .paths import BenchConfig, PathResult


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ("hotlink", "aiolibdatachannel", "aiortc", "aiohttp"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "versions": versions,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _rtt(r: PathResult, size: int) -> str:
    s = r.rtt.get(str(size))
    if not s:
        return "-"
    return f"{s['p50_ms']:.3f} / {s['p90_ms']:.3f} / {s['p99_ms']:.3f}"


def _path(r: PathResult) -> str:
    if r.kind in ("tcp", "raw-dc"):
        return "-"
    kinds = sorted(set(r.transport.values()))
    return ", ".join(kinds) if kinds else "?"


def _row(r: PathResult) -> str:
    if r.error:
        return f"| {r.name} | failed: {r.error[:80]} | | | | | |"
    return (
        f"| {r.name} | {_path(r)} | {_num(r.throughput_mb_s)} | {_rtt(r, 64)} | {_rtt(r, 4096)} "
        f"| {_num(r.setup_channel_open_ms, '{:.0f}')} | {_num(r.setup_first_byte_ms, '{:.0f}')} |"
    )


HEADER = (
    "| Path | Carried by | Throughput (MB/s) | RTT 64 B p50 / p90 / p99 (ms) "
    "| RTT 4 KiB p50 / p90 / p99 (ms) | Set-up: marker → channel open (ms) "
    "| Set-up: marker → first byte (ms) |\n"
    "|---|---|---:|---:|---:|---:|---:|"
)


SLOW_HEADER = (
    "| Receiving app | Time (s) | sha256 | Sender frames P2P / WS | WS fallbacks "
    "| Sender flow waits | Strict violations | Peak RSS alice / bob (MiB) |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|"
)

SHARED_HEADER = (
    "| Tunnel 2 solo (MB/s) | Tunnel 2 during the stall (MB/s) | Ratio | Tunnel 1 stream "
    "| Client reconnects | Relay disconnects |\n"
    "|---:|---:|---:|---|---:|---:|"
)


def _slow_row(r: SlowReaderResult) -> str:
    if r.error:
        return f"| {r.case} | failed: {r.error[:80]} | | | | | | |"
    s = r.sender
    rss = " / ".join(_num(v, "{:.0f}") for v in r.peak_rss_mib.values())
    strict = str(s.get("strict_violations", "-")) if r.strict else "-"
    sha = "match" if r.intact else f"MISMATCH ({r.received} of {r.size} bytes)"
    return (
        f"| {r.case} | {_num(r.seconds)} | {sha} "
        f"| {s.get('tx_p2p_packets', '-')} / {s.get('tx_ws_packets', '-')} "
        f"| {s.get('ws_fallbacks', '-')} | {s.get('flow_waits', '-')} | {strict} | {rss} |"
    )


def _shared_row(r: SharedWsResult) -> str:
    if r.error:
        return f"| failed: {r.error[:80]} | | | | | |"
    ratio = _num(r.ratio * 100 if r.ratio is not None else None, "{:.0f} %")
    if r.stalled_intact:
        stalled = "intact (sha256)"
    else:
        stalled = "NOT intact" if r.stalled_intact is False else "-"
    if r.stalled_held is False:
        stalled += ", its sender was not held back"
    clients = sum(v for k, v in r.disconnects.items() if k != "relay")
    return (
        f"| {_num(r.solo)} | {_num(r.stalled)} | {ratio} | {stalled} | {clients} "
        f"| {r.disconnects.get('relay', '-')} |"
    )


def flow_sections(flow: FlowResults, fcfg: FlowConfig) -> list[str]:
    """The slow-reader table and the shared-WebSocket table (each only when it ran)."""
    lines: list[str] = []
    if flow.slow:
        lines += [
            "",
            "#### Slow readers",
            "",
            "P2P libdatachannel, flow control on: alice's app writes "
            f"{fcfg.slow_size // 2**20} MiB as fast as it can while bob's app reads as below; "
            "fresh clients for each case. Time from the first byte written to the last byte "
            "read; frames, fallbacks, flow waits of the sender (alice); peak RSS is each "
            f"client's VmHWM. Up to {GRACE} frames may go over the WebSocket before the data "
            "channel opens.",
            "",
            SLOW_HEADER,
            *(_slow_row(r) for r in flow.slow),
        ]
    if flow.shared is not None:
        r = flow.shared
        lines += [
            "",
            "#### Two sessions on one WebSocket, one app stalled",
            "",
            "WebRTC off, flow control on, two tunnels between the same two clients. Tunnel 2 "
            f"streams {r.size // 2**20} MiB alone, then back to back while bob's app on "
            f"tunnel 1 reads nothing for {r.stall_s:.0f} s as alice's app writes "
            f"{r.size // 2**20} MiB into it, then alone again once tunnel 1 is read to the end "
            f"and checked. Medians: solo of {len(r.solo_mb_s)} streams (half before, half "
            f"after the stall, one unrecorded stream first), during the stall of the "
            f"{len(r.stalled_mb_s)} that ended within it. Reconnects and disconnects are "
            "counted from the client and relay logs, from the first solo stream on.",
            "",
            SHARED_HEADER,
            _shared_row(r),
        ]
    return lines


def markdown(
    results: Sequence[PathResult],
    goals: Sequence[Goal],
    machine: dict[str, Any],
    cfg: BenchConfig,
    *,
    quick: bool,
    wan_note: str | None,
    chart: str | None,
    flow: FlowResults | None = None,
    flow_cfg: FlowConfig | None = None,
    sections: Sequence[str] = (),
) -> str:
    fcfg = flow_cfg or (FlowConfig.quick() if quick else FlowConfig())
    v = machine["versions"]
    lines = [
        f"### Benchmark ({'quick run' if quick else 'full run'}, {machine['date']})",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}, "
        f"Python {machine['python']}; hotlink {v['hotlink']}, aiolibdatachannel "
        f"{v['aiolibdatachannel']}, aiortc {v['aiortc']}.",
        "",
        f"Loopback, one machine: {cfg.size // 2**20} MiB one way through the TCP proxies, "
        f"{cfg.rounds} ping-pong rounds per message size; host candidates only (no STUN/TURN). "
        "The raw rows are the same measurements without hotlink (a direct TCP connection; "
        "two data-channel peers in one process, where 'channel open' is their connect time); "
        "'TCP through two Python forwarders' runs the app ends through two asyncio processes "
        "that only copy bytes, the shape of hotlink's P2P path without WebRTC or framing.",
    ]
    loopback = [r for r in results if r.group == "loopback"]
    if loopback:
        lines += ["", HEADER, *(_row(r) for r in loopback)]
    paired = [r for r in results if r.throughput_samples]
    if paired:
        lines += [
            "",
            "Rows 'flow control off' run both clients with SYFTBOX_HOTLINK_FLOW_CONTROL=0 "
            "(no credit granted or followed, as reference clients); rows 'end-to-end "
            "encryption off' with SYFTBOX_HOTLINK_E2E=0 (frames go unsealed). Each of them and "
            "its default twin ran side by side (one stack each, up at once) with their streams "
            f"interleaved: their throughput is the median of "
            f"{len(paired[0].throughput_samples)} streams (every stream in the JSON); the "
            "flow-control and encryption goals compare the fastest stream of each row, since "
            "noise from the rest of the machine only ever slows a stream down.",
        ]
    wan = [r for r in results if r.group == "wan"]
    lines += ["", "WAN shape (network namespaces: alice-server and bob-server 40 ms RTT, "
              "alice-bob 10 ms RTT, 100 Mbit/s links): "
              f"{cfg.wan_size // 2**20} MiB one way, {cfg.wan_rounds} rounds."]  # fmt: skip
    if wan:
        lines += ["", HEADER, *(_row(r) for r in wan)]
    if wan_note:
        lines += ["", f"_{wan_note}_"]
    if flow is not None:
        lines += flow_sections(flow, fcfg)
    for section in sections:
        lines += ["", section.rstrip("\n")]
    lines += ["", "| Goal | Target | Measured | Verdict |", "|---|---|---|---|"]
    lines += [f"| {g.name} | {g.target} | {g.measured} | {g.verdict} |" for g in goals]
    if chart:
        lines += ["", f"![benchmark chart]({chart})"]
    return "\n".join(lines) + "\n"
