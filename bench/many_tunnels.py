"""Many tunnels at full speed between one pair of clients: what each client's memory comes to.

A fresh pair of clients (so each one's peak RSS, VmHWM, is this run's), ``tunnels`` tunnels
between them, each warmed up until its data channel is open, then every tunnel streams
``size`` bytes from alice's app to bob's at once, at full speed. Reported: each stream
intact (sha256), the path of each session after its stream, the aggregate throughput
(first byte written to last byte read, all streams) and each client's peak RSS.

``python -m bench.many_tunnels [--tunnels 10] [--size 128MiB] [--backend libdatachannel]``;
:func:`measure` for the benchmark harness. Measurements only; the goal is in bench/goals.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from hotlink.demo.measure import close_link
from hotlink.demo.payload import parse_size
from hotlink.demo.tunnel import (
    ALICE,
    BOB,
    TunnelSetup,
    client_env,
    open_tunnel,
    read_transports,
    start_pair,
    warm_up,
)
from hotlink.lab.stack import DevStack

from .flow import MIB, paced_read, peak_rss_mib, send_hashed

DEFAULT_TUNNELS = 10
DEFAULT_SIZE = 128 * MIB
STREAM_GUARD = 900.0  # failure guard for the whole set of streams


@dataclass
class ManyTunnelsResult:
    tunnels: int
    size: int  # per tunnel
    backend: str
    intact: int = 0  # streams whose every byte arrived, sha256 checked
    transports: list[str] = field(default_factory=list)  # alice's view, per tunnel
    seconds: float | None = None  # first byte written to the last byte read, all streams
    peak_rss_mib: dict[str, float | None] = field(default_factory=dict)  # per email
    elapsed: float = 0.0
    error: str | None = None

    @property
    def aggregate_mb_s(self) -> float | None:
        if not self.seconds or self.intact != self.tunnels:
            return None
        return self.tunnels * self.size / self.seconds / 1e6

    @property
    def all_p2p(self) -> bool:
        return len(self.transports) == self.tunnels and all(
            t.startswith("p2p") for t in self.transports
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "aggregate_mb_s": self.aggregate_mb_s, "all_p2p": self.all_p2p}


async def _stream(setup: TunnelSetup, size: int) -> bool:
    sent, (got, digest) = await asyncio.gather(
        send_hashed(setup.a[1], size), paced_read(setup.b[0], size)
    )
    return got == size and digest == sent


async def measure(
    tunnels: int = DEFAULT_TUNNELS, size: int = DEFAULT_SIZE, backend: str = "libdatachannel"
) -> ManyTunnelsResult:
    result = ManyTunnelsResult(tunnels, size, backend)
    started = time.perf_counter()
    try:
        with DevStack() as stack:
            await stack.astart_server()
            alice, bob = await start_pair(stack, env=client_env(backend, False))
            async with contextlib.AsyncExitStack() as links:
                setups = []
                for k in range(tunnels):
                    channel = stack.channel(ALICE, BOB, flow=f"shared/flows/hotlink-bench-t{k}")
                    setup = await open_tunnel(stack, alice, bob, channel=channel)
                    links.push_async_callback(close_link, setup.a)
                    links.push_async_callback(close_link, setup.b)
                    # One at a time, so "the newest session" telemetry reads is this one's.
                    await warm_up(setup, want_p2p=True)
                    setups.append(setup)
                began = time.perf_counter()
                async with asyncio.timeout(STREAM_GUARD):
                    oks = await asyncio.gather(*(_stream(s, size) for s in setups))
                result.seconds = time.perf_counter() - began
                result.intact = sum(oks)
                result.transports = [
                    str(read_transports(s).get("alice→bob") or "unknown") for s in setups
                ]
                result.peak_rss_mib = {c.email: peak_rss_mib(c.pid) for c in (alice, bob)}
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.elapsed = time.perf_counter() - started
    return result


def markdown(r: ManyTunnelsResult) -> str:
    rss = " / ".join(
        f"{v:.0f}" if v is not None else "-" for v in (r.peak_rss_mib.get(e) for e in (ALICE, BOB))
    )
    tp = f"{r.aggregate_mb_s:.1f}" if r.aggregate_mb_s is not None else "-"
    paths = ", ".join(sorted(set(r.transports))) or "-"
    lines = [
        f"#### {r.tunnels} tunnels at once\n",
        f"One pair of clients ({r.backend}), {r.tunnels} tunnels, each streaming "
        f"{r.size // MIB} MiB from alice's app to bob's at the same time, at full speed.\n",
        "| Tunnels | Streams intact | Paths | Aggregate (MB/s) | Peak RSS alice / bob (MiB) |",
        "|---:|---:|---|---:|---:|",
        f"| {r.tunnels} | {r.intact} / {r.tunnels} | {paths} | {tp} | {rss} |",
    ]
    if r.error:
        lines.append(f"\n_Failed: {r.error}_")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--tunnels", type=int, default=DEFAULT_TUNNELS)
    parser.add_argument("--size", default="128MiB", help="bytes per tunnel, e.g. 64MiB")
    parser.add_argument("--backend", default="libdatachannel")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(measure(args.tunnels, parse_size(args.size), args.backend))
    print(json.dumps(result.to_json(), indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
