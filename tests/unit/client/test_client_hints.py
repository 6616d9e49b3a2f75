"""Hints name the likely cause of a stream that cannot start or waits, at most once per
folder and interval, so a retrying app does not flood the log."""

from __future__ import annotations

import logging

import pytest

from hotlink.client.session.hints import HINT_INTERVAL, Hints

TUNNEL = "alice@example.com/shared/flows/x/run1/_mpc/0_to_1/stream.tcp.request"
IPC = "alice@example.com/app_data/app/rpc/ep/x.request"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_each_hint_names_what_to_check(caplog: pytest.LogCaptureFixture) -> None:
    hints = Hints(clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="hotlink.session"):
        hints.not_accepted(TUNNEL, "alice@example.com", "bob@example.com", 1.5)
        hints.not_accepted(IPC, "bob@example.com", "", 1.5)
        hints.refused(TUNNEL, "permission denied", "bob@example.com", "alice@example.com")
        hints.receiver_behind(TUNNEL, "bob@example.com", 31)
    tunnel, ipc, refused, behind = warnings(caplog)
    assert "hotlink tunnel open --peer alice@example.com" in tunnel and "1.5 s" in tunnel
    assert "stream.accept" in ipc
    assert "syft.pub.yaml" in refused and "bob@example.com write" in refused
    assert "alice@example.com read" in refused
    assert "bob@example.com's app has taken nothing" in behind and "31 s" in behind


def test_the_same_hint_for_the_same_folder_is_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    hints = Hints(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="hotlink.session"):
        assert hints.not_accepted(TUNNEL, "a@x.com", "b@x.com", 1.5)
        assert not hints.not_accepted(TUNNEL, "a@x.com", "b@x.com", 1.5)
        assert hints.not_accepted(IPC, "a@x.com", "", 1.5)  # another folder: said
        now[0] = HINT_INTERVAL
        assert hints.not_accepted(TUNNEL, "a@x.com", "b@x.com", 1.5)  # said again later
    assert len(warnings(caplog)) == 3


def test_ignored_opens_are_said_once_per_peer_and_never_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    hints = Hints(clock=lambda: now[0])
    long_path = "mallory@example.com/" + "x/" * 50_000 + "stream.tcp.request"
    with caplog.at_level(logging.INFO, logger="hotlink.session"):
        for i in range(1000):  # a flood of Opens for tunnels we do not run
            hints.ignored_open("mallory@example.com", f"s{i}", long_path, "no local tcp proxy for")
        hints.ignored_open("bob@example.com", "b1", TUNNEL, "no local tcp proxy for")
        now[0] = HINT_INTERVAL + 1
        hints.ignored_open("mallory@example.com", "s", long_path, "no local tcp proxy for")
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" from ")[1].split(":")[0] for line in lines] == [
        "mallory@example.com",
        "bob@example.com",
        "mallory@example.com",
    ]
    assert all(len(line) < 400 for line in lines)
