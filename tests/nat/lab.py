"""A NAT lab: the topology, coturn and a signaling relay in the public namespace, and a way to
run one WebRTC peer in alice's LAN and one in bob's and collect what they report.

    with NatLab(tmp_path, symmetric=True) as lab:
        result = lab.run_pair(ice="turn")
        assert result.opened, result.explain()
        print(result.summary())

``ice`` is ``"turn"`` (coturn's TURN URL with the static user), ``"stun"`` (coturn as a STUN
server only), ``"both"`` or ``"none"``. The peers are ``peer_script.py`` processes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from nat.topology import PUBLIC_IP, Impairment, NatTopology
from support.coturn import CoturnServer, start_coturn

SIGNAL_PORT = 7000
TURN_PORT = 3478
TURN_USER = ("syftbox", "syftbox")


@dataclass
class PeerResult:
    name: str
    returncode: int | None
    events: list[dict[str, Any]]
    log_path: Path

    def event(self, ev: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("ev") == ev), None)

    @property
    def opened(self) -> bool:
        return self.event("open") is not None

    @property
    def pair(self) -> dict[str, str]:
        opened = self.event("open")
        return dict(opened["pair"]) if opened else {}

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class PairResult:
    alice: PeerResult
    bob: PeerResult
    coturn_log: str = ""
    label: str = ""

    @property
    def opened(self) -> bool:
        """The data channel opened on BOTH sides and carried data both ways."""
        return self.alice.opened and self.bob.opened

    @property
    def negotiation_s(self) -> float | None:
        """From alice's offer to the channel open on both sides."""
        sent = self.alice.event("offer_sent")
        opens = [p.event("open") for p in (self.alice, self.bob)]
        if sent is None or any(o is None for o in opens):
            return None
        return max(float(o["wall"]) for o in opens if o) - float(sent["wall"])

    def local_types(self) -> set[str]:
        return {p.pair.get("local_type", "?") for p in (self.alice, self.bob)}

    def summary(self) -> str:
        if not self.opened:
            return f"{self.label}: channel did not open"
        parts = []
        for p in (self.alice, self.bob):
            pair = p.pair
            remote = pair.get("remote_type")
            parts.append(
                f"{p.name} {pair.get('local_type', '?')}"
                + (f"->{remote}" if remote else "")
                + (f" ({_addr(pair['local'])} -> {_addr(pair['remote'])})" if remote else "")
            )
        return f"{self.label}: open in {self.negotiation_s:.2f} s; " + "; ".join(parts)

    def explain(self) -> str:
        """Everything useful for a failure message."""
        turn = "\n".join(self.coturn_log.splitlines()[-30:])
        return (
            f"{self.label}\n"
            f"alice rc={self.alice.returncode} events={self.alice.events}\n"
            f"bob rc={self.bob.returncode} events={self.bob.events}\n"
            f"--- alice stderr ---\n{self.alice.log_tail()}\n"
            f"--- bob stderr ---\n{self.bob.log_tail()}\n"
            f"--- coturn ---\n{turn}"
        )


def _addr(candidate: str) -> str:
    parts = candidate.split()
    return f"{parts[4]}:{parts[5]}" if len(parts) > 5 else candidate


@dataclass
class TurnLab:
    """The topology with coturn on the public host: what :class:`NatLab` and the hotlink lab
    (``hotlink_lab.py``) both stand on. ``turn_secret``: coturn checks TURN REST credentials
    made with it instead of the static user."""

    workdir: Path
    symmetric: bool = False
    impair: Impairment | None = None
    internet_sink: bool = True
    coturn_args: Sequence[str] = ()
    turn_secret: str | None = None
    topo: NatTopology = field(init=False)
    turn: CoturnServer | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.topo = NatTopology(
            symmetric=self.symmetric, impair=self.impair, internet_sink=self.internet_sink
        )

    def __enter__(self) -> Self:
        self.topo.build()
        try:
            self.turn = start_coturn(
                netns=self.topo.ns("public"),
                listening_ip=PUBLIC_IP,
                port=TURN_PORT,
                min_port=49152,
                max_port=49300,
                user=None if self.turn_secret else TURN_USER,
                secret=self.turn_secret,
                verbose=True,
                extra_args=list(self.coturn_args),
            )
            self.start_services()
        except BaseException:
            self.close()
            raise
        return self

    def start_services(self) -> None:
        """What the lab runs besides coturn, once coturn is up."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop coturn by pid, then remove the namespaces (and whatever still runs there)."""
        if self.turn is not None:
            self.turn.stop()
        self.topo.close()


@dataclass
class NatLab(TurnLab):
    _room: int = field(init=False, default=0)

    def start_services(self) -> None:
        relay = self.topo.run(
            "public",
            NatTopology.script("signal_relay.py", PUBLIC_IP, str(SIGNAL_PORT)),
            stdout=subprocess.PIPE,
        )
        assert relay.stdout is not None
        if relay.stdout.readline().strip() != b"ready":
            raise RuntimeError("signaling relay did not start")

    def ice_args(self, ice: str) -> list[str]:
        assert self.turn is not None
        urls = {
            "turn": [self.turn.turn_url()],
            "stun": [self.turn.stun_url],
            "both": [self.turn.stun_url, self.turn.turn_url()],
            "none": [],
        }[ice]
        args = [arg for url in urls for arg in ("--ice", url)]
        return [*args, "--turn-user", TURN_USER[0], "--turn-pass", TURN_USER[1]]

    def run_pair(
        self,
        *,
        ice: str,
        policy: str = "all",
        backends: tuple[str, str] = ("libdatachannel", "libdatachannel"),
        open_timeout: float = 20.0,
        transfer: int = 0,
        guard_s: float = 120.0,
        label: str = "",
    ) -> PairResult:
        """Run alice (offerer) and bob (answerer) to completion and collect their reports."""
        self._room += 1
        common = [
            "--signal", f"{PUBLIC_IP}:{SIGNAL_PORT}", "--room", f"r{self._room}",
            "--policy", policy, "--open-timeout", str(open_timeout), *self.ice_args(ice),
        ]  # fmt: skip
        if transfer:
            common += ["--transfer", str(transfer)]
        procs: dict[str, subprocess.Popen[bytes]] = {}
        logs: dict[str, Path] = {}
        for name, role, backend in (
            ("bob", "answer", backends[1]),
            ("alice", "offer", backends[0]),
        ):
            logs[name] = self.workdir / f"{name}-{self._room}.log"
            with open(logs[name], "wb") as err:
                procs[name] = self.topo.run(
                    name,
                    NatTopology.script(
                        "peer_script.py",
                        *("--name", name, "--role", role, "--backend", backend),
                        *common,
                    ),
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
        results: dict[str, PeerResult] = {}
        deadline = time.monotonic() + open_timeout + guard_s
        for name, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
            results[name] = PeerResult(name, proc.returncode, events, logs[name])
        return PairResult(
            results["alice"],
            results["bob"],
            coturn_log=self.turn.log_text() if self.turn else "",
            label=label,
        )
