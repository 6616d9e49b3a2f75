"""``hotlink demo``: the tunnel scenario (alice -> bob through real daemons) and ``mpc3``.

Exit codes: 0 when every byte arrived as sent (tunnel) or every party computed the expected
sum (mpc3); 1 when any byte or result differs; 2 when the stack could not be set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..lab.processes import StackError
from ..lab.stack import DevStack, stop_on_signals
from ..tunnels import Channel
from .measure import RttStats, StreamResult, ping_pong, stream_one_way
from .mpc import run_party
from .payload import format_size
from .report import print_keep_instructions, print_mpc_report, print_tunnel_report
from .tunnel import (
    TunnelSetup,
    client_env,
    close_tunnel,
    open_tunnel,
    refresh_transports,
    settle_telemetry,
    start_pair,
    warm_up,
)

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_SETUP = 2

MPC_EMAILS = ("alice@example.com", "bob@example.com", "carol@example.com")
MPC_INPUTS = ([1, 1, 1], [1, 1, 2], [1, 1, 1])
MPC_FLOW = "shared/flows/mpc-demo"


@dataclass
class DemoOptions:
    size: int = 64 * 1024 * 1024
    backend: str = "auto"
    ws_only: bool = False
    keep: bool = False
    rtt_rounds: int = 200
    rtt_size: int = 64
    corrupt_offset: int | None = None  # debug: flip one byte the sender writes
    root: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        return client_env(self.backend, self.ws_only)


@dataclass
class TunnelReport:
    options: DemoOptions
    setup: TunnelSetup
    stream: StreamResult
    rtt: RttStats
    clean_close: bool
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.stream.ok and self.clean_close


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]alice → bob[/]"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


async def _tunnel(stack: DevStack, opts: DemoOptions, console: Console) -> TunnelReport:
    with console.status("starting the relay server and two clients (alice, bob)..."):
        await stack.astart_server()
        alice, bob = await start_pair(stack, env=opts.env)
    console.print(
        f"relay {stack.server.url if stack.server else '?'} · alice pid {alice.pid} · "
        f"bob pid {bob.pid} · data dir {stack.root}"
    )
    with console.status("writing markers + ACLs, opening the tunnel..."):
        setup = await open_tunnel(stack, alice, bob)
    with console.status("waiting for the path to settle (data channel or WebSocket relay)..."):
        await warm_up(setup, want_p2p=not opts.ws_only)
    with _progress(console) as progress:
        task = progress.add_task("stream", total=opts.size)
        stream = await stream_one_way(
            setup.a[1],
            setup.b[0],
            opts.size,
            on_progress=lambda n: progress.advance(task, n),
            corrupt_offset=opts.corrupt_offset,
        )
    rtt = RttStats.of([], opts.rtt_size)
    clean = False
    if stream.ok:
        with console.status(f"{opts.rtt_rounds} round trips of {opts.rtt_size} B..."):
            samples = await ping_pong(setup.a, setup.b, size=opts.rtt_size, rounds=opts.rtt_rounds)
        rtt = RttStats.of(samples, opts.rtt_size)
        refresh_transports(setup)
        if not opts.keep:
            clean = await close_tunnel(setup)
        else:
            clean = True
    report = TunnelReport(opts, setup, stream, rtt, clean)
    if stream.ok:
        # Bytes each way through the tunnel: hello, warm-up pings, stream, timed pings.
        a_to_b = stream.size + opts.rtt_size * opts.rtt_rounds
        report.counters = await settle_telemetry(setup, a_to_b, opts.rtt_size * opts.rtt_rounds)
    return report


def run_tunnel_demo(opts: DemoOptions, console: Console | None = None) -> int:
    console = console or Console()
    stop_on_signals()
    stack = DevStack(opts.root, detached=opts.keep)
    report: TunnelReport | None = None
    try:
        try:
            report = asyncio.run(_tunnel(stack, opts, console))
        except (StackError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            console.print(f"[red]demo failed to set up or run the tunnel:[/] {exc}")
            _print_logs(stack, console)
            return EXIT_SETUP
        print_tunnel_report(console, report)
        if opts.keep and report.ok:
            print_keep_instructions(console, stack, report.setup.channel)
        if not report.ok:
            console.print(f"[bold red]FAILED:[/] {report.stream.problem() or 'unclean close'}")
            return EXIT_MISMATCH
        console.print(f"[bold green]OK[/]: {format_size(opts.size)} arrived intact, byte for byte.")
        return EXIT_OK
    finally:
        if not (opts.keep and report is not None and report.ok):
            stack.detached = False
            stack.keep_root = opts.keep
            stack.stop()


def _print_logs(stack: DevStack, console: Console) -> None:
    for proc in stack.processes():
        console.print(f"[dim]--- {proc.name} ({proc.log_path}), last lines:[/]")
        console.print("\n".join(proc.log_text().splitlines()[-15:]), markup=False, highlight=False)


# ---------------------------------------------------------------- the 3-party scenario


@dataclass
class MpcReport:
    results: dict[int, list[int] | BaseException]
    expected: list[int]
    channels: list[Channel]
    transports: dict[str, str | None]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r == self.expected for r in self.results.values())


async def _mpc(stack: DevStack, opts: DemoOptions, console: Console) -> MpcReport:
    with console.status("starting the relay server and three clients..."):
        await stack.astart_server()
        clients = [stack.spawn_client(email, env=opts.env) for email in MPC_EMAILS]
        await asyncio.gather(*(c.await_ready() for c in clients))
    pairs = [(0, 1), (0, 2), (1, 2)]
    channels = {
        (i, j): stack.channel(MPC_EMAILS[i], MPC_EMAILS[j], from_id=i, to_id=j, flow=MPC_FLOW)
        for i, j in pairs
    }
    with console.status("writing markers + ACLs for channels 0_to_1, 0_to_2, 1_to_2..."):
        for channel in channels.values():
            stack.write_channel(channel)
        for channel in channels.values():
            await stack.await_channel(channel)

    def peer_ports(party: int) -> dict[int, int]:
        ports = {}
        for (i, j), channel in channels.items():
            if party in (i, j):
                ports[j if party == i else i] = channel.port(MPC_EMAILS[party])
        return ports

    started = time.perf_counter()
    with console.status("running additive secret sharing over the tunnels..."):
        outcomes = await asyncio.gather(
            *(
                asyncio.wait_for(run_party(p, MPC_INPUTS[p], peer_ports(p)), 60)
                for p in range(len(MPC_EMAILS))
            ),
            return_exceptions=True,
        )
    seconds = time.perf_counter() - started
    expected = [sum(col) for col in zip(*MPC_INPUTS, strict=True)]
    transports: dict[str, str | None] = {}
    for p, client in enumerate(clients):
        # Sessions are gone by now; the counters say which path their frames took.
        with contextlib.suppress(StackError):
            await client.await_telemetry(lambda d: d.get("tx_packets", 0) >= 2, 5.0)
        doc = client.telemetry() or {}
        transports[f"party {p}"] = (
            f"p2p {doc.get('tx_p2p_packets', 0)} / ws {doc.get('tx_ws_packets', 0)} frames"
        )
    return MpcReport(
        {p: r for p, r in enumerate(outcomes)},
        expected,
        list(channels.values()),
        transports,
        seconds,
    )


def run_mpc_demo(opts: DemoOptions, console: Console | None = None) -> int:
    console = console or Console()
    stop_on_signals()
    stack = DevStack(opts.root, detached=opts.keep)
    try:
        try:
            report = asyncio.run(_mpc(stack, opts, console))
        except (StackError, OSError, TimeoutError) as exc:
            console.print(f"[red]demo failed to set up the 3 parties:[/] {exc}")
            _print_logs(stack, console)
            return EXIT_SETUP
        print_mpc_report(console, report, MPC_EMAILS)
        if opts.keep:
            console.print(f"processes left running; state in {stack.root / 'devstack.json'}")
            pids = " ".join(str(p.pid) for p in stack.processes())
            console.print(f"stop them with: kill {pids}")
        return EXIT_OK if report.ok else EXIT_MISMATCH
    finally:
        if not opts.keep:
            stack.stop()


def main_guarded(fn: Any, opts: DemoOptions) -> int:
    """Run a demo; Ctrl-C stops every process we started and exits 130."""
    try:
        return int(fn(opts))
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            Console(stderr=True).print("[yellow]interrupted: stopped every demo process[/]")
        return 130
