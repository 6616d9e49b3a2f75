"""The relay as a cluster: users on one replica against users spread over three
(``python -m bench.cluster_bench [--quick]``).

The workload of bench/relay_bench.py (N sender/receiver pairs of raw aiohttp WebSocket
clients in this process streaming HotlinkData frames, each sender keeping a window of frames
in flight), in four layouts measured in one run, interleaved round by round:

* **a** one relay without Redis (today's single process: the comparator);
* **b** one replica with ``--redis`` (what cluster mode costs when nothing crosses);
* **c** three replicas, each pair on one of them (round-robin: nothing crosses);
* **d** the same three replicas, opener on replica i and acceptor on replica i+1: every
  Data frame goes from the session's home (the opener's replica) through Redis Streams to
  the acceptor's replica.

All the processes are up for the whole run (one redis-server for b, another shared by the
three replicas of c and d); each measurement counts the CPU time (``/proc/<pid>/stat``
utime+stime, all threads) of its layout's relays and redis-server only. Every server
process is pinned to one core with ``taskset`` and the clients to the other, as in
relay_bench: on a two-core machine the server side has one core whatever the layout, so
CPU-us per message is the honest figure and the msgs/s ratios are indicative only.
Derived: the cost of a crossing message, d - c per message (relays and Redis apart).

Frames are 4 KiB and 60 KiB of payload; a pair keeps about 256 KiB in flight whatever the
frame size (64 frames of 4 KiB, 4 of 60 KiB). ACLs are preloaded from one ``--acl-dir``
given to every relay, so no upload (and its broadcast to every connection) runs. Before a
measurement every pair's Open has reached its acceptor and the Accept its opener; after it,
the senders stop and the receivers must get every frame sent (frames missing after a guard
are reported as lost). ``--quick`` runs fewer pairs, one round of shorter windows.
Never run from tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hotlink.protocol.codec import decode
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkOpen,
    HotlinkReject,
    new_session_id,
)

from .progress import say
from .relay_bench import (
    CLIENT_CORE,
    SERVER_CORE,
    Pair,
    Server,
    _env,
    _spawn,
    _start,
    count_received,
    data_frame,
    email,
    send,
    send_in_window,
    ws_connect,
)

DOMAIN_FOLDER = "bench"
FRAME_SIZES = (4096, 60 * 1024)
IN_FLIGHT_BYTES = 256 * 1024  # per pair: relay_bench's 64 frames of 4 KiB
NODE_TTL = "1"  # seconds, as the cluster tests run
OPEN_WAIT = 3.0  # an Open not at its acceptor by then is sent again (see _open_pair)
OPEN_TRIES = 5
ACCEPT_WAIT = 30.0  # a failure guard: the Accept of an Open that reached its acceptor
HEALTH_GUARD = 30.0
DRAIN_GUARD = 15.0  # after the senders stop, for the frames in flight to arrive
SAMPLE = 0.1  # seconds between progress samples (to see a stall)
WARM_UP = 1.0
REDIS_GUARD = 10.0
LOG_EXCERPTS = 12
# Lines of the relays' logs worth showing (their format: "... LEVEL logger: text").
NOTEWORTHY = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


@dataclass
class Config:
    pairs: int = 100
    seconds: float = 3.0  # per measurement
    rounds: int = 3  # of every layout and frame size, interleaved
    frames: tuple[int, ...] = FRAME_SIZES


QUICK = Config(pairs=30, seconds=1.5, rounds=1)


@dataclass(frozen=True)
class Layout:
    key: str
    name: str
    replicas: int  # of the deployment it runs on
    crossing: bool  # the acceptor on the next replica

    def places(self, i: int) -> tuple[int, int]:
        """(opener's replica, acceptor's replica) of pair ``i``."""
        home = i % self.replicas
        return home, ((home + 1) % self.replicas if self.crossing else home)


LAYOUTS = (
    Layout("a", "one relay, no Redis", 1, False),
    Layout("b", "one replica with Redis", 1, False),
    Layout("c", "three replicas, each pair on one", 3, False),
    Layout("d", "three replicas, every frame crosses", 3, True),
)


# ---------------------------------------------------------------- processes


@dataclass
class Deployment:
    """The server processes one or more layouts run on."""

    relays: list[Server]
    redis: Server | None = None

    def processes(self) -> list[Server]:
        return [*self.relays, *([self.redis] if self.redis is not None else [])]

    def cpu(self) -> dict[str, float]:
        return {p.name: p.cpu_seconds() for p in self.processes()}


def write_acl_dir(root: Path, pairs: int) -> None:
    """Sender i's folder readable by receiver i, for every relay to preload."""
    for i in range(pairs):
        folder = root / sender(i) / DOMAIN_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        rules = [{"pattern": "**", "access": {"admin": [], "write": [], "read": [receiver(i)]}}]
        (folder / "syft.pub.yaml").write_text(json.dumps({"rules": rules}))  # JSON is YAML


def sender(i: int) -> str:
    return email(f"s{i}")


def receiver(i: int) -> str:
    return email(f"r{i}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start_redis(binary: str, work: Path, name: str) -> Server:
    """A pinned redis-server on a free loopback port, answering PING; no persistence."""
    for _attempt in range(3):  # the port may be taken between our probe and its bind
        port = _free_port()
        folder = work / name
        folder.mkdir(exist_ok=True)
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(folder), "--protected-mode", "no"]
        # Spawned from the loop's thread: the parent-death signal follows that thread.
        proc = _spawn(argv, dict(os.environ), folder / "redis.log")
        server = Server(name, proc, port, folder / "redis.log")
        probe = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1)
        try:
            deadline = time.monotonic() + REDIS_GUARD
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(RedisError, OSError):
                    if await probe.ping():
                        return server
                await asyncio.sleep(0.05)
        finally:
            await probe.aclose()
        server.stop()
    raise RuntimeError(f"{name} did not start: {server.log.read_text()[-2000:]}")


async def _start_relay(
    work: Path, name: str, acl_dir: Path, redis: Server | None, env: dict[str, str]
) -> Server:
    ready = work / f"{name}.json"
    argv = [sys.executable, "-m", "hotlink", "server", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--acl-dir", str(acl_dir), "--ready-file", str(ready)]
    if redis is not None:
        argv += ["--redis", f"redis://127.0.0.1:{redis.port}/0", "--node-id", name]
        argv += ["--node-ttl", NODE_TTL]
    return await _start(name, argv, env, ready)


async def _health(http: aiohttp.ClientSession, server: Server) -> dict[str, Any]:
    try:
        async with http.get(f"{server.url}/healthz") as response:
            body = await response.json(content_type=None)
            return body if isinstance(body, dict) else {}
    except (aiohttp.ClientError, json.JSONDecodeError, TimeoutError):
        return {}


async def wait_healthy(deployment: Deployment) -> None:
    """Until every relay answers /healthz ok and (replicas) sees all the others."""
    want = len(deployment.relays)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for server in deployment.relays:
            deadline = time.monotonic() + HEALTH_GUARD
            while True:
                body = await _health(http, server)
                ok = body.get("status") == "ok"
                if ok and (deployment.redis is None or body.get("nodes") == want):
                    break
                if time.monotonic() > deadline or server.proc.poll() is not None:
                    raise RuntimeError(f"{server.name} not healthy: {body}")
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def deployments(work: Path, cfg: Config) -> AsyncIterator[dict[str, Deployment]]:
    """The processes of every layout (c and d share theirs), stopped by pid on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make system-deps)")
    acl_dir = work / "acls"
    write_acl_dir(acl_dir, cfg.pairs)
    env = _env(None)
    env.pop("SYFTBOX_HOTLINK_REDIS_URL", None)
    started: list[Server] = []
    try:
        single = Deployment([await _start_relay(work, "relay", acl_dir, None, env)])
        started += single.processes()
        redis_b = await _start_redis(binary, work, "redis-b")
        started.append(redis_b)
        one = Deployment([await _start_relay(work, "b1", acl_dir, redis_b, env)], redis_b)
        started += one.relays
        redis_cd = await _start_redis(binary, work, "redis-cd")
        started.append(redis_cd)
        three = Deployment([], redis_cd)
        for k in range(3):
            three.relays.append(await _start_relay(work, f"r{k + 1}", acl_dir, redis_cd, env))
            started.append(three.relays[-1])
        for deployment in (single, one, three):
            await wait_healthy(deployment)
        yield {"a": single, "b": one, "c": three, "d": three}
    finally:
        # Relays first: they say goodbye through Redis.
        for server in sorted(started, key=lambda s: s.name.startswith("redis")):
            server.stop()


# ---------------------------------------------------------------- pairs


async def _until(ws: aiohttp.ClientWebSocketResponse, sid: str, kind: type, timeout: float) -> None:
    """Read until a ``kind`` message of session ``sid``; a Reject or Close of it raises."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {kind.__name__} of {sid} within {timeout} s")
        try:
            msg = await ws.receive(left)
        except TimeoutError:
            raise TimeoutError(f"no {kind.__name__} of {sid} within {timeout} s") from None
        if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
            raise ConnectionError(f"connection ended: {msg.type.name} {msg.data!r}")
        payload = decode(msg.data).payload
        if getattr(payload, "sid", None) != sid:
            continue
        if isinstance(payload, kind):
            return
        if isinstance(payload, HotlinkReject | HotlinkClose):
            raise RuntimeError(f"{type(payload).__name__} of {sid}: {payload.rsn}")


@dataclass
class Conns:
    sender: aiohttp.ClientWebSocketResponse
    receiver: aiohttp.ClientWebSocketResponse
    pair: Pair
    open_tries: int


async def _open_pair(
    http: aiohttp.ClientSession,
    urls: tuple[str, str],
    i: int,
    payload: int,
    opened: list[aiohttp.ClientWebSocketResponse],
) -> Conns:
    """Connect pair ``i`` (acceptor first), open its session and wait for the Accept.

    On a replica the opener's Open is offered to the acceptor's connections it knows of;
    one that just connected to another replica may not be known yet (its arrival crosses
    Redis too), and such an Open reaches nobody: it is closed and sent again. The
    connections go to ``opened`` at once, for the caller to close whatever happens."""
    r = await ws_connect(http, urls[1], receiver(i))
    opened.append(r)
    s = await ws_connect(http, urls[0], sender(i))
    opened.append(s)
    path = f"{sender(i)}/{DOMAIN_FOLDER}/stream"
    for tries in range(1, OPEN_TRIES + 1):
        sid = new_session_id()
        await send(s, HotlinkOpen(sid=sid, pth=path, to=receiver(i)))
        try:
            await _until(r, sid, HotlinkOpen, OPEN_WAIT)
        except TimeoutError:
            await send(s, HotlinkClose(sid=sid, rsn="not offered; again"))
            continue
        await send(r, HotlinkAccept(sid=sid))
        await _until(s, sid, HotlinkAccept, ACCEPT_WAIT)
        window = max(1, IN_FLIGHT_BYTES // payload)
        return Conns(s, r, Pair(data_frame(sid, path, payload), window), tries)
    raise RuntimeError(f"pair {i}: the Open never reached its acceptor ({OPEN_TRIES} tries)")


# ---------------------------------------------------------------- one measurement


@dataclass
class Row:
    layout: str
    frame: int
    round: int
    pairs: int
    msgs: int = 0
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    mb_per_s: float = 0.0  # payload, 10^6 bytes
    cpu_s: dict[str, float] = field(default_factory=dict)  # per server process
    relay_us_per_msg: float = 0.0
    redis_us_per_msg: float = 0.0
    server_cpu_share: float = 0.0  # the layout's processes together, of one core
    client_cpu_share: float = 0.0
    longest_stall_s: float = 0.0  # longest stretch without a frame arriving anywhere
    lost: int = 0  # sent, never received (after the drain guard)
    open_retries: int = 0
    error: str | None = None

    @property
    def total_us_per_msg(self) -> float:
        return self.relay_us_per_msg + self.redis_us_per_msg


async def measure(
    layout: Layout, deployment: Deployment, cfg: Config, payload: int, round_no: int
) -> Row:
    row = Row(layout.key, payload, round_no, cfg.pairs)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        opened: list[aiohttp.ClientWebSocketResponse] = []
        tasks: list[asyncio.Task[Any]] = []
        try:
            urls = [s.url for s in deployment.relays]

            async def one(i: int) -> Conns:
                home, away = layout.places(i)
                return await _open_pair(http, (urls[home], urls[away]), i, payload, opened)

            # Tasks, so a failed pair's siblings are cancelled (below) before the closing.
            jobs = [asyncio.create_task(one(i)) for i in range(cfg.pairs)]
            tasks += jobs
            made = await asyncio.gather(*jobs)
            row.open_retries = sum(c.open_tries - 1 for c in made)
            await _stream(row, deployment, made, cfg.seconds, tasks)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}"[:400]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return row


async def _stream(
    row: Row,
    deployment: Deployment,
    made: list[Conns],
    seconds: float,
    tasks: list[asyncio.Task[Any]],
) -> None:
    pairs = [c.pair for c in made]
    stop = asyncio.Event()
    tasks += [asyncio.create_task(count_received(c.receiver, c.pair)) for c in made]
    senders = [asyncio.create_task(send_in_window(c.sender, c.pair, stop)) for c in made]
    tasks += senders
    await asyncio.sleep(WARM_UP)
    c0, s0, t0 = deployment.cpu(), time.process_time(), time.perf_counter()
    r0 = last = sum(p.received for p in pairs)
    still_since = t0
    while time.perf_counter() - t0 < seconds:
        await asyncio.sleep(SAMPLE)
        got = sum(p.received for p in pairs)
        if got != last:
            last, still_since = got, time.perf_counter()
        row.longest_stall_s = max(row.longest_stall_s, time.perf_counter() - still_since)
    c1, s1, t1 = deployment.cpu(), time.process_time(), time.perf_counter()
    row.msgs = sum(p.received for p in pairs) - r0
    if row.msgs == 0:
        raise RuntimeError(f"no frame arrived in {seconds} s (a stall)")
    row.seconds = t1 - t0
    row.msgs_per_s = row.msgs / row.seconds
    row.mb_per_s = row.msgs * row.frame / row.seconds / 1e6
    row.cpu_s = {name: c1[name] - c0[name] for name in c0}
    relay_cpu = sum(v for k, v in row.cpu_s.items() if not k.startswith("redis"))
    redis_cpu = sum(v for k, v in row.cpu_s.items() if k.startswith("redis"))
    row.relay_us_per_msg = relay_cpu * 1e6 / max(row.msgs, 1)
    row.redis_us_per_msg = redis_cpu * 1e6 / max(row.msgs, 1)
    row.server_cpu_share = (relay_cpu + redis_cpu) / row.seconds
    row.client_cpu_share = (s1 - s0) / row.seconds
    # Stop sending; every frame sent must arrive.
    stop.set()
    for p in pairs:
        p.room.set()
    await asyncio.gather(*senders, return_exceptions=True)
    for _poll in range(int(DRAIN_GUARD / SAMPLE)):
        if all(p.received >= p.sent for p in pairs):
            break
        await asyncio.sleep(SAMPLE)
    row.lost = sum(max(0, p.sent - p.received) for p in pairs)


# ---------------------------------------------------------------- the run


@dataclass
class Summary:
    """One layout at one frame size over its rounds."""

    layout: str
    frame: int
    rounds: int
    msgs_per_s: float  # median
    mb_per_s: float  # median
    relay_us_per_msg: float  # all rounds' CPU over all rounds' messages
    redis_us_per_msg: float
    cpu_s: dict[str, float]  # per process, all rounds
    server_cpu_share: float  # median
    client_cpu_share: float  # median
    lost: int
    longest_stall_s: float
    open_retries: int

    @property
    def total_us_per_msg(self) -> float:
        return self.relay_us_per_msg + self.redis_us_per_msg


def summarize(rows: Sequence[Row], layout: str, frame: int) -> Summary | None:
    mine = [r for r in rows if r.layout == layout and r.frame == frame and r.error is None]
    if not mine:
        return None
    msgs = sum(r.msgs for r in mine) or 1
    cpu: dict[str, float] = {}
    for r in mine:
        for name, value in r.cpu_s.items():
            cpu[name] = cpu.get(name, 0.0) + value
    relay = sum(v for k, v in cpu.items() if not k.startswith("redis"))
    redis = sum(v for k, v in cpu.items() if k.startswith("redis"))
    return Summary(
        layout,
        frame,
        len(mine),
        statistics.median(r.msgs_per_s for r in mine),
        statistics.median(r.mb_per_s for r in mine),
        relay * 1e6 / msgs,
        redis * 1e6 / msgs,
        cpu,
        statistics.median(r.server_cpu_share for r in mine),
        statistics.median(r.client_cpu_share for r in mine),
        sum(r.lost for r in mine),
        max(r.longest_stall_s for r in mine),
        sum(r.open_retries for r in mine),
    )


@dataclass
class Results:
    config: dict[str, Any]
    cores: int
    rows: list[Row]
    log_lines: dict[str, list[str]]  # per process: noteworthy lines (capped)
    log_counts: dict[str, int]
    date: str
    error: str | None = None


def results_from_json(doc: dict[str, Any]) -> Results:
    """The :class:`Results` a ``--json`` file holds."""
    fields = {f for f in Row.__dataclass_fields__}
    return Results(
        doc["config"],
        doc["cores"],
        [Row(**{k: v for k, v in row.items() if k in fields}) for row in doc.get("rows") or []],
        doc.get("log_lines") or {},
        doc.get("log_counts") or {},
        doc["date"],
        doc.get("error"),
    )


def _scan_logs(processes: Sequence[Server]) -> tuple[dict[str, list[str]], dict[str, int]]:
    lines: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for proc in processes:
        with contextlib.suppress(OSError):
            text = proc.log.read_text(errors="replace").splitlines()
            if proc.name.startswith("redis"):
                # redis-server marks warnings with '#'; those of its start-up are not news.
                ready = next(
                    (n for n, line in enumerate(text) if "Ready to accept connections" in line),
                    len(text),
                )
                found = [line for line in text[ready:] if " # " in line]
            else:
                found = [line for line in text if NOTEWORTHY.search(line)]
            counts[proc.name] = len(found)
            lines[proc.name] = [line[:300] for line in found[:LOG_EXCERPTS]]
    return lines, counts


async def run(cfg: Config) -> Results:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {CLIENT_CORE})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows: list[Row] = []
    logs: tuple[dict[str, list[str]], dict[str, int]] = ({}, {})
    error = None
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        work = Path(tmp)
        try:
            async with deployments(work, cfg) as by_layout:
                processes = {p.name: p for d in by_layout.values() for p in d.processes()}
                try:
                    for round_no in range(cfg.rounds):
                        for frame in cfg.frames:
                            for layout in LAYOUTS:
                                row = await measure(
                                    layout, by_layout[layout.key], cfg, frame, round_no
                                )
                                rows.append(row)
                                say(_line(row))
                finally:
                    # Read before the processes stop (and the folder goes).
                    logs = _scan_logs(list(processes.values()))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            say(f"cluster bench: {error}")
    return Results(asdict(cfg), os.cpu_count() or 1, rows, logs[0], logs[1], date, error)


def _line(row: Row) -> str:
    if row.error:
        return f"{row.layout} {row.frame // 1024} KiB round {row.round}: FAILED {row.error}"
    return (
        f"{row.layout} {row.frame // 1024} KiB round {row.round}: {row.msgs_per_s:,.0f} msgs/s, "
        f"{row.mb_per_s:.1f} MB/s, relays {row.relay_us_per_msg:.1f} + redis "
        f"{row.redis_us_per_msg:.1f} CPU-us/msg, lost {row.lost}, "
        f"stall {row.longest_stall_s:.2f} s, open retries {row.open_retries}"
    )


# ---------------------------------------------------------------- the report


def _cpu_text(s: Summary) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in s.cpu_s.items())


def markdown(res: Results) -> str:
    cfg = res.config
    lines = [
        f"Cluster benchmark, {res.date}: {cfg['pairs']} pairs of raw WebSocket clients, "
        f"{cfg['rounds']} round(s) of {cfg['seconds']:.1f} s per layout and frame size, "
        "interleaved; a pair keeps about 256 KiB in flight. Every relay and redis-server is "
        f"pinned to core {SERVER_CORE}, the clients to core {CLIENT_CORE}.",
        "",
        f"_This machine has {res.cores} cores: the server side of every layout shares one, "
        "so CPU-us per message is the honest figure; the msgs/s ratios are indicative only "
        "(three replicas and Redis on one core, clients on the other)._",
    ]
    if res.error:
        lines += ["", f"_Cluster benchmark failed: {res.error}_"]
    names = {layout.key: layout.name for layout in LAYOUTS}
    for frame in cfg["frames"]:
        sums = {key: summarize(res.rows, key, frame) for key in names}
        lines += [
            "",
            f"| {frame // 1024} KiB frames | msgs/s | MB/s | CPU-us/msg relays | "
            "CPU-us/msg redis | CPU-us/msg total | CPU s per process | servers / clients, "
            "of a core | lost frames | longest stall (s) |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        for key, name in names.items():
            s = sums[key]
            if s is None:
                failed = [r.error for r in res.rows if r.layout == key and r.frame == frame]
                why = (failed[0] or "")[:120] if failed else "not run"
                lines.append(f"| {key}: {name} | failed: {why} | | | | | | | | |")
                continue
            lines.append(
                f"| {key}: {name} | {s.msgs_per_s:,.0f} | {s.mb_per_s:.1f} | "
                f"{s.relay_us_per_msg:.1f} | {s.redis_us_per_msg:.1f} | "
                f"{s.total_us_per_msg:.1f} | {_cpu_text(s)} | {s.server_cpu_share:.0%} / "
                f"{s.client_cpu_share:.0%} | {s.lost} | "
                f"{s.longest_stall_s:.2f} |"
            )
        a, b, c, d = (sums[k] for k in "abcd")
        if c is not None and d is not None:
            lines.append(
                f"| crossing a node (d - c), per message | | | "
                f"{d.relay_us_per_msg - c.relay_us_per_msg:+.1f} | "
                f"{d.redis_us_per_msg - c.redis_us_per_msg:+.1f} | "
                f"{d.total_us_per_msg - c.total_us_per_msg:+.1f} | | | | |"
            )
        if a is not None:
            ratios = [
                f"{k}/a {s.msgs_per_s / a.msgs_per_s:.2f}x"
                for k, s in (("b", b), ("c", c), ("d", d))
                if s is not None
            ]
            lines.append(f"| msgs/s against a | {', '.join(ratios)} | | | | | | | | |")
    retries = sum(r.open_retries for r in res.rows)
    if retries:
        lines += [
            "",
            f"_{retries} Open(s) were sent again: the acceptor's connection, new on another "
            "replica, was not yet known to the opener's._",
        ]
    noted = {k: v for k, v in res.log_counts.items() if v}
    if noted:
        lines += [
            "",
            "Log lines at WARNING or above: "
            + ", ".join(f"{k} {v}" for k, v in noted.items())
            + ". First of them:",
            "",
            "```",
        ]
        for name in noted:
            lines += [f"{name}: {line}" for line in res.log_lines.get(name, [])]
        lines.append("```")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs, one short round")
    parser.add_argument("--pairs", type=int, help="sender/receiver pairs (default 100, quick 30)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    # A SIGTERM (a timeout, say) unwinds like Ctrl-C, so the server processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    cfg = QUICK if args.quick else Config()
    if args.pairs:
        cfg = Config(args.pairs, cfg.seconds, cfg.rounds, cfg.frames)
    results = asyncio.run(run(cfg))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    print(markdown(results))
    if results.error is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
