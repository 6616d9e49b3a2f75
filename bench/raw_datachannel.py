"""Raw data-channel throughput and round-trip time of each WebRTC backend, without hotlink.

Two peers in one process on this host's own addresses (host candidates only, no STUN/TURN),
so the numbers show what a backend's stack costs, with no network in the way:

* throughput: one side sends ``size`` bytes in ``chunk``-byte messages as fast as
  backpressure allows; timed from the first send until the last byte has arrived;
* RTT: ``rtt_samples`` small ping messages, each echoed back before the next is sent.

Use :func:`measure` from the benchmark harness, or ``python -m bench.raw_datachannel``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import asdict, dataclass

from hotlink.webrtc import load_backend
from hotlink.webrtc.pair import connect_pair

DEFAULT_SIZE = 32 * 1024 * 1024
# 60 KiB: the hotlink read size (DECISIONS.md #6), so each message is a typical HLNK frame.
DEFAULT_CHUNK = 60 * 1024
DEFAULT_RTT_SAMPLES = 200
_ECHO_QUEUE = 64


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

    def line(self) -> str:
        return (
            f"{self.offerer:>14} -> {self.answerer:<14} "
            f"connect {self.connect_s * 1000:7.1f} ms  "
            f"throughput {self.throughput_mib_s:8.1f} MiB/s  "
            f"rtt p50 {self.rtt_p50_ms:6.3f} ms  p90 {self.rtt_p90_ms:6.3f} ms  "
            f"p99 {self.rtt_p99_ms:6.3f} ms"
        )


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def measure(
    offerer: str = "libdatachannel",
    answerer: str | None = None,
    *,
    size: int = DEFAULT_SIZE,
    chunk: int = DEFAULT_CHUNK,
    rtt_samples: int = DEFAULT_RTT_SAMPLES,
) -> RawResult:
    """Open a pair (``offerer`` backend offers, ``answerer`` answers), measure, close it."""
    answerer = answerer or offerer
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

    offer_backend, answer_backend = load_backend(offerer), load_backend(answerer)
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
        payload = bytes(chunk)
        sent = 0
        started = time.perf_counter()
        while sent < size:
            piece = payload if size - sent >= chunk else payload[: size - sent]
            await pair.offerer.send(piece)
            sent += len(piece)
        await asyncio.wait_for(all_received.wait(), 120)
        throughput = size / (time.perf_counter() - started) / (1024 * 1024)

        bulk = False

        async def echo() -> None:
            while True:
                await pair.answerer.send(await pings.get())

        echo_task = asyncio.create_task(echo())
        rtts: list[float] = []
        try:
            for i in range(rtt_samples):
                t0 = time.perf_counter()
                await pair.offerer.send(i.to_bytes(8, "big"))
                await asyncio.wait_for(pongs.get(), 10)
                rtts.append((time.perf_counter() - t0) * 1000)
        finally:
            echo_task.cancel()
            await asyncio.gather(echo_task, return_exceptions=True)
        rtts.sort()
    finally:
        await pair.close()
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
    )


PAIRS = (
    ("libdatachannel", "libdatachannel"),
    ("aiortc", "aiortc"),
    ("libdatachannel", "aiortc"),
    ("aiortc", "libdatachannel"),
)


async def measure_all(
    *, size: int = DEFAULT_SIZE, chunk: int = DEFAULT_CHUNK, rtt_samples: int = DEFAULT_RTT_SAMPLES
) -> list[RawResult]:
    """Every same-backend and cross-backend pair, one after the other."""
    return [await measure(a, b, size=size, chunk=chunk, rtt_samples=rtt_samples) for a, b in PAIRS]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="bytes to send")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="bytes per message")
    parser.add_argument("--rtt-samples", type=int, default=DEFAULT_RTT_SAMPLES)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    results = asyncio.run(
        measure_all(size=args.size, chunk=args.chunk, rtt_samples=args.rtt_samples)
    )
    for result in results:
        if args.json:
            import json

            print(json.dumps(asdict(result)))
        else:
            print(result.line())


if __name__ == "__main__":
    main()
