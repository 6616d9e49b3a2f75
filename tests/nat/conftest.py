"""Fixtures for the namespace NAT tests; everything here skips cleanly where it cannot run.

* ``nat_ready`` (session): skips unless namespaces and iptables NAT work here (root, Linux,
  iproute2, iptables), and first removes namespaces that dead earlier runs left behind.
* ``make_topology(...)``: builds a :class:`NatTopology`, closed at the end of the test.
* ``make_lab(...)``: a :class:`NatLab` (topology + coturn + signaling relay), closed at the end.
* ``nat_report``: records one line per case; the lines are printed in the terminal summary
  (negotiation time and selected pair per case).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nat.lab import NatLab
from nat.topology import NatTopology, sweep_stale_namespaces, unsupported_reason
from support.coturn import turnserver_path

_REPORT: list[str] = []


@pytest.fixture(scope="session")
def nat_ready() -> None:
    reason = unsupported_reason()
    if reason is not None:
        pytest.skip(f"namespace NAT tests cannot run here: {reason}")
    sweep_stale_namespaces()


@pytest.fixture
def make_topology(nat_ready: None) -> Iterator[Callable[..., NatTopology]]:
    built: list[NatTopology] = []

    def make(**kwargs: Any) -> NatTopology:
        topo = NatTopology(**kwargs)
        built.append(topo)
        topo.build()
        return topo

    yield make
    for topo in built:
        topo.close()


@pytest.fixture
def make_lab(nat_ready: None, tmp_path: Path) -> Iterator[Callable[..., NatLab]]:
    if turnserver_path() is None:
        pytest.skip("coturn's turnserver is not installed (make system-deps installs it)")
    labs: list[NatLab] = []

    def make(**kwargs: Any) -> NatLab:
        lab = NatLab(tmp_path, **kwargs)
        labs.append(lab)
        return lab.__enter__()

    yield make
    for lab in labs:
        lab.close()


@pytest.fixture
def nat_report() -> Callable[[str], None]:
    def record(line: str) -> None:
        print(line)
        _REPORT.append(line)

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT:
        terminalreporter.section("NAT traversal: negotiation time and selected pair per case")
        for line in _REPORT:
            terminalreporter.write_line(line)
