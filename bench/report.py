"""The benchmark's outputs: the machine it ran on, and the markdown table for the README."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

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


def markdown(
    results: Sequence[PathResult],
    goals: Sequence[Goal],
    machine: dict[str, Any],
    cfg: BenchConfig,
    *,
    quick: bool,
    wan_note: str | None,
    chart: str | None,
) -> str:
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
        "two data-channel peers in one process, where 'channel open' is their connect time).",
        "",
        HEADER,
        *(_row(r) for r in results if r.group == "loopback"),
    ]
    wan = [r for r in results if r.group == "wan"]
    lines += ["", "WAN shape (network namespaces: alice-server and bob-server 40 ms RTT, "
              "alice-bob 10 ms RTT, 100 Mbit/s links): "
              f"{cfg.wan_size // 2**20} MiB one way, {cfg.wan_rounds} rounds."]  # fmt: skip
    if wan:
        lines += ["", HEADER, *(_row(r) for r in wan)]
    if wan_note:
        lines += ["", f"_{wan_note}_"]
    lines += ["", "| Goal | Target | Measured | Verdict |", "|---|---|---|---|"]
    lines += [f"| {g.name} | {g.target} | {g.measured} | {g.verdict} |" for g in goals]
    if chart:
        lines += ["", f"![benchmark chart]({chart})"]
    return "\n".join(lines) + "\n"
