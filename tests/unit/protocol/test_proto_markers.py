"""Marker files, N_to_M folders, and the canonical/local channel keys."""

from __future__ import annotations

import json

import pytest

from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.markers import (
    ACCEPT_MARKER,
    SOCK_MARKER,
    TCP_MARKER,
    TCP_REQUEST_NAME,
    TcpMarker,
    is_hotlink_path,
    is_tcp_proxy_path,
    parse_channel_dir,
    parse_tcp_marker,
    path_owner,
    proxy_channel,
    session_dir,
)

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"

# PROTOCOL.md §9.1: the reference test's layout and marker.
CHANNEL = "shared/flows/tcp-test/run1/_mpc/0_to_1"
MARKER_TEXT = json.dumps({"from": ALICE, "to": BOB, "port": 0, "ports": {ALICE: 10001, BOB: 10003}})


def test_constants() -> None:
    assert (TCP_MARKER, ACCEPT_MARKER, SOCK_MARKER, TCP_REQUEST_NAME) == (
        "stream.tcp",
        "stream.accept",
        "stream.sock",
        "stream.tcp.request",
    )


@pytest.mark.parametrize(
    "path,hotlink,tcp",
    [
        (f"{ALICE}/app_data/latency/rpc/hotlink/x.request", True, False),
        (f"{ALICE}/app_data/latency/rpc/hotlink/x.response", True, False),
        (f"{ALICE}/{CHANNEL}/stream.tcp.request", True, True),
        (f"{ALICE}/{CHANNEL}/stream.tcp", False, False),
        (f"{ALICE}/notes.txt", False, False),
        (f"{ALICE}/x.request.bak", False, False),
    ],
)
def test_path_kinds(path: str, hotlink: bool, tcp: bool) -> None:
    assert is_hotlink_path(path) is hotlink
    assert is_tcp_proxy_path(path) is tcp


@pytest.mark.parametrize(
    "path,expected",
    [
        (f"{ALICE}/app/x.request", f"{ALICE}/app"),
        (f"{ALICE}/{CHANNEL}/stream.tcp.request", f"{ALICE}/{CHANNEL}"),
        (f"{ALICE}/app/folder", f"{ALICE}/app/folder"),
        ("x.request", ""),
    ],
)
def test_session_dir(path: str, expected: str) -> None:
    assert session_dir(path) == expected


def test_path_owner() -> None:
    assert path_owner(f"{ALICE}/a/b") == ALICE
    assert path_owner(f"/{ALICE}/a") == ALICE
    assert path_owner(ALICE) == ALICE


@pytest.mark.parametrize(
    "name,expected",
    [
        ("0_to_1", (0, 1)),
        ("1_to_0", (1, 0)),
        ("12_to_3", (12, 3)),
        ("0_to_1x", None),
        ("a_to_b", None),
        ("-1_to_2", None),
        ("0-to-1", None),
        ("_to_1", None),
        ("0_to_", None),
        ("", None),
    ],
)
def test_parse_channel_dir(name: str, expected: tuple[int, int] | None) -> None:
    assert parse_channel_dir(name) == expected


def test_parse_reference_marker() -> None:
    marker = parse_tcp_marker(MARKER_TEXT, "m")
    assert marker == TcpMarker(ALICE, BOB, 0, {ALICE: 10001, BOB: 10003})


def test_parse_marker_without_ports() -> None:
    marker = parse_tcp_marker(json.dumps({"from": ALICE, "to": BOB, "port": 9100}), "m")
    assert marker == TcpMarker(ALICE, BOB, 9100, {})


@pytest.mark.parametrize(
    "text",
    [
        "",
        "9100",
        "127.0.0.1:9100",
        "[1,2]",
        "{not json",
        json.dumps({"to": BOB, "port": 1}),
        json.dumps({"from": "", "to": BOB, "port": 1}),
        json.dumps({"from": ALICE, "to": 5, "port": 1}),
        json.dumps({"from": ALICE, "to": BOB, "port": "9100"}),
        json.dumps({"from": ALICE, "to": BOB, "port": 70000}),
        json.dumps({"from": ALICE, "to": BOB, "port": -1}),
        json.dumps({"from": ALICE, "to": BOB, "port": True}),
        json.dumps({"from": ALICE, "to": BOB, "ports": [1]}),
        json.dumps({"from": ALICE, "to": BOB, "ports": {ALICE: "x"}}),
    ],
)
def test_bad_marker_names_its_source(text: str) -> None:
    source = f"/data/datasites/{ALICE}/{CHANNEL}/stream.tcp"
    with pytest.raises(ProtocolError) as info:
        parse_tcp_marker(text, source)
    assert source in str(info.value)


def test_reference_layout_for_both_parties_and_both_trees() -> None:
    marker = parse_tcp_marker(MARKER_TEXT, "m")
    canonical = f"{ALICE}/{CHANNEL}/{TCP_REQUEST_NAME}"
    # Each party finds the marker in alice's datasite and in bob's.
    for owner in (ALICE, BOB):
        rel = f"{owner}/{CHANNEL}/stream.tcp"
        a = proxy_channel(rel, marker, ALICE)
        b = proxy_channel(rel, marker, BOB)
        assert a.canonical_key == b.canonical_key == canonical
        assert a.local_key == b.local_key == f"{owner}/{CHANNEL}/{TCP_REQUEST_NAME}"
        assert (a.listen_port, a.peer_email) == (10001, BOB)
        assert (b.listen_port, b.peer_email) == (10003, ALICE)
        assert (a.from_id, a.to_id) == (0, 1)
        assert a.marker_path == rel
        assert canonical in a.writer_keys and a.local_key in a.writer_keys


def test_canonical_key_uses_the_smaller_party_id_not_the_smaller_email() -> None:
    # DECISIONS.md #8: Go's rule. carol (id 0) < alice (id 1) by id, although alice < carol.
    marker = TcpMarker(ALICE, CAROL, 0, {ALICE: 1000, CAROL: 2000})
    rel = f"{ALICE}/shared/flows/x/run/_mpc/1_to_0/stream.tcp"
    chan = proxy_channel(rel, marker, ALICE)
    assert chan.canonical_key == f"{CAROL}/shared/flows/x/run/_mpc/0_to_1/{TCP_REQUEST_NAME}"
    assert chan.local_key == f"{ALICE}/shared/flows/x/run/_mpc/1_to_0/{TCP_REQUEST_NAME}"
    # The reversed folder in the peer's datasite gives the same canonical key.
    peer = proxy_channel(f"{CAROL}/shared/flows/x/run/_mpc/1_to_0/stream.tcp", marker, CAROL)
    assert peer.canonical_key == chan.canonical_key


def test_port_falls_back_to_port_field() -> None:
    marker = TcpMarker(ALICE, BOB, 9100, {BOB: 9200})
    rel = f"{ALICE}/{CHANNEL}/stream.tcp"
    assert proxy_channel(rel, marker, ALICE).listen_port == 9100
    assert proxy_channel(rel, marker, BOB).listen_port == 9200


def test_writer_keys_dedupe_when_local_is_canonical() -> None:
    chan = proxy_channel(f"{ALICE}/{CHANNEL}/stream.tcp", parse_tcp_marker(MARKER_TEXT, "m"), BOB)
    assert chan.writer_keys == (chan.canonical_key,)


@pytest.mark.parametrize(
    "rel,marker,local,needle",
    [
        (  # DECISIONS.md #10: /_mpc/ is required
            f"{ALICE}/shared/flows/tcp-test/run1/0_to_1/stream.tcp",
            TcpMarker(ALICE, BOB, 1, {}),
            ALICE,
            "_mpc",
        ),
        (
            f"{ALICE}/shared/_mpc/chan/stream.tcp",
            TcpMarker(ALICE, BOB, 1, {}),
            ALICE,
            "N_to_M",
        ),
        (
            f"{ALICE}/{CHANNEL}/stream.sock",
            TcpMarker(ALICE, BOB, 1, {}),
            ALICE,
            "marker",
        ),
        (
            f"{ALICE}/{CHANNEL}/stream.tcp",
            TcpMarker(ALICE, BOB, 1, {}),
            CAROL,
            "neither party",
        ),
        (
            f"{ALICE}/{CHANNEL}/stream.tcp",
            TcpMarker(ALICE, BOB, 0, {BOB: 5}),
            ALICE,
            "port",
        ),
        (
            f"{ALICE}/{CHANNEL}/stream.tcp",
            TcpMarker(ALICE, BOB, 7, {ALICE: 0}),
            ALICE,
            "port",
        ),
        (
            f"{ALICE}/shared/_mpc/1_to_1/stream.tcp",
            TcpMarker(ALICE, BOB, 1, {}),
            ALICE,
            "different",
        ),
        (
            f"{ALICE}/{CHANNEL}/stream.tcp",
            TcpMarker(ALICE, ALICE, 1, {}),
            ALICE,
            "same",
        ),
        ("stream.tcp", TcpMarker(ALICE, BOB, 1, {}), ALICE, "marker"),
    ],
)
def test_proxy_channel_errors(rel: str, marker: TcpMarker, local: str, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle) as info:
        proxy_channel(rel, marker, local)
    assert rel in str(info.value)
