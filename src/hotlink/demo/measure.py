"""What an app at each end of a tunnel does in the demo and the benchmarks: dial the local
proxy port, stream a checked payload one way, and ping-pong small messages.

Nothing here knows about hotlink: the same functions measure a plain TCP connection (the
benchmark's floor) and a tunnel through two client daemons.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .payload import DEFAULT_SEED, Mismatch, StreamChecker, stream_blocks

Link = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# Opens a connection to a port (on loopback, or inside a network namespace).
Connector = Callable[[int], Awaitable[Link]]

READ_SIZE = 256 * 1024


async def loopback_connect(port: int, host: str = "127.0.0.1") -> Link:
    return await asyncio.open_connection(host, port, limit=READ_SIZE * 4)


async def dial(
    port: int,
    *,
    timeout: float = 30.0,
    connect: Connector | None = None,
    retry_every: float = 0.05,
) -> Link:
    """Connect to a proxy port, retrying until it listens (the proxy starts on its scan)."""
    connect = connect or loopback_connect
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with asyncio.timeout(2.0):
                return await connect(port)
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(retry_every)


async def close_link(link: Link) -> None:
    writer = link[1]
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


@dataclass
class StreamResult:
    size: int
    received: int
    seconds: float
    mismatch: Mismatch | None

    @property
    def ok(self) -> bool:
        return self.mismatch is None and self.received == self.size

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB/s (10^6 bytes per second)."""
        return self.received / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def problem(self) -> str:
        if self.mismatch is not None:
            return self.mismatch.describe()
        if self.received != self.size:
            return f"{self.received} of {self.size} bytes arrived"
        return ""


async def stream_one_way(
    sender: asyncio.StreamWriter,
    receiver: asyncio.StreamReader,
    size: int,
    *,
    on_progress: Callable[[int], None] | None = None,
    corrupt_offset: int | None = None,
    seed: bytes = DEFAULT_SEED,
    timeout: float = 600.0,
) -> StreamResult:
    """Send ``size`` bytes of the demo stream on ``sender`` and check what ``receiver`` gets.

    Timed from the first write until the last byte arrived. ``corrupt_offset`` flips one
    byte of what is *sent* (a debug aid: the checker must catch it). Returns as soon as
    ``size`` bytes arrived (or the receiver saw EOF, or the first byte differed).
    """
    checker = StreamChecker(size, seed)

    async def send() -> None:
        offset = 0
        for piece in stream_blocks(size, seed):
            if corrupt_offset is not None and offset <= corrupt_offset < offset + len(piece):
                mutable = bytearray(piece)
                mutable[corrupt_offset - offset] ^= 0xFF
                piece = bytes(mutable)
            sender.write(piece)
            await sender.drain()
            offset += len(piece)

    async def receive() -> None:
        while not checker.complete:
            data = await receiver.read(READ_SIZE)
            if not data:
                return
            checker.feed(data)
            if on_progress is not None:
                on_progress(len(data))
            if not checker.ok:
                return

    started = time.perf_counter()
    sending = asyncio.create_task(send())
    try:
        async with asyncio.timeout(timeout):
            await receive()
        elapsed = time.perf_counter() - started
        if checker.ok and checker.complete:
            await sending
    finally:
        if not sending.done():
            sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    return StreamResult(size, checker.received, elapsed, checker.mismatch)


async def ping_pong(
    a: Link,
    b: Link,
    *,
    size: int = 64,
    rounds: int = 200,
    timeout: float = 30.0,
) -> list[float]:
    """``rounds`` round trips: ``a`` sends ``size`` bytes, ``b`` echoes them, ``a`` waits for
    the echo before the next. Returns each round trip in seconds (every echo is checked)."""
    a_reader, a_writer = a
    b_reader, b_writer = b

    async def echo() -> None:
        for _ in range(rounds):
            data = await b_reader.readexactly(size)
            b_writer.write(data)
            await b_writer.drain()

    echoer = asyncio.create_task(echo())
    samples: list[float] = []
    try:
        for i in range(rounds):
            message = (i.to_bytes(8, "big") * (size // 8 + 1))[:size]
            t0 = time.perf_counter()
            a_writer.write(message)
            async with asyncio.timeout(timeout):
                reply = await a_reader.readexactly(size)
            samples.append(time.perf_counter() - t0)
            if reply != message:
                raise AssertionError(f"round {i}: the echo differs from what was sent")
        await echoer
    finally:
        if not echoer.done():
            echoer.cancel()
        await asyncio.gather(echoer, return_exceptions=True)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    """The sorted sample at index round(fraction * (n - 1)); 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass(frozen=True)
class RttStats:
    rounds: int
    size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, samples: list[float], size: int) -> RttStats:
        return cls(
            rounds=len(samples),
            size=size,
            p50_ms=statistics.median(samples) * 1000 if samples else 0.0,
            p90_ms=percentile(samples, 0.90) * 1000,
            p99_ms=percentile(samples, 0.99) * 1000,
            mean_ms=statistics.fmean(samples) * 1000 if samples else 0.0,
        )


async def stream_bulk(
    sender: asyncio.StreamWriter,
    receiver: asyncio.StreamReader,
    size: int,
    *,
    timeout: float = 600.0,
    block: bytes | None = None,
) -> StreamResult:
    """Like :func:`stream_one_way` but unchecked (one block repeated, bytes only counted), so
    that the app's own work does not limit a benchmark of a fast path."""
    piece = block or os.urandom(1024 * 1024)
    received = 0

    async def send() -> None:
        sent = 0
        while sent < size:
            data = piece if size - sent >= len(piece) else piece[: size - sent]
            sender.write(data)
            await sender.drain()
            sent += len(data)

    started = time.perf_counter()
    sending = asyncio.create_task(send())
    try:
        async with asyncio.timeout(timeout):
            while received < size:
                data = await receiver.read(READ_SIZE)
                if not data:
                    break
                received += len(data)
        elapsed = time.perf_counter() - started
        if received >= size:
            await sending
    finally:
        if not sending.done():
            sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    return StreamResult(size, received, elapsed, None)
