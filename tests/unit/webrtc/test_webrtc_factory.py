"""Choosing a backend, and how each backend turns our ICE server list into its own config."""

from __future__ import annotations

import sys
from typing import Any

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
        conn: Any = peer._pc.sctp.transport.transport.iceGatherer._connection  # type: ignore[union-attr]
        assert conn.get_component_candidates.keywords == {"timeout": DEFAULT_GATHER_TIMEOUT}
    finally:
        await peer.close()


def _stun_error(code: int) -> Exception:
    from aioice import stun

    response = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.ERROR)
    response.attributes["ERROR-CODE"] = (code, "test")
    return stun.TransactionFailed(response)


class _FlakyAllocate:
    """A stand-in for aioice's create_turn_endpoint: fails with ``errors`` in turn, then works."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, *args: object, **kwargs: object) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "endpoint"


async def test_aiortc_retries_a_turn_allocation_mismatch_from_a_new_socket() -> None:
    # 437: coturn still holds a (never deleted) allocation for this client port.
    from hotlink.webrtc.aiortc_backend import _retry_on_mismatch

    create = _FlakyAllocate(_stun_error(437), _stun_error(437))
    assert await _retry_on_mismatch(create)("factory", server_addr=("192.0.2.1", 3478)) == (
        "endpoint"
    )
    assert create.calls == 3


async def test_aiortc_gives_up_on_other_turn_errors_and_after_a_few_mismatches() -> None:
    from aioice import stun

    from hotlink.webrtc.aiortc_backend import _ALLOCATE_ATTEMPTS, _retry_on_mismatch

    create = _FlakyAllocate(_stun_error(403))
    with pytest.raises(stun.TransactionFailed, match="403"):
        await _retry_on_mismatch(create)()
    assert create.calls == 1

    create = _FlakyAllocate(*[_stun_error(437)] * _ALLOCATE_ATTEMPTS)
    with pytest.raises(stun.TransactionFailed, match="437"):
        await _retry_on_mismatch(create)()
    assert create.calls == _ALLOCATE_ATTEMPTS


def test_aioice_gathering_uses_the_retrying_allocate() -> None:
    import aioice.turn

    import hotlink.webrtc.aiortc_backend  # noqa: F401  (installs the wrapper)

    assert getattr(aioice.turn.create_turn_endpoint, "_hotlink_retry", False)
    # Wrapped once, not once per import.
    inner = getattr(aioice.turn.create_turn_endpoint, "__wrapped__", None)
    assert inner is not None and not getattr(inner, "_hotlink_retry", False)
