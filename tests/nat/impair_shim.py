"""User-space stand-in for ``tc netem`` on a router uplink, for kernels without sch_netem.

Instead of a veth pair, the router's ``wan`` and its port on the public bridge are two TAP
devices, one in each namespace, and this process copies Ethernet frames between them. Frames
leaving the router (its uplink egress, where netem would sit) are delayed by a constant
``--delay-ms`` (constant, so order is kept as with netem's plain delay) and dropped with
probability ``--loss-pct``; frames towards the router pass untouched. The devices vanish when
this process exits, so stopping it is all the cleanup it needs.

Prints ``ready`` on stdout once both devices exist.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import random
import signal
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536


def open_tap(ns: str, dev: str) -> int:
    """Create TAP device ``dev`` inside namespace ``ns`` and return its file descriptor."""
    with open(f"/run/netns/{ns}", "rb") as nsfile:
        os.setns(nsfile.fileno(), os.CLONE_NEWNET)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TAP | IFF_NO_PI))
    return fd


async def pump(
    src: int, dst: int, delay_s: float, loss: float, rng: random.Random, stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()

    def deliver(frame: bytes) -> None:
        try:
            os.write(dst, frame)
        except OSError:
            pass  # device down or queue full: a lost frame, as on a real link

    def on_readable() -> None:
        while True:
            try:
                frame = os.read(src, MAX_FRAME)
            except BlockingIOError:
                return
            except OSError:
                stop.set()
                return
            if loss and rng.random() < loss:
                continue
            if delay_s:
                loop.call_later(delay_s, deliver, frame)
            else:
                deliver(frame)

    loop.add_reader(src, on_readable)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(src)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inner-ns", required=True)
    ap.add_argument("--inner-dev", required=True)
    ap.add_argument("--outer-ns", required=True)
    ap.add_argument("--outer-dev", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--loss-pct", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()

    inner = open_tap(args.inner_ns, args.inner_dev)
    outer = open_tap(args.outer_ns, args.outer_dev)
    print("ready", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    rng = random.Random(args.seed)
    await asyncio.gather(
        pump(inner, outer, args.delay_ms / 1000, args.loss_pct / 100, rng, stop),
        pump(outer, inner, 0.0, 0.0, rng, stop),
    )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(1)
