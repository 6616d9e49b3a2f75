"""The WAN benchmark matrix: hotlink P2P against plain TCP on the same impaired path.

``python -m bench.wan_matrix [--quick] [--json]`` (root; Linux network namespaces), or
:func:`run_matrix` + :func:`matrix_goals` + :func:`markdown` from the bench harness.

Each cell is a shape of :class:`bench.wan.WanShape`: alice and bob ``rtt_ms`` apart (half the
delay on each one's egress), ``loss_pct`` of the packets lost in each direction, each side
sending at most ``rate``; the relay sits on the bridge with no delay (only the session's
start crosses it). In every cell, alice's app sends to bob's app over:

* plain TCP between the two namespaces, once with CUBIC and once with BBR (set per socket
  with ``TCP_CONGESTION``): the floor users compare against;
* a hotlink tunnel, P2P, for each WebRTC backend (fresh relay and clients per cell; host
  candidates on the bridge, ``SYFTBOX_HOTLINK_ICE_SERVERS=none``).

What is measured, the same way on every path:

* round trip: ``rtt_rounds`` ping-pongs of 64 B on the idle connection (after the data
  channel is open, for hotlink), p50;
* throughput: steady state. The sender writes without pause; after ``warmup_s`` (slow start,
  the data channel's first window) the bytes that reach the receiving app during the next
  ``window_s`` are counted. Time-bounded, so a path that crawls (CUBIC at 80 ms with 1 %
  loss) costs the same time as a fast one.

Goals (issue 13): P2P throughput >= 80 % of TCP's on every lossless shape up to 40 ms,
>= 50 % at 80 ms or with 1 % loss; P2P round trip p50 <= TCP's + 1 ms. Each is judged
against CUBIC and BBR separately.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hotlink.demo.measure import Link, ping_pong
from hotlink.demo.tunnel import (
    ALICE,
    BOB,
    client_env,
    open_tunnel,
    refresh_transports,
    start_pair,
    warm_up,
)
from hotlink.lab.netns import socket_in_netns
from hotlink.lab.processes import ClientProc
from hotlink.lab.stack import DevStack, stop_on_signals
from hotlink.lab.wan_link import netem_available

from .goals import Goal
from .machine_cpu import busy_share, cpu_times
from .progress import say
from .wan import IPS, WanShape, rate_bits, unsupported_reason

RTTS_MS = (2.0, 20.0, 40.0, 80.0)
LOSSES_PCT = (0.0, 1.0)
SLOW_RATE = "100mbit"
# The fast link: 1 Gbit/s where tc netem shapes it in the kernel; else the fastest rate the
# user-space link (hotlink.lab.wan_link) sustains with delay on a 2-core machine, 1 Gbit/s
# being out of its reach. Each row names its rate.
NETEM_FAST_RATE = "1gbit"
FAST_RATE = "300mbit"
CONGESTION = ("cubic", "bbr")
BACKENDS = ("libdatachannel", "aiortc")
# Issue 13's must-show.
NEAR_RATIO = 0.80  # lossless, up to 40 ms
FAR_RATIO = 0.50  # 80 ms, or with loss
FAR_RTT_MS = 80.0
RTT_EXTRA_MS = 1.0
BLOCK = 256 * 1024
READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class Cell:
    rtt_ms: float
    loss_pct: float
    rate: str  # tc syntax

    @property
    def key(self) -> str:
        return f"{self.rtt_ms:g}ms-{self.loss_pct:g}%-{self.rate}"

    @property
    def rate_mbit(self) -> float:
        return rate_bits(self.rate) / 1e6

    @property
    def label(self) -> str:
        loss = f"{self.loss_pct:g} % loss" if self.loss_pct else "no loss"
        return f"{self.rtt_ms:g} ms, {loss}, {self.rate_mbit:g} Mbit/s"

    @property
    def throughput_goal(self) -> float:
        """The least P2P/TCP throughput ratio issue 13 accepts on this shape."""
        if self.loss_pct > 0 or self.rtt_ms >= FAR_RTT_MS:
            return FAR_RATIO
        return NEAR_RATIO


def all_cells(rates: Sequence[str] = (SLOW_RATE, FAST_RATE)) -> tuple[Cell, ...]:
    return tuple(Cell(r, loss, rate) for rate in rates for loss in LOSSES_PCT for r in RTTS_MS)


@dataclass(frozen=True)
class MatrixConfig:
    cells: tuple[Cell, ...] = field(default_factory=all_cells)
    backends: tuple[str, ...] = BACKENDS
    congestion: tuple[str, ...] = CONGESTION
    warmup_s: float = 2.0
    window_s: float = 5.0
    rtt_rounds: int = 30
    quick: bool = False

    @classmethod
    def full(cls, fast_rate: str = FAST_RATE) -> MatrixConfig:
        return cls(cells=all_cells((SLOW_RATE, fast_rate)))

    @classmethod
    def quick_config(cls, fast_rate: str = FAST_RATE) -> MatrixConfig:
        cells = (
            Cell(2.0, 0.0, SLOW_RATE),
            Cell(40.0, 0.0, SLOW_RATE),
            Cell(80.0, 1.0, SLOW_RATE),
            Cell(2.0, 0.0, fast_rate),
        )
        return cls(cells=cells, warmup_s=1.5, window_s=3.0, rtt_rounds=15, quick=True)


def for_this_machine(quick: bool = False) -> MatrixConfig:
    """The full or quick matrix with the fast link this machine can shape (probes for
    netem in a throw-away namespace when it can build namespaces at all)."""
    fast = FAST_RATE
    if unsupported_reason() is None and netem_available(f"hlb{os.getpid()}-probe"):
        fast = NETEM_FAST_RATE
    return MatrixConfig.quick_config(fast) if quick else MatrixConfig.full(fast)


@dataclass
class FlowResult:
    """One path in one cell: ``tcp-cubic``, ``tcp-bbr``, ``p2p-<backend>``."""

    path: str
    throughput_mbit_s: float | None = None
    window_bytes: int = 0
    window_s: float = 0.0
    rtt_ms: dict[str, float] = field(default_factory=dict)  # p50/p90/p99/mean
    transport: dict[str, str] = field(default_factory=dict)
    congestion: str = ""  # what the kernel reported for the sending socket (TCP)
    # The machine's CPU busy share (all cores, everything on it) during the window, 0..1: a
    # row near 1 is bound by this machine's CPU rather than by the path.
    cpu_busy: float | None = None
    # Seconds spent per phase (set-up, rtt, throughput, stop): where a cell's time goes.
    phases: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def rtt_p50(self) -> float | None:
        return self.rtt_ms.get("p50")

    @property
    def on_p2p(self) -> bool:
        values = self.transport.values()
        return bool(self.transport) and all(v.startswith("p2p") for v in values)

    def usable(self) -> bool:
        """A measured row; a hotlink row counts only if it really ran peer to peer."""
        if self.error or self.throughput_mbit_s is None:
            return False
        return self.on_p2p if self.path.startswith("p2p") else True


@dataclass
class CellResult:
    cell: Cell
    handshake_rtt_ms: float | None = None
    flows: dict[str, FlowResult] = field(default_factory=dict)
    method: str = ""  # how the links were made (tc netem, or the user-space link)
    seconds: float = 0.0
    error: str | None = None

    def ratio(self, backend: str, cc: str) -> float | None:
        """P2P throughput / TCP's (with ``cc``), or None when either is not measured."""
        p2p, tcp = self.flows.get(f"p2p-{backend}"), self.flows.get(f"tcp-{cc}")
        if p2p is None or tcp is None or not p2p.usable() or not tcp.usable():
            return None
        assert p2p.throughput_mbit_s is not None and tcp.throughput_mbit_s is not None
        if tcp.throughput_mbit_s <= 0:
            return None
        return p2p.throughput_mbit_s / tcp.throughput_mbit_s

    def tcp_rtt_p50(self) -> float | None:
        """The best TCP round trip of the cell (the floor is the quickest one)."""
        values = [
            f.rtt_p50
            for k, f in self.flows.items()
            if k.startswith("tcp-") and f.rtt_p50 is not None and not f.error
        ]
        return min(values) if values else None

    def rtt_extra(self, backend: str) -> float | None:
        p2p = self.flows.get(f"p2p-{backend}")
        tcp = self.tcp_rtt_p50()
        if p2p is None or not p2p.on_p2p or p2p.rtt_p50 is None or tcp is None:
            return None
        return p2p.rtt_p50 - tcp

    def verdict(self, backend: str, congestion: Sequence[str]) -> dict[str, bool | None]:
        """Per goal: True met, False not met, None not measured."""
        out: dict[str, bool | None] = {}
        for cc in congestion:
            ratio = self.ratio(backend, cc)
            out[f"throughput_vs_{cc}"] = (
                None if ratio is None else ratio >= self.cell.throughput_goal
            )
        extra = self.rtt_extra(backend)
        out["rtt"] = None if extra is None else extra <= RTT_EXTRA_MS
        return out

    def to_json(self, backends: Sequence[str], congestion: Sequence[str]) -> dict[str, Any]:
        return {
            "cell": {**asdict(self.cell), "key": self.cell.key, "label": self.cell.label},
            "throughput_goal": self.cell.throughput_goal,
            "handshake_rtt_ms": self.handshake_rtt_ms,
            "method": self.method,
            "flows": {k: asdict(f) for k, f in self.flows.items()},
            "ratios": {f"{b}/{cc}": self.ratio(b, cc) for b in backends for cc in congestion},
            "tcp_rtt_p50_ms": self.tcp_rtt_p50(),
            "rtt_extra_ms": {b: self.rtt_extra(b) for b in backends},
            "verdicts": {b: self.verdict(b, congestion) for b in backends},
            "seconds": self.seconds,
            "error": self.error,
        }


@dataclass
class MatrixResult:
    config: MatrixConfig
    cells: list[CellResult] = field(default_factory=list)
    method: str = ""
    seconds: float = 0.0
    skipped: str | None = None  # why nothing ran

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "config": {
                **asdict(cfg),
                "cells": [c.key for c in cfg.cells],
            },
            "method": self.method,
            "seconds": self.seconds,
            "skipped": self.skipped,
            "cells": [c.to_json(cfg.backends, cfg.congestion) for c in self.cells],
            "goals": [g.to_json() for g in matrix_goals(self)],
        }


def _error(exc: BaseException) -> str:
    if os.environ.get("HOTLINK_BENCH_TRACE"):
        traceback.print_exc()
    return f"{type(exc).__name__}: {exc}"[:300]


# ---------------------------------------------------------------- measuring one connection


def _abort(link: Link) -> None:
    """Drop a connection at once: a clean close would wait for a backlog to drain."""
    transport = link[1].transport
    with contextlib.suppress(Exception):
        transport.abort()


async def rtt_of(a: Link, b: Link, rounds: int) -> dict[str, float]:
    samples = sorted(await ping_pong(a, b, size=64, rounds=rounds, timeout=30))

    def at(q: float) -> float:
        return samples[min(len(samples) - 1, round(q * (len(samples) - 1)))] * 1000

    return {
        "p50": statistics.median(samples) * 1000,
        "p90": at(0.90),
        "p99": at(0.99),
        "mean": statistics.fmean(samples) * 1000,
    }


@dataclass(frozen=True)
class Window:
    """What one throughput window measured."""

    nbytes: int
    seconds: float
    cpu_busy: float | None  # the machine's, see FlowResult.cpu_busy


async def windowed_throughput(
    sender: asyncio.StreamWriter, receiver: asyncio.StreamReader, warmup_s: float, window_s: float
) -> Window:
    """Send without pause; return the bytes that reached ``receiver`` during ``window_s``
    after ``warmup_s``, the window's exact length and how busy the machine was meanwhile.
    The connection is left with a backlog: abort it afterwards."""
    block = os.urandom(BLOCK)
    received = 0
    ended: list[str] = []

    async def send() -> None:
        while True:
            sender.write(block)
            await sender.drain()

    async def receive() -> None:
        nonlocal received
        while True:
            data = await receiver.read(READ_SIZE)
            if not data:
                ended.append("the receiver saw EOF")
                return
            received += len(data)

    tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
    try:
        await asyncio.sleep(warmup_s)
        start_bytes, start, start_cpu = received, time.perf_counter(), cpu_times()
        await asyncio.sleep(window_s)
        end_bytes, end, end_cpu = received, time.perf_counter(), cpu_times()
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if ended:
            raise RuntimeError(ended[0])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return Window(end_bytes - start_bytes, end - start, busy_share(start_cpu, end_cpu))


def _fill_throughput(result: FlowResult, window: Window) -> None:
    result.window_bytes = window.nbytes
    result.window_s = window.seconds
    result.throughput_mbit_s = window.nbytes * 8 / window.seconds / 1e6
    result.cpu_busy = window.cpu_busy


async def _guard(result: FlowResult, body: Callable[[], Awaitable[None]]) -> FlowResult:
    started = time.perf_counter()
    try:
        await body()
    except Exception as exc:
        result.error = _error(exc)
    result.seconds = time.perf_counter() - started
    return result


class _Phases:
    """Calling it with a name records the seconds since the previous call."""

    def __init__(self, result: FlowResult) -> None:
        self.result = result
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.result.phases[name] = round(now - self.last, 3)
        self.last = now


# ---------------------------------------------------------------- plain TCP


def _tcp_socket(ns: str, congestion: str) -> socket.socket:
    sock = socket_in_netns(ns)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
    return sock


async def tcp_flow(wan: WanShape, cfg: MatrixConfig, congestion: str) -> FlowResult:
    """alice -> bob over one TCP connection whose both ends use ``congestion``."""
    result = FlowResult(f"tcp-{congestion}", transport={"alice→bob": "tcp"})

    async def body() -> None:
        loop = asyncio.get_running_loop()
        # Every socket made here is closed here (an aborted transport closing one again is
        # harmless).
        socks: list[socket.socket] = []
        links: list[Link] = []
        accepting: asyncio.Future[tuple[socket.socket, Any]] | None = None
        try:
            listener = _tcp_socket(wan.ns("bob"), congestion)
            socks.append(listener)
            listener.bind((IPS["bob"], 0))
            listener.listen(1)
            listener.setblocking(False)
            client = _tcp_socket(wan.ns("alice"), congestion)
            socks.append(client)
            client.setblocking(False)
            async with asyncio.timeout(30):
                # With loss a SYN may need its retransmission (1 s).
                accepting = asyncio.ensure_future(loop.sock_accept(listener))
                await loop.sock_connect(client, (IPS["bob"], listener.getsockname()[1]))
                server_sock, _ = await accepting
            socks.append(server_sock)
            used = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
            result.congestion = used.split(b"\0", 1)[0].decode()
            a = await asyncio.open_connection(sock=client, limit=1 << 20)
            links.append(a)
            b = await asyncio.open_connection(sock=server_sock, limit=1 << 20)
            links.append(b)
            result.rtt_ms = await rtt_of(a, b, cfg.rtt_rounds)
            window = await windowed_throughput(a[1], b[0], cfg.warmup_s, cfg.window_s)
            _fill_throughput(result, window)
        finally:
            if accepting is not None and not accepting.done():
                accepting.cancel()
            for link in links:
                _abort(link)
            for sock in socks:
                sock.close()

    return await _guard(result, body)


# ---------------------------------------------------------------- hotlink P2P


@dataclass
class _Peers:
    """A relay and alice's and bob's clients with one backend, in the shape's namespaces."""

    stack: DevStack
    alice: ClientProc
    bob: ClientProc


async def start_peers(wan: WanShape, backend: str, result: FlowResult) -> _Peers | None:
    """Start the processes; on failure the stack is stopped and ``result`` holds the error."""
    netns = {"server": wan.ns("server"), ALICE: wan.ns("alice"), BOB: wan.ns("bob")}
    stack = DevStack(env=client_env(backend))
    started = time.perf_counter()
    try:
        await stack.astart_server(IPS["server"], netns=netns["server"])
        alice, bob = await start_pair(stack, netns=netns)
    except Exception as exc:
        stack.stop(timeout=5)
        result.error = _error(exc)
        return None
    except BaseException:
        stack.stop(timeout=5)
        raise
    result.phases["processes"] = round(time.perf_counter() - started, 3)
    return _Peers(stack, alice, bob)


async def p2p_flow(wan: WanShape, cfg: MatrixConfig, peers: _Peers, result: FlowResult) -> None:
    """alice -> bob through a new tunnel between ``peers``; stops their processes."""
    connect = {ALICE: wan.connector("alice"), BOB: wan.connector("bob")}
    phase = _Phases(result)

    async def body() -> None:
        setup = await open_tunnel(peers.stack, peers.alice, peers.bob, connect=connect, timeout=60)
        try:
            # Up to the data channel in both directions (with loss, ICE and DTLS may need
            # retransmissions).
            await warm_up(setup, want_p2p=True, timeout=30)
            phase("tunnel")
            result.transport = dict(setup.transports)
            if not result.on_p2p:
                raise RuntimeError(f"no data channel: {result.transport}")
            result.rtt_ms = await rtt_of(setup.a, setup.b, cfg.rtt_rounds)
            phase("rtt")
            window = await windowed_throughput(setup.a[1], setup.b[0], cfg.warmup_s, cfg.window_s)
            _fill_throughput(result, window)
            phase("throughput")
            # A fallback to the WebSocket midway shows here.
            result.transport = dict(refresh_transports(setup))
        finally:
            _abort(setup.a)
            _abort(setup.b)

    try:
        await _guard(result, body)
    finally:
        # Short: clients with a backlog need not drain it.
        peers.stack.stop(timeout=5)
        phase("stop")


async def p2p_flows(wan: WanShape, cfg: MatrixConfig) -> dict[str, FlowResult]:
    """Every backend's processes start together (nothing is measured meanwhile, and start-up
    is most of a hotlink row's time); then each is measured alone and stopped."""
    results = {b: FlowResult(f"p2p-{b}") for b in cfg.backends}
    started: list[_Peers | None] = []
    try:
        for peers in await asyncio.gather(*(start_peers(wan, b, results[b]) for b in cfg.backends)):
            started.append(peers)
        for backend, peers in zip(cfg.backends, started, strict=True):
            if peers is not None:
                t0 = time.perf_counter()
                await p2p_flow(wan, cfg, peers, results[backend])
                results[backend].seconds = time.perf_counter() - t0
    finally:
        for peers in started:
            if peers is not None:
                peers.stack.stop(timeout=5)
    return {f"p2p-{b}": r for b, r in results.items()}


# ---------------------------------------------------------------- the matrix


async def run_cell(cell: Cell, cfg: MatrixConfig) -> CellResult:
    out = CellResult(cell)
    started = time.perf_counter()
    try:
        with WanShape.peers(cell.rtt_ms, loss_pct=cell.loss_pct, rate=cell.rate) as wan:
            out.method = wan.method
            out.handshake_rtt_ms = await asyncio.to_thread(wan.tcp_rtt_ms, "alice", "bob")
            for cc in cfg.congestion:
                out.flows[f"tcp-{cc}"] = await tcp_flow(wan, cfg, cc)
            out.flows.update(await p2p_flows(wan, cfg))
    except Exception as exc:
        out.error = _error(exc)
    out.seconds = time.perf_counter() - started
    return out


def cell_summary(r: CellResult) -> str:
    if r.error:
        return f"{r.cell.label}: FAILED ({r.error})"
    parts = []
    for key, f in r.flows.items():
        if f.error:
            parts.append(f"{key} failed ({f.error[:80]})")
        else:
            parts.append(f"{key} {_num(f.throughput_mbit_s)} Mbit/s rtt {_num(f.rtt_p50, 2)}")
    return f"{r.cell.label}: " + ", ".join(parts) + f" [{r.seconds:.0f} s]"


async def run_matrix(cfg: MatrixConfig | None = None) -> MatrixResult:
    """Every cell of ``cfg`` in turn (default: the full matrix); never raises for a failed
    path or cell (it is reported), only for Ctrl-C."""
    cfg = cfg or MatrixConfig.full()
    result = MatrixResult(cfg)
    reason = unsupported_reason()
    if reason is not None:
        result.skipped = f"WAN matrix skipped: {reason}."
        return result
    started = time.perf_counter()
    for i, cell in enumerate(cfg.cells, 1):
        say(f"wan-matrix: [{i}/{len(cfg.cells)}] {cell.label} ...")
        cell_result = await run_cell(cell, cfg)
        say(f"wan-matrix: {cell_summary(cell_result)}")
        result.cells.append(cell_result)
    result.method = ", ".join(sorted({c.method for c in result.cells if c.method}))
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- goals and the table


def matrix_goals(result: MatrixResult) -> list[Goal]:
    """Per backend: one throughput goal per TCP congestion control and one round-trip goal,
    each over every cell, naming the cells that miss it. A cell not measured leaves the goal
    'not measured' unless another cell already missed it (goals.py: never 'met' on gaps)."""
    cfg = result.config
    goals: list[Goal] = []
    target_tp = (
        f">= {NEAR_RATIO:.0%} up to 40 ms lossless, >= {FAR_RATIO:.0%} at 80 ms or with loss"
    )
    for backend in cfg.backends:
        for cc in cfg.congestion:
            judged = [
                (c, c.verdict(backend, [cc])[f"throughput_vs_{cc}"], c.ratio(backend, cc))
                for c in result.cells
            ]
            name = f"WAN matrix: P2P {backend} throughput vs TCP {cc.upper()}"
            goals.append(_goal(name, target_tp, judged, "{:.2f}x"))
        judged = [(c, c.verdict(backend, [])["rtt"], c.rtt_extra(backend)) for c in result.cells]
        name = f"WAN matrix: P2P {backend} RTT p50 vs TCP (64 B)"
        goals.append(_goal(name, f"<= TCP + {RTT_EXTRA_MS:g} ms", judged, "{:+.2f} ms"))
    return goals


def _goal(
    name: str,
    target: str,
    judged: Sequence[tuple[CellResult, bool | None, float | None]],
    fmt: str,
) -> Goal:
    measured = [(c, met, v) for c, met, v in judged if met is not None]
    if not measured:
        return Goal(name, target, "no cell measured", None)
    missed = [(c, v) for c, met, v in measured if not met]
    unmeasured = len(judged) - len(measured)
    text = f"{len(measured) - len(missed)}/{len(measured)} cells"
    if missed:
        shown = ", ".join(f"{c.cell.key} {'-' if v is None else fmt.format(v)}" for c, v in missed)
        text += f"; missed: {shown}"
    if unmeasured:
        text += f"; {unmeasured} not measured"
    met: bool | None = False if missed else (None if unmeasured else True)
    return Goal(name, target, text, met)


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _tp(f: FlowResult | None) -> str:
    if f is None:
        return "-"
    if f.error:
        return "failed"
    text = _num(f.throughput_mbit_s)
    if f.cpu_busy is not None:
        text += f" ({f.cpu_busy:.0%})"
    if f.path.startswith("p2p") and not f.on_p2p:
        text += " (not P2P)"
    return text


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _verdict(r: CellResult, backend: str, congestion: Sequence[str]) -> str:
    v = r.verdict(backend, congestion)
    if all(x is True for x in v.values()):
        return "met"
    if all(x is None for x in v.values()):
        return "not measured"
    missed = [k.replace("throughput_vs_", "vs ") for k, x in v.items() if x is False]
    unknown = [k.replace("throughput_vs_", "vs ") for k, x in v.items() if x is None]
    text = "NOT met: " + ", ".join(missed) if missed else ""
    if unknown:
        text += ("; " if text else "") + "not measured: " + ", ".join(unknown)
    return text


def markdown(result: MatrixResult, *, with_goals: bool = True) -> str:
    """The matrix's tables; ``with_goals=False`` where the caller lists the goals itself."""
    cfg = result.config
    lines = [
        f"### WAN matrix ({'quick' if cfg.quick else 'full'} run)",
        "",
    ]
    if result.skipped:
        return "\n".join([*lines, f"_{result.skipped}_", ""])
    lines += [
        "alice and bob in network namespaces on a bridge, the RTT split over both egresses, "
        "the loss in each direction, each side's egress limited by tbf; links: "
        f"{result.method}. Throughput: bytes reaching the receiving app in {cfg.window_s:g} s "
        f"after {cfg.warmup_s:g} s of sending (Mbit/s); in brackets, how busy the machine's "
        "CPU was meanwhile (all cores; the user-space links, apps and clients all count: "
        "near 100 % the row is bound by this machine, not by the path). "
        f"Round trip: {cfg.rtt_rounds} ping-pongs of 64 B on the idle connection, p50. "
        "TCP: one connection per congestion control (TCP_CONGESTION on both ends); "
        "hotlink: fresh relay and clients per cell, P2P on host candidates. "
        "Ratio: P2P / TCP throughput.",
        "",
    ]
    heads = ["Shape", "Handshake RTT (ms)"]
    heads += [f"TCP {cc.upper()}" for cc in cfg.congestion]
    for b in cfg.backends:
        heads += [f"P2P {b}"] + [f"{b} / {cc.upper()}" for cc in cfg.congestion]
    heads += ["Goal"]
    lines += ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 2) + "---|"]
    for r in result.cells:
        row = [r.cell.label, _num(r.handshake_rtt_ms)]
        if r.error:
            lines.append("| " + " | ".join([*row, f"failed: {r.error[:80]}"]) + " |")
            continue
        row += [_tp(r.flows.get(f"tcp-{cc}")) for cc in cfg.congestion]
        for b in cfg.backends:
            row += [_tp(r.flows.get(f"p2p-{b}"))]
            row += [_ratio(r.ratio(b, cc)) for cc in cfg.congestion]
        row += [f">= {r.cell.throughput_goal:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Round trip 64 B, p50 / p99 (ms), and the verdict per backend:", ""]
    heads = ["Shape"] + [f"TCP {cc.upper()}" for cc in cfg.congestion]
    heads += [f"P2P {b}" for b in cfg.backends] + [f"Verdict {b}" for b in cfg.backends]
    aligns = "|---|" + "---:|" * (len(heads) - 1 - len(cfg.backends)) + "---|" * len(cfg.backends)
    lines += ["| " + " | ".join(heads) + " |", aligns]
    for r in result.cells:
        if r.error:
            continue
        row = [r.cell.label]
        for key in [f"tcp-{cc}" for cc in cfg.congestion] + [f"p2p-{b}" for b in cfg.backends]:
            f = r.flows.get(key)
            if f is None or f.error or not f.rtt_ms:
                row.append("failed" if f is not None and f.error else "-")
            else:
                row.append(f"{_num(f.rtt_ms.get('p50'), 2)} / {_num(f.rtt_ms.get('p99'), 2)}")
        row += [_verdict(r, b, cfg.congestion) for b in cfg.backends]
        lines.append("| " + " | ".join(row) + " |")
    errors = [
        f"- {r.cell.key} {k}: {f.error}"
        for r in result.cells
        for k, f in r.flows.items()
        if f.error
    ]
    if errors:
        lines += ["", "Failures:", "", *errors]
    if with_goals:
        goals = matrix_goals(result)
        lines += ["", "| Goal | Target | Measured | Verdict |", "|---|---|---|---|"]
        lines += [f"| {g.name} | {g.target} | {g.measured} | {g.verdict} |" for g in goals]
    lines.append(f"\n_Matrix time: {result.seconds:.0f} s._")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.wan_matrix", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="4 cells, shorter windows")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--backends", help=f"comma-separated subset of {','.join(BACKENDS)}")
    parser.add_argument("--window", type=float, help="seconds counted per flow")
    parser.add_argument("--out", type=Path, help="also write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    stop_on_signals()
    cfg = for_this_machine(args.quick)
    if args.backends:
        cfg = replace(cfg, backends=tuple(args.backends.split(",")))
    if args.window:
        cfg = replace(cfg, window_s=args.window)
    result = asyncio.run(run_matrix(cfg))
    doc, table = json.dumps(result.to_json(), indent=2), markdown(result)
    if args.out:
        args.out.with_suffix(".json").write_text(doc)
        args.out.with_suffix(".md").write_text(table)
    print(doc if args.json else table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
