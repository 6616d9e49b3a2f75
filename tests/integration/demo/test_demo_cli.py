"""``hotlink demo`` end to end: real relay and clients, started and stopped by the demo."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RESULT = re.compile(r"party (\d) result (\[[^\]]*\])")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["COLUMNS"] = "200"  # rich wraps long report lines at 80 columns otherwise
    env.setdefault("SYFTBOX_HOTLINK_ICE_SERVERS", "none")
    return env


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotlink", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (it waits only for its parent to reap it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _pid_alive(p)]
        time.sleep(0.1)
    return alive


def _state_pids(data_dir: Path) -> list[int]:
    state = json.loads((data_dir / "devstack.json").read_text())
    pids = [c["pid"] for c in state["clients"].values()]
    if state["server"]:
        pids.append(state["server"]["pid"])
    return pids


def test_demo_streams_4_mib_and_prints_the_report() -> None:
    proc = run_demo("--size", "4MiB")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "4.0 MiB of 4.0 MiB, intact" in out
    assert re.search(r"path alice→bob\s+│ (ws|p2p-\w+)", out), out
    for label in ("marker → first byte delivered", "throughput", "round trip (200 x 64 B)"):
        assert label in out
    assert "tx_packets" in out and "OK: 4.0 MiB arrived intact" in out


def test_ws_only_demo_takes_the_relay_path() -> None:
    proc = run_demo("--size", "1MiB", "--ws-only", "--rounds", "20")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"path alice→bob\s+│ ws ", out), out
    assert re.search(r"path bob→alice\s+│ ws ", out), out


def test_demo_exits_non_zero_when_a_byte_differs() -> None:
    # The sender flips one byte on its way in; the checker on bob's side must catch it.
    proc = run_demo("--size", "2MiB", "--debug-corrupt-offset", "1234567")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "byte 1234567 differs" in out


def test_mpc3_every_party_prints_3_3_4() -> None:
    proc = run_demo("--scenario", "mpc3")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    results = dict(RESULT.findall(out))
    assert results == {"0": "[3, 3, 4]", "1": "[3, 3, 4]", "2": "[3, 3, 4]"}, out


def test_keep_leaves_a_working_tunnel(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    proc = run_demo("--size", "1MiB", "--rounds", "10", "--keep", "--data-dir", str(data_dir))
    out = proc.stdout + proc.stderr
    pids = _state_pids(data_dir)
    try:
        assert proc.returncode == 0, out
        assert all(_pid_alive(p) for p in pids), out
        ports = [int(p) for p in re.findall(r"side:\s+127\.0\.0\.1:(\d+)", out)]
        assert len(ports) == 2, out
        # Your own app: bob's side listens, alice's side sends.
        with socket.create_connection(("127.0.0.1", ports[1]), timeout=10) as bob:
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", ports[0]), timeout=10) as alice:
                alice.sendall(b"hello from my own app")
                bob.settimeout(30)
                got = b""
                while len(got) < 21:
                    chunk = bob.recv(64)
                    assert chunk, "tunnel closed early"
                    got += chunk
        assert got == b"hello from my own app"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        assert _wait_gone(pids) == []


def _start_demo_in_background(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hotlink", "demo", "--size", "1GiB", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        stdin=subprocess.DEVNULL,
        # A shell starts background jobs with SIGINT ignored and children inherit that; the
        # demo must see Ctrl-C as a user's terminal would deliver it.
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_clients(data_dir: Path, timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pids = _state_pids(data_dir)
        except (OSError, ValueError, KeyError):
            pids = []
        if len(pids) == 3 and (data_dir / "bob" / "client.log").exists():
            return pids
        time.sleep(0.1)
    raise AssertionError("the demo never started its three processes")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_demo_processes_stop_when_the_demo_is_stopped(tmp_path: Path, signum: int) -> None:
    # Ctrl-C: the demo stops them by pid; kill -9: the kernel's parent-death signal does.
    data_dir = tmp_path / "stack"
    demo = _start_demo_in_background(data_dir)
    try:
        pids = _wait_for_clients(data_dir)
        time.sleep(1.0)
        demo.send_signal(signum)
        demo.wait(30)
        assert _wait_gone(pids) == []
        if signum == signal.SIGINT:
            assert demo.returncode == 130
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_demo_with_the_aiortc_backend() -> None:
    proc = run_demo("--size", "2MiB", "--backend", "aiortc", "--rounds", "50")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "2.0 MiB of 2.0 MiB, intact" in out
    assert "WebRTC backend aiortc" in out
