"""Fixtures for the namespace NAT tests; everything here skips cleanly where it cannot run.

* ``nat_ready`` (session): skips unless namespaces and iptables NAT work here (root, Linux,
  iproute2, iptables), and first removes namespaces that dead earlier runs left behind.
* ``make_topology(...)``: builds a :class:`NatTopology`, closed at the end of the test.
* ``make_lab(...)``: a :class:`NatLab` (topology + coturn + signaling relay), closed at the end.
* ``make_hotlink_lab(...)``: a :class:`HotlinkNatLab` (topology + coturn; the test starts the
  real hotlink server and clients in it), closed at the end.
* ``nat_report``: records one line per case; the lines are printed in the terminal summary
  (negotiation time and selected pair per case).
* :func:`add_diagnostics`: a callable whose text is attached to the test's report when it
  fails (the hotlink lab attaches the tails of the server, client and coturn logs), so a CI
  failure shows what the processes said.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nat.hotlink_lab import HotlinkNatLab
from nat.lab import NatLab
from nat.topology import NatTopology, sweep_stale_namespaces, unsupported_reason
from support.coturn import turnserver_path

_REPORT: list[str] = []
_DIAGNOSTICS = pytest.StashKey[list[Callable[[], str]]]()


def add_diagnostics(request: pytest.FixtureRequest, describe: Callable[[], str]) -> None:
    """Attach ``describe()``'s text to the report of the requesting test if it fails."""
    request.node.stash.setdefault(_DIAGNOSTICS, []).append(describe)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    # Setup and call only: by teardown the processes are gone (their logs would still be
    # there, but a teardown failure is the harness's own and says so itself).
    if report.failed and report.when in ("setup", "call"):
        for describe in item.stash.get(_DIAGNOSTICS, []):
            try:
                text = describe()
            except Exception as exc:  # diagnostics must never hide the real failure
                text = f"(diagnostics failed: {exc!r})"
            report.sections.append(("NAT lab: process logs", text))


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
def make_hotlink_lab(
    nat_ready: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., HotlinkNatLab]]:
    if turnserver_path() is None:
        pytest.skip("coturn's turnserver is not installed (make system-deps installs it)")
    labs: list[HotlinkNatLab] = []

    def make(**kwargs: Any) -> HotlinkNatLab:
        lab = HotlinkNatLab(tmp_path / f"lab{len(labs) + 1}", **kwargs)
        labs.append(lab)
        add_diagnostics(request, lab.explain)
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
