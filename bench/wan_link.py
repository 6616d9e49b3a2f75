"""A user-space WAN link with delay, for kernels without ``tc netem`` (run as a script).

It creates two TAP devices, ``--inner-dev`` in namespace ``--inner-ns`` (the host's NIC) and
``--outer-dev`` in ``--outer-ns`` (its port on the hub's bridge), and copies Ethernet frames
between them. Frames the host sends are held for ``--delay-ms`` (a constant delay keeps their
order, like netem's plain delay); frames towards the host pass at once. The rate limit is a
``tbf`` qdisc on the inner device, set by the caller. The devices vanish when this process
exits, so stopping it is all the clean-up it needs.

Prints ``ready`` on stdout once both devices exist.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fcntl
import os
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536
# Frames in flight inside the delay line; beyond that they are dropped, as a full queue would.
MAX_QUEUED = 20000


def open_tap(ns: str, dev: str) -> int:
    """Create TAP ``dev`` inside namespace ``ns``; returns its file descriptor."""
    with open(f"/run/netns/{ns}", "rb") as nsfile:
        os.setns(nsfile.fileno(), os.CLONE_NEWNET)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class DelayLine:
    """Frames from ``src`` reach ``dst`` ``delay`` seconds later, in order (one timer)."""

    def __init__(self, src: int, dst: int, delay: float, stop: asyncio.Event) -> None:
        self.src, self.dst, self.delay, self.stop = src, dst, delay, stop
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None

    def _write(self, frame: bytes) -> None:
        try:
            os.write(self.dst, frame)
        except OSError:
            pass  # device queue full or down: a lost frame, as on a real link

    def on_readable(self) -> None:
        now = time.monotonic()
        while True:
            try:
                frame = os.read(self.src, MAX_FRAME)
            except BlockingIOError:
                break
            except OSError:
                self.stop.set()
                return
            if self.delay <= 0:
                self._write(frame)
            elif len(self.queue) < MAX_QUEUED:
                self.queue.append((now + self.delay, frame))
        if self.queue and self.timer is None:
            self._schedule()

    def _schedule(self) -> None:
        due = self.queue[0][0]
        self.timer = self.loop.call_later(max(0.0, due - time.monotonic()), self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            self._write(self.queue.popleft()[1])
        if self.queue:
            self._schedule()


async def main_async(args: argparse.Namespace) -> None:
    inner = open_tap(args.inner_ns, args.inner_dev)
    outer = open_tap(args.outer_ns, args.outer_dev)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    egress = DelayLine(inner, outer, args.delay_ms / 1000.0, stop)
    ingress = DelayLine(outer, inner, 0.0, stop)
    loop.add_reader(inner, egress.on_readable)
    loop.add_reader(outer, ingress.on_readable)
    print("ready", flush=True)
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inner-ns", required=True)
    parser.add_argument("--inner-dev", required=True)
    parser.add_argument("--outer-ns", required=True)
    parser.add_argument("--outer-dev", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        asyncio.run(main_async(args))
    except OSError as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
