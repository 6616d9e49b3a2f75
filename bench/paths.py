"""One benchmark row per path: the same payloads over a plain TCP connection (the floor),
through hotlink (WebSocket relay, P2P with each WebRTC backend), and over each backend's raw
data channel without hotlink.

Each measurement returns a :class:`PathResult`; a path that fails is reported with its error
instead of stopping the whole run.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from hotlink.demo.measure import (
    Connector,
    Link,
    RttStats,
    close_link,
    ping_pong,
    stream_bulk,
)
from hotlink.demo.tunnel import (
    client_env,
    close_tunnel,
    open_tunnel,
    refresh_transports,
    start_pair,
    warm_up,
)
from hotlink.lab.stack import DevStack


@dataclass(frozen=True)
class BenchConfig:
    size: int = 64 * 1024 * 1024
    rounds: int = 2000
    rtt_sizes: tuple[int, ...] = (64, 4096)
    wan_size: int = 16 * 1024 * 1024
    wan_rounds: int = 200

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(size=8 * 1024 * 1024, rounds=200, wan_size=4 * 1024 * 1024, wan_rounds=50)


@dataclass
class PathResult:
    name: str
    group: str  # "loopback" or "wan"
    kind: str  # tcp, ws, p2p, raw-dc
    backend: str = ""
    transport: dict[str, str] = field(default_factory=dict)
    throughput_mb_s: float | None = None
    throughput_bytes: int = 0
    # Every stream measured, MB/s, when the row is the median of several (bench/flow.py).
    throughput_samples: list[float] = field(default_factory=list)
    flow_control: bool = True  # False: both clients ran with SYFTBOX_HOTLINK_FLOW_CONTROL=0
    # A row with other client settings than the defaults (``extra_env``): "" for the default.
    variant: str = ""
    rtt: dict[str, dict[str, float]] = field(default_factory=dict)  # "64" -> p50/p90/p99 ms
    setup_first_byte_ms: float | None = None
    setup_channel_open_ms: float | None = None
    seconds: float = 0.0
    error: str | None = None

    def rtt_p50(self, size: int = 64) -> float | None:
        stats = self.rtt.get(str(size))
        return stats["p50_ms"] if stats else None

    @property
    def is_p2p(self) -> bool:
        """Both directions really ran over a data channel (not the WebSocket fallback)."""
        return bool(self.transport) and all(k.startswith("p2p") for k in self.transport.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rtt_stats(samples: list[float], size: int) -> dict[str, float]:
    s = RttStats.of(samples, size)
    return {"p50_ms": s.p50_ms, "p90_ms": s.p90_ms, "p99_ms": s.p99_ms, "mean_ms": s.mean_ms}


async def measure_link(
    result: PathResult, a: Link, b: Link, size: int, rounds: int, rtt_sizes: tuple[int, ...]
) -> None:
    """Throughput a -> b, then ping-pong a -> b -> a at each size, on open connections."""
    stream = await stream_bulk(a[1], b[0], size)
    if stream.received != size:
        raise RuntimeError(f"stream stopped after {stream.received} of {size} bytes")
    result.throughput_mb_s = stream.mb_per_s
    result.throughput_bytes = size
    for msg_size in rtt_sizes:
        samples = await ping_pong(a, b, size=msg_size, rounds=rounds, timeout=60)
        result.rtt[str(msg_size)] = rtt_stats(samples, msg_size)


async def guarded(result: PathResult, body: Callable[[], Awaitable[None]]) -> PathResult:
    started = time.perf_counter()
    try:
        await body()
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        if os.environ.get("HOTLINK_BENCH_TRACE"):
            traceback.print_exc()
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- the floor: plain TCP


async def measure_accepted(
    result: PathResult,
    cfg: BenchConfig,
    port: int,
    accepted: asyncio.Queue[Link],
    timeout: float = 10.0,
) -> None:
    """Connect app a to ``port``, take app b from ``accepted`` (the far end's listener),
    measure the link between them (:func:`measure_link`), then close both."""
    a = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    b = await asyncio.wait_for(accepted.get(), timeout)
    try:
        await measure_link(result, a, b, cfg.size, cfg.rounds, cfg.rtt_sizes)
    finally:
        await close_link(a)
        await close_link(b)


async def tcp_floor(cfg: BenchConfig) -> PathResult:
    """A direct loopback TCP connection between the two app ends (what hotlink adds to)."""
    result = PathResult("raw TCP loopback", "loopback", "tcp", transport={"both": "tcp"})

    async def body() -> None:
        accepted: asyncio.Queue[Link] = asyncio.Queue(1)

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await accepted.put((r, w))

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0, limit=1 << 20)
        port = server.sockets[0].getsockname()[1]
        try:
            await measure_accepted(result, cfg, port, accepted)
        finally:
            server.close()
            await server.wait_closed()

    return await guarded(result, body)


# ---------------------------------------------------------------- hotlink through daemons


async def hotlink_path(
    cfg: BenchConfig,
    name: str,
    *,
    backend: str = "auto",
    ws_only: bool = False,
    group: str = "loopback",
    size: int | None = None,
    rounds: int | None = None,
    server_host: str = "127.0.0.1",
    netns: Mapping[str, str] | None = None,
    connect: Connector | Mapping[str, Connector] | None = None,
    variant: str = "",
    extra_env: Mapping[str, str] | None = None,
) -> PathResult:
    """Relay + alice + bob as real processes, the tunnel, and the measurements on it.

    ``netns`` maps ``server``/emails to network namespaces (WAN shape); ``connect`` opens a
    connection to a proxy port inside alice's or bob's namespace then. ``extra_env`` are
    client settings of a ``variant`` row.
    """
    kind = "ws" if ws_only else "p2p"
    result = PathResult(name, group, kind, backend="" if ws_only else backend, variant=variant)

    async def body() -> None:
        env = client_env(backend, ws_only, extra=extra_env)
        with DevStack() as stack:
            await stack.astart_server(server_host, netns=(netns or {}).get("server"))
            alice, bob = await start_pair(stack, env=env, netns=netns)
            setup = await open_tunnel(stack, alice, bob, connect=connect)
            try:
                await warm_up(setup, want_p2p=not ws_only)
                result.setup_first_byte_ms = setup.to_first_byte_s * 1000
                opened = setup.to_channel_open_s()
                result.setup_channel_open_ms = opened * 1000 if opened is not None else None
                await measure_link(
                    result,
                    setup.a,
                    setup.b,
                    size or cfg.size,
                    rounds or cfg.rounds,
                    cfg.rtt_sizes,
                )
                # The path after the measurement: a fallback midway shows up here.
                result.transport = dict(refresh_transports(setup))
                await close_tunnel(setup)
            finally:
                await close_link(setup.a)
                await close_link(setup.b)

    return await guarded(result, body)


# ---------------------------------------------------------------- raw data channels


async def raw_datachannel(cfg: BenchConfig, backend: str) -> PathResult:
    """Two peers of one backend in this process, no hotlink: bench/raw_datachannel.py for
    throughput and connect time, then ping-pong at the same message sizes as the tunnel.

    The peers use the SCTP packet size a tunnel between two clients on this host gets
    (protocol/locality.py), so the row compares like with like."""
    from bench.raw_datachannel import measure
    from hotlink.webrtc import load_backend

    mtu = load_backend(backend).same_host_mtu
    name = f"raw data channel {backend}" + (f", MTU {mtu}" if mtu else "")
    result = PathResult(name, "loopback", "raw-dc", backend, {"both": "raw-dc"})

    async def body() -> None:
        raw = await measure(backend, backend, size=cfg.size, rtt_samples=0, mtu=mtu)
        result.throughput_mb_s = raw.throughput_mib_s * 1024 * 1024 / 1e6
        result.throughput_bytes = raw.bytes_sent
        result.setup_channel_open_ms = raw.connect_s * 1000
        for msg_size in cfg.rtt_sizes:
            samples = await raw_rtt(backend, msg_size, cfg.rounds, mtu)
            result.rtt[str(msg_size)] = rtt_stats(samples, msg_size)

    return await guarded(result, body)


async def raw_rtt(backend: str, size: int, rounds: int, mtu: int = 0) -> list[float]:
    """Round trips of ``size``-byte messages over a fresh pair of ``backend`` peers."""
    from hotlink.webrtc import load_backend
    from hotlink.webrtc.pair import connect_pair

    pongs: asyncio.Queue[bytes] = asyncio.Queue(8)
    pings: asyncio.Queue[bytes] = asyncio.Queue(8)
    pair = await connect_pair(
        load_backend(backend, mtu=mtu),
        load_backend(backend, mtu=mtu),
        offer_sink=pongs.put_nowait,
        answer_sink=pings.put_nowait,
    )

    async def echo() -> None:
        while True:
            await pair.answerer.send(await pings.get())

    echoer = asyncio.create_task(echo())
    samples: list[float] = []
    try:
        message = os.urandom(size)
        for _ in range(rounds):
            t0 = time.perf_counter()
            await pair.offerer.send(message)
            reply = await asyncio.wait_for(pongs.get(), 10)
            samples.append(time.perf_counter() - t0)
            if reply != message:
                raise RuntimeError("raw data channel echo differs")
    finally:
        echoer.cancel()
        await asyncio.gather(echoer, return_exceptions=True)
        await pair.close()
    return samples
