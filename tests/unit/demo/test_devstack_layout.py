"""The devstack writes a tunnel exactly as PROTOCOL.md §9.1 lays it out, in both trees."""

from __future__ import annotations

import json
from pathlib import Path

from hotlink.lab.stack import DevStack
from hotlink.lab.trees import Channel, write_channel_tree
from hotlink.protocol.acl import parse_acl

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


def test_channel_keys_follow_the_smaller_party_id() -> None:
    ch = Channel(BOB, CAROL, 1, 2, {BOB: 1001, CAROL: 1002}, flow="shared/flows/mpc")
    assert ch.channel_dir == "shared/flows/mpc/run1/_mpc/1_to_2"
    assert ch.canonical_key == f"{BOB}/shared/flows/mpc/run1/_mpc/1_to_2/stream.tcp.request"
    assert ch.owner == BOB
    reverse = Channel(CAROL, BOB, 2, 1, {BOB: 1001, CAROL: 1002}, flow="shared/flows/mpc")
    assert reverse.canonical_key == f"{BOB}/shared/flows/mpc/run1/_mpc/1_to_2/stream.tcp.request"


def test_channel_tree_has_markers_and_acls_under_both_datasites(tmp_path: Path) -> None:
    ch = Channel(ALICE, BOB, 0, 1, {ALICE: 2001, BOB: 2002})
    write_channel_tree(tmp_path, ch)
    for owner in (ALICE, BOB):
        folder = tmp_path / owner / ch.channel_dir
        marker = json.loads((folder / "stream.tcp").read_text())
        assert marker == {"from": ALICE, "to": BOB, "port": 0, "ports": {ALICE: 2001, BOB: 2002}}
        for acl in (folder / "syft.pub.yaml", tmp_path / owner / ch.flow / "syft.pub.yaml"):
            rules = parse_acl(acl.read_text(), str(acl)).rules
            assert [r.pattern for r in rules] == ["**"]
            assert set(rules[0].read) == {ALICE, BOB} and set(rules[0].write) == {ALICE, BOB}
    assert not list(tmp_path.rglob(".stream.tcp.tmp"))


def test_stack_environment_is_clean_and_never_uses_public_ice(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SYFTBOX_HOTLINK_WEBRTC", "0")
    stack = DevStack(tmp_path, env={"SYFTBOX_HOTLINK_DEBUG": "1"})
    try:
        env = stack.base_env({"X": "1"})
        assert env["SYFTBOX_HOTLINK_ICE_SERVERS"] == "none"
        assert "SYFTBOX_HOTLINK_WEBRTC" not in env  # the caller's shell does not leak in
        assert env["SYFTBOX_HOTLINK_DEBUG"] == "1" and env["X"] == "1"
    finally:
        stack.stop()
    assert tmp_path.exists()  # a root we were given is never removed


def test_log_times_of_both_line_formats() -> None:
    from datetime import datetime

    from hotlink.lab.processes import line_time

    iso = "x\n2026-01-31T09:08:07.123Z INFO hotlink: data channel open\n"
    assert line_time(iso, 2) == datetime.fromisoformat("2026-01-31T09:08:07.123+00:00").timestamp()
    clock = line_time("09:08:07.123 INFO old client line\n")
    assert clock is not None and datetime.fromtimestamp(clock).strftime("%H:%M:%S") == "09:08:07"
    assert line_time("no stamp here\n") is None


def test_channels_of_one_stack_never_share_a_proxy_port(tmp_path: Path, monkeypatch) -> None:
    # The kernel may offer a probed port again once the probe closed: the 3-party demo once
    # gave two proxies the same port, and one of them could not listen.
    offered = iter([41000, 41001, 41001, 41000, 41002, 41003])
    monkeypatch.setattr("hotlink.lab.stack.free_port", lambda: next(offered))
    stack = DevStack(tmp_path)
    a = stack.channel("alice@example.com", "bob@example.com")
    b = stack.channel("bob@example.com", "carol@example.com")
    ports = [*a.ports.values(), *b.ports.values()]
    assert sorted(ports) == [41000, 41001, 41002, 41003]
