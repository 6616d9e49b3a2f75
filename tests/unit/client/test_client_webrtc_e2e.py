"""The data channel bound to the end-to-end exchange: each side sends the DTLS fingerprints of
its own SDP sealed (``e2e_dtls``), the sender uses the channel only once the acceptor's
binding matches the SDP it got, and a binding that does not match closes the session loudly.

A scripted backend whose SDPs carry fingerprints and a fake manager; the peer's end-to-end
state is a real :class:`E2ESession` the test drives by hand.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from hotlink.client.p2p.webrtc_transport import WebRTCPeerTransport
from hotlink.protocol.e2e.handshake import SessionParams
from hotlink.protocol.e2e.identity import Identity
from hotlink.protocol.e2e.pins import PinBook
from hotlink.protocol.e2e.session import E2E_DTLS, E2ESession
from hotlink.protocol.frames import decode_frame
from hotlink.protocol.ice import dtls_fingerprints, parse_sdp_token, sdp_token
from hotlink.protocol.messages import HotlinkSignal
from hotlink.settings import ClientSettings
from hotlink.webrtc import PeerEvents
from unit.client.test_client_webrtc_fakes import (
    ALICE,
    BOB,
    PATH,
    SID,
    FakeBackend,
    FakeHost,
    FakePeer,
    frame,
    quick_config,
    settle,
    until,
)

IDS = {ALICE: Identity.generate(), BOB: Identity.generate()}
_BASE = "v=0\r\no=- {n} {n} IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
_MEDIA = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n"
OFFER = _BASE.format(n=1) + "a=fingerprint:sha-256 " + ":".join(["0A"] * 32) + "\r\n" + _MEDIA
ANSWER = _BASE.format(n=2) + _MEDIA + "a=fingerprint:sha-256 " + ":".join(["B1"] * 32) + "\r\n"
# The offer as a middleman rewrote it: its own certificate's fingerprint.
FORGED_OFFER = OFFER.replace("0A:0A", "EE:0A", 1)


class FingerprintPeer(FakePeer):
    """The scripted peer, with SDPs that announce DTLS fingerprints."""

    async def create_offer(self) -> str:
        self.calls.append("create_offer")
        return OFFER

    async def accept_offer(self, sdp: str) -> str:
        self.calls.append("accept_offer")
        return ANSWER


class FingerprintBackend(FakeBackend):
    def create_peer(self, ice_servers, events: PeerEvents, **kwargs):  # type: ignore[no-untyped-def,override]
        peer = FingerprintPeer(events, kwargs.get("relay_only", False))
        self.peers.append(peer)
        return peer


def make(**overrides: object) -> tuple[WebRTCPeerTransport, FingerprintBackend, FakeHost]:
    backend = FingerprintBackend()
    host = FakeHost()
    transport = WebRTCPeerTransport(
        ClientSettings(ice_servers_raw="none"),
        backend=backend,
        config=quick_config(**overrides),
    )
    transport.bind(host)
    return transport, backend, host


def e2e_pair(our_role: str) -> tuple[E2ESession, E2ESession]:
    """Our end-to-end state and the peer's; alice is us. Not exchanged yet."""
    outbound = our_role == "outbound"
    params = SessionParams(SID, PATH, ALICE if outbound else BOB, BOB if outbound else ALICE)
    ours = E2ESession(
        role="opener" if outbound else "acceptor",
        params=params,
        identity=IDS[ALICE],
        pins=PinBook(),
        refuse_plaintext=False,
    )
    theirs = E2ESession(
        role="acceptor" if outbound else "opener",
        params=params,
        identity=IDS[BOB],
        pins=PinBook(),
        refuse_plaintext=False,
    )
    return ours, theirs


def exchange(ours: E2ESession, theirs: E2ESession) -> None:
    assert ours.on_hello(theirs.hello_token()) and theirs.on_hello(ours.hello_token())


def signal(kind: str, tok: str) -> HotlinkSignal:
    return HotlinkSignal(sid=SID, knd=kind, tok=tok)


def binding_of(theirs: E2ESession, local_sdp: str, remote_sdp: str) -> HotlinkSignal:
    """The peer's ``e2e_dtls``: it made ``local_sdp`` and applied ``remote_sdp``."""
    theirs.bind_local(dtls_fingerprints(local_sdp))
    theirs.bind_remote(dtls_fingerprints(remote_sdp))
    token = theirs.take_binding()
    assert token is not None
    return signal(E2E_DTLS, token)


def ours_of(host: FakeHost) -> list[HotlinkSignal]:
    return [s for s in host.signals if s.knd == E2E_DTLS]


async def sealed_sender(
    **overrides: object,
) -> tuple[WebRTCPeerTransport, FingerprintPeer, FakeHost, E2ESession]:
    """An outbound sealed session that answered the acceptor's offer; channel not up yet."""
    transport, backend, host = make(**overrides)
    ours, theirs = e2e_pair("outbound")
    exchange(ours, theirs)  # the opener has the keys before its peer connection starts
    host.e2e[SID] = ours
    await transport.on_outbound_accepted(host.add(SID, "outbound"))
    await transport.on_signal(signal("sdp_offer", sdp_token("offer", OFFER)))
    await until(lambda: len(host.signals) == 2)
    peer = backend.peers[0]
    assert isinstance(peer, FingerprintPeer)
    return transport, peer, host, theirs


# ---------------------------------------------------------------- the sender (opener)


async def test_the_sender_binds_its_answer_and_sends_only_after_the_peers_binding() -> None:
    transport, peer, host, theirs = await sealed_sender(grace=30.0)
    # The answer, then our binding right behind it.
    assert host.kinds() == ["sdp_answer", E2E_DTLS]
    theirs.on_binding(host.signals[1].tok)
    their_binding = binding_of(theirs, OFFER, parse_sdp_token(host.signals[0].tok))
    assert theirs.dtls_verified  # the acceptor checks our answer's fingerprint

    peer.fire_open()
    # Up, but not ours to use yet: the WebSocket path is reported and frames past the
    # first few go there at once.
    assert transport.transport_kind(SID) == "ws"
    assert not await transport.try_send(SID, frame(5))
    first = asyncio.create_task(transport.try_send(SID, frame(1)))
    await settle()
    assert not first.done()  # the grace wait: it ends with the binding, not the channel
    await transport.on_signal(their_binding)
    assert await first
    assert [decode_frame(m).seq for m in peer.sent] == [1]
    assert transport.transport_kind(SID) == "p2p-host"
    assert await transport.try_send(SID, frame(6))
    assert host.e2e_failures == []
    await transport.close()


async def test_a_binding_before_the_channel_opens_lets_it_open_at_once() -> None:
    transport, peer, _host, theirs = await sealed_sender()
    await transport.on_signal(binding_of(theirs, OFFER, ANSWER))
    await settle()
    peer.fire_open()
    assert transport.transport_kind(SID) == "p2p-host"
    assert await transport.try_send(SID, frame(1))
    await transport.close()


async def test_a_forged_offer_fingerprint_closes_the_session_and_nothing_goes_p2p(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, backend, host = make(grace=0.05)
    ours, theirs = e2e_pair("outbound")
    exchange(ours, theirs)
    host.e2e[SID] = ours
    await transport.on_outbound_accepted(host.add(SID, "outbound"))
    # A middleman put its own certificate's fingerprint in the acceptor's offer.
    await transport.on_signal(signal("sdp_offer", sdp_token("offer", FORGED_OFFER)))
    await until(lambda: "sdp_answer" in host.kinds())
    peer = backend.peers[0]
    with caplog.at_level(logging.INFO, logger="hotlink.webrtc"):
        await transport.on_signal(binding_of(theirs, OFFER, ANSWER))
        await until(lambda: bool(host.e2e_failures))
    ((sid, reason),) = host.e2e_failures
    assert sid == SID and "middleman" in reason
    assert host.kinds()[-1] == "webrtc_error" and "e2e:" in host.signals[-1].err
    peer.fire_open()  # too late: P2P is over for this session
    assert not await transport.try_send(SID, frame(1))
    assert peer.sent == []
    await until(lambda: peer.closed)
    await transport.close()


async def test_a_garbled_binding_is_a_failure_too() -> None:
    transport, _peer, host, _theirs = await sealed_sender()
    await transport.on_signal(signal(E2E_DTLS, "bm90IGEgYmluZGluZw=="))
    await until(lambda: bool(host.e2e_failures))
    assert "binding" in host.e2e_failures[0][1]
    assert not await transport.try_send(SID, frame(5))
    await transport.close()


async def test_a_mismatch_after_p2p_failed_still_closes_the_session() -> None:
    # The forged fingerprint breaks DTLS first; the binding that comes after is still checked.
    transport, backend, host = make()
    ours, theirs = e2e_pair("outbound")
    exchange(ours, theirs)
    host.e2e[SID] = ours
    await transport.on_outbound_accepted(host.add(SID, "outbound"))
    await transport.on_signal(signal("sdp_offer", sdp_token("offer", FORGED_OFFER)))
    await until(lambda: "sdp_answer" in host.kinds())
    backend.peers[0].fire_closed("DTLS handshake failed")
    await until(lambda: backend.peers[0].closed)
    await transport.on_signal(binding_of(theirs, OFFER, ANSWER))
    await until(lambda: bool(host.e2e_failures))
    assert "middleman" in host.e2e_failures[0][1]
    await transport.close()


async def test_an_early_binding_waits_for_the_session_and_its_offer() -> None:
    transport, backend, host = make()
    ours, theirs = e2e_pair("outbound")
    exchange(ours, theirs)
    # The acceptor's binding overtakes everything that makes the session known here.
    await transport.on_signal(binding_of(theirs, OFFER, ANSWER))
    await settle()
    assert backend.peers == [] and host.signals == []
    host.e2e[SID] = ours
    await transport.on_outbound_accepted(host.add(SID, "outbound"))
    await transport.on_signal(signal("sdp_offer", sdp_token("offer", OFFER)))
    await until(lambda: host.kinds() == ["sdp_answer", E2E_DTLS])
    assert ours.dtls_verified
    backend.peers[0].fire_open()
    assert await transport.try_send(SID, frame(1))
    await transport.close()


async def test_a_channel_the_peer_never_binds_is_given_up_at_the_deadline() -> None:
    transport, peer, host, _theirs = await sealed_sender(open_timeout=0.3)
    peer.fire_open()
    await until(lambda: peer.closed)
    assert host.kinds()[-1] == "webrtc_error"
    assert "DTLS fingerprint" in host.signals[-1].err
    assert host.e2e_failures == []  # no binding is not a forged one: the session lives on
    assert not await transport.try_send(SID, frame(1))
    await transport.close()


async def test_an_oversized_binding_is_dropped_at_the_door() -> None:
    transport, _peer, host, _theirs = await sealed_sender()
    await transport.on_signal(signal(E2E_DTLS, "A" * 5000))
    await settle()
    assert transport.dropped_signals == 1
    assert host.e2e_failures == []
    await transport.close()


# ---------------------------------------------------------------- not sealed: as before


async def test_a_plaintext_session_uses_the_channel_as_soon_as_it_opens() -> None:
    transport, backend, host = make()
    ours, _theirs = e2e_pair("outbound")
    ours.go_plaintext("the acceptor sent no key exchange")
    host.e2e[SID] = ours
    await transport.on_outbound_accepted(host.add(SID, "outbound"))
    await transport.on_signal(signal("sdp_offer", sdp_token("offer", OFFER)))
    await until(lambda: host.kinds() == ["sdp_answer"])
    backend.peers[0].fire_open()
    assert transport.transport_kind(SID) == "p2p-host"
    assert await transport.try_send(SID, frame(1))
    assert E2E_DTLS not in host.kinds()
    await transport.close()


async def test_a_channel_up_while_the_exchange_is_pending_opens_once_it_is_plaintext() -> None:
    # A reference acceptor: it offers but sends no hello; the channel can be up while the
    # opener still waits for one, and is used once the opener settled on plaintext.
    transport, backend, host = make()
    ours, _theirs = e2e_pair("outbound")
    host.e2e[SID] = ours
    host.add(SID, "outbound")
    await transport.on_signal(signal("sdp_offer", sdp_token("offer", OFFER)))
    await until(lambda: host.kinds() == ["sdp_answer"])
    backend.peers[0].fire_open()
    assert transport.transport_kind(SID) == "ws"
    ours.go_plaintext("the acceptor sent no key exchange")
    assert await transport.try_send(SID, frame(1))
    assert transport.transport_kind(SID) == "p2p-host"
    await transport.close()


# ---------------------------------------------------------------- the receiver (acceptor)


async def test_the_acceptor_binds_once_its_keys_come_after_its_offer() -> None:
    transport, backend, host = make()
    ours, theirs = e2e_pair("inbound")
    host.e2e[SID] = ours
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: host.kinds() == ["sdp_offer"])  # no keys yet: no binding
    exchange(ours, theirs)  # the opener's hello
    await transport.on_signal(signal("sdp_answer", sdp_token("answer", ANSWER)))
    await until(lambda: host.kinds() == ["sdp_offer", E2E_DTLS])
    theirs.bind_local(dtls_fingerprints(ANSWER))
    theirs.bind_remote(dtls_fingerprints(OFFER))
    theirs.on_binding(host.signals[1].tok)
    assert theirs.dtls_verified  # the opener may send on the channel now
    await transport.on_signal(signal(E2E_DTLS, theirs.take_binding() or ""))
    await settle()
    assert ours.dtls_verified and host.e2e_failures == []
    backend.peers[0].fire_open()
    assert transport.transport_kind(SID) == "p2p-host"
    await transport.close()


async def test_the_acceptors_binding_leaves_when_the_keys_come_after_every_signal() -> None:
    transport, backend, host = make()
    ours, theirs = e2e_pair("inbound")
    host.e2e[SID] = ours
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: host.kinds() == ["sdp_offer"])
    await transport.on_signal(signal("sdp_answer", sdp_token("answer", ANSWER)))
    await until(lambda: backend.peers[0].calls[-1].startswith("set_answer"))
    assert E2E_DTLS not in host.kinds()
    exchange(ours, theirs)
    # The receiver's channel opening is a moment to look again (so is any later signal).
    backend.peers[0].fire_open()
    await until(lambda: E2E_DTLS in host.kinds())
    assert transport.transport_kind(SID) == "p2p-host"  # the receiver is never held back
    await transport.close()


async def test_a_forged_answer_fingerprint_is_caught_by_the_acceptor() -> None:
    transport, _backend, host = make()
    ours, theirs = e2e_pair("inbound")
    exchange(ours, theirs)
    host.e2e[SID] = ours
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    # With the keys before the offer, the binding follows the offer at once.
    await until(lambda: host.kinds() == ["sdp_offer", E2E_DTLS])
    forged = ANSWER.replace("B1:B1", "EE:B1", 1)
    await transport.on_signal(signal("sdp_answer", sdp_token("answer", forged)))
    await transport.on_signal(binding_of(theirs, ANSWER, OFFER))
    await until(lambda: bool(host.e2e_failures))
    assert "middleman" in host.e2e_failures[0][1]
    await transport.close()
