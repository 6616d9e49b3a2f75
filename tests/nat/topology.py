"""A NAT topology in Linux network namespaces: a public segment, two NAT routers, two LANs.

    alice 192.0.2.10 ── lan │router-alice│ wan 203.0.113.21 ─┐
                                                               ├─ br0 (public): 203.0.113.10, .11
    bob 198.51.100.10 ── lan │router-bob│ wan 203.0.113.22 ───┘   relay server, coturn

Only documentation ranges are used, nothing is connected to the host's own network namespace,
and IP forwarding is enabled only inside the two router namespaces. Each router masquerades
its LAN behind its WAN address: plain MASQUERADE keeps the source port when it is free, which
gives an endpoint-independent mapping ("easy" NAT); ``--random-fully`` picks a fresh random
port for every new flow, which is a symmetric NAT (address-and-port-dependent mapping). Both
filter inbound traffic by conntrack, like a home router, and drop unsolicited packets to
themselves (see ``_build`` for why that matters to hole punching).

The public host and the routers have a default route into a sink device, standing for the rest
of the internet: packets to unknown addresses vanish instead of failing in ``sendto()`` with
ENETUNREACH. That difference decides whether coturn keeps its allocations (see
``test_turn_unroutable_peer.py``); ``internet_sink=False`` builds the topology without it.

Namespaces are named ``hl<pid>-<n>-<host>``: parallel runs don't clash, and
:func:`sweep_stale_namespaces` removes only namespaces of ours whose owning process is dead.
Cleanup runs on ``close()`` (context manager exit, fixture finalizer), at interpreter exit and
on SIGTERM/SIGHUP.
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
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from hotlink.lab import wan_link
from hotlink.lab.processes import stop_process

NAT_DIR = Path(__file__).resolve().parent

# Addresses (documentation ranges only, RFC 5737).
PUBLIC_NET = "203.0.113.0/24"
PUBLIC_IP = "203.0.113.10"  # relay server, coturn
PUBLIC_IP2 = "203.0.113.11"  # second address of the public host, for NAT mapping probes
WAN_IPS = {"alice": "203.0.113.21", "bob": "203.0.113.22"}
LAN_NETS = {"alice": ("192.0.2", 24), "bob": ("198.51.100", 24)}

HOSTS = ("public", "router-alice", "router-bob", "alice", "bob")
_SHORT = {"public": "pub", "router-alice": "ra", "router-bob": "rb", "alice": "alice", "bob": "bob"}
_NAME_RE = re.compile(r"^hl(\d+)-\d+-")

_counter = itertools.count(1)
_live: set[NatTopology] = set()
_live_lock = threading.Lock()


class TopologyError(RuntimeError):
    """A namespace command failed; the message carries the command and its stderr."""


@dataclass(frozen=True)
class Impairment:
    """Delay and loss added to each router's uplink (WAN egress), like ``tc netem``.

    Each direction of a path between the LANs (or from a LAN to the public host) crosses exactly
    one uplink, so both directions see ``delay_ms`` and ``loss_pct`` once.
    """

    delay_ms: float = 20.0
    loss_pct: float = 2.0


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise TopologyError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _list_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False)
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent, e.g. a Popen child of this process
    # nobody waited for) still answers kill(0) but is gone for our purposes; without this
    # the teardown would wait out its full grace period for every one of them.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _kill_namespace_processes(ns: str) -> None:
    # Every process inside one of our namespaces was started by us (directly or as a child of
    # something we started), so ending them by pid is safe.
    out = _run(["ip", "netns", "pids", ns], check=False)
    pids = [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _pid_alive(p)]
            if pids:
                time.sleep(0.05)
        if not pids:
            return


def _delete_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    _run(["ip", "netns", "delete", ns], check=False)


def sweep_stale_namespaces() -> list[str]:
    """Delete namespaces named ``hl<pid>-...`` whose owning process no longer exists.

    Returns the names deleted. Namespaces of live processes (parallel runs) are left alone.
    """
    removed = []
    for ns in _list_namespaces():
        m = _NAME_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            _delete_namespace(ns)
            removed.append(ns)
    return removed


def unsupported_reason() -> str | None:
    """Why namespace NAT tests cannot run here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make system-deps installs iproute2 and iptables)"
    ns = f"hl{os.getpid()}-0-probe"
    try:
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        _run(["ip", "-n", ns, "link", "add", "b0", "type", "bridge"])
        _run(["ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-L", "-n"])
    except (TopologyError, OSError, subprocess.TimeoutExpired) as exc:
        return f"the kernel refuses network namespaces or NAT: {exc}"
    finally:
        _run(["ip", "netns", "delete", ns], check=False)
    return None


_netem_ok: bool | None = None


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (some minimal VM kernels lack sch_netem)."""
    global _netem_ok
    if _netem_ok is None:
        _netem_ok = wan_link.netem_available(f"hl{os.getpid()}-0-netem")
    return _netem_ok


class NatTopology:
    """Builds the namespaces on ``__enter__`` (or :meth:`build`) and removes them on close.

    ``symmetric`` makes both routers symmetric NATs; ``symmetric={"alice": True, "bob": False}``
    sets them one by one. ``impair`` adds delay and loss to both uplinks, with ``tc netem`` when
    the kernel has it, else with a user-space link (:mod:`hotlink.lab.wan_link`) that does the same.
    """

    def __init__(
        self,
        symmetric: bool | Mapping[str, bool] = False,
        impair: Impairment | None = None,
        *,
        impair_method: str = "auto",
        internet_sink: bool = True,
    ) -> None:
        if isinstance(symmetric, bool):
            self.symmetric = {"alice": symmetric, "bob": symmetric}
        else:
            self.symmetric = {"alice": bool(symmetric["alice"]), "bob": bool(symmetric["bob"])}
        self.impair = impair
        if impair_method not in ("auto", "netem", "shim"):
            raise ValueError(f"impair_method must be auto, netem or shim, not {impair_method!r}")
        self.impair_method = impair_method
        self.internet_sink = internet_sink
        self.prefix = f"hl{os.getpid()}-{next(_counter)}-"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._shims: list[subprocess.Popen[bytes]] = []
        self._built = False
        self._closed = False

    # ---- naming -------------------------------------------------------------------------

    def ns(self, host: str) -> str:
        if host not in _SHORT:
            raise KeyError(f"unknown host {host!r}; hosts are {', '.join(HOSTS)}")
        return self.prefix + _SHORT[host]

    def ip(self, host: str) -> str:
        """The address of a host: LAN address for alice/bob, public address otherwise."""
        if host == "public":
            return PUBLIC_IP
        if host in ("alice", "bob"):
            return f"{LAN_NETS[host][0]}.10"
        if host.startswith("router-"):
            return WAN_IPS[host.removeprefix("router-")]
        raise KeyError(f"unknown host {host!r}")

    def wan_ip(self, side: str) -> str:
        """The public address alice's or bob's traffic appears from."""
        return WAN_IPS[side]

    # ---- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> NatTopology:
        self.build()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def build(self) -> None:
        if self._built:
            return
        self._built = True
        _install_cleanup_handlers()
        with _live_lock:
            _live.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for host in HOSTS:
            _run(["ip", "netns", "add", self.ns(host)])
            # Only IPv4 documentation addresses: no IPv6 link-local candidates to muddy ICE.
            self._sysctl(host, "net.ipv6.conf.all.disable_ipv6", "1")
            self._sysctl(host, "net.ipv6.conf.default.disable_ipv6", "1")
            self._ip(host, "link", "set", "lo", "up")

        # The public segment is a bridge in the public namespace.
        self._ip("public", "link", "add", "br0", "type", "bridge")
        self._ip("public", "addr", "add", f"{PUBLIC_IP}/24", "dev", "br0")
        self._ip("public", "addr", "add", f"{PUBLIC_IP2}/24", "dev", "br0")
        self._ip("public", "link", "set", "br0", "up")
        if self.internet_sink:
            self._add_sink("public")

        use_shim = self.impair is not None and (
            self.impair_method == "shim" or (self.impair_method == "auto" and not netem_available())
        )
        for side in ("alice", "bob"):
            router = f"router-{side}"
            port = f"to-{_SHORT[router]}"
            if use_shim:
                self._start_shim(side, port)
            else:
                # Created directly inside the namespaces: nothing ever appears in the host's.
                self._ip(
                    router,
                    "link", "add", "wan", "type", "veth",
                    "peer", "name", port, "netns", self.ns("public"),
                )  # fmt: skip
            self._ip("public", "link", "set", port, "master", "br0")
            self._ip("public", "link", "set", port, "up")
            self._ip(router, "addr", "add", f"{WAN_IPS[side]}/24", "dev", "wan")
            self._ip(router, "link", "set", "wan", "up")

            net, plen = LAN_NETS[side]
            self._ip(
                router,
                "link", "add", "lan", "type", "veth",
                "peer", "name", "eth0", "netns", self.ns(side),
            )  # fmt: skip
            self._ip(router, "addr", "add", f"{net}.1/{plen}", "dev", "lan")
            self._ip(router, "link", "set", "lan", "up")
            self._ip(side, "addr", "add", f"{net}.10/{plen}", "dev", "eth0")
            self._ip(side, "link", "set", "eth0", "up")
            self._ip(side, "route", "add", "default", "via", f"{net}.1")

            if self.internet_sink:
                self._add_sink(router)
            self._sysctl(router, "net.ipv4.ip_forward", "1")
            masq = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
            if self.symmetric[side]:
                masq.append("--random-fully")
            self._iptables(router, *masq)
            # A home router: the LAN may go out, only replies come back in. Unsolicited packets
            # to the router itself are dropped too, and that matters: the drop happens before
            # conntrack confirms the flow, so no entry is left behind. Without it, a peer's
            # hole-punching packet that arrives before our own outgoing one leaves an
            # [UNREPLIED] inbound entry for exactly the reply tuple our mapping would need;
            # MASQUERADE then picks another port and even the "easy" NAT acts symmetric.
            self._iptables(router, "-A", "INPUT", "-i", "wan", "-m", "conntrack",
                           "--ctstate", "NEW,INVALID", "-j", "DROP")  # fmt: skip
            self._iptables(router, "-P", "FORWARD", "DROP")
            self._iptables(router, "-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT")
            self._iptables(
                router,
                "-A", "FORWARD", "-i", "wan", "-o", "lan",
                "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT",
            )  # fmt: skip
            if self.impair is not None and not use_shim:
                self._netem(router, self.impair)

    def _start_shim(self, side: str, port: str) -> None:
        assert self.impair is not None
        link = wan_link.start_link(
            (self.ns(f"router-{side}"), "wan"),
            (self.ns("public"), port),
            delay_ms=self.impair.delay_ms,
            loss_pct=self.impair.loss_pct,
        )
        self._shims.append(link)

    def close(self) -> None:
        """Stop every process started here and delete the namespaces. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for proc in [*self._procs, *self._shims]:
            stop_process(proc, 3)
        for host in reversed(HOSTS):
            ns = self.ns(host)
            if ns in _list_namespaces():
                _delete_namespace(ns)
        with _live_lock:
            _live.discard(self)

    # ---- running things inside ----------------------------------------------------------

    def run(
        self,
        host: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        **popen_kwargs: object,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace; the topology stops it on close.

        ``env`` is added to a copy of this process's environment.
        """
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.ns(host), *argv], env=full_env, **popen_kwargs
        )
        self._procs.append(proc)
        return proc

    def exec(
        self, host: str, cmd: str | Sequence[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside ``host``; a string goes through ``sh -c``."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise TopologyError(
                f"[{host}] {' '.join(argv)} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    @staticmethod
    def script(name: str, *args: str) -> list[str]:
        """argv that runs one of the scripts next to this file with this interpreter."""
        return [sys.executable, "-u", str(NAT_DIR / name), *args]

    def set_impairment(self, impair: Impairment | None) -> None:
        """Change the netem impairment of both uplinks (netem topologies only)."""
        for side in ("alice", "bob"):
            router = f"router-{side}"
            self.exec(router, ["tc", "qdisc", "del", "dev", "wan", "root"], check=False)
            if impair is not None:
                self._netem(router, impair)
        self.impair = impair

    def conntrack_entries(self, side: str) -> str:
        """The router's NAT table as the kernel sees it (for diagnostics)."""
        return self.exec(f"router-{side}", "cat /proc/net/nf_conntrack 2>/dev/null || true").stdout

    # ---- helpers ------------------------------------------------------------------------

    def _ip(self, host: str, *args: str) -> None:
        _run(["ip", "-n", self.ns(host), *args])

    def _add_sink(self, host: str) -> None:
        # "The rest of the internet": a default route into a dummy device, which swallows
        # packets silently. Without it, sending to an address with no route (a peer's private
        # host candidate, say) fails at once with ENETUNREACH, which no real host on the
        # internet sees, and coturn closes the whole allocation on that error.
        # dummy where the kernel has it; ifb (which drops what it did not get redirected from
        # ingress) on minimal kernels without CONFIG_DUMMY.
        try:
            self._ip(host, "link", "add", "sink", "type", "dummy")
        except TopologyError:
            self._ip(host, "link", "add", "sink", "type", "ifb")
        self._ip(host, "link", "set", "sink", "up")
        self._ip(host, "route", "add", "default", "dev", "sink")

    def _sysctl(self, host: str, key: str, value: str) -> None:
        _run(["ip", "netns", "exec", self.ns(host), "sysctl", "-q", "-w", f"{key}={value}"])

    def _iptables(self, host: str, *args: str) -> None:
        _run(["ip", "netns", "exec", self.ns(host), "iptables", "-w", *args])

    def _netem(self, host: str, impair: Impairment) -> None:
        _run(
            [
                "ip", "netns", "exec", self.ns(host), "tc", "qdisc", "add", "dev", "wan", "root",
                # netem's default queue (1000 packets) drops bursts at data-channel rates.
                "netem", "limit", "10000",
                "delay", f"{impair.delay_ms}ms", "loss", f"{impair.loss_pct}%",
            ]
        )  # fmt: skip


def close_all() -> None:
    """Tear down every topology of this process (atexit and signal handlers call this)."""
    with _live_lock:
        live = list(_live)
    for topo in live:
        with contextlib.suppress(Exception):
            topo.close()


_handlers_installed = False


def _install_cleanup_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(close_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(signum)

        def handler(
            num: int, frame: FrameType | None, previous: object = previous
        ) -> None:  # pragma: no cover - exercised by killing a run
            close_all()
            if callable(previous):
                previous(num, frame)
            else:
                # Default action: die by the same signal, now that the namespaces are gone.
                signal.signal(num, signal.SIG_DFL)
                os.kill(os.getpid(), num)

        signal.signal(signum, handler)
