"""A real coturn (Debian's ``turnserver``) for tests: STUN and TURN on loopback or in a netns.

Usage::

    from support.coturn import coturn, require_turnserver

    require_turnserver()                       # pytest.skip with a clear message if missing
    with coturn() as turn:                     # static user syftbox/syftbox, loopback, free port
        servers = turn.ice_servers("turn")     # [IceServer("turn:127.0.3.1:<port>?transport=udp",
                                               #             "syftbox", "syftbox")]

    with coturn(secret="s3cret", user=None) as turn:       # TURN REST (use-auth-secret) only
        username, password = turn.credentials("alice")     # short-lived, like the relay server

    # Inside a network namespace (namespace NAT tests): listen on the "public" address and
    # relay from it; run as root. ``ip netns exec`` execs turnserver, so ``pid`` is its pid.
    turn = start_coturn(netns="pub", listening_ip="203.0.113.1", port=3478)
    ...
    turn.stop()

API:

* ``start_coturn(**options) -> CoturnServer`` starts and waits until the UDP listener is bound
  (and, outside a namespace, answers a STUN Binding request); ``coturn(**options)`` is the
  same as a context manager that always stops it. Options (all keyword-only):
  ``listening_ip`` ("127.0.0.1"), ``relay_ip`` (default: ``listening_ip``), ``external_ip``
  (``"public"`` or ``"public/private"``, coturn's ``--external-ip``), ``port`` (default: a
  free port outside a namespace, 3478 inside one), ``min_port``/``max_port`` (relay range),
  ``realm`` ("syftbox"), ``user`` (``(name, password)`` for lt-cred-mech, default
  ``("syftbox", "syftbox")``; None for none), ``secret`` (TURN REST shared secret, enables
  ``use-auth-secret``), ``allow_loopback_peers`` (default: True when relaying on a loopback
  address, which loopback tests need), ``netns`` (run inside ``ip netns exec NAME``),
  ``verbose`` (coturn ``-v``), ``extra_args`` (more coturn flags), ``ready_timeout``,
  ``aliases`` (how many extra loopback addresses to listen on, see below; default
  ``LOOPBACK_ALIASES`` for a loopback listener outside a namespace, else 0).
* ``CoturnServer``: ``pid``, ``host`` (the listening ip), ``aliases``, ``port``, ``realm``,
  ``user``, ``secret``, ``netns``, ``log_path``; ``stun_url``, ``turn_url(transport="udp")``,
  ``credentials(name="hotlink", ttl=3600)`` (the static user's, or TURN REST ones from the
  secret), ``ice_servers("stun" | "turn" | "both", name=...)`` (``IceServer`` list for a
  peer), ``log_text()``, ``stop()`` (SIGTERM, then SIGKILL, by pid; idempotent).

Stale allocations: libdatachannel (libjuice) never deletes its TURN allocation when a peer
closes, so coturn keeps it, bound to the client's 5-tuple, for its whole lifetime (600 s).
When the kernel later hands the same ephemeral port to a new TURN client socket, coturn
answers that client's Allocate with 437 (Allocation Mismatch); libjuice does not retry, so a
relay-only peer gets no candidate and its channel never opens. With dozens of pairs per coturn
that happened in a few percent of runs. So a loopback coturn also listens on ``aliases``
addresses (127.0.3.1, 127.0.3.2, ...), and every ``turn_url()`` / TURN ``ice_servers()`` call
hands out the next one: each pair's allocations get a server address (so a 5-tuple) of their
own, and a stale allocation can only collide after the rotation wraps around.

TLS/DTLS listeners, the telnet CLI and RFC 5780 are off, and every file (pid, sqlite db, log)
lives in a private temp directory, so several instances can run side by side.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Literal

from hotlink.protocol.ice import IceServer, turn_rest_credentials

TURNSERVER = "turnserver"
DEFAULT_REALM = "syftbox"
DEFAULT_USER = ("syftbox", "syftbox")
# Extra loopback listening addresses (see "Stale allocations" above): more than the TURN
# ice_servers()/turn_url() calls one coturn serves in any test module, so none is reused.
LOOPBACK_ALIASES = 64


def loopback_aliases(count: int) -> list[str]:
    """``count`` loopback addresses for coturn to listen on besides its main one."""
    return [f"127.0.3.{i}" for i in range(1, count + 1)]


def turnserver_path() -> str | None:
    """Where ``turnserver`` is, or None."""
    return shutil.which(TURNSERVER) or next(
        (p for p in ("/usr/bin/turnserver", "/usr/sbin/turnserver") if os.path.exists(p)), None
    )


def require_turnserver() -> str:
    """The turnserver path; skips the calling test when coturn is not installed."""
    path = turnserver_path()
    if path is None:
        import pytest

        pytest.skip(
            "coturn's turnserver is not installed (apt-get install coturn, or make system-deps)"
        )
    return path


@dataclass
class CoturnServer:
    """A running turnserver. Stop it with :meth:`stop` (or use :func:`coturn`)."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    realm: str
    user: tuple[str, str] | None
    secret: str | None
    netns: str | None
    workdir: Path
    log_path: Path
    aliases: tuple[str, ...] = ()
    _turn_calls: Iterator[int] = field(default_factory=itertools.count, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _hostport(self, host: str | None = None) -> str:
        host = host or self.host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}"

    @property
    def stun_url(self) -> str:
        # STUN Binding leaves no state in coturn: one address is enough.
        return f"stun:{self._hostport()}"

    def turn_url(self, transport: Literal["udp", "tcp"] = "udp") -> str:
        """The TURN URL, on the next listening address each call (see "Stale allocations")."""
        hosts = self.aliases or (self.host,)
        host = hosts[next(self._turn_calls) % len(hosts)]
        return f"turn:{self._hostport(host)}?transport={transport}"

    def credentials(self, name: str = "hotlink", ttl: int = 3600) -> tuple[str, str]:
        """TURN username and password: TURN REST ones when a secret is set, else the user's."""
        if self.secret:
            return turn_rest_credentials(self.secret, name, time.time(), ttl)
        if self.user:
            return self.user
        raise ValueError("this coturn has neither a static user nor a shared secret")

    def ice_servers(
        self, kind: Literal["stun", "turn", "both"] = "turn", name: str = "hotlink"
    ) -> list[IceServer]:
        servers = []
        if kind in ("stun", "both"):
            servers.append(IceServer(self.stun_url))
        if kind in ("turn", "both"):
            username, password = self.credentials(name)
            # Both peers of a pair share this list, hence this one server address.
            servers.append(IceServer(self.turn_url(), username, password))
        return servers

    def log_text(self) -> str:
        parts = []
        for path in (self.log_path, self.workdir / "stdout.log"):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        """Terminate by pid (SIGTERM, then SIGKILL after 5 s) and remove the temp directory."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> CoturnServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` (coturn listens on both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free UDP+TCP port on {host}")


def _udp_bound(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a UDP socket on ``port``, seen in its own net namespace."""
    for table in ("udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local = line.split()[1]
            if int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def stun_binding(host: str, port: int, timeout: float = 0.5) -> tuple[str, int] | None:
    """Send one STUN Binding request; the XOR-MAPPED-ADDRESS (IPv4) of the answer, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    txid = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + txid
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, (host, port))
            data, _ = sock.recvfrom(2048)
        except OSError:
            return None
    if len(data) < 20 or data[8:20] != txid or struct.unpack("!H", data[:2])[0] != 0x0101:
        return None
    pos = 20
    while pos + 4 <= len(data):
        kind, length = struct.unpack("!HH", data[pos : pos + 4])
        value = data[pos + 4 : pos + 4 + length]
        if kind == 0x0020 and len(value) >= 8 and value[1] == 0x01:
            xport = struct.unpack("!H", value[2:4])[0] ^ 0x2112
            xaddr = struct.unpack("!I", value[4:8])[0] ^ 0x2112A442
            return socket.inet_ntoa(struct.pack("!I", xaddr)), xport
        pos += 4 + length + (-length % 4)
    return ("", 0)


def start_coturn(
    *,
    listening_ip: str = "127.0.0.1",
    relay_ip: str | None = None,
    external_ip: str | None = None,
    port: int | None = None,
    min_port: int = 49152,
    max_port: int = 65535,
    realm: str = DEFAULT_REALM,
    user: tuple[str, str] | None = DEFAULT_USER,
    secret: str | None = None,
    allow_loopback_peers: bool | None = None,
    netns: str | None = None,
    verbose: bool = False,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 10.0,
    aliases: int | None = None,
) -> CoturnServer:
    """Start turnserver and wait until it serves. See the module docstring for the options."""
    binary = turnserver_path()
    if binary is None:
        raise RuntimeError("turnserver (coturn) is not installed")
    relay_ip = relay_ip or listening_ip
    if port is None:
        port = 3478 if netns else _free_port(listening_ip)
    if allow_loopback_peers is None:
        allow_loopback_peers = ip_address(relay_ip).is_loopback
    if aliases is None:
        loopback_v4 = ip_address(listening_ip).version == 4 and ip_address(listening_ip).is_loopback
        aliases = LOOPBACK_ALIASES if loopback_v4 and netns is None else 0
    alias_ips = loopback_aliases(aliases)
    workdir = Path(tempfile.mkdtemp(prefix="hotlink-coturn-"))
    log_path = workdir / "turnserver.log"
    args = [
        binary,
        "-n",  # no config file: everything is on the command line
        f"--listening-ip={listening_ip}",
        *(f"--listening-ip={ip}" for ip in alias_ips),
        f"--relay-ip={relay_ip}",
        f"--listening-port={port}",
        f"--min-port={min_port}",
        f"--max-port={max_port}",
        f"--realm={realm}",
        "--fingerprint",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-rfc5780",
        "--no-multicast-peers",
        f"--userdb={workdir / 'turndb'}",
        f"--pidfile={workdir / 'turnserver.pid'}",
        f"--log-file={log_path}",
        "--simple-log",
        "--no-stdout-log",
    ]
    if external_ip:
        args.append(f"--external-ip={external_ip}")
    if user is not None or secret:
        args.append("--lt-cred-mech")
    if user is not None:
        args.append(f"--user={user[0]}:{user[1]}")
    if secret:
        args += ["--use-auth-secret", f"--static-auth-secret={secret}"]
    if allow_loopback_peers:
        args.append("--allow-loopback-peers")
    if verbose:
        args.append("--verbose")
    args += list(extra_args)
    if netns:
        args = ["ip", "netns", "exec", netns, *args]
    with open(workdir / "stdout.log", "wb") as out:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    server = CoturnServer(
        process=process,
        host=listening_ip,
        port=port,
        realm=realm,
        user=user,
        secret=secret,
        netns=netns,
        workdir=workdir,
        log_path=log_path,
        aliases=tuple(alias_ips),
    )
    try:
        _wait_ready(server, ready_timeout)
    except Exception as exc:
        log = server.log_text()
        server.stop()
        raise RuntimeError(f"turnserver did not start ({exc}); its log:\n{log[-3000:]}") from exc
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: CoturnServer, ready_timeout: float) -> None:
    deadline = time.monotonic() + ready_timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"turnserver exited with status {server.process.returncode}")
        if _udp_bound(server.pid, server.port) and (
            server.netns is not None
            or all(stun_binding(h, server.port) is not None for h in (server.host, *server.aliases))
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"turnserver not ready on {server.host}:{server.port}")
        time.sleep(0.05)


@contextlib.contextmanager
def coturn(**options: object) -> Iterator[CoturnServer]:
    """:func:`start_coturn` as a context manager; the server is stopped on exit."""
    server = start_coturn(**options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
