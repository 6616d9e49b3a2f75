"""Flow control in the benchmark: what per-session credit costs a fast reader, and what it
buys a slow one (docs/DECISIONS-LOCAL.md "Flow control").

* :func:`paired_paths` - a hotlink row with the defaults and its twins with one setting
  changed: flow control off (both clients ``SYFTBOX_HOTLINK_FLOW_CONTROL=0``: they neither
  grant nor follow credit, as reference clients) and end-to-end encryption off
  (``SYFTBOX_HOTLINK_E2E=0``). The stacks run side by side and their streams interleave
  default, twin, twin, default, ...; each row reports the median of its streams, so a change
  in the shared machine's load during the run hits every row alike.
* :func:`slow_reader` - a P2P tunnel whose receiving app reads slowly, pauses, then reads at
  full speed: total time, the path of the sender's frames, its flow waits, each client's
  peak RSS, and whether the sha256 matched.
* :func:`shared_websocket` - two tunnels on one WebSocket (WebRTC off) while one receiving
  app stalls: the other tunnel's throughput against its solo figure, and whether anybody
  lost the WebSocket.

Measurements only; the verdicts are in bench/goals.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import statistics
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hotlink.demo.measure import close_link, ping_pong, stream_bulk
from hotlink.demo.tunnel import (
    ALICE,
    BOB,
    TunnelSetup,
    client_env,
    close_tunnel,
    open_tunnel,
    refresh_transports,
    session_transport,
    start_pair,
    warm_up,
)
from hotlink.lab.processes import CONNECTED, ClientProc, StackError
from hotlink.lab.stack import DevStack

from .paths import BenchConfig, PathResult, rtt_stats
from .progress import say

MIB = 1024 * 1024
BLOCK = MIB
READ_CHUNK = 64 * 1024
# Frames a session may send over the WebSocket before its data channel is open (§6.6).
GRACE_FRAMES = 3
PEAK_RSS_LIMIT_MIB = 300
SECOND_FLOW = "shared/flows/hotlink-bench-second"


@dataclass(frozen=True)
class Twin:
    """A row that runs like the default one but for ``env``."""

    label: str
    env: dict[str, str]
    flow_control: bool = True
    variant: str = ""


FLOW_OFF = Twin("flow control off", {}, flow_control=False)
E2E_OFF_VARIANT = "e2e off"
E2E_OFF = Twin("end-to-end encryption off", {"SYFTBOX_HOTLINK_E2E": "0"}, variant=E2E_OFF_VARIANT)
STRICT_ENV = {"SYFTBOX_HOTLINK_P2P_ONLY": "1", "SYFTBOX_HOTLINK_BENCH_STRICT": "1"}
SENDER_KEYS = (
    "tx_packets",
    "tx_p2p_packets",
    "tx_ws_packets",
    "ws_fallbacks",
    "flow_waits",
    "strict_violations",
)
# A client that lost its WebSocket logs the first; the reconnect logs the second.
CLIENT_DISCONNECT = r"disconnected from|" + CONNECTED
RELAY_DISCONNECT = r"send queue full"

# (bytes per second: 0 pauses, None is full speed; seconds)
Phase = tuple[float | None, float]


@dataclass(frozen=True)
class SlowCase:
    name: str
    phases: tuple[Phase, ...]  # then full speed to the end of the stream
    strict: bool = False  # SYFTBOX_HOTLINK_P2P_ONLY + BENCH_STRICT on both clients


PAUSING = SlowCase("4 MB/s for 5 s, no reads for 15 s, then full speed", ((4e6, 5.0), (0, 15.0)))
PAUSING_STRICT = SlowCase("the same, P2P-only strict mode", PAUSING.phases, strict=True)
STEADY = SlowCase("300 KB/s for 60 s, then full speed", ((300e3, 60.0),))
STEADY_SHORT = SlowCase("300 KB/s for 10 s, then full speed", ((300e3, 10.0),))


@dataclass(frozen=True)
class FlowConfig:
    repeats: int = 7  # streams per row of a flow-on/flow-off pair
    slow_size: int = 256 * MIB
    slow_cases: tuple[SlowCase, ...] = (PAUSING, PAUSING_STRICT, STEADY)
    shared_size: int = 128 * MIB
    shared_repeats: int = 3  # solo streams before and as many after the stall
    stall_s: float = 15.0

    @classmethod
    def quick(cls) -> FlowConfig:
        return cls(
            repeats=3,
            slow_size=64 * MIB,
            slow_cases=(PAUSING, STEADY_SHORT),
            shared_size=32 * MIB,
            shared_repeats=2,
            stall_s=5.0,
        )


def _error(exc: BaseException) -> str:
    if os.environ.get("HOTLINK_BENCH_TRACE"):
        traceback.print_exc()
    return f"{type(exc).__name__}: {exc}"


async def _timed(body: Callable[[], Awaitable[None]]) -> tuple[float, str | None]:
    """Run ``body``; (seconds it took, the error it raised or None)."""
    started = time.perf_counter()
    try:
        await body()
    except Exception as exc:
        return time.perf_counter() - started, _error(exc)
    return time.perf_counter() - started, None


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set (VmHWM), MiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _live_transports(*clients: ClientProc) -> list[str]:
    """The paths (``ws``, ``p2p-*``) of every live outbound session of ``clients``."""
    kinds = set()
    for client in clients:
        doc = client.telemetry() or {}
        for session in doc.get("live", {}).get("sessions_out", []):
            kinds.add(str(session.get("transport") or "unknown"))
    return sorted(kinds)


def _counters(client: ClientProc) -> dict[str, int]:
    doc = client.telemetry() or {}
    return {key: int(doc.get(key, 0)) for key in SENDER_KEYS}


# ---------------------------------------------------------------- apps with a checked stream


async def send_hashed(writer: asyncio.StreamWriter, size: int) -> str:
    """Write ``size`` bytes (every 1 MiB block different); the sha256 of what was written."""
    base = os.urandom(BLOCK)
    digest = hashlib.sha256()
    sent = 0
    index = 0
    while sent < size:
        block = (index.to_bytes(8, "big") + base[8:])[: size - sent]
        digest.update(block)
        writer.write(block)
        await writer.drain()
        sent += len(block)
        index += 1
    return digest.hexdigest()


async def paced_read(
    reader: asyncio.StreamReader, size: int, phases: Sequence[Phase] = ()
) -> tuple[int, str]:
    """Read ``size`` bytes in ``phases``, then at full speed; (bytes, sha256). Stops early at
    EOF. The pace is kept on average: the app's socket buffers run ahead of it a little."""
    digest = hashlib.sha256()
    total = 0
    loop = asyncio.get_running_loop()
    for rate, seconds in phases:
        end = loop.time() + seconds
        if rate == 0:
            await asyncio.sleep(seconds)
            continue
        started, taken = loop.time(), 0
        while total < size and loop.time() < end:
            data = await reader.read(min(READ_CHUNK, size - total))
            if not data:
                return total, digest.hexdigest()
            digest.update(data)
            total += len(data)
            taken += len(data)
            if rate is not None:
                ahead = taken / rate - (loop.time() - started)
                if ahead > 0:
                    await asyncio.sleep(min(ahead, max(0.0, end - loop.time())))
    while total < size:
        data = await reader.read(min(BLOCK, size - total))
        if not data:
            break
        digest.update(data)
        total += len(data)
    return total, digest.hexdigest()


# ---------------------------------------------------------------- fast reader: on vs off


async def paired_paths(
    cfg: BenchConfig,
    name: str,
    *,
    repeats: int,
    backend: str = "auto",
    ws_only: bool = False,
    twins: Sequence[Twin] = (FLOW_OFF,),
) -> list[PathResult]:
    """The row ``name`` (the defaults) and ``"<name>, <twin label>"`` for each twin: set-up,
    the median of ``repeats`` interleaved streams of ``cfg.size`` each, then ping-pong."""
    kind = "ws" if ws_only else "p2p"
    be = "" if ws_only else backend
    rows = [PathResult(name, "loopback", kind, be)]
    envs: list[dict[str, str]] = [{}]
    for twin in twins:
        rows.append(
            PathResult(
                f"{name}, {twin.label}",
                "loopback",
                kind,
                be,
                flow_control=twin.flow_control,
                variant=twin.variant,
            )
        )
        envs.append(twin.env)

    async def body() -> None:
        with contextlib.ExitStack() as stacks:
            stack_list = [stacks.enter_context(DevStack()) for _ in rows]
            async with contextlib.AsyncExitStack() as links:
                setups: list[TunnelSetup] = []
                for row, stack, extra in zip(rows, stack_list, envs, strict=True):
                    await stack.astart_server()
                    env = client_env(backend, ws_only, flow_control=row.flow_control, extra=extra)
                    alice, bob = await start_pair(stack, env=env)
                    setup = await open_tunnel(stack, alice, bob)
                    links.push_async_callback(close_link, setup.a)
                    links.push_async_callback(close_link, setup.b)
                    await warm_up(setup, want_p2p=not ws_only)
                    row.setup_first_byte_ms = setup.to_first_byte_s * 1000
                    opened = setup.to_channel_open_s()
                    row.setup_channel_open_ms = opened * 1000 if opened is not None else None
                    setups.append(setup)
                for n in range(repeats):
                    # Alternate the order, so no row always follows the same one.
                    pairs = list(zip(rows, setups, strict=True))
                    for row, setup in pairs if n % 2 == 0 else reversed(pairs):
                        stream = await stream_bulk(setup.a[1], setup.b[0], cfg.size)
                        if stream.received != cfg.size:
                            raise RuntimeError(
                                f"{row.name}: stream stopped after {stream.received} "
                                f"of {cfg.size} bytes"
                            )
                        row.throughput_samples.append(stream.mb_per_s)
                for row, setup in zip(rows, setups, strict=True):
                    row.throughput_mb_s = statistics.median(row.throughput_samples)
                    row.throughput_bytes = cfg.size
                    for msg_size in cfg.rtt_sizes:
                        samples = await ping_pong(
                            setup.a, setup.b, size=msg_size, rounds=cfg.rounds, timeout=60
                        )
                        row.rtt[str(msg_size)] = rtt_stats(samples, msg_size)
                    # The path after the measurements: a fallback midway shows up here.
                    row.transport = dict(refresh_transports(setup))
                    await close_tunnel(setup)

    seconds, error = await _timed(body)
    for row in rows:
        row.seconds, row.error = seconds, error
    return rows


# ---------------------------------------------------------------- slow readers


@dataclass
class SlowReaderResult:
    case: str
    size: int
    strict: bool
    seconds: float | None = None  # first byte written -> last byte read
    received: int = 0
    sha256_match: bool = False
    transport: str | None = None  # the sender's session, after the stream
    sender: dict[str, int] = field(default_factory=dict)  # alice's telemetry counters
    peak_rss_mib: dict[str, float | None] = field(default_factory=dict)  # per email
    elapsed: float = 0.0  # the whole case, with start-up
    error: str | None = None

    @property
    def intact(self) -> bool:
        return self.sha256_match and self.received == self.size

    @property
    def stayed_p2p(self) -> bool:
        return (
            self.sender.get("ws_fallbacks", 1) == 0
            and self.sender.get("tx_ws_packets", GRACE_FRAMES + 1) <= GRACE_FRAMES
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "intact": self.intact, "stayed_p2p": self.stayed_p2p}


async def slow_reader(case: SlowCase, size: int) -> SlowReaderResult:
    """A fresh libdatachannel pair (so VmHWM is this stream's), the tunnel opened, and the
    stream started at once, as an app would: the session's frames before its data channel
    opens are the grace frames counted in ``tx_ws_packets``."""
    result = SlowReaderResult(case.name, size, case.strict)

    async def body() -> None:
        env = client_env("libdatachannel", extra=STRICT_ENV if case.strict else None)
        with DevStack() as stack:
            await stack.astart_server()
            alice, bob = await start_pair(stack, env=env)
            setup = await open_tunnel(stack, alice, bob)
            try:
                started = time.perf_counter()
                async with asyncio.timeout(900):
                    sent, (got, digest) = await asyncio.gather(
                        send_hashed(setup.a[1], size), paced_read(setup.b[0], size, case.phases)
                    )
                result.seconds = time.perf_counter() - started
                result.received = got
                result.sha256_match = got == size and digest == sent
                # Telemetry is written at most once a second: wait until it counts the stream.
                with contextlib.suppress(StackError):
                    await alice.await_telemetry(lambda d: d.get("tx_bytes", 0) >= size, 10)
                with contextlib.suppress(StackError):
                    await bob.await_telemetry(lambda d: d.get("rx_bytes", 0) >= size, 10)
                result.sender = _counters(alice)
                result.transport = session_transport(alice.telemetry())
                result.peak_rss_mib = {c.email: peak_rss_mib(c.pid) for c in (alice, bob)}
            finally:
                await close_link(setup.a)
                await close_link(setup.b)

    result.elapsed, result.error = await _timed(body)
    return result


# ---------------------------------------------------------------- two sessions, one WebSocket


@dataclass
class SharedWsResult:
    size: int
    stall_s: float
    solo_mb_s: list[float] = field(default_factory=list)  # before, then after the stall
    stalled_mb_s: list[float] = field(default_factory=list)  # streams that ended in the stall
    stalled_held: bool | None = None  # the stalled sender was still held back when it ended
    stalled_intact: bool | None = None  # its stream whole (sha256) once its app read again
    disconnects: dict[str, int] = field(default_factory=dict)  # per client and "relay"
    transports: list[str] = field(default_factory=list)  # of every live session, at the end
    flow_waits: int | None = None  # alice's, whole run
    elapsed: float = 0.0
    error: str | None = None

    @property
    def solo(self) -> float | None:
        return statistics.median(self.solo_mb_s) if self.solo_mb_s else None

    @property
    def stalled(self) -> float | None:
        return statistics.median(self.stalled_mb_s) if self.stalled_mb_s else None

    @property
    def ratio(self) -> float | None:
        solo, stalled = self.solo, self.stalled
        return stalled / solo if solo and stalled is not None else None

    def to_json(self) -> dict[str, Any]:
        extra = {"solo_median": self.solo, "stalled_median": self.stalled, "ratio": self.ratio}
        return {**asdict(self), **extra}


async def _bulk_mb_s(setup: TunnelSetup, size: int) -> float:
    stream = await stream_bulk(setup.a[1], setup.b[0], size, timeout=120)
    if stream.received != size:
        raise RuntimeError(f"stream stopped after {stream.received} of {size} bytes")
    return stream.mb_per_s


async def shared_websocket(cfg: FlowConfig) -> SharedWsResult:
    """WebRTC off, flow control on, two tunnels between alice and bob. Tunnel 2 streams alone
    (one unrecorded stream, then ``shared_repeats`` times); then alice's app writes
    ``shared_size`` into tunnel 1 whose receiving app reads nothing for ``stall_s`` s, while
    tunnel 2 streams back to back (the streams that end within the stall count); then tunnel
    1 is read to the end and checked, and tunnel 2 streams alone ``shared_repeats`` times
    more. Solo before and after the stall, so that a connection still warming up (buffers
    growing) does not flatter the streams during the stall."""
    result = SharedWsResult(cfg.shared_size, cfg.stall_s)
    size = cfg.shared_size

    async def body() -> None:
        with DevStack() as stack:
            server = await stack.astart_server()
            alice, bob = await start_pair(stack, env=client_env(ws_only=True))
            async with contextlib.AsyncExitStack() as links:
                first = await open_tunnel(stack, alice, bob)
                links.push_async_callback(close_link, first.a)
                links.push_async_callback(close_link, first.b)
                channel = stack.channel(ALICE, BOB, flow=SECOND_FLOW)
                second = await open_tunnel(stack, alice, bob, channel=channel)
                links.push_async_callback(close_link, second.a)
                links.push_async_callback(close_link, second.b)
                for setup in (first, second):
                    await warm_up(setup, want_p2p=False)
                marks = {c.email: c.log_mark() for c in (alice, bob)}
                relay_mark = server.log_mark()
                await _bulk_mb_s(second, size)
                for _ in range(cfg.shared_repeats):
                    result.solo_mb_s.append(await _bulk_mb_s(second, size))
                loop = asyncio.get_running_loop()
                stall_end = loop.time() + cfg.stall_s
                stalled = asyncio.create_task(send_hashed(first.a[1], size))
                try:
                    # Back to back for the whole stall: a session that suffers only after
                    # a while (a keepalive lost, a timeout) shows up too.
                    while loop.time() < stall_end:
                        mb_s = await _bulk_mb_s(second, size)
                        if loop.time() > stall_end:
                            break  # it outlived the stall: not a figure "during" it
                        result.stalled_mb_s.append(mb_s)
                    await asyncio.sleep(max(0.0, stall_end - loop.time()))
                    result.stalled_held = not stalled.done()
                    async with asyncio.timeout(120):
                        got, digest = await paced_read(first.b[0], size)
                        sent = await stalled
                    result.stalled_intact = got == size and digest == sent
                finally:
                    if not stalled.done():
                        stalled.cancel()
                    await asyncio.gather(stalled, return_exceptions=True)
                for _ in range(cfg.shared_repeats):
                    result.solo_mb_s.append(await _bulk_mb_s(second, size))
                result.transports = _live_transports(alice, bob)
                for client in (alice, bob):
                    result.disconnects[client.email] = client.count_log(
                        CLIENT_DISCONNECT, marks[client.email]
                    )
                result.disconnects["relay"] = server.count_log(RELAY_DISCONNECT, relay_mark)
                result.flow_waits = _counters(alice)["flow_waits"]

    result.elapsed, result.error = await _timed(body)
    return result


# ---------------------------------------------------------------- the flow part of a run


@dataclass
class FlowResults:
    slow: list[SlowReaderResult] = field(default_factory=list)
    shared: SharedWsResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "slow_readers": [r.to_json() for r in self.slow],
            "shared_websocket": self.shared.to_json() if self.shared else None,
        }


def slow_summary(r: SlowReaderResult) -> str:
    if r.error:
        return f"FAILED ({r.error})"
    s = r.sender
    rss = ", ".join(f"{v:.0f}" if v is not None else "?" for v in r.peak_rss_mib.values())
    return (
        f"{r.seconds or 0:.1f} s, {'intact' if r.intact else 'NOT intact'}, "
        f"frames p2p {s.get('tx_p2p_packets')} ws {s.get('tx_ws_packets')}, "
        f"fallbacks {s.get('ws_fallbacks')}, flow waits {s.get('flow_waits')}, "
        f"peak RSS {rss} MiB [{r.elapsed:.0f} s]"
    )


def shared_summary(r: SharedWsResult) -> str:
    if r.error:
        return f"FAILED ({r.error})"
    ratio = f"{r.ratio:.0%}" if r.ratio is not None else "-"
    return (
        f"solo {r.solo or 0:.1f} MB/s, during the stall "
        f"{r.stalled or 0:.1f} MB/s ({ratio}), stalled stream "
        f"{'intact' if r.stalled_intact else 'NOT intact'}, disconnects {r.disconnects} "
        f"[{r.elapsed:.0f} s]"
    )


async def run_flow(cfg: FlowConfig, only: Sequence[str]) -> FlowResults:
    out = FlowResults()
    if "slow-reader" in only:
        for case in cfg.slow_cases:
            say(f"bench: slow reader, {case.name} ...")
            result = await slow_reader(case, cfg.slow_size)
            say(f"bench: slow reader: {slow_summary(result)}")
            out.slow.append(result)
    if "shared-ws" in only:
        say("bench: two sessions on one WebSocket, one app stalled ...")
        out.shared = await shared_websocket(cfg)
        say(f"bench: shared WebSocket: {shared_summary(out.shared)}")
    return out
