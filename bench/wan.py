"""A WAN shape in network namespaces: three hosts on a bridge, each link impaired as asked.

    server 203.0.113.10 ─┐
    alice  203.0.113.21 ─┼─ br0 (hub namespace)
    bob    203.0.113.22 ─┘

Each host's link to the hub delays what the host sends (its egress), drops a share of it and
limits it to a rate (:class:`HostLink`). Every round trip crosses two egresses: with the
default shape (server 35 ms, alice and bob 5 ms, 100 Mbit/s) alice-server and bob-server
are 40 ms apart, alice-bob 10 ms. :meth:`WanShape.peers` builds the benchmark matrix's shape:
alice and bob a given round trip apart with a given loss in each direction, the relay close.

The delay and loss are ``tc netem`` where the kernel has it, else a user-space link
(:mod:`hotlink.lab.wan_link`); the rate is ``tbf`` then. A host whose link is neither delayed
nor lossy gets a plain veth pair (no copier process). Only documentation addresses; nothing
is connected to the host's own network.

Namespaces are ``hlb<pid>-<n>-<host>``; :meth:`WanShape.close` (also at exit) stops the
links and every process inside and deletes them.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hotlink.demo.measure import Connector, Link
from hotlink.lab.netns import open_connection_in_netns, socket_in_netns
from hotlink.lab.processes import stop_process
from hotlink.lab.wan_link import netem_available, start_link

HOSTS = ("server", "alice", "bob")
IPS = {"server": "203.0.113.10", "alice": "203.0.113.21", "bob": "203.0.113.22"}
RATE = "100mbit"
# The tbf queue holds this much sending time; beyond it packets are dropped, as at a router.
QUEUE_MS = 50

_shape_numbers = itertools.count()


@dataclass(frozen=True)
class HostLink:
    """What a host's link does to what the host sends: ``delay_ms`` one way, ``loss_pct``
    of its packets dropped, at most ``rate`` (tc syntax, e.g. ``100mbit``; None: no limit)."""

    delay_ms: float = 0.0
    loss_pct: float = 0.0
    rate: str | None = RATE

    @property
    def impaired(self) -> bool:
        return self.delay_ms > 0 or self.loss_pct > 0


DEFAULT_LINKS: Mapping[str, HostLink] = {
    "server": HostLink(35.0),
    "alice": HostLink(5.0),
    "bob": HostLink(5.0),
}
# Kept for callers of the first version of this module.
EGRESS_DELAY_MS = {host: link.delay_ms for host, link in DEFAULT_LINKS.items()}


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


_RATE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def rate_bits(rate: str) -> int:
    """``100mbit`` -> 100_000_000 (tc's decimal units; ``bit`` only, as we write them)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate.strip().lower())
    if match is None:
        raise ValueError(f"rate {rate!r}: expected e.g. 100mbit or 1gbit")
    return int(float(match.group(1)) * _RATE_UNITS[match.group(2)])


def tbf_args(rate: str) -> list[str]:
    """A ``tbf`` that passes ``rate`` smoothly: a bucket of 2 ms of data (at least 32 KiB,
    so a GSO burst of one TCP segment train fits) and a queue of QUEUE_MS."""
    bytes_per_s = rate_bits(rate) // 8
    burst = max(32 * 1024, bytes_per_s * 2 // 1000)
    limit = max(256 * 1024, bytes_per_s * QUEUE_MS // 1000)
    return ["tbf", "rate", rate, "burst", str(burst), "limit", str(limit)]


class WanShape:
    """The namespaces and links of one shape; build with ``with WanShape(...) as wan``."""

    def __init__(self, links: Mapping[str, HostLink] | None = None) -> None:
        self.links = dict(links or DEFAULT_LINKS)
        missing = set(HOSTS) - set(self.links)
        if missing:
            raise ValueError(f"no link for {sorted(missing)}")
        self.prefix = f"hlb{os.getpid()}-{next(_shape_numbers)}-"
        self.link_procs: list[subprocess.Popen[bytes]] = []
        self.method = ""
        self._closed = False

    @classmethod
    def peers(
        cls,
        rtt_ms: float,
        *,
        loss_pct: float = 0.0,
        rate: str | None = RATE,
        relay_delay_ms: float = 0.0,
    ) -> WanShape:
        """alice and bob ``rtt_ms`` apart (half on each one's egress), ``loss_pct`` lost in
        each direction, each sending at most ``rate``; the relay ``relay_delay_ms`` from
        the bridge, lossless (only the session's start crosses it)."""
        half = rtt_ms / 2
        return cls(
            {
                "server": HostLink(relay_delay_ms, 0.0, rate),
                "alice": HostLink(half, loss_pct, rate),
                "bob": HostLink(half, loss_pct, rate),
            }
        )

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
            link = self.links[host]
            port = f"p-{host}"
            if netem or not link.impaired:
                self._ip(host, "link", "add", "eth0", "type", "veth",
                         "peer", "name", port, "netns", self.ns("hub"))  # fmt: skip
            else:
                self._start_link(host, port, link)
            self._ip("hub", "link", "set", port, "master", "br0")
            self._ip("hub", "link", "set", port, "up")
            self._ip(host, "addr", "add", f"{IPS[host]}/24", "dev", "eth0")
            self._ip(host, "link", "set", "eth0", "up")
            self._shape(host, link, netem)

    def _shape(self, host: str, link: HostLink, netem: bool) -> None:
        if netem and link.impaired:
            args = ["netem", "limit", "100000", "delay", f"{link.delay_ms}ms"]
            if link.loss_pct:
                args += ["loss", f"{link.loss_pct}%"]
            if link.rate:
                args += ["rate", link.rate]
            self._exec(host, "tc", "qdisc", "add", "dev", "eth0", "root", *args)
        elif link.rate:
            self._exec(host, "tc", "qdisc", "add", "dev", "eth0", "root", *tbf_args(link.rate))

    def _start_link(self, host: str, port: str, link: HostLink) -> None:
        proc = start_link(
            (self.ns(host), "eth0"),
            (self.ns("hub"), port),
            delay_ms=link.delay_ms,
            loss_pct=link.loss_pct,
        )
        self.link_procs.append(proc)

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
        for proc in self.link_procs:
            stop_process(proc, 5)
        for host in (*HOSTS, "hub"):
            _run(["ip", "netns", "delete", self.ns(host)], check=False)

    def describe(self) -> str:
        parts = []
        for host in HOSTS:
            link = self.links[host]
            rate = link.rate or "unlimited"
            loss = f", {link.loss_pct:g} % loss" if link.loss_pct else ""
            parts.append(f"{host} egress {link.delay_ms:g} ms{loss}, {rate}")
        return "; ".join(parts)

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
