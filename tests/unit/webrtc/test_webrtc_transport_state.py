"""``transport_connected``: ICE and DTLS up, told apart from the data channel being open.

Each backend's mapping of its library's states is fed by hand here (no network); the
integration tests show it on real pairs, including one whose SCTP refuses the association.
"""

from __future__ import annotations

import pytest

from support.fake_peer import FakePeer, NullEvents


async def test_the_transport_state_is_reported_and_remembered() -> None:
    peer = FakePeer(NullEvents())
    assert not peer.transport_connected and not peer.transport_was_connected
    peer._set_transport_up(True)
    assert peer.transport_connected and peer.transport_was_connected
    assert not peer.is_open  # the transport is up, the channel is not
    peer._set_transport_up(False)
    # Gone now, but the owner can still tell that ICE and DTLS had worked.
    assert not peer.transport_connected and peer.transport_was_connected
    peer._set_transport_up(True)
    await peer.close()
    assert not peer.transport_connected and peer.transport_was_connected


# rtcIceState / rtcState values of <rtc/rtc.h>.
ICE_CHECKING, ICE_CONNECTED, ICE_COMPLETED, ICE_CLOSED = 1, 2, 3, 6
PC_CONNECTING, PC_CONNECTED, PC_DISCONNECTED, PC_FAILED, PC_CLOSED = 1, 2, 3, 4, 5


async def test_libdatachannel_ice_connected_counts_until_the_connection_fails() -> None:
    pytest.importorskip("aiolibdatachannel")
    from hotlink.webrtc.libdatachannel_backend import LibdatachannelPeer

    peer = LibdatachannelPeer([], NullEvents())
    try:
        seen = []
        # What libdatachannel reports when the remote refuses the SCTP association: ICE
        # connects (and DTLS after it, which the C API does not report), the connection
        # never reaches "connected" (that needs SCTP), then fails when SCTP gives up.
        for kind, state in [
            ("state", PC_CONNECTING),
            ("ice_state", ICE_CHECKING),
            ("ice_state", ICE_CONNECTED),
            ("ice_state", ICE_COMPLETED),
            ("state", PC_FAILED),
            ("ice_state", ICE_CLOSED),
            ("state", PC_CLOSED),
        ]:
            peer._handle(kind, state)
            seen.append(peer.transport_connected)
        assert seen == [False, False, True, True, False, False, False]
        assert peer.transport_was_connected
    finally:
        await peer.close()


async def test_libdatachannel_disconnection_clears_it_until_it_reconnects() -> None:
    pytest.importorskip("aiolibdatachannel")
    from hotlink.webrtc.libdatachannel_backend import LibdatachannelPeer

    peer = LibdatachannelPeer([], NullEvents())
    try:
        peer._handle("ice_state", ICE_CONNECTED)
        peer._handle("state", PC_CONNECTED)
        assert peer.transport_connected
        peer._handle("state", PC_DISCONNECTED)
        assert not peer.transport_connected
        peer._handle("state", PC_CONNECTED)
        assert peer.transport_connected
    finally:
        await peer.close()
    assert not peer.transport_connected


async def test_aiortc_follows_the_connection_state(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("aiortc")
    from aiortc import RTCPeerConnection

    from hotlink.webrtc.aiortc_backend import AiortcPeer

    state = {"now": "new"}
    monkeypatch.setattr(RTCPeerConnection, "connectionState", property(lambda _: state["now"]))
    peer = AiortcPeer([], NullEvents())
    try:
        seen = []
        for now in ["connecting", "connected", "failed"]:
            state["now"] = now
            peer._on_connection_state()
            seen.append(peer.transport_connected)
        assert seen == [False, True, False]
        assert peer.transport_was_connected
    finally:
        await peer.close()
