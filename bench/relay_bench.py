"""The relay against a bare WebSocket forwarder, and the relay at scale
(``python -m bench.relay_bench [--quick]``).

Four measurements, each with the real relay process (``python -m hotlink server``) and real
aiohttp WebSocket clients in this process:

* **Throughput.** 100 sender/receiver pairs stream 4 KiB HotlinkData frames (msgpack) through
  the relay, and the very same frames through a bare aiohttp forwarder (:func:`forwarder`,
  no protocol: it pairs two sockets and forwards each message), in the same run and
  interleaved. The server process (relay or forwarder) is pinned to one core with
  ``taskset``, the clients to the other, so the relay's messages/s is its one-core figure;
  its CPU time per message says what a saturated core would carry.
* **Opens at scale.** Open latency (sent by the opener until the target has it) with a few
  connections and with 9,000 idle ones, with and without ``to``.
* **Memory.** The relay's RSS per idle connection at 9,000 connections, and after they all
  closed and came back (a leak shows as growth).
* **Reconnect storm.** 1,000 clients connect at once and each publishes its ACL file, which
  the relay fans out to everyone else: the relay's CPU time until every client has its Ack,
  no broadcast is on its way and the relay is idle, for a fresh relay (a restart) and for
  all clients dropping and coming back (a network blip).

``--quick`` runs each part smaller or shorter (3,000 idle connections, two throughput
rounds of 2 s) and takes under a minute. The numbers are only as steady as the machine:
on a shared one, compare the relay with the forwarder of the same run.

Senders keep at most a window of frames in flight (counted by their receiver in this
process), so neither server ever holds more than the windows. Never run from tests.
``--relay-src DIR`` runs the relay from another source tree (``DIR`` on ``PYTHONPATH``),
e.g. an older commit exported with ``git archive``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from bench.progress import say
from hotlink.lab.processes import die_with_parent
from hotlink.protocol.codec import decode, encode_msgpack
from hotlink.protocol.messages import (
    Ack,
    FileWrite,
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    Message,
    new_message_id,
    new_session_id,
)

REPO = Path(__file__).resolve().parent.parent
SERVER_CORE = 0
CLIENT_CORE = 1
DOMAIN = "bench.example"
FRAME_PAYLOAD = 4096
WINDOW = 64  # frames in flight per pair
WARM_UP = 20  # Opens before the measured ones
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
GUARD = 60.0  # failure guard for any single wait
FILE_WRITE_TYP = b"\xa3typ\xcd\x00\x02"  # how encode_msgpack writes typ 2
STORM_GUARD = 600.0  # a slow relay takes minutes to answer everyone in a storm
STORM_SETTLE = 1.5  # seconds without a new broadcast at any client
# A benchmark's clients close at its end without waiting long for the server's answer.
WS_OPTIONS: dict[str, Any] = {
    "max_msg_size": 0,
    "compress": 0,
    "timeout": aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
}


@dataclass
class Config:
    pairs: int = 100
    seconds: float = 4.0  # per throughput run
    rounds: int = 5  # forwarder and relay runs, interleaved
    idle: int = 9000
    opens: int = 200
    storm: int = 1000
    leak_check: bool = True


QUICK = Config(seconds=2.0, rounds=2, idle=3000, opens=100, storm=1000, leak_check=False)


# ---------------------------------------------------------------- the bare forwarder


def _write_port_file(path: Path, port: int) -> None:
    # Whole or not at all: the parent polls for the file and reads it as soon as it exists.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": port}))
    tmp.replace(path)


async def forwarder(port_file: Path) -> None:
    """A WebSocket server that pairs ``?pair=N&role=s`` with ``role=r`` and forwards each
    message from s to r as is: what any relay costs at least, with aiohttp."""
    peers: dict[str, web.WebSocketResponse] = {}
    arrived: dict[str, asyncio.Event] = {}

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=8 * 1024 * 1024 + 1, compress=False)
        await ws.prepare(request)
        pair, role = request.query["pair"], request.query["role"]
        ready = arrived.setdefault(pair, asyncio.Event())
        if role == "r":
            peers[pair] = ws
            ready.set()
            async for _ in ws:
                pass
            return ws
        await ready.wait()
        receiver = peers[pair]
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await receiver.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await receiver.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/fwd", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await asyncio.to_thread(_write_port_file, port_file, port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# ---------------------------------------------------------------- server processes


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pinned(argv: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    if taskset is None or (os.cpu_count() or 1) < 2:
        return argv
    return [taskset, "-c", str(SERVER_CORE), *argv]


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            _pinned(argv),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def _ready_port(ready: Path) -> int | None:
    return int(json.loads(ready.read_text())["port"]) if ready.exists() else None


async def _start(name: str, argv: list[str], env: dict[str, str], ready: Path) -> Server:
    # Spawned from the loop's thread, not a worker: the parent-death signal follows the
    # thread that forked, so an interrupted or killed benchmark leaves no server behind.
    log = ready.with_suffix(".log")
    proc = _spawn(argv, env, log)
    deadline = time.monotonic() + GUARD
    while (port := _ready_port(ready)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
        await asyncio.sleep(0.05)
    return Server(name, proc, port, log)


def _env(relay_src: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SYFTBOX_AUTH_ENABLED", None)
    env["SYFTBOX_HOTLINK_ICE_SERVERS"] = "none"
    if relay_src is not None:
        env["PYTHONPATH"] = str(relay_src)
    return env


PROFILE: Path | None = None  # --profile: run the relay under cProfile, stats here


@contextlib.asynccontextmanager
async def relay(workdir: Path, relay_src: Path | None) -> AsyncIterator[Server]:
    ready = workdir / f"relay-{time.monotonic_ns()}.json"
    profile = ["-m", "cProfile", "-o", str(PROFILE)] if PROFILE is not None else []
    argv = [sys.executable, *profile, "-m", "hotlink", "server", "--host", "127.0.0.1"]
    argv += ["--port", "0"]
    server = await _start("relay", [*argv, "--ready-file", str(ready)], _env(relay_src), ready)
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def bare_forwarder(workdir: Path) -> AsyncIterator[Server]:
    ready = workdir / f"forwarder-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "bench.relay_bench", "--forwarder", str(ready)]
    env = _env(None)
    env["PYTHONPATH"] = str(REPO)
    server = await _start("forwarder", argv, env, ready)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- relay clients


def email(name: str) -> str:
    return f"{name}@{DOMAIN}"


def acl_file(owner: str, folder: str, read: list[str]) -> FileWrite:
    rules = [{"pattern": "**", "access": {"admin": [], "write": [], "read": read}}]
    content = json.dumps({"rules": rules}).encode()  # JSON is YAML
    return FileWrite(pth=f"{owner}/{folder}/syft.pub.yaml", len=len(content), con=content)


async def ws_connect(
    session: aiohttp.ClientSession, url: str, user: str
) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(
        f"{url}/api/v1/events",
        params={"user": user},
        headers={"X-Syft-WS-Encodings": "msgpack"},
        **WS_OPTIONS,
    )


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = GUARD) -> Message:
    msg = await ws.receive(timeout)
    if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
        raise ConnectionError(f"connection ended: {msg.type.name} {msg.data!r}")
    return decode(msg.data)


async def expect[T](ws: aiohttp.ClientWebSocketResponse, kind: type[T]) -> tuple[Message, T]:
    while True:
        message = await recv(ws)
        if isinstance(message.payload, kind):
            return message, message.payload


async def send(ws: aiohttp.ClientWebSocketResponse, payload: Any) -> Message:
    message = Message(new_message_id(), payload)
    await ws.send_bytes(encode_msgpack(message))
    return message


async def publish(ws: aiohttp.ClientWebSocketResponse, acl: FileWrite) -> None:
    sent = await send(ws, acl)
    _, ack = await expect(ws, Ack)
    assert ack.oid == sent.id, ack


# ---------------------------------------------------------------- throughput


@dataclass
class Pair:
    frame: bytes
    window: int = WINDOW  # frames in flight
    sent: int = 0
    received: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)


async def send_in_window(
    ws: aiohttp.ClientWebSocketResponse, pair: Pair, stop: asyncio.Event
) -> None:
    """Send the pair's frame until ``stop``, at most ``pair.window`` ahead of its receiver."""
    while not stop.is_set():
        if pair.sent - pair.received >= pair.window:
            pair.room.clear()
            await pair.room.wait()
            continue
        await ws.send_bytes(pair.frame)
        pair.sent += 1


async def count_received(ws: aiohttp.ClientWebSocketResponse, pair: Pair) -> None:
    """Count the pair's frames as they arrive (every binary message is one), and let the
    sender go on once half its window is in."""
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            pair.received += 1
            if pair.sent - pair.received <= pair.window // 2:
                pair.room.set()


@dataclass
class Throughput:
    name: str
    msgs_per_s: float
    server_cpu_us_per_msg: float
    server_cpu_share: float  # of one core
    client_cpu_share: float


async def _measure(
    name: str, server: Server, pairs: list[Pair], seconds: float, stop: asyncio.Event
) -> Throughput:
    await asyncio.sleep(min(1.0, seconds / 4))  # warm up
    t0, c0, s0 = time.perf_counter(), server.cpu_seconds(), time.process_time()
    r0 = sum(p.received for p in pairs)
    await asyncio.sleep(seconds)
    t1, c1, s1 = time.perf_counter(), server.cpu_seconds(), time.process_time()
    msgs = sum(p.received for p in pairs) - r0
    stop.set()
    for p in pairs:
        p.room.set()
    elapsed = t1 - t0
    return Throughput(
        name,
        msgs / elapsed,
        (c1 - c0) * 1e6 / max(msgs, 1),
        (c1 - c0) / elapsed,
        (s1 - s0) / elapsed,
    )


def data_frame(sid: str, path: str, size: int = FRAME_PAYLOAD) -> bytes:
    payload = HotlinkData(sid=sid, seq=1, pth=path, pay=os.urandom(size))
    return encode_msgpack(Message(new_message_id(), payload))


async def _run_pairs(
    name: str,
    server: Server,
    conns: list[tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse]],
    pairs: list[Pair],
    seconds: float,
) -> Throughput:
    stop = asyncio.Event()
    both = list(zip(conns, pairs, strict=True))
    tasks = [asyncio.create_task(count_received(r, p)) for (_, r), p in both]
    tasks += [asyncio.create_task(send_in_window(s, p, stop)) for (s, _), p in both]
    try:
        return await _measure(name, server, pairs, seconds, stop)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for pair in conns for ws in pair))


async def throughput_forwarder(server: Server, cfg: Config) -> Throughput:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        conns, pairs = [], []
        for i in range(cfg.pairs):
            r = await http.ws_connect(f"{server.url}/fwd?pair={i}&role=r", **WS_OPTIONS)
            s = await http.ws_connect(f"{server.url}/fwd?pair={i}&role=s", **WS_OPTIONS)
            conns.append((s, r))
            pairs.append(Pair(data_frame(new_session_id(), f"s{i}@{DOMAIN}/bench/stream")))
        return await _run_pairs("bare forwarder", server, conns, pairs, cfg.seconds)


async def _relay_pair(
    http: aiohttp.ClientSession, url: str, i: int, tag: str
) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse, Pair]:
    sender, receiver = email(f"s{i}-{tag}"), email(f"r{i}-{tag}")
    s = await ws_connect(http, url, sender)
    r = await ws_connect(http, url, receiver)
    await publish(s, acl_file(sender, "bench", [receiver]))
    sid, path = new_session_id(), f"{sender}/bench/stream"
    await send(s, HotlinkOpen(sid=sid, pth=path, to=receiver))
    _, opened = await expect(r, HotlinkOpen)
    assert opened.sid == sid
    await send(r, HotlinkAccept(sid=sid))
    await expect(s, HotlinkAccept)
    return s, r, Pair(data_frame(sid, path))


async def throughput_relay(server: Server, cfg: Config, tag: str) -> Throughput:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        made = await asyncio.gather(
            *(_relay_pair(http, server.url, i, tag) for i in range(cfg.pairs))
        )
        conns = [(s, r) for s, r, _ in made]
        pairs = [p for _, _, p in made]
        return await _run_pairs("hotlink relay", server, conns, pairs, cfg.seconds)


# ---------------------------------------------------------------- opens, memory


@dataclass
class OpenLatency:
    connections: int
    with_to_ms: dict[str, float]
    without_to_ms: dict[str, float]


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "mean": statistics.mean(ordered) * 1000,
    }


async def _open_latency(
    opener: aiohttp.ClientWebSocketResponse,
    target: aiohttp.ClientWebSocketResponse,
    owner: str,
    reader: str,
    connections: int,
    count: int,
) -> OpenLatency:
    results: dict[bool, list[float]] = {True: [], False: []}
    path = f"{owner}/bench/stream"
    for i in range(-WARM_UP, count * 2):
        with_to = i % 2 == 0
        sid = new_session_id()
        t0 = time.perf_counter()
        await send(opener, HotlinkOpen(sid=sid, pth=path, to=reader if with_to else ""))
        _, got = await expect(target, HotlinkOpen)
        if i >= 0:
            results[with_to].append(time.perf_counter() - t0)
        assert got.sid == sid
        await send(opener, HotlinkClose(sid=sid, rsn="done"))
    return OpenLatency(connections, _percentiles(results[True]), _percentiles(results[False]))


async def _hold(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Read (and so answer pings) until the connection ends."""
    async for _ in ws:
        pass


@dataclass
class Scale:
    open_few: OpenLatency
    open_many: OpenLatency
    rss_before_kib: int
    rss_idle_kib: int
    rss_per_conn_kib: float
    rss_after_close_kib: int
    rss_second_round_kib: int | None
    connect_seconds: float


async def _connect_many(
    http: aiohttp.ClientSession, url: str, n: int, tag: str
) -> list[aiohttp.ClientWebSocketResponse]:
    gate = asyncio.Semaphore(100)

    async def one(k: int) -> aiohttp.ClientWebSocketResponse:
        async with gate:
            return await ws_connect(http, url, email(f"idle{k}-{tag}"))

    return list(await asyncio.gather(*(one(k) for k in range(n))))


async def _until_quiet(server: Server, settle: float = 0.5, timeout: float = 120.0) -> float:
    """Wait until the server used no CPU for ``settle`` seconds; returns its CPU seconds."""
    deadline = time.monotonic() + timeout
    last = server.cpu_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(settle)
        now = server.cpu_seconds()
        if now - last <= 1.0 / CLK_TCK:
            return now
        last = now
    return last


async def scale(server: Server, cfg: Config) -> Scale:
    owner, reader = email("opener"), email("target")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        opener = await ws_connect(http, server.url, owner)
        target = await ws_connect(http, server.url, reader)
        await publish(opener, acl_file(owner, "bench", [reader]))
        holder = asyncio.create_task(_hold(opener))  # answers pings; Opens get no reply
        # The opener's own reads go through the holder from here on: it never waits for one.
        few = await _open_latency(opener, target, owner, reader, 2, cfg.opens)
        await _until_quiet(server)
        rss0 = server.rss_kib()
        t0 = time.perf_counter()
        idle = await _connect_many(http, server.url, cfg.idle, "a")
        connect_seconds = time.perf_counter() - t0
        holders = [asyncio.create_task(_hold(ws)) for ws in idle]
        await _until_quiet(server)
        rss1 = server.rss_kib()
        many = await _open_latency(opener, target, owner, reader, cfg.idle + 2, cfg.opens)
        await asyncio.gather(*(ws.close() for ws in idle))
        await asyncio.gather(*holders, return_exceptions=True)
        await _until_quiet(server)
        rss2 = server.rss_kib()
        rss3 = None
        if cfg.leak_check:
            idle = await _connect_many(http, server.url, cfg.idle, "b")
            holders = [asyncio.create_task(_hold(ws)) for ws in idle]
            await _until_quiet(server)
            rss3 = server.rss_kib()
            await asyncio.gather(*(ws.close() for ws in idle))
            await asyncio.gather(*holders, return_exceptions=True)
        await opener.close()
        await target.close()
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
    return Scale(few, many, rss0, rss1, (rss1 - rss0) / cfg.idle, rss2, rss3, connect_seconds)


# ---------------------------------------------------------------- reconnect storm


@dataclass
class Storm:
    kind: str
    clients: int
    relay_cpu_s: float
    wall_s: float
    broadcasts_received: int


class StormClient:
    def __init__(self, k: int) -> None:
        self.user = email(f"storm{k}")
        self.acl = acl_file(self.user, "app_data/tunnel", [email(f"storm{(k + 1)}")])
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.broadcasts = 0
        self.reader: asyncio.Task[None] | None = None

    async def start(self, http: aiohttp.ClientSession, url: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            self.ws = await ws_connect(http, url, self.user)
        acked = asyncio.get_running_loop().create_future()
        sent = await send(self.ws, self.acl)
        self.reader = asyncio.create_task(self._read(sent.id, acked))
        await asyncio.wait_for(acked, STORM_GUARD)

    async def _read(self, oid: str, acked: asyncio.Future[None]) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not WSMsgType.BINARY:
                continue
            if FILE_WRITE_TYP in msg.data[:40]:  # another client's ACL file, as it sent it
                self.broadcasts += 1
                continue
            message = decode(msg.data)
            if isinstance(message.payload, FileWrite):
                self.broadcasts += 1
            elif isinstance(message.payload, Ack) and message.payload.oid == oid:
                if not acked.done():
                    acked.set_result(None)

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


async def _storm_round(
    kind: str,
    server: Server,
    http: aiohttp.ClientSession,
    clients: list[StormClient],
    before: Callable[[], Awaitable[None]] | None = None,
) -> Storm:
    await _until_quiet(server)
    c0, t0 = server.cpu_seconds(), time.perf_counter()
    if before is not None:
        await before()
    gate = asyncio.Semaphore(100)
    await asyncio.gather(*(c.start(http, server.url, gate) for c in clients))
    # Settled: every client has its Ack, no broadcast arrived for a while (the relay writes
    # them to idle clients in batches), and the relay is idle.
    received, still = -1, time.perf_counter()
    while time.perf_counter() - still < STORM_SETTLE:
        await asyncio.sleep(0.1)
        now = sum(c.broadcasts for c in clients)
        if now != received:
            received, still = now, time.perf_counter()
    c1 = await _until_quiet(server, settle=0.3)
    wall = time.perf_counter() - t0
    return Storm(kind, len(clients), c1 - c0, wall, sum(c.broadcasts for c in clients))


async def storm(server: Server, cfg: Config) -> list[Storm]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        clients = [StormClient(k) for k in range(cfg.storm)]
        cold = await _storm_round("fresh relay (restart)", server, http, clients)

        async def drop_all() -> None:
            await asyncio.gather(*(c.stop() for c in clients))
            for c in clients:
                c.broadcasts = 0

        warm = await _storm_round("same relay (network blip)", server, http, clients, drop_all)
        await asyncio.gather(*(c.stop() for c in clients))
    return [cold, warm]


# ---------------------------------------------------------------- the run


@dataclass
class Results:
    config: dict[str, Any]
    relay_src: str
    throughput: list[Throughput]
    scale: Scale | None
    storm: list[Storm]
    date: str


def results_from_json(doc: dict[str, Any]) -> Results:
    """The :class:`Results` a ``--json`` file holds."""
    scale = doc.get("scale")
    return Results(
        doc["config"],
        doc["relay_src"],
        [Throughput(**row) for row in doc.get("throughput") or []],
        Scale(
            **{
                **scale,
                "open_few": OpenLatency(**scale["open_few"]),
                "open_many": OpenLatency(**scale["open_many"]),
            }
        )
        if scale
        else None,
        [Storm(**row) for row in doc.get("storm") or []],
        doc["date"],
    )


def _median(rows: list[Throughput], name: str) -> float:
    return statistics.median(r.msgs_per_s for r in rows if r.name == name)


def _best(rows: list[Throughput], name: str) -> Throughput:
    mine = [r for r in rows if r.name == name]
    return max(mine, key=lambda r: r.msgs_per_s)


def markdown(res: Results) -> str:
    lines = [
        f"Relay benchmark, {res.date}, relay from {res.relay_src}",
        "",
        "| measurement | value |",
        "|---|---|",
    ]
    if res.throughput:
        fwd = _best(res.throughput, "bare forwarder")
        rel = _best(res.throughput, "hotlink relay")
        median_ratio = _median(res.throughput, "hotlink relay") / _median(
            res.throughput, "bare forwarder"
        )
        n = res.config["pairs"]
        lines += [
            f"| bare forwarder, {n} pairs, 4 KiB frames (best of {res.config['rounds']}) | "
            f"{fwd.msgs_per_s:,.0f} msgs/s, {fwd.server_cpu_us_per_msg:.1f} CPU-us/msg, "
            f"server {fwd.server_cpu_share:.0%} of a core, clients {fwd.client_cpu_share:.0%} |",
            f"| hotlink relay, same | {rel.msgs_per_s:,.0f} msgs/s, "
            f"{rel.server_cpu_us_per_msg:.1f} CPU-us/msg, relay {rel.server_cpu_share:.0%} of a "
            f"core, clients {rel.client_cpu_share:.0%} |",
            f"| relay / forwarder, msgs/s | {rel.msgs_per_s / fwd.msgs_per_s:.2f}x best to best, "
            f"{median_ratio:.2f}x median to median |",
            f"| relay on one core (pinned), msgs/s | {rel.msgs_per_s:,.0f} "
            f"(a saturated core: {1e6 / rel.server_cpu_us_per_msg:,.0f}) |",
        ]
        for r in res.throughput:
            lines.append(
                f"| &nbsp; run: {r.name} | {r.msgs_per_s:,.0f} msgs/s, "
                f"{r.server_cpu_us_per_msg:.1f} CPU-us/msg |"
            )
    if res.scale is not None:
        s = res.scale
        for o in (s.open_few, s.open_many):
            lines.append(
                f"| Open latency at {o.connections:,} connections, p50 / p99 ms | "
                f"with to: {o.with_to_ms['p50']:.3f} / {o.with_to_ms['p99']:.3f}; "
                f"without to: {o.without_to_ms['p50']:.3f} / {o.without_to_ms['p99']:.3f} |"
            )
        lines.append(
            f"| RSS per idle connection ({res.config['idle']:,} connections) | "
            f"{s.rss_per_conn_kib:.1f} KiB (RSS {s.rss_before_kib // 1024} MiB before, "
            f"{s.rss_idle_kib // 1024} MiB with them, {s.rss_after_close_kib // 1024} MiB after "
            f"they closed"
            + (
                f", {s.rss_second_round_kib // 1024} MiB with a second round"
                if s.rss_second_round_kib is not None
                else ""
            )
            + f"; connecting took {s.connect_seconds:.1f} s) |"
        )
    for st in res.storm:
        lines.append(
            f"| reconnect storm, {st.clients:,} clients, {st.kind} | relay CPU "
            f"{st.relay_cpu_s:.2f} s to settle ({st.wall_s:.1f} s wall, "
            f"{st.broadcasts_received:,} ACL broadcasts delivered) |"
        )
    return "\n".join(lines)


async def run(cfg: Config, relay_src: Path | None, only: set[str]) -> Results:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {CLIENT_CORE})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows: list[Throughput] = []
    scale_result = None
    storms: list[Storm] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        work = Path(tmp)
        if "throughput" in only:
            for round_no in range(cfg.rounds):
                async with bare_forwarder(work) as fwd:
                    rows.append(await throughput_forwarder(fwd, cfg))
                    say(f"forwarder: {rows[-1].msgs_per_s:,.0f} msgs/s")
                async with relay(work, relay_src) as srv:
                    rows.append(await throughput_relay(srv, cfg, str(round_no)))
                    say(
                        f"relay: {rows[-1].msgs_per_s:,.0f} msgs/s, "
                        f"{rows[-1].server_cpu_us_per_msg:.1f} CPU-us/msg"
                    )
        if "opens" in only:
            async with relay(work, relay_src) as srv:
                scale_result = await scale(srv, cfg)
                say(f"opens: {scale_result}")
        if "storm" in only:
            async with relay(work, relay_src) as srv:
                storms = await storm(srv, cfg)
                say(f"storm: {storms}")
    return Results(
        asdict(cfg),
        str(relay_src or "this tree"),
        rows,
        scale_result,
        storms,
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument("--relay-src", type=Path, help="run the relay from this source tree")
    parser.add_argument(
        "--only", default="throughput,opens,storm", help="comma-separated: throughput,opens,storm"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--forwarder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global PROFILE
    PROFILE = args.profile
    if args.forwarder is not None:
        asyncio.run(forwarder(args.forwarder))
        return
    # A SIGTERM (a timeout, say) unwinds like Ctrl-C, so the server processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    cfg = QUICK if args.quick else Config()
    relay_src = args.relay_src.resolve() if args.relay_src else None
    results = asyncio.run(run(cfg, relay_src, set(args.only.split(","))))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
