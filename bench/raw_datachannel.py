"""Raw data-channel throughput and round-trip time of each WebRTC backend, without hotlink.

Two peers on this host's own addresses (host candidates only, no STUN/TURN), so the numbers
show what a backend's stack costs, with no network in the way:

* throughput: one side sends ``size`` bytes in ``chunk``-byte messages as fast as
  backpressure allows; timed from the first send until the last byte has arrived;
* RTT: ``rtt_samples`` messages of ``rtt_size`` bytes, each echoed back before the next.

``processes=1`` (the default) runs both peers in this process, on one event loop; with
``processes=2`` the answerer runs in a child process, signaled over a pipe, as the two ends
of a hotlink tunnel do. The two differ a lot: one process shares one GIL and one loop between
sender and receiver (no process wake-up between them, but no second core either).

Use :func:`measure` from the benchmark harness, or ``python -m bench.raw_datachannel``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from hotlink.protocol.ice import IceCandidate
from hotlink.webrtc import Peer, load_backend
from hotlink.webrtc.pair import connect_pair
from hotlink.webrtc.sctp_settings import SctpSettings

DEFAULT_SIZE = 32 * 1024 * 1024
# 60 KiB: the hotlink read size (DECISIONS.md #6), so each message is a typical HLNK frame.
DEFAULT_CHUNK = 60 * 1024
DEFAULT_RTT_SAMPLES = 200
DEFAULT_RTT_SIZE = 8
_ECHO_QUEUE = 64
_OPEN_TIMEOUT = 15.0
_BULK_TIMEOUT = 120.0


@dataclass(frozen=True)
class RawResult:
    offerer: str
    answerer: str
    bytes_sent: int
    chunk: int
    connect_s: float
    throughput_mib_s: float
    rtt_samples: int
    rtt_p50_ms: float
    rtt_p90_ms: float
    rtt_p99_ms: float
    processes: int = 1
    rtt_size: int = DEFAULT_RTT_SIZE
    mtu: int = 0

    def line(self) -> str:
        where = "1 proc " if self.processes == 1 else "2 procs"
        return (
            f"{self.offerer:>14} -> {self.answerer:<14} {where} "
            f"connect {self.connect_s * 1000:7.1f} ms  "
            f"throughput {self.throughput_mib_s:8.1f} MiB/s  "
            f"rtt p50 {self.rtt_p50_ms:6.3f} ms  p90 {self.rtt_p90_ms:6.3f} ms  "
            f"p99 {self.rtt_p99_ms:6.3f} ms"
        )


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def _result(
    offerer: str,
    answerer: str,
    *,
    size: int,
    chunk: int,
    connect_s: float,
    throughput: float,
    rtts: list[float],
    processes: int,
    rtt_size: int,
    mtu: int,
) -> RawResult:
    rtts = sorted(rtts)
    return RawResult(
        offerer=offerer,
        answerer=answerer,
        bytes_sent=size,
        chunk=chunk,
        connect_s=connect_s,
        throughput_mib_s=throughput,
        rtt_samples=len(rtts),
        rtt_p50_ms=statistics.median(rtts) if rtts else 0.0,
        rtt_p90_ms=_percentile(rtts, 0.90) if rtts else 0.0,
        rtt_p99_ms=_percentile(rtts, 0.99) if rtts else 0.0,
        processes=processes,
        rtt_size=rtt_size,
        mtu=mtu,
    )


async def _send_bulk(peer: Peer, size: int, chunk: int) -> None:
    payload = bytes(chunk)
    sent = 0
    while sent < size:
        piece = payload if size - sent >= chunk else payload[: size - sent]
        await peer.send(piece)
        sent += len(piece)


async def _ping_pong(
    peer: Peer, pongs: asyncio.Queue[bytes], samples: int, size: int
) -> list[float]:
    """Round trips in ms; every echo is checked."""
    rtts: list[float] = []
    for i in range(samples):
        message = (i.to_bytes(8, "big") * (size // 8 + 1))[:size]
        t0 = time.perf_counter()
        await peer.send(message)
        reply = await asyncio.wait_for(pongs.get(), 10)
        rtts.append((time.perf_counter() - t0) * 1000)
        if reply != message:
            raise RuntimeError("raw data channel echo differs")
    return rtts


async def measure(
    offerer: str = "libdatachannel",
    answerer: str | None = None,
    *,
    size: int = DEFAULT_SIZE,
    chunk: int = DEFAULT_CHUNK,
    rtt_samples: int = DEFAULT_RTT_SAMPLES,
    rtt_size: int = DEFAULT_RTT_SIZE,
    processes: int = 1,
    mtu: int = 0,
    sctp: SctpSettings | None = None,
) -> RawResult:
    """Open a pair (``offerer`` backend offers, ``answerer`` answers), measure, close it.

    ``processes``: 1 (both peers here) or 2 (the answerer in a child process). ``mtu`` goes
    to libdatachannel peers (0: its default), and so do ``sctp`` settings (None: the
    backend's defaults)."""
    answerer = answerer or offerer
    if processes == 2:
        return await _measure_two_processes(
            offerer,
            answerer,
            size=size,
            chunk=chunk,
            rtt_samples=rtt_samples,
            rtt_size=rtt_size,
            mtu=mtu,
            sctp=sctp,
        )
    if processes != 1:
        raise ValueError(f"processes must be 1 or 2, got {processes}")
    received = 0
    all_received = asyncio.Event()
    pongs: asyncio.Queue[bytes] = asyncio.Queue(_ECHO_QUEUE)
    pings: asyncio.Queue[bytes] = asyncio.Queue(_ECHO_QUEUE)
    bulk = True

    def answer_sink(data: bytes) -> None:
        nonlocal received
        if bulk:
            received += len(data)
            if received >= size:
                all_received.set()
        else:
            pings.put_nowait(data)

    offer_backend, answer_backend = (
        load_backend(offerer, mtu=mtu, sctp=sctp),
        load_backend(answerer, mtu=mtu, sctp=sctp),
    )
    started = time.perf_counter()
    pair = await connect_pair(
        offer_backend,
        answer_backend,
        offer_sink=pongs.put_nowait,
        answer_sink=answer_sink,
    )
    connect_s = time.perf_counter() - started
    try:
        chunk = min(chunk, pair.offerer.max_message_size)
        started = time.perf_counter()
        await _send_bulk(pair.offerer, size, chunk)
        await asyncio.wait_for(all_received.wait(), _BULK_TIMEOUT)
        throughput = size / (time.perf_counter() - started) / (1024 * 1024)

        bulk = False

        async def echo() -> None:
            while True:
                await pair.answerer.send(await pings.get())

        echo_task = asyncio.create_task(echo())
        try:
            rtts = await _ping_pong(pair.offerer, pongs, rtt_samples, rtt_size)
        finally:
            echo_task.cancel()
            await asyncio.gather(echo_task, return_exceptions=True)
    finally:
        await pair.close()
    return _result(
        offerer,
        answerer,
        size=size,
        chunk=chunk,
        connect_s=connect_s,
        throughput=throughput,
        rtts=rtts,
        processes=1,
        rtt_size=rtt_size,
        mtu=mtu,
    )


# ---------------------------------------------------------------- two processes
#
# The pipe carries tuples: ("offer" | "answer", sdp), ("candidate", (candidate, mid, index)),
# ("bulk", nbytes) -> ("received", nbytes) once that many bytes arrived, ("echo", None) to
# switch the child to echoing every message, and ("quit", None); the child starts with
# ("ready", None) once its peer exists.


class _Endpoint:
    """PeerEvents of one side of a two-process pair: candidates go down the pipe."""

    def __init__(self, conn: Connection, sink: Callable[[bytes], None]) -> None:
        self.conn = conn
        self.sink = sink
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()

    def on_local_candidate(self, cand: IceCandidate | None) -> None:
        if cand is not None:
            self.conn.send(("candidate", (cand.candidate, cand.sdp_mid, cand.sdp_mline_index)))

    def on_channel_open(self) -> None:
        self.opened.set()

    def on_message(self, data: bytes) -> None:
        self.sink(data)

    def on_channel_closed(self, reason: str) -> None:
        self.closed.set()


async def _receive(conn: Connection) -> tuple[str, Any]:
    """The next tuple from the pipe, without blocking the loop while none is there."""
    loop = asyncio.get_running_loop()
    while not conn.poll():
        readable: asyncio.Future[None] = loop.create_future()

        def wake(fut: asyncio.Future[None] = readable) -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(conn.fileno(), wake)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
    kind, value = conn.recv()
    return str(kind), value


def _answerer_process(conn: Connection, backend: str, mtu: int, sctp: SctpSettings | None) -> None:
    """Child process entry point: answer, then count bulk bytes or echo."""
    with contextlib.suppress(EOFError, OSError, KeyboardInterrupt):
        asyncio.run(_answerer(conn, backend, mtu, sctp))


async def _answerer(conn: Connection, backend: str, mtu: int, sctp: SctpSettings | None) -> None:
    echo: asyncio.Queue[bytes] = asyncio.Queue()
    expect = received = 0
    echoing = False

    def sink(data: bytes) -> None:
        nonlocal received
        if echoing:
            echo.put_nowait(data)
            return
        received += len(data)
        if expect and received >= expect:
            conn.send(("received", received))

    peer = load_backend(backend, mtu=mtu, sctp=sctp).create_peer([], _Endpoint(conn, sink))

    async def echo_all() -> None:
        while True:
            await peer.send(await echo.get())

    echo_task = asyncio.create_task(echo_all())
    conn.send(("ready", None))
    try:
        while True:
            kind, value = await _receive(conn)
            if kind == "offer":
                conn.send(("answer", await peer.accept_offer(value)))
            elif kind == "candidate":
                await peer.add_remote_candidate(IceCandidate(*value))
            elif kind == "bulk":
                expect, received = int(value), 0
            elif kind == "echo":
                echoing = True
            elif kind == "quit":
                return
    finally:
        echo_task.cancel()
        await asyncio.gather(echo_task, return_exceptions=True)
        await peer.close()


async def _measure_two_processes(
    offerer: str,
    answerer: str,
    *,
    size: int,
    chunk: int,
    rtt_samples: int,
    rtt_size: int,
    mtu: int,
    sctp: SctpSettings | None = None,
) -> RawResult:
    ours, theirs = multiprocessing.Pipe()
    # spawn: a fork would copy our event loop and the library's threads' state.
    child = multiprocessing.get_context("spawn").Process(
        target=_answerer_process, args=(theirs, answerer, mtu, sctp), daemon=True
    )
    child.start()
    theirs.close()
    pongs: asyncio.Queue[bytes] = asyncio.Queue()
    events = _Endpoint(ours, pongs.put_nowait)
    peer = load_backend(offerer, mtu=mtu, sctp=sctp).create_peer([], events)
    loop = asyncio.get_running_loop()
    bulk_done: asyncio.Future[int] = loop.create_future()
    child_ready = asyncio.Event()

    async def from_child() -> None:
        while True:
            kind, value = await _receive(ours)
            if kind == "ready":
                child_ready.set()
            elif kind == "answer":
                await peer.set_answer(value)
            elif kind == "candidate":
                await peer.add_remote_candidate(IceCandidate(*value))
            elif kind == "received" and not bulk_done.done():
                bulk_done.set_result(int(value))

    reader = asyncio.create_task(from_child())
    try:
        # Timed from here: the child's interpreter start is not the backend's connect time.
        await asyncio.wait_for(child_ready.wait(), _OPEN_TIMEOUT * 2)
        started = time.perf_counter()
        ours.send(("offer", await peer.create_offer()))
        await asyncio.wait_for(events.opened.wait(), _OPEN_TIMEOUT)
        connect_s = time.perf_counter() - started
        chunk = min(chunk, peer.max_message_size)
        ours.send(("bulk", size))
        # The child reads the pipe between messages; give it the order before the data.
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await _send_bulk(peer, size, chunk)
        await asyncio.wait_for(bulk_done, _BULK_TIMEOUT)
        throughput = size / (time.perf_counter() - started) / (1024 * 1024)
        ours.send(("echo", None))
        await asyncio.sleep(0.1)
        rtts = await _ping_pong(peer, pongs, rtt_samples, rtt_size)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        with contextlib.suppress(OSError):
            ours.send(("quit", None))
        await peer.close()
        await loop.run_in_executor(None, child.join, 10)
        if child.is_alive():
            child.terminate()
            await loop.run_in_executor(None, child.join, 5)
        ours.close()
    return _result(
        offerer,
        answerer,
        size=size,
        chunk=chunk,
        connect_s=connect_s,
        throughput=throughput,
        rtts=rtts,
        processes=2,
        rtt_size=rtt_size,
        mtu=mtu,
    )


PAIRS = (
    ("libdatachannel", "libdatachannel"),
    ("aiortc", "aiortc"),
    ("libdatachannel", "aiortc"),
    ("aiortc", "libdatachannel"),
)


async def measure_all(
    *,
    size: int = DEFAULT_SIZE,
    chunk: int = DEFAULT_CHUNK,
    rtt_samples: int = DEFAULT_RTT_SAMPLES,
    rtt_size: int = DEFAULT_RTT_SIZE,
    processes: int = 1,
    mtu: int = 0,
    pairs: tuple[tuple[str, str], ...] = PAIRS,
    sctp: SctpSettings | None = None,
) -> list[RawResult]:
    """Every same-backend and cross-backend pair, one after the other."""
    return [
        await measure(
            a,
            b,
            size=size,
            chunk=chunk,
            rtt_samples=rtt_samples,
            rtt_size=rtt_size,
            processes=processes,
            mtu=mtu,
            sctp=sctp,
        )
        for a, b in pairs
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="bytes to send")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="bytes per message")
    parser.add_argument("--rtt-samples", type=int, default=DEFAULT_RTT_SAMPLES)
    parser.add_argument("--rtt-size", type=int, default=DEFAULT_RTT_SIZE, help="ping bytes")
    parser.add_argument(
        "--processes", type=int, choices=(1, 2), default=1, help="2: the answerer in a child"
    )
    parser.add_argument("--mtu", type=int, default=0, help="libdatachannel MTU (0: default)")
    parser.add_argument(
        "--backend", choices=("libdatachannel", "aiortc"), help="only this same-backend pair"
    )
    parser.add_argument(
        "--sctp-buffer", type=int, default=None, help="libdatachannel SCTP send/receive buffer"
    )
    parser.add_argument(
        "--sctp-cc", type=int, default=0, help="libdatachannel congestion control (0-3)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    pairs = ((args.backend, args.backend),) if args.backend else PAIRS
    sctp = None
    if args.sctp_buffer is not None or args.sctp_cc:
        buffer = args.sctp_buffer or 0
        sctp = SctpSettings(
            recv_buffer_size=buffer,
            send_buffer_size=buffer,
            congestion_control_module=args.sctp_cc,
        )
    results = asyncio.run(
        measure_all(
            size=args.size,
            chunk=args.chunk,
            rtt_samples=args.rtt_samples,
            rtt_size=args.rtt_size,
            processes=args.processes,
            mtu=args.mtu,
            pairs=pairs,
            sctp=sctp,
        )
    )
    for result in results:
        if args.json:
            import json

            print(json.dumps(asdict(result)))
        else:
            print(result.line())


if __name__ == "__main__":
    main()
