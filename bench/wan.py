"""A WAN shape in network namespaces: the relay far away, alice and bob close to each other.

    server 203.0.113.10 ─┐
    alice  203.0.113.21 ─┼─ br0 (hub namespace)
    bob    203.0.113.22 ─┘

Each host's link to the hub delays what the host sends (its egress) and limits it to
100 Mbit/s. With egress delays of 35 ms (server) and 5 ms (alice, bob), every round trip
crosses two egresses: alice-server and bob-server 40 ms, alice-bob 10 ms. The delay is
``tc netem`` where the kernel has it, else a user-space link (:mod:`hotlink.lab.wan_link`) with a
``tbf`` rate limit. Only documentation addresses; nothing is connected to the host's own network.

Namespaces are ``hlb<pid>-<host>``; :meth:`WanShape.close` (also at exit) stops the links
and every process inside and deletes them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from hotlink.demo.measure import Connector, Link
from hotlink.lab.netns import open_connection_in_netns, socket_in_netns
from hotlink.lab.processes import stop_process
from hotlink.lab.wan_link import netem_available, start_link

HOSTS = ("server", "alice", "bob")
IPS = {"server": "203.0.113.10", "alice": "203.0.113.21", "bob": "203.0.113.22"}
EGRESS_DELAY_MS = {"server": 35.0, "alice": 5.0, "bob": 5.0}
RATE = "100mbit"


class WanError(RuntimeError):
    pass


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise WanError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def unsupported_reason() -> str | None:
    """Why the WAN shape cannot be built here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run make bench as root for the WAN part)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


class WanShape:
    def __init__(self) -> None:
        self.prefix = f"hlb{os.getpid()}-"
        self.links: list[subprocess.Popen[bytes]] = []
        self.method = ""
        self._closed = False

    def ns(self, host: str) -> str:
        return self.prefix + host

    def __enter__(self) -> WanShape:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _ip(self, host: str, *args: str) -> None:
        _run(["ip", "-n", self.ns(host), *args])

    def _exec(self, host: str, *argv: str) -> None:
        _run(["ip", "netns", "exec", self.ns(host), *argv])

    def _build(self) -> None:
        netem = netem_available(self.ns("probe"))
        self.method = "tc netem" if netem else "user-space delay link + tbf"
        for host in ("hub", *HOSTS):
            _run(["ip", "netns", "add", self.ns(host)])
            self._exec(host, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
            self._exec(host, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
            self._ip(host, "link", "set", "lo", "up")
        self._ip("hub", "link", "add", "br0", "type", "bridge")
        self._ip("hub", "link", "set", "br0", "up")
        for host in HOSTS:
            port = f"p-{host}"
            if netem:
                self._ip(host, "link", "add", "eth0", "type", "veth",
                         "peer", "name", port, "netns", self.ns("hub"))  # fmt: skip
            else:
                self._start_link(host, port)
            self._ip("hub", "link", "set", port, "master", "br0")
            self._ip("hub", "link", "set", port, "up")
            self._ip(host, "addr", "add", f"{IPS[host]}/24", "dev", "eth0")
            self._ip(host, "link", "set", "eth0", "up")
            delay = f"{EGRESS_DELAY_MS[host]}ms"
            if netem:
                self._exec(host, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                           "limit", "10000", "delay", delay, "rate", RATE)  # fmt: skip
            else:
                self._exec(host, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                           "rate", RATE, "burst", "128kb", "latency", "100ms")  # fmt: skip

    def _start_link(self, host: str, port: str) -> None:
        link = start_link(
            (self.ns(host), "eth0"), (self.ns("hub"), port), delay_ms=EGRESS_DELAY_MS[host]
        )
        self.links.append(link)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in (*HOSTS, "hub"):
            ns = self.ns(host)
            pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            # Everything inside our namespaces was started by this benchmark.
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for proc in self.links:
            stop_process(proc, 5)
        for host in (*HOSTS, "hub"):
            _run(["ip", "netns", "delete", self.ns(host)], check=False)

    # ------------------------------------------------------------ reaching into a namespace

    def connector(self, host: str) -> Connector:
        """Connect to 127.0.0.1:<port> inside ``host``'s namespace, from this process."""
        ns = self.ns(host)

        async def connect(port: int) -> Link:
            return await open_connection_in_netns(ns, "127.0.0.1", port, limit=1 << 20)

        return connect

    def tcp_rtt_ms(self, src: str, dst: str, samples: int = 3) -> float:
        """The TCP handshake time from ``src`` to ``dst`` (one round trip), best of a few: a
        check that the shape is what we meant."""
        listener = socket_in_netns(self.ns(dst))
        try:
            listener.bind((IPS[dst], 0))
            listener.listen(samples)
            port = listener.getsockname()[1]
            best = float("inf")
            for _ in range(samples):
                with socket_in_netns(self.ns(src)) as sock:
                    sock.settimeout(5)
                    t0 = time.perf_counter()
                    sock.connect((IPS[dst], port))
                    best = min(best, (time.perf_counter() - t0) * 1000)
                listener.accept()[0].close()
            return best
        finally:
            listener.close()
