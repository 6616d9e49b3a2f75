"""The demo's printed report (rich tables)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from ..lab.stack import DevStack
from ..tunnels import Channel
from .payload import format_size
from .tunnel import DIRECTIONS, TELEMETRY_KEYS

if TYPE_CHECKING:
    from .runner import MpcReport, TunnelReport

PATH_NAMES = {
    "ws": "WebSocket relay through the server",
    "p2p-host": "peer-to-peer data channel, direct (host candidates)",
    "p2p-srflx": "peer-to-peer data channel through NAT (server-reflexive)",
    "p2p-relay": "peer-to-peer data channel via TURN relay",
}


def describe_path(kind: str) -> str:
    return f"{kind} ({PATH_NAMES[kind]})" if kind in PATH_NAMES else kind


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def print_tunnel_report(console: Console, report: TunnelReport) -> None:
    setup, stream, rtt, opts = report.setup, report.stream, report.rtt, report.options
    table = Table(title="hotlink demo report", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for direction in DIRECTIONS:
        table.add_row(f"path {direction}", describe_path(setup.transports.get(direction, "?")))
    for direction in DIRECTIONS:
        state = setup.sealing.get(direction, "?")
        shown = "[green]sealed[/] (AES-256-GCM)" if state == "sealed" else f"[yellow]{state}[/]"
        table.add_row(f"end-to-end {direction}", shown)
    mode = "WebSocket only (--ws-only)" if opts.ws_only else f"WebRTC backend {opts.backend}"
    table.add_row("mode", mode)
    table.add_row("marker → proxies listening", _ms(setup.to_proxies_s))
    channel_open = setup.to_channel_open_s()
    table.add_row(
        "marker → data channel open",
        _ms(channel_open) if channel_open is not None else "no data channel opened",
    )
    table.add_row("marker → first byte delivered", _ms(setup.to_first_byte_s))
    verdict = "[green]intact[/]" if stream.ok else f"[red]{stream.problem()}[/]"
    table.add_row(
        "payload",
        f"{format_size(stream.received)} of {format_size(stream.size)}, {verdict}",
    )
    table.add_row(
        "throughput",
        f"{stream.mb_per_s:.1f} MB/s ({stream.received / stream.seconds / 2**20:.1f} MiB/s, "
        f"{stream.seconds:.2f} s)"
        if stream.seconds
        else "n/a",
    )
    if rtt.rounds:
        table.add_row(
            f"round trip ({rtt.rounds} x {rtt.size} B)",
            f"p50 {rtt.p50_ms:.3f} ms · p90 {rtt.p90_ms:.3f} ms · p99 {rtt.p99_ms:.3f} ms",
        )
    table.add_row("clean EOF both ways", "yes" if report.clean_close else "no")
    console.print(table)
    if report.counters:
        counters = Table(title="telemetry counters", title_justify="left")
        counters.add_column("counter")
        emails = list(report.counters)
        for email in emails:
            counters.add_column(email.split("@", 1)[0], justify="right")
        for key in TELEMETRY_KEYS:
            counters.add_row(key, *(str(report.counters[e].get(key, 0)) for e in emails))
        console.print(counters)


def print_keep_instructions(console: Console, stack: DevStack, channel: Channel) -> None:
    a, b = channel.parties
    lines = [
        "[bold]The processes keep running.[/] Connect your own app to the tunnel:",
        f"  {a} side:  127.0.0.1:{channel.port(a)}   (e.g. nc 127.0.0.1 {channel.port(a)})",
        f"  {b} side:  127.0.0.1:{channel.port(b)}   (e.g. nc 127.0.0.1 {channel.port(b)})",
        "Bytes written on one side come out on the other; a new connection on a side",
        "replaces the previous one there.",
        f"relay server: {stack.server.url if stack.server else '?'}",
        f"data dir and logs: {stack.root}  (state: {stack.root / 'devstack.json'})",
        "stop everything:  kill " + " ".join(str(p.pid) for p in stack.processes()),
    ]
    for line in lines:
        console.print(line)


def print_mpc_report(console: Console, report: MpcReport, emails: Sequence[str]) -> None:
    table = Table(title="3-party additive secret sharing", title_justify="left")
    table.add_column("party")
    table.add_column("email")
    table.add_column("sum")
    table.add_column("frames sent")
    for party, outcome in sorted(report.results.items()):
        if isinstance(outcome, BaseException):
            value = f"[red]error: {type(outcome).__name__}: {outcome}[/]"
        elif outcome == report.expected:
            value = f"[green]{outcome}[/]"
        else:
            value = f"[red]{outcome}[/]"
        table.add_row(
            str(party), emails[party], value, report.transports.get(f"party {party}") or "?"
        )
    console.print(table)
    for party, outcome in sorted(report.results.items()):
        # One plain line per party, easy to grep: "party 0 result [3, 3, 4]".
        shown = outcome if not isinstance(outcome, BaseException) else f"error {outcome!r}"
        console.print(f"party {party} result {shown}", markup=False, highlight=False)
    verdict = "[bold green]OK[/]" if report.ok else "[bold red]FAILED[/]"
    console.print(
        f"{verdict}: expected {report.expected} at every party "
        f"(channels {', '.join(c.channel_dir.rsplit('/', 1)[1] for c in report.channels)}, "
        f"{report.seconds:.2f} s)"
    )
