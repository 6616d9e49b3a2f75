"""The namespace topology itself: isolation, NAT behaviour, impairment and cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nat.topology import (
    PUBLIC_IP,
    PUBLIC_IP2,
    Impairment,
    NatTopology,
    netem_available,
    sweep_stale_namespaces,
)

pytestmark = [pytest.mark.nat, pytest.mark.slow]

ECHO_PORT = 4000


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def start_echo(topo: NatTopology, host: str, *addrs: str) -> None:
    proc = topo.run(
        host, NatTopology.script("udp_probe.py", "serve", *addrs), stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"


def probe(topo: NatTopology, host: str, *targets: str) -> dict[str, str | None]:
    out = topo.exec(host, NatTopology.script("udp_probe.py", "probe", *targets)).stdout
    result: dict[str, str | None] = json.loads(out)
    return result


def test_lans_reach_the_public_host_but_not_each_other(
    make_topology: Callable[..., NatTopology],
) -> None:
    topo = make_topology(symmetric=False)
    start_echo(topo, "public", f"{PUBLIC_IP}:{ECHO_PORT}")
    start_echo(topo, "bob", f"{topo.ip('bob')}:{ECHO_PORT}")
    start_echo(topo, "alice", f"{topo.ip('alice')}:{ECHO_PORT}")

    seen = probe(topo, "alice", f"{PUBLIC_IP}:{ECHO_PORT}")[f"{PUBLIC_IP}:{ECHO_PORT}"]
    # The public host sees alice only as her router's public address.
    assert seen is not None and seen.startswith(topo.wan_ip("alice") + ":")

    # No route to the other LAN, and nothing gets in through the other router unsolicited.
    blocked = probe(
        topo, "alice", f"{topo.ip('bob')}:{ECHO_PORT}", f"{topo.wan_ip('bob')}:{ECHO_PORT}"
    )
    assert blocked == {
        f"{topo.ip('bob')}:{ECHO_PORT}": None,
        f"{topo.wan_ip('bob')}:{ECHO_PORT}": None,
    }
    # The public host cannot reach into a LAN either.
    assert probe(topo, "public", f"{topo.ip('alice')}:{ECHO_PORT}") == {
        f"{topo.ip('alice')}:{ECHO_PORT}": None
    }


@pytest.mark.parametrize("symmetric", [False, True], ids=["eim", "symmetric"])
def test_nat_mapping_behaviour(make_topology: Callable[..., NatTopology], symmetric: bool) -> None:
    topo = make_topology(symmetric=symmetric)
    targets = [
        f"{PUBLIC_IP}:{ECHO_PORT}",
        f"{PUBLIC_IP}:{ECHO_PORT + 1}",
        f"{PUBLIC_IP2}:{ECHO_PORT}",
    ]
    start_echo(topo, "public", *targets)
    for side in ("alice", "bob"):
        mapped = probe(topo, side, *targets)
        assert all(m is not None for m in mapped.values()), mapped
        ips = {m.split(":")[0] for m in mapped.values() if m}
        ports = {m.split(":")[1] for m in mapped.values() if m}
        assert ips == {topo.wan_ip(side)}
        if symmetric:
            # A new mapping for every destination (address and port dependent).
            assert len(ports) == len(targets), mapped
        else:
            # One mapping, whatever the destination (endpoint independent).
            assert len(ports) == 1, mapped


@pytest.mark.parametrize("method", ["netem", "shim"])
def test_impairment_delays_and_drops_on_the_uplink(
    make_topology: Callable[..., NatTopology], method: str
) -> None:
    if method == "netem" and not netem_available():
        pytest.skip("this kernel has no sch_netem (the user-space shim covers it)")
    delay_ms = 60.0
    topo = make_topology(impair=Impairment(delay_ms=delay_ms, loss_pct=0), impair_method=method)
    start_echo(topo, "public", f"{PUBLIC_IP}:{ECHO_PORT}")
    target = f"{PUBLIC_IP}:{ECHO_PORT}"
    rtt = float(topo.exec("alice", NatTopology.script("udp_probe.py", "rtt", target)).stdout)
    # A lower bound only: the injected delay is a floor no machine can beat.
    assert rtt >= delay_ms / 1000

    # Total loss on the uplinks: nothing gets out.
    topo2 = make_topology(impair=Impairment(delay_ms=0, loss_pct=100), impair_method=method)
    start_echo(topo2, "public", f"{PUBLIC_IP}:{ECHO_PORT}")
    assert probe(topo2, "alice", f"{PUBLIC_IP}:{ECHO_PORT}") == {f"{PUBLIC_IP}:{ECHO_PORT}": None}


def test_close_removes_namespaces_and_processes(
    make_topology: Callable[..., NatTopology],
) -> None:
    topo = make_topology(symmetric=True, impair=Impairment(), impair_method="shim")
    ours = {topo.ns(h) for h in ("public", "router-alice", "router-bob", "alice", "bob")}
    assert ours <= namespaces()
    sleeper = topo.run("bob", ["sleep", "300"])
    topo.close()
    assert not ours & namespaces()
    assert sleeper.poll() is not None


def test_sigterm_tears_the_topology_down(nat_ready: None, tmp_path: Path) -> None:
    # A run killed by SIGTERM (CI cancelling a job) must not leave namespaces behind.
    script = tmp_path / "build.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
        "from nat.topology import NatTopology\n"
        "t = NatTopology(symmetric=True); t.build()\n"
        "t.run('alice', ['sleep', '300'])\n"
        "print(t.prefix, flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        prefix = proc.stdout.readline().decode().strip()
        assert prefix and any(ns.startswith(prefix) for ns in namespaces())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM
    assert not [ns for ns in namespaces() if ns.startswith(prefix)]


def test_sweeper_removes_only_namespaces_of_dead_runs(nat_ready: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"hl{dead.pid}-1-pub"
    live = f"hl{os.getpid()}-999-pub"
    for ns in (stale, live):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        # pid reuse within this instant is practically impossible; check to be sure.
        assert not Path(f"/proc/{dead.pid}").exists()
        removed = sweep_stale_namespaces()
        assert stale in removed
        assert live not in removed
        remaining = namespaces()
        assert stale not in remaining and live in remaining
    finally:
        for ns in (stale, live):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
