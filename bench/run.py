"""The hotlink benchmark (``make bench`` / ``python -m bench.run [--quick]``).

Side by side, on loopback and with the same payloads: a raw TCP connection (the floor),
hotlink's WebSocket relay path and P2P with libdatachannel (each with flow control on and
off, bench/flow.py), P2P with aiortc, and each backend's raw data channel. Then flow control
at work: slow readers on P2P, and two sessions on one WebSocket while one app stalls. Then,
as root, a WAN shape in network namespaces: P2P against the WebSocket relay. Then the relay
against a bare WebSocket forwarder and at scale (bench/relay_bench.py), the relay as a cluster
of replicas sharing Redis, users on one replica against users spread over three
(bench/cluster_bench.py; needs redis-server), ten tunnels at once
(bench/many_tunnels.py) and, as root, the WAN matrix: P2P against TCP CUBIC and BBR on the
same namespace path (bench/wan_matrix.py). Last, the idle CPU of a client on a 100,000-file
tree and its reaction to a new marker (bench/idle_cpu.py; leave it out with ``--only``). Writes
``bench/results/<timestamp>.json``, ``<timestamp>.png`` and ``latest.md`` (the table for the
README), and prints the table.

Never run from tests: these are measurements, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from hotlink.lab.stack import stop_on_signals

from .chart import PALETTE, Bar, Panel, draw
from .cluster_bench import markdown as cluster_markdown
from .cluster_bench import results_from_json as cluster_results
from .flow import E2E_OFF, FLOW_OFF, FlowConfig, FlowResults, paired_paths, run_flow
from .goals import AIORTC_STOCK, Goal, evaluate, many_tunnels_goal, relay_goals
from .idle_cpu import RESCAN_INTERVAL, IdleCpuResult
from .idle_cpu import markdown as idle_markdown
from .idle_cpu import measure as measure_idle_cpu
from .many_tunnels import markdown as many_tunnels_markdown
from .many_tunnels import measure as measure_many_tunnels
from .paths import (
    BenchConfig,
    PathResult,
    hotlink_path,
    raw_datachannel,
    tcp_floor,
)
from .progress import say
from .relay_bench import markdown as relay_markdown
from .relay_bench import results_from_json as relay_results
from .report import machine_info, markdown
from .tcp_chain import tcp_chain
from .wan_matrix import for_this_machine, matrix_goals, run_matrix
from .wan_matrix import markdown as matrix_markdown

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
ALL_PATHS = (
    "tcp",
    "tcp-chain",
    "ws",
    "p2p-libdatachannel",
    "p2p-libdatachannel-mtu",
    "p2p-aiortc",
    "p2p-aiortc-stock",
    "raw-libdatachannel",
    "raw-aiortc",
)
FLOW_STEPS = ("slow-reader", "shared-ws")
# The twins of the default rows on the main paths: what flow control and sealing cost.
TWINS = (FLOW_OFF, E2E_OFF)
EXTRA_STEPS = ("relay", "cluster", "many-tunnels", "wan-matrix")
ALL_STEPS = (*ALL_PATHS, *FLOW_STEPS, *EXTRA_STEPS, "idle-cpu")


def _summary(r: PathResult) -> str:
    if r.error:
        return f"FAILED ({r.error})"
    parts = []
    if r.throughput_mb_s is not None:
        n = len(r.throughput_samples)
        median = f" (median of {n})" if n > 1 else ""
        parts.append(f"{r.throughput_mb_s:.1f} MB/s{median}")
    for size, s in r.rtt.items():
        parts.append(f"rtt{size} p50 {s['p50_ms']:.3f} ms")
    if r.transport and r.kind in ("ws", "p2p"):
        parts.append("path " + ",".join(sorted(set(r.transport.values()))))
    return ", ".join(parts) + f" [{r.seconds:.0f} s]"


async def _one(row: Awaitable[PathResult]) -> list[PathResult]:
    return [await row]


async def run_loopback(cfg: BenchConfig, fcfg: FlowConfig, only: Sequence[str]) -> list[PathResult]:
    steps: dict[str, Callable[[], Awaitable[list[PathResult]]]] = {
        "tcp": lambda: _one(tcp_floor(cfg)),
        # The same app ends through two forwarder processes: the round trip's floor for any
        # path through two Python daemons (hotlink P2P has that shape).
        "tcp-chain": lambda: _one(tcp_chain(cfg)),
        # Flow control on and off, interleaved (bench/flow.py): two rows each.
        # ... and end-to-end encryption on and off: three interleaved rows each.
        "ws": lambda: paired_paths(
            cfg, "hotlink WS relay", repeats=fcfg.repeats, ws_only=True, twins=TWINS
        ),
        "p2p-libdatachannel": lambda: paired_paths(
            cfg,
            "hotlink P2P libdatachannel",
            repeats=fcfg.repeats,
            backend="libdatachannel",
            twins=TWINS,
        ),
        "p2p-aiortc": lambda: _one(hotlink_path(cfg, "hotlink P2P aiortc", backend="aiortc")),
        "p2p-aiortc-stock": lambda: _one(
            hotlink_path(
                cfg,
                "hotlink P2P aiortc, as shipped",
                backend="aiortc",
                variant=AIORTC_STOCK,
                extra_env={"SYFTBOX_HOTLINK_WEBRTC_TUNING": "0"},
            )
        ),
        # The default row's peers share this host's network stack, so their channel uses
        # 4096-byte SCTP packets (protocol/locality.py); pinned to the library's 1280, the
        # same tunnel shows what a path between two hosts costs per packet.
        "p2p-libdatachannel-mtu": lambda: _one(
            hotlink_path(
                cfg,
                "hotlink P2P libdatachannel, MTU pinned to 1280 (as between hosts)",
                backend="libdatachannel",
                variant="mtu 1280",
                extra_env={"SYFTBOX_HOTLINK_WEBRTC_MTU": "1280"},
            )
        ),
        "raw-libdatachannel": lambda: _one(raw_datachannel(cfg, "libdatachannel")),
        "raw-aiortc": lambda: _one(raw_datachannel(cfg, "aiortc")),
    }
    results = []
    for key in ALL_PATHS:
        if key not in only:
            continue
        say(f"bench: {key} ...")
        for result in await steps[key]():
            say(f"bench: {result.name}: {_summary(result)}")
            results.append(result)
    return results


async def run_wan(cfg: BenchConfig) -> tuple[list[PathResult], str | None]:
    from .wan import IPS, WanShape, unsupported_reason

    reason = unsupported_reason()
    if reason is not None:
        return [], f"WAN shape skipped: {reason}."
    from hotlink.demo.tunnel import ALICE, BOB

    results = []
    say("bench: building the WAN shape (namespaces)...")
    with WanShape() as wan:
        pairs = (("alice", "server"), ("bob", "server"), ("alice", "bob"))
        shown = ", ".join(f"{a}-{b} {wan.tcp_rtt_ms(a, b):.1f} ms" for a, b in pairs)
        note = f"WAN links: {wan.method}; TCP handshake RTT {shown}."
        say(f"bench: {note}")
        netns = {"server": wan.ns("server"), ALICE: wan.ns("alice"), BOB: wan.ns("bob")}
        connect = {ALICE: wan.connector("alice"), BOB: wan.connector("bob")}
        wan_cfg = replace(cfg, rtt_sizes=(64,))
        for name, ws_only in (("WAN hotlink P2P (auto)", False), ("WAN hotlink WS relay", True)):
            say(f"bench: {name} ...")
            result = await hotlink_path(
                wan_cfg,
                name,
                ws_only=ws_only,
                group="wan",
                size=cfg.wan_size,
                rounds=cfg.wan_rounds,
                server_host=IPS["server"],
                netns=netns,
                connect=connect,
            )
            say(f"bench: {name}: {_summary(result)}")
            results.append(result)
    return results, note


@dataclass
class Section:
    """A part of the run with its own table: its markdown, its JSON and its goals."""

    key: str
    markdown: str
    data: Any
    goals: list[Goal] = field(default_factory=list)


async def _child_bench(module: str, quick: bool) -> tuple[int, dict[str, Any] | None]:
    """Run ``bench.<module>`` in a child process (it pins itself and its servers to cores
    and raises its descriptor limit, which must not leak into the rest of the run); its
    exit code and the JSON document it wrote, if any."""
    with tempfile.TemporaryDirectory(prefix="hotlink-bench-") as tmp:
        out = Path(tmp) / f"{module}.json"
        argv = [sys.executable, "-m", f"bench.{module}", "--json", str(out)]
        proc = await asyncio.create_subprocess_exec(
            *argv, *(["--quick"] if quick else []), cwd=REPO, stdout=asyncio.subprocess.DEVNULL
        )
        try:
            code = await proc.wait()
        except BaseException:  # interrupted: its SIGTERM handler stops its servers
            proc.terminate()
            await asyncio.shield(proc.wait())
            raise
        return code, (json.loads(out.read_text()) if out.exists() else None)


async def run_relay(quick: bool) -> Section:
    code, doc = await _child_bench("relay_bench", quick)
    if code != 0 or doc is None:
        error = f"relay benchmark exited with {code}"
        return Section(
            "relay", f"_Relay benchmark failed: {error}_\n", None, relay_goals(None, error)
        )
    text = "#### The relay against a bare forwarder, and at scale\n\n" + relay_markdown(
        relay_results(doc)
    )
    return Section("relay", text + "\n", doc, relay_goals(doc))


async def run_cluster(quick: bool) -> Section:
    code, doc = await _child_bench("cluster_bench", quick)
    if doc is None:
        return Section("cluster", f"_Cluster benchmark failed: exited with {code}_\n", None)
    text = "#### Users on one relay replica against users spread over three\n\n" + (
        cluster_markdown(cluster_results(doc))
    )
    return Section("cluster", text + "\n", doc)


async def run_many_tunnels(quick: bool) -> Section:
    result = await measure_many_tunnels(size=(16 if quick else 128) * 2**20)
    return Section(
        "many-tunnels", many_tunnels_markdown(result), result.to_json(), many_tunnels_goal(result)
    )


async def run_wan_matrix(quick: bool) -> Section:
    result = await run_matrix(for_this_machine(quick))
    return Section(
        "wan-matrix",
        matrix_markdown(result, with_goals=False),
        result.to_json(),
        matrix_goals(result),
    )


async def run_sections(quick: bool, only: Sequence[str]) -> list[Section]:
    steps = {
        "relay": run_relay,
        "cluster": run_cluster,
        "many-tunnels": run_many_tunnels,
        "wan-matrix": run_wan_matrix,
    }
    sections = []
    for key in EXTRA_STEPS:
        if key in only:
            say(f"bench: {key} ...")
            sections.append(await steps[key](quick))
            for goal in sections[-1].goals:
                say(f"bench: {goal.name}: {goal.measured} ({goal.verdict})")
    return sections


def _chart(results: Sequence[PathResult], path: Path, title: str) -> Path:
    def bars(rows: Sequence[PathResult], value: str) -> list[Bar]:
        out = []
        for r in rows:
            if value == "tp":
                v = r.throughput_mb_s
                text = f"{v:.1f} MB/s" if v is not None else "failed"
            else:
                v = r.rtt_p50(64)
                text = f"{v:.3f} ms" if v is not None else "failed"
            label, kind = r.name, r.kind
            if r.kind == "p2p" and not r.error and not r.is_p2p:
                label, kind = f"{r.name} (ran over ws)", "ws"
            out.append(Bar(label, None if r.error else v, text, PALETTE.get(kind, (90, 90, 90))))
        return out

    loop = [r for r in results if r.group == "loopback"]
    wan = [r for r in results if r.group == "wan"]
    panels = [
        Panel("Loopback throughput, one way (MB/s, longer is better)", bars(loop, "tp")),
        Panel("Loopback round trip, 64 B, p50 (ms, shorter is better)", bars(loop, "rtt")),
    ]
    if wan:
        panels += [
            Panel("WAN shape throughput (MB/s)", bars(wan, "tp")),
            Panel("WAN shape round trip, 64 B, p50 (ms)", bars(wan, "rtt")),
        ]
    return draw(panels, title, path)


async def collect(
    args: argparse.Namespace, cfg: BenchConfig, fcfg: FlowConfig
) -> tuple[list[PathResult], FlowResults, str | None]:
    only = args.only.split(",") if args.only else list(ALL_STEPS)
    results = await run_loopback(cfg, fcfg, only)
    flow = await run_flow(fcfg, only)
    if args.no_wan:
        return results, flow, "WAN shape skipped (--no-wan)."
    if args.only and "wan" not in only:
        return results, flow, "WAN shape skipped (--only)."
    wan_results, wan_note = await run_wan(cfg)
    return results + wan_results, flow, wan_note


def write_outputs(
    args: argparse.Namespace,
    cfg: BenchConfig,
    fcfg: FlowConfig,
    results: list[PathResult],
    flow: FlowResults,
    wan_note: str | None,
    seconds: float,
    idle: IdleCpuResult | None = None,
    sections: Sequence[Section] = (),
) -> None:
    goals = evaluate(results, flow) + [g for s in sections for g in s.goals]
    machine = machine_info()
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    png = _chart(results, out_dir / f"{stamp}.png", "hotlink benchmark")
    table = markdown(
        results,
        goals,
        machine,
        cfg,
        quick=args.quick,
        wan_note=wan_note,
        chart=png.name,
        flow=flow,
        flow_cfg=fcfg,
        sections=[s.markdown for s in sections],
    )
    doc = {
        "machine": machine,
        "config": {**asdict(cfg), "flow": asdict(fcfg)},
        "quick": args.quick,
        "seconds": seconds,
        "results": [r.to_json() for r in results],
        "flow": flow.to_json(),
        "goals": [g.to_json() for g in goals],
        "wan_note": wan_note,
        "chart": png.name,
        "idle_cpu": idle.to_json() if idle is not None else None,
        "sections": {s.key: s.data for s in sections},
    }
    if idle is not None:
        table += idle_markdown(idle)
    (out_dir / f"{stamp}.json").write_text(json.dumps(doc, indent=2))
    (out_dir / "latest.md").write_text(table)
    print(table)
    say(f"bench: wrote {out_dir / (stamp + '.json')}, {png}, {out_dir / 'latest.md'}")
    say(f"bench: finished in {seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 200 rounds (~2 min)")
    parser.add_argument("--size", help="payload one way, e.g. 64MiB (default 64MiB, quick 8MiB)")
    parser.add_argument("--rounds", type=int, help="ping-pong rounds per size (default 2000)")
    parser.add_argument(
        "--no-wan", action="store_true", help="skip the namespace WAN shape and matrix"
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of: {','.join(ALL_STEPS)},wan (default: all)",
    )
    parser.add_argument(
        "--flow-repeats",
        type=int,
        help="streams per row of each flow-control on/off pair (default 7, quick 3)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    stop_on_signals()
    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    fcfg = FlowConfig.quick() if args.quick else FlowConfig()
    if args.flow_repeats:
        fcfg = replace(fcfg, repeats=max(1, args.flow_repeats))
    if args.size:
        from hotlink.demo.payload import parse_size

        cfg = replace(cfg, size=parse_size(args.size))
    if args.rounds:
        cfg = replace(cfg, rounds=args.rounds)
    started = time.monotonic()
    results, flow, wan_note = asyncio.run(collect(args, cfg, fcfg))
    only = args.only.split(",") if args.only else list(ALL_STEPS)
    if args.no_wan:
        only = [key for key in only if key != "wan-matrix"]
    sections = asyncio.run(run_sections(args.quick, only))
    idle = None
    if not args.only or "idle-cpu" in args.only.split(","):
        say("bench: idle-cpu ...")
        idle = measure_idle_cpu(
            files=20_000 if args.quick else 100_000, idle=20.0 if args.quick else RESCAN_INTERVAL
        )
    elapsed = time.monotonic() - started
    write_outputs(args, cfg, fcfg, results, flow, wan_note, elapsed, idle, sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
