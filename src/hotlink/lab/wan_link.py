"""A user-space impaired link between two network namespaces, for kernels without ``tc netem``.

Run as a process (root)::

    python -m hotlink.lab.wan_link --inner-ns NS --inner-dev DEV --outer-ns NS --outer-dev DEV \\
        [--delay-ms D] [--loss-pct P] [--seed S]

It creates two TAP devices, ``--inner-dev`` in ``--inner-ns`` (a host's or a router's
uplink) and ``--outer-dev`` in ``--outer-ns`` (its port on a bridge), and copies Ethernet
frames between them. Frames leaving the inner side (its egress, where netem would sit) are
dropped with probability ``--loss-pct`` and held for ``--delay-ms``: a constant delay keeps
their order, like netem's plain delay. Frames towards the inner side pass at once. A rate
limit, where wanted, is the caller's ``tbf`` qdisc on the inner device. The devices vanish
when this process exits, so stopping it is all the clean-up it needs. It prints ``ready``
on stdout once both devices exist.

The NAT lab (``tests/nat``) and the benchmark's WAN shape (``bench/wan.py``) start it with
:func:`start_link` where :func:`netem_available` says the kernel lacks netem.

It is a Python frame copier, one frame per read: on a 2-core machine (shared with the
endpoints) TCP through two of them (sender's egress, receiver's ingress) reached about
800 Mbit/s with no delay, 250-430 Mbit/s with 40 ms, and held a 300 Mbit/s ``tbf`` rate at
2-80 ms. The benchmark's fast link is therefore 300 Mbit/s, not 1 Gbit/s (bench/wan_matrix.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fcntl
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536
# Frames in flight inside the delay line; beyond that they are dropped, as a full queue would.
MAX_QUEUED = 20000
# The event loop sleeps in whole milliseconds, rounded up (epoll), so a timer fires up to a
# millisecond late. The delay line wakes this much early and sends what is due by then: a
# frame leaves between EARLY_S before and a little after its time instead of always up to a
# millisecond late (measured: a 2 ms round trip came out at 3.0-3.3 ms without it).
EARLY_S = 0.0008


class LinkError(RuntimeError):
    """The link process did not come up; the message says what it printed instead."""


# ---------------------------------------------------------------- for the callers


def netem_available(probe_ns: str) -> bool:
    """Whether the kernel has the netem qdisc (some minimal VM kernels lack sch_netem),
    tried in a throw-away namespace ``probe_ns``."""

    def run(*argv: str) -> bool:
        done = subprocess.run(list(argv), capture_output=True, timeout=30)
        return done.returncode == 0

    try:
        return (
            run("ip", "netns", "add", probe_ns)
            and run("ip", "-n", probe_ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
            and run("ip", "netns", "exec", probe_ns,
                    "tc", "qdisc", "add", "dev", "d0", "root", "netem", "delay", "1ms")
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        subprocess.run(["ip", "netns", "delete", probe_ns], capture_output=True, timeout=30)


def start_link(
    inner: tuple[str, str],
    outer: tuple[str, str],
    *,
    delay_ms: float = 0.0,
    loss_pct: float = 0.0,
    python: str = sys.executable,
) -> subprocess.Popen[bytes]:
    """Start the link between ``inner`` and ``outer`` (each ``(namespace, device)``) and wait
    until both devices exist; stop it by pid (:func:`hotlink.lab.processes.stop_process`)."""
    argv = [
        python, "-u", "-m", "hotlink.lab.wan_link",
        "--inner-ns", inner[0], "--inner-dev", inner[1],
        "--outer-ns", outer[0], "--outer-dev", outer[1],
        "--delay-ms", str(delay_ms), "--loss-pct", str(loss_pct),
    ]  # fmt: skip
    # Its own session: a Ctrl-C in the terminal must not tear the link down before the
    # caller's clean-up has stopped what runs over it.
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if line != "ready":
        # Imported here: the link process itself needs nothing else of the lab.
        from .processes import stop_process

        stop_process(proc, 5)
        raise LinkError(f"WAN link {inner[0]}/{inner[1]} did not start (said {line!r})")
    return proc


# ---------------------------------------------------------------- the link process


def open_tap(ns: str, dev: str) -> int:
    """Create TAP ``dev`` inside namespace ``ns``; returns its file descriptor.

    setns() moves this whole (single-threaded) process; the descriptor keeps the device's
    namespace, so the second device can be made after moving again."""
    with open(f"/run/netns/{ns}", "rb") as nsfile:
        os.setns(nsfile.fileno(), os.CLONE_NEWNET)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class DelayLine:
    """Frames from ``src`` reach ``dst`` ``delay`` seconds later, in order (one timer), each
    lost with probability ``loss``."""

    def __init__(
        self,
        src: int,
        dst: int,
        stop: asyncio.Event,
        *,
        delay: float = 0.0,
        loss: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.src, self.dst, self.stop = src, dst, stop
        self.delay, self.loss = delay, loss
        self.rng = rng or random.Random()
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.dropped = 0  # frames lost on purpose, to a full line or a full device

    def _write(self, frame: bytes) -> None:
        try:
            os.write(self.dst, frame)
        except OSError:
            self.dropped += 1  # device queue full or down: a lost frame, as on a real link

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
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            if self.delay <= 0:
                self._write(frame)
            elif len(self.queue) < MAX_QUEUED:
                self.queue.append((now + self.delay, frame))
            else:
                self.dropped += 1
        if self.queue and self.timer is None:
            self._schedule()

    def _schedule(self) -> None:
        due = self.queue[0][0] - EARLY_S
        self.timer = self.loop.call_later(max(0.0, due - time.monotonic()), self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = time.monotonic() + EARLY_S
        while self.queue and self.queue[0][0] <= now:
            self._write(self.queue.popleft()[1])
        if self.queue:
            self._schedule()


async def run_link(args: argparse.Namespace) -> None:
    inner = open_tap(args.inner_ns, args.inner_dev)
    outer = open_tap(args.outer_ns, args.outer_dev)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    rng = random.Random(args.seed)
    egress = DelayLine(
        inner, outer, stop, delay=args.delay_ms / 1000, loss=args.loss_pct / 100, rng=rng
    )
    ingress = DelayLine(outer, inner, stop)
    loop.add_reader(inner, egress.on_readable)
    loop.add_reader(outer, ingress.on_readable)
    print("ready", flush=True)
    await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hotlink.lab.wan_link")
    parser.add_argument("--inner-ns", required=True)
    parser.add_argument("--inner-dev", required=True)
    parser.add_argument("--outer-ns", required=True)
    parser.add_argument("--outer-dev", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        asyncio.run(run_link(args))
    except OSError as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
