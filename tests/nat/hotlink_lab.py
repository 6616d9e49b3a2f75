"""The real hotlink relay server and client daemons in the NAT lab (issue 6, stage 2).

    with HotlinkNatLab(tmp_path, symmetric=True) as lab:      # namespaces + coturn
        lab.start_server()                                      # hotlink server, public netns
        tunnel = lab.start_tunnel(ice="turn")                   # alice and bob daemons, §9.1
        bob_r, bob_w = await lab.dial("bob", tunnel.bob_port)   # an app inside bob's LAN
        ...
        print(lab.explain())                                    # every log's tail

The server runs in the "public" namespace bound to ``203.0.113.10``; each client runs in its
LAN (``alice`` behind router-alice, ``bob`` behind router-bob) and reaches the server through
its NAT at ``http://203.0.113.10:<port>``. The TCP proxies listen on 127.0.0.1 *inside* the
client namespaces, so :meth:`HotlinkNatLab.dial` makes its socket in a short-lived thread
that has entered that namespace (a network namespace is per thread; the socket keeps it).

``ice`` chooses the client's ICE configuration:

* ``"turn"``: ``SYFTBOX_HOTLINK_ICE_SERVERS=turn:203.0.113.10:3478?transport=udp`` with the
  static coturn user in ``SYFTBOX_HOTLINK_TURN_USER``/``_PASS`` (the reference's NAT test);
* ``"stun"``: coturn as a plain STUN server, no TURN;
* ``"advertised"``: the client's ICE variables unset, so it adopts what the server advertises
  (start the lab with ``turn_secret=...`` and the server with ``advertise=True``: coturn's
  TURN URL and short-lived TURN REST credentials). Only safe here, where nothing public is
  reachable: the client's fallback would be a public STUN server;
* ``"none"``: host candidates only.

The server and the clients are a :class:`hotlink.lab.stack.DevStack` whose processes start
with ``ip netns exec`` (which execs, so the pid is the program's own) and inherit the test's
environment; the stack stops them by pid on close, then the topology deletes the namespaces,
killing anything left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hotlink.lab.netns import open_connection_in_netns
from hotlink.lab.processes import CHANNEL_OPEN, ClientProc, ServerProc
from hotlink.lab.stack import DevStack
from hotlink.logs import LINE_TIME, TIME_PATTERN, parse_time
from nat.lab import TURN_USER, TurnLab
from nat.topology import PUBLIC_IP, NatTopology
from support.client_proc import (
    ALICE,
    BOB,
    Tunnel,
    reference_channel,
    write_reference_tunnel,
)

EMAILS = {"alice": ALICE, "bob": BOB}
# Inside the client namespaces, so fixed ports cannot clash with anything (as in §9.4).
PROXY_PORTS = {ALICE: 9100, BOB: 9200}
ECHO_PORT = 4000

_SESSION_LINE = re.compile(
    rf"^(?P<time>{TIME_PATTERN}) .*hotlink session (?P<sid>[0-9a-zA-Z-]{{1,8}})…? "
    r"(?P<dir>in|out) (?P<src>\S+)→(?P<dst>\S+) (?P<state>\S+)",
    re.MULTILINE,
)
# "hotlink webrtc data channel open (offerer): session=ab12cd34… transport=p2p-relay after
# 351 ms" (the time since that side created its peer connection).
_OPEN_NOTE = re.compile(
    r"data channel open \((?P<role>\w+)\).*transport=(?P<transport>\S+)(?: after (?P<ms>\d+) ms)?"
)

IceChoice = str  # "turn" | "stun" | "advertised" | "none"


def log_seconds(line: str) -> float | None:
    """Epoch seconds of a client log line (``2025-01-31T09:08:07.123Z ...``), or None."""
    m = LINE_TIME.match(line)
    return None if m is None else parse_time(m.group(1))


# The §9.1 tunnel between the daemons in alice's and bob's LANs.
NatTunnel = Tunnel


@dataclass
class SessionNegotiation:
    """One hotlink session as both client logs and telemetry tell it."""

    sid: str  # first 8 characters
    opener: str  # email of the side that opened (sent Open; answers the offer)
    acceptor: str  # email of the side that accepted (offers)
    accepted_at: float | None  # acceptor's "accepted" line, epoch seconds
    open_at: dict[str, float]  # email -> that side's first "data channel open" line
    transports: dict[str, str]  # email -> telemetry "transport" of this session
    # email -> what that side's open line says: role, selected transport, time since the
    # session's peer connection was created
    open_notes: dict[str, str]

    @property
    def open_both(self) -> bool:
        return len(self.open_at) == 2

    @property
    def negotiation_s(self) -> float | None:
        """Accept -> the data channel open on both sides."""
        if self.accepted_at is None or not self.open_both:
            return None
        return max(self.open_at.values()) - self.accepted_at

    def describe(self) -> str:
        who = f"{self.opener.split('@')[0]}→{self.acceptor.split('@')[0]}"
        kinds = "/".join(sorted(set(self.transports.values()))) or "?"
        if self.negotiation_s is None:
            opened = ",".join(e.split("@")[0] for e in self.open_at) or "neither side"
            head = f"{who} {self.sid}: channel open on {opened}; transport {kinds}"
        else:
            head = f"{who} {self.sid}: open in {self.negotiation_s:.2f} s; transport {kinds}"
        notes = "; ".join(
            f"{e.split('@')[0]} {note}" for e, note in sorted(self.open_notes.items())
        )
        return head + (f" [{notes}]" if notes else "")


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class HotlinkNatLab(TurnLab):
    stack: DevStack = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        # The test's environment (its ICE "none" included) reaches the children, as the
        # harness in tests/support does; each side's ICE choice goes on top.
        self.stack = DevStack(self.workdir, ice_servers="none", inherit_syftbox_env=True)

    def close(self) -> None:
        """Stop the clients, the server and coturn by pid, then remove the namespaces."""
        with contextlib.suppress(Exception):
            self.stack.stop(timeout=5)
        super().close()

    @property
    def server(self) -> ServerProc | None:
        return self.stack.server

    @property
    def clients(self) -> list[ClientProc]:
        return list(self.stack.clients.values())

    # ---- the relay server -------------------------------------------------------------------

    def start_server(self, *, advertise: bool = False, timeout: float = 30.0) -> ServerProc:
        """``hotlink server`` in the public namespace on 203.0.113.10 (a free port), in dev
        mode as in the reference NAT test.

        ``advertise``: the server advertises coturn's TURN URL with short-lived credentials
        from the lab's ``turn_secret`` (DECISIONS.md #23).
        """
        assert self.turn is not None
        args: list[str] = []
        if advertise:
            if not self.turn_secret:
                raise ValueError("advertise=True needs the lab's turn_secret")
            args += ["--ice-servers", self.turn.turn_url(), "--turn-secret", self.turn_secret]
        return self.stack.start_server(PUBLIC_IP, timeout, netns=self.topo.ns("public"), args=args)

    @property
    def server_url(self) -> str:
        assert self.server is not None, "start_server() first"
        return self.server.url

    # ---- clients ------------------------------------------------------------------------

    def ice_env(self, ice: IceChoice) -> dict[str, str | None]:
        """Client environment for an ICE choice (None values are removed)."""
        assert self.turn is not None
        if ice == "turn":
            return {
                "SYFTBOX_HOTLINK_ICE_SERVERS": self.turn.turn_url(),
                "SYFTBOX_HOTLINK_TURN_USER": TURN_USER[0],
                "SYFTBOX_HOTLINK_TURN_PASS": TURN_USER[1],
            }
        if ice == "stun":
            return {"SYFTBOX_HOTLINK_ICE_SERVERS": self.turn.stun_url}
        if ice == "advertised":
            # Unset, so the client adopts the server's advertisement. Nothing public is
            # reachable from the lab, so even a fallback to the default STUN server would
            # go nowhere.
            return {
                name: None
                for name in (
                    "SYFTBOX_HOTLINK_ICE_SERVERS",
                    "SYFTBOX_HOTLINK_STUN_SERVER",
                    "SYFTBOX_HOTLINK_TURN_USER",
                    "SYFTBOX_HOTLINK_TURN_PASS",
                )
            }
        if ice == "none":
            return {"SYFTBOX_HOTLINK_ICE_SERVERS": "none"}
        raise ValueError(f"unknown ice choice {ice!r}")

    def spawn_client(
        self, side: str, *, ice: IceChoice, env: Mapping[str, str | None] | None = None
    ) -> ClientProc:
        """``hotlink client`` in ``side``'s LAN namespace, without waiting for anything."""
        return self.stack.spawn_client(
            EMAILS[side],
            server_url=self.server_url,
            env={"SYFTBOX_AUTH_ENABLED": "0", **self.ice_env(ice), **(env or {})},
            netns=self.topo.ns(side),
            data_dir=self.workdir / side,
            default_acls=False,
        )

    def start_tunnel(
        self,
        *,
        ice: IceChoice,
        env: Mapping[str, str | None] | None = None,
        side_env: Mapping[str, Mapping[str, str | None]] | None = None,
        timeout: float = 30.0,
    ) -> NatTunnel:
        """Write the §9.1 trees (markers + ACLs in both trees), start both daemons, and wait
        until each is connected, has published its ACLs and runs the tunnel's proxy.

        ``env`` goes to both clients, ``side_env["alice"|"bob"]`` on top for one of them.
        """
        dirs = {EMAILS[side]: self.workdir / side for side in ("alice", "bob")}
        write_reference_tunnel(dirs, PROXY_PORTS)
        extra = side_env or {}
        alice = self.spawn_client("alice", ice=ice, env={**(env or {}), **extra.get("alice", {})})
        bob = self.spawn_client("bob", ice=ice, env={**(env or {}), **extra.get("bob", {})})
        key = reference_channel(PROXY_PORTS).canonical_key
        for client in (alice, bob):
            client.wait_ready(timeout)
            client.wait_tunnel(key, timeout)
        return NatTunnel(alice, bob, PROXY_PORTS[ALICE], PROXY_PORTS[BOB])

    async def dial(
        self, side: str, port: int, timeout: float = 30.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An app in ``side``'s LAN connecting to its proxy at 127.0.0.1:``port``; retries
        every 250 ms with a 1 s dial timeout, like §9.1."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ns = self.topo.ns(side)
        while True:
            try:
                async with asyncio.timeout(1.0):
                    return await open_connection_in_netns(ns, "127.0.0.1", port)
            except (OSError, TimeoutError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.25)

    # ---- checks -------------------------------------------------------------------------

    def udp_reachability(self, src: str, dst: str) -> dict[str, bool]:
        """Whether ``src`` gets UDP answers from the public host (control) and from ``dst``
        at its LAN address and at its router's public address."""
        targets = {
            "public": f"{PUBLIC_IP}:{ECHO_PORT}",
            f"{dst} lan": f"{self.topo.ip(dst)}:{ECHO_PORT}",
            f"{dst} wan": f"{self.topo.wan_ip(dst)}:{ECHO_PORT}",
        }
        echoes = []
        try:
            for host, addr in (("public", targets["public"]), (dst, targets[f"{dst} lan"])):
                proc = self.topo.run(
                    host, NatTopology.script("udp_probe.py", "serve", addr), stdout=subprocess.PIPE
                )
                echoes.append(proc)
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != b"ready":
                    raise RuntimeError(f"udp echo in {host} did not start")
            out = self.topo.exec(
                src, NatTopology.script("udp_probe.py", "probe", *targets.values())
            ).stdout
        finally:
            for proc in echoes:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        seen: dict[str, str | None] = json.loads(out)
        return {name: seen.get(addr) is not None for name, addr in targets.items()}

    # ---- what happened ------------------------------------------------------------------

    def sessions(self, tunnel: NatTunnel) -> list[SessionNegotiation]:
        """Every hotlink session of the tunnel, from both client logs and telemetry."""
        logs = {c.email: c.log_text() for c in tunnel.clients}
        docs = {c.email: c.telemetry() or {} for c in tunnel.clients}
        by_sid: dict[str, SessionNegotiation] = {}
        for text in logs.values():
            for m in _SESSION_LINE.finditer(text):
                sid = m["sid"][:8]
                src, dst = m["src"], m["dst"]
                neg = by_sid.get(sid)
                if neg is None:
                    opener = next((e for e in EMAILS.values() if e.startswith(src + "@")), src)
                    acceptor = next((e for e in EMAILS.values() if e.startswith(dst + "@")), dst)
                    neg = by_sid[sid] = SessionNegotiation(sid, opener, acceptor, None, {}, {}, {})
                if m["dir"] == "in" and m["state"] == "accepted" and neg.accepted_at is None:
                    neg.accepted_at = log_seconds(m.group(0))
        for email, text in logs.items():
            for line in text.splitlines():
                for sid, neg in by_sid.items():
                    if sid not in line:
                        continue
                    if CHANNEL_OPEN in line and email not in neg.open_at:
                        t = log_seconds(line)
                        if t is not None:
                            neg.open_at[email] = t
                        note = _OPEN_NOTE.search(line)
                        if note is not None:
                            neg.open_notes[email] = (
                                f"{note['role']} {note['transport']} +{note['ms']} ms"
                            )
        for email, doc in docs.items():
            live = doc.get("live", {})
            for snap in [*live.get("sessions_in", []), *live.get("sessions_out", [])]:
                neg = by_sid.get(str(snap.get("sid", ""))[:8])
                if neg is not None and snap.get("transport"):
                    neg.transports[email] = str(snap["transport"])
        return list(by_sid.values())

    def explain(self, lines: int = 80) -> str:
        """The tail of every log in the lab, for failure messages."""
        parts = []
        if self.server is not None:
            parts.append(f"--- server (pid {self.server.pid}) ---\n")
            parts.append(_tail(self.server.log_text(), lines))
        for client in self.clients:
            state = "running" if client.alive() else f"exit {client.proc.returncode}"
            parts.append(f"\n--- client {client.email} (pid {client.pid}, {state}) ---\n")
            parts.append(_tail(client.log_text(), lines))
            parts.append(f"\n--- telemetry {client.email} ---\n{json.dumps(client.telemetry())}")
        if self.turn is not None:
            parts.append("\n--- coturn ---\n" + _tail(self.turn.log_text(), 40))
        return "".join(parts)


def telemetry_line(clients: Sequence[ClientProc]) -> str:
    """The P2P counters of each client, for the report."""
    parts = []
    for client in clients:
        doc = client.telemetry() or {}
        parts.append(
            f"{client.email.split('@')[0]} p2p/ws tx {doc.get('tx_p2p_packets')}/"
            f"{doc.get('tx_ws_packets')} fallbacks {doc.get('ws_fallbacks')}"
        )
    return "; ".join(parts)
