"""Choosing a backend, and how each backend turns our ICE server list into its own config."""

from __future__ import annotations

import sys

import pytest

from hotlink.protocol.ice import IceServer
from hotlink.webrtc import BackendUnavailableError, load_backend


def _require_libdatachannel() -> None:
    try:
        load_backend("libdatachannel")
    except BackendUnavailableError as exc:
        pytest.skip(f"libdatachannel not available here: {exc}")


def test_named_backends_load() -> None:
    assert load_backend("aiortc").name == "aiortc"
    assert load_backend(" AIORTC ").name == "aiortc"
    _require_libdatachannel()
    assert load_backend("libdatachannel").name == "libdatachannel"


def test_auto_prefers_libdatachannel() -> None:
    _require_libdatachannel()
    assert load_backend().name == "libdatachannel"
    assert load_backend("auto").name == "libdatachannel"
    assert load_backend("").name == "libdatachannel"


def test_unknown_backend_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown WebRTC backend 'pion'.*auto.*aiortc"):
        load_backend("pion")


def test_auto_falls_back_to_aiortc_where_libdatachannel_does_not_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes the import raise ImportError, as on a platform without wheels.
    monkeypatch.setitem(sys.modules, "hotlink.webrtc.libdatachannel_backend", None)
    assert load_backend("auto").name == "aiortc"
    with pytest.raises(BackendUnavailableError, match="libdatachannel"):
        load_backend("libdatachannel")


def test_importing_the_package_loads_neither_library() -> None:
    import subprocess

    code = (
        "import sys, hotlink.webrtc; "
        "print(any(m.split('.')[0] in ('aiortc', 'aiolibdatachannel') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_libdatachannel_urls_carry_percent_encoded_credentials() -> None:
    _require_libdatachannel()
    from hotlink.webrtc.libdatachannel_backend import ice_server_url

    assert ice_server_url(IceServer("stun:192.0.2.1:3478")) == "stun:192.0.2.1:3478"
    turn = IceServer("turn:192.0.2.1:3478?transport=udp", "1700000000:alice@example.com", "p/w+=")
    assert ice_server_url(turn) == (
        "turn:1700000000%3Aalice%40example.com:p%2Fw%2B%3D@192.0.2.1:3478?transport=udp"
    )


def test_aiortc_gets_one_stun_and_one_turn_and_never_none() -> None:
    from hotlink.webrtc.aiortc_backend import aiortc_ice_servers

    # None would make aiortc use Google's public STUN server.
    assert aiortc_ice_servers([]) == []
    servers = aiortc_ice_servers(
        [
            IceServer("stun:192.0.2.1:3478"),
            IceServer("stun:192.0.2.2:3478"),  # aiortc uses one STUN server only
            IceServer("turn:192.0.2.1:3478?transport=udp", "u", "p"),
            IceServer("turn:192.0.2.2:3478?transport=udp", "u", "p"),
            IceServer("stun:"),  # malformed: dropped, not fatal
        ]
    )
    assert [(s.urls, s.username, s.credential) for s in servers] == [
        ("stun:192.0.2.1:3478", None, None),
        ("turn:192.0.2.1:3478?transport=udp", "u", "p"),
    ]


async def test_aiortc_gathering_is_bounded_by_default() -> None:
    from hotlink.webrtc import DEFAULT_GATHER_TIMEOUT
    from hotlink.webrtc.aiortc_backend import AiortcPeer

    class Quiet:
        def on_local_candidate(self, cand: object) -> None: ...
        def on_channel_open(self) -> None: ...
        def on_message(self, data: bytes) -> None: ...
        def on_channel_closed(self, reason: str) -> None: ...

    peer = load_backend("aiortc").create_peer([], Quiet())
    assert isinstance(peer, AiortcPeer)
    try:
        await peer.create_offer()
        conn = peer._pc.sctp.transport.transport.iceGatherer._connection  # type: ignore[union-attr]
        assert conn.get_component_candidates.keywords == {"timeout": DEFAULT_GATHER_TIMEOUT}
    finally:
        await peer.close()
