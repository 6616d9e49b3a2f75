"""Idle CPU of a client on a big datasites tree, and how fast it picks up a new tunnel marker
(``python -m bench.idle_cpu [--files 100000] [--idle 300] [--src DIR]``).

Builds a tree of ``--files`` files (``--per-folder`` files a folder, spread over a few
datasites, plus ACL files and a few tunnel markers) in a temporary folder, starts a real relay
and a real client on it, and measures:

* the client's CPU while idle: utime + stime from ``/proc/<pid>/stat`` over ``--idle`` s,
  after ``--settle`` s for the start-up walks, as a percentage of one core;
* the reaction to a new marker: the time from the marker's rename into place (the way
  ``hotlink tunnel open`` and sync clients write) to a socket listening on its port in
  ``/proc/net/tcp``, ``--markers`` times (a new channel each time).

``--src DIR`` runs the relay and the client from another source tree (its ``src`` folder on
``PYTHONPATH``), e.g. an older version from ``git archive``, to compare before and after.
The launchers come from this tree. A measurement, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hotlink.client.edges.watcher import RESCAN_INTERVAL
from hotlink.lab.processes import child_env, client_settings, launch_client, launch_server

from .progress import say

EMAIL = "alice@example.com"
PEER = "bob@example.com"
OTHERS = 19  # other datasites sharing the tree with ours
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class IdleCpuResult:
    files: int
    folders: int
    source: str
    idle_seconds: float
    cpu_percent: float  # of one core, while idle
    react_ms: list[float] = field(default_factory=list)  # marker written -> port listening
    missed: int = 0  # markers not picked up within the wait

    @property
    def react_median_ms(self) -> float | None:
        return statistics.median(self.react_ms) if self.react_ms else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "react_median_ms": self.react_median_ms}


def _acl(read: str = "*") -> str:
    return f"rules:\n  - pattern: '**'\n    access:\n      read: ['{read}']\n      write: []\n"


def _marker_json(port: int) -> str:
    return json.dumps({"from": EMAIL, "to": PEER, "port": 0, "ports": {EMAIL: port, PEER: 0}})


def _write(path: Path, text: str) -> None:
    """Write as a sync client does: a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_tree(datasites: Path, files: int, per_folder: int, markers: int) -> int:
    """``files`` files in folders of ``per_folder``, over our datasite and OTHERS more; ACL
    files at each datasite's root and in every 100th folder; ``markers`` tunnels already
    there. Returns the number of folders with files."""
    folders = max(1, files // per_folder)
    owners = [EMAIL, *(f"user{i}@example.com" for i in range(OTHERS))]
    blob = b"x" * 64
    for n in range(folders):
        owner = owners[n % len(owners)]
        folder = datasites / owner / "app_data" / f"app{n % 7}" / f"data{n // 100}" / f"f{n}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_folder):
            (folder / f"file{i}.bin").write_bytes(blob)
        if n % 100 == 0:
            (folder / "syft.pub.yaml").write_text(_acl())
    for owner in owners:
        (datasites / owner / "syft.pub.yaml").write_text(_acl(owner))
    for i in range(markers):
        channel = datasites / EMAIL / "shared" / "flows" / "idle" / f"run{i}" / "_mpc" / "0_to_1"
        _write(channel / "syft.pub.yaml", _acl())
        _write(channel / "stream.tcp", _marker_json(_free_port()))
    return folders


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (read from /proc: no connection made)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[1].endswith(suffix) and parts[3] == "0A":
                return True
    return False


def react_once(datasites: Path, run: str, wait: float) -> float | None:
    """Milliseconds from a new marker's rename to its port listening (None: not within
    ``wait`` s)."""
    port = _free_port()
    channel = datasites / EMAIL / "shared" / "flows" / "react" / run / "_mpc" / "0_to_1"
    _write(channel / "syft.pub.yaml", _acl())
    tmp = channel / ".stream.tcp.tmp"
    tmp.write_text(_marker_json(port))
    start = time.monotonic()
    os.replace(tmp, channel / "stream.tcp")
    while time.monotonic() - start < wait:
        if listening(port):
            return (time.monotonic() - start) * 1000
        time.sleep(0.002)
    return None


def measure(
    *,
    files: int = 100_000,
    per_folder: int = 10,
    idle: float = RESCAN_INTERVAL,
    settle: float = 10.0,
    markers: int = 5,
    src: Path | None = None,
    work: Path | None = None,
) -> IdleCpuResult:
    with tempfile.TemporaryDirectory(prefix="hotlink-idle-", dir=work) as tmp:
        root = Path(tmp)
        data_dir = root / "alice"
        datasites = data_dir / "datasites"
        say(f"idle-cpu: building {files} files in folders of {per_folder} ...")
        folders = build_tree(datasites, files, per_folder, markers=3)
        env = child_env(
            {"SYFTBOX_HOTLINK_ICE_SERVERS": "none", "PYTHONPATH": str(src) if src else None},
            client_settings(True),
        )
        server = launch_server(root / "server.ready", root / "server.log", env=env)
        client = None
        try:
            server.wait_ready(30)
            client = launch_client(EMAIL, server.url, data_dir, env=env)
            client.wait_ready(60)
            say(f"idle-cpu: client up (pid {client.pid}); settling {settle:.0f} s ...")
            time.sleep(settle)
            say(f"idle-cpu: measuring {idle:.0f} s of idleness ...")
            before, t0 = cpu_seconds(client.pid), time.monotonic()
            time.sleep(idle)
            used, wall = cpu_seconds(client.pid) - before, time.monotonic() - t0
            result = IdleCpuResult(
                files=files,
                folders=folders,
                source=str(src) if src else "this tree",
                idle_seconds=round(wall, 1),
                cpu_percent=round(100 * used / wall, 2),
            )
            for i in range(markers):
                ms = react_once(datasites, f"run{i}", wait=10.0)
                if ms is None:
                    result.missed += 1
                else:
                    result.react_ms.append(round(ms, 1))
                time.sleep(0.5)  # let the client settle between markers
            return result
        finally:
            if client is not None:
                client.stop()
            server.stop()


def summary(r: IdleCpuResult) -> str:
    median = r.react_median_ms
    react = "-" if median is None else f"{median:.0f} ms median, max {max(r.react_ms):.0f} ms"
    missed = f", {r.missed} missed" if r.missed else ""
    return (
        f"idle CPU {r.cpu_percent:.2f} % of a core over {r.idle_seconds:.0f} s "
        f"({r.files} files, {r.folders} folders); new marker to listening: {react}{missed}"
    )


def markdown(r: IdleCpuResult) -> str:
    """A section for the benchmark's report (bench/run.py)."""
    median = r.react_median_ms
    react = "-" if median is None else f"{median:.0f} ms (median of {len(r.react_ms)})"
    rescans = int(r.idle_seconds // RESCAN_INTERVAL)
    return (
        f"\nIdle client on a tree of {r.files:,} files in {r.folders:,} folders: "
        f"{r.cpu_percent:.2f} % of a core over {r.idle_seconds:.0f} s ({rescans} safety "
        f"rescan{'' if rescans == 1 else 's'} of the whole tree in that time); a new tunnel "
        f"marker to its port listening: {react}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_cpu", description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-folder", type=int, default=10)
    parser.add_argument(
        "--idle",
        type=float,
        default=RESCAN_INTERVAL,
        help="seconds measured (the default takes in one safety rescan of the whole tree)",
    )
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--markers", type=int, default=5, help="new markers timed")
    parser.add_argument("--src", type=Path, help="run the relay and client from this src dir")
    parser.add_argument("--work", type=Path, help="where to build the tree (default: /tmp)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = measure(
        files=args.files,
        per_folder=args.per_folder,
        idle=args.idle,
        settle=args.settle,
        markers=args.markers,
        src=args.src.resolve() if args.src else None,
        work=args.work,
    )
    print(summary(result))
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
