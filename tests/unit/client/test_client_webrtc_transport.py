"""WebRTCPeerTransport's state machine with a scripted backend and a fake manager."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hotlink.client.p2p.signaling import SESSION_SIGNAL_BYTES, SignalQuota, signal_size
from hotlink.client.p2p.transport import PeerSendError
from hotlink.protocol.frames import decode_frame
from hotlink.protocol.ice import (
    candidate_token,
    parse_candidate_token,
    parse_sdp_token,
    sdp_token,
)
from hotlink.protocol.messages import HotlinkData, HotlinkSignal
from hotlink.settings import ClientSettings
from hotlink.webrtc import BackpressureTimeoutError, ChannelNotOpenError
from unit.client.test_client_webrtc_fakes import (
    ANSWER_SDP,
    CAND_1,
    CAND_2,
    OFFER_SDP,
    SID,
    SID2,
    FakePeer,
    frame,
    make_transport,
    message,
    settle,
    until,
)


def offer_signal(sid: str = SID) -> HotlinkSignal:
    return HotlinkSignal(sid=sid, knd="sdp_offer", tok=sdp_token("offer", OFFER_SDP))


def answer_signal(sid: str = SID) -> HotlinkSignal:
    return HotlinkSignal(sid=sid, knd="sdp_answer", tok=sdp_token("answer", ANSWER_SDP))


def cand_signal(cand: object, sid: str = SID) -> HotlinkSignal:
    return HotlinkSignal(sid=sid, knd="ice_candidate", tok=candidate_token(cand))  # type: ignore[arg-type]


async def open_sender(**overrides: object):  # type: ignore[no-untyped-def]
    """An outbound session (we opened, we answer) whose channel is open."""
    transport, backend, host = make_transport(**overrides)
    info = host.add(SID, "outbound")
    await transport.on_outbound_accepted(info)
    await transport.on_signal(offer_signal())
    await until(lambda: "sdp_answer" in host.kinds())
    peer = backend.peers[0]
    peer.fire_open()
    return transport, backend, host, peer


# ---------------------------------------------------------------- negotiation


async def test_acceptor_offers_right_after_accept_and_applies_the_answer() -> None:
    transport, backend, host = make_transport()
    info = host.add(SID, "inbound")
    await transport.on_inbound_accepted(info)
    await until(lambda: host.kinds() == ["sdp_offer"])
    assert parse_sdp_token(host.signals[0].tok) == OFFER_SDP
    assert host.telemetry.events["p2p_offers"] == 1
    peer = backend.peers[0]
    # Local candidates trickle after the offer, in the DECISIONS.md #3 shape.
    peer.events.on_local_candidate(CAND_1)
    peer.events.on_local_candidate(None)  # end-of-candidates is not signalled
    await until(lambda: len(host.signals) == 2)
    assert host.kinds() == ["sdp_offer", "ice_candidate"]
    assert parse_candidate_token(host.signals[1].tok) == CAND_1
    await transport.on_signal(answer_signal())
    await transport.on_signal(cand_signal(CAND_2))
    await until(lambda: peer.calls[-1] == "candidate")
    assert peer.calls == ["create_offer", "set_answer:True", "candidate"]
    peer.fire_open()
    assert transport.transport_kind(SID) == "p2p-host"
    await transport.close()


async def test_opener_answers_and_applies_candidates_that_came_before_the_offer() -> None:
    transport, backend, host = make_transport()
    info = host.add(SID, "outbound")
    await transport.on_outbound_accepted(info)
    await transport.on_signal(cand_signal(CAND_1))
    await transport.on_signal(cand_signal(CAND_2))
    await settle()
    assert backend.peers == []  # no peer before the offer
    await transport.on_signal(offer_signal())
    await until(lambda: host.kinds() == ["sdp_answer"])
    assert parse_sdp_token(host.signals[0].tok) == ANSWER_SDP
    peer = backend.peers[0]
    await until(lambda: len(peer.remote_candidates) == 2)
    assert peer.calls == ["accept_offer:True", "candidate", "candidate"]
    assert peer.remote_candidates == [CAND_1, CAND_2]
    assert host.telemetry.events["p2p_answers_ok"] == 1
    await transport.close()


async def test_signals_for_an_unknown_session_wait_until_it_exists() -> None:
    transport, backend, host = make_transport()
    # Candidate and offer overtake everything that makes the session known to us.
    await transport.on_signal(cand_signal(CAND_1))
    await transport.on_signal(offer_signal())
    await settle()
    assert backend.peers == [] and host.signals == []
    info = host.add(SID, "outbound")
    await transport.on_outbound_accepted(info)
    await until(lambda: host.kinds() == ["sdp_answer"])
    peer = backend.peers[0]
    await until(lambda: peer.remote_candidates == [CAND_1])
    await transport.close()


async def test_an_offer_for_a_known_outbound_session_is_answered_before_its_accept_hook() -> None:
    transport, backend, host = make_transport()
    host.add(SID, "outbound")
    await transport.on_signal(offer_signal())
    await until(lambda: host.kinds() == ["sdp_answer"])
    await transport.on_outbound_accepted(host.sessions[SID])  # later: no second session
    await settle()
    assert len(backend.peers) == 1
    await transport.close()


async def test_candidate_with_rust_client_quirks_is_accepted() -> None:
    transport, backend, host = make_transport()
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: host.kinds() == ["sdp_offer"])
    tok = (
        '{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host",'
        '"sdpMid":"","sdpMLineIndex":0,"usernameFragment":null}'
    )
    await transport.on_signal(HotlinkSignal(sid=SID, knd="ice_candidate", tok=tok))
    await transport.on_signal(HotlinkSignal(sid=SID, knd="ice_candidate", tok="not json"))
    peer = backend.peers[0]
    await until(lambda: len(peer.remote_candidates) == 1)
    assert peer.remote_candidates[0] is not None
    assert peer.remote_candidates[0].candidate.startswith("1 1 udp")
    assert not peer.closed  # a bad candidate costs only itself
    await transport.close()


async def test_quic_and_unknown_kinds_are_ignored() -> None:
    transport, backend, host = make_transport()
    for kind in ("quic_offer", "quic_answer", "quic_error", "something_new"):
        await transport.on_signal(HotlinkSignal(sid=SID, knd=kind, err="x"))
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    await settle()
    assert backend.peers == [] and host.signals == []
    await transport.close()


async def test_signals_too_large_to_be_real_are_dropped_at_the_door(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 200 candidates of 8 MiB, for a live session and for one we do not know yet: none is
    # held, one warning says so, and the session's real signals still work.
    transport, backend, host = make_transport()
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: host.kinds() == ["sdp_offer"])
    flood = "c" * (8 << 20)
    with caplog.at_level(logging.WARNING, logger="hotlink.webrtc"):
        for sid in (SID, SID2):
            for _ in range(100):
                await transport.on_signal(HotlinkSignal(sid=sid, knd="ice_candidate", tok=flood))
    assert transport.dropped_signals == 200
    warnings = [r for r in caplog.records if "dropping a webrtc signal" in r.getMessage()]
    assert len(warnings) == 3  # the first, the 100th and the 200th
    assert SID2 not in transport._pending and transport._pending.nbytes == 0
    assert transport.signal_quota.used == 0
    await transport.on_signal(answer_signal())
    await transport.on_signal(cand_signal(CAND_1))
    peer = backend.peers[0]
    await until(lambda: peer.remote_candidates == [CAND_1])
    assert peer.calls[:2] == ["create_offer", "set_answer:True"]
    await transport.close()


async def test_a_sessions_signal_queue_is_bounded_in_bytes() -> None:
    transport, _backend, host = make_transport()
    info = host.add(SID, "outbound")
    await transport.on_outbound_accepted(info)
    offer = HotlinkSignal(sid=SID, knd="sdp_offer", tok="o" * 60_000)
    # No await in between: the session's task has not taken any of them yet.
    for _ in range(10):
        transport._sessions[SID].push_signal(offer)
    queued = transport._sessions[SID]._signals.qsize()
    assert queued == SESSION_SIGNAL_BYTES // signal_size(offer)
    assert transport.signal_quota.used == queued * signal_size(offer)
    await transport.close()
    assert transport.signal_quota.used == 0  # what was queued is given back on close


async def test_all_sessions_signal_queues_share_one_byte_bound() -> None:
    transport, _backend, host = make_transport()
    transport.signal_quota = SignalQuota(150_000)
    for sid in (SID, SID2):
        await transport.on_outbound_accepted(host.add(sid, "outbound"))
    offer = HotlinkSignal(sid=SID, knd="sdp_offer", tok="o" * 60_000)
    for sid in (SID, SID2):
        for _ in range(2):
            transport._sessions[sid].push_signal(offer)
    sizes = [transport._sessions[sid]._signals.qsize() for sid in (SID, SID2)]
    assert sizes == [2, 0]
    assert transport.signal_quota.used <= 150_000
    await transport.close()
    assert transport.signal_quota.used == 0


async def test_webrtc_error_while_negotiating_ends_p2p_for_that_session_only() -> None:
    transport, backend, host = make_transport()
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await transport.on_inbound_accepted(host.add(SID2, "inbound"))
    await until(lambda: host.kinds() == ["sdp_offer", "sdp_offer"])
    await transport.on_signal(HotlinkSignal(sid=SID, knd="webrtc_error", err="no can do"))
    await until(lambda: backend.peers[0].closed)
    assert not backend.peers[1].closed
    # Failing on the peer's word does not echo an error back.
    assert host.kinds() == ["sdp_offer", "sdp_offer"]
    await transport.close()


async def test_webrtc_error_does_not_touch_an_open_channel() -> None:
    transport, _backend, _host, peer = await open_sender()
    await transport.on_signal(HotlinkSignal(sid=SID, knd="webrtc_error", err="unknown session"))
    await settle()
    assert not peer.closed
    assert await transport.try_send(SID, frame(1))
    await transport.close()


async def test_a_bad_offer_fails_the_session_and_tells_the_peer() -> None:
    transport, _backend, host = make_transport()
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    await transport.on_signal(HotlinkSignal(sid=SID, knd="sdp_offer", tok='{"type":"offer"}'))
    await until(lambda: host.kinds() == ["webrtc_error"])
    assert "bad sdp_offer" in host.signals[0].err
    assert not await transport.try_send(SID, frame(1))  # failed: no grace wait
    assert host.telemetry.events["ws_fallbacks"] == 1
    await transport.close()


async def test_channel_that_never_opens_is_given_up_at_the_deadline() -> None:
    transport, backend, host = make_transport(open_timeout=0.2)
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: bool(backend.peers) and backend.peers[0].closed)
    assert host.kinds()[-1] == "webrtc_error"
    assert "did not open" in host.signals[-1].err
    assert transport.transport_kind(SID) == "ws"
    await transport.close()


async def test_ice_and_dtls_up_but_no_channel_is_one_warning_with_advice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, backend, host = make_transport(open_timeout=0.2)
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: bool(backend.peers))
    backend.peers[0].ice_dtls_up = True  # the path works; SCTP never completes
    with caplog.at_level(logging.INFO, logger="hotlink.webrtc"):
        await until(lambda: backend.peers[0].closed)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "ICE and DTLS connected" in text and "SCTP" in text
    assert "SYFTBOX_HOTLINK_WEBRTC_BACKEND=aiortc" in text
    assert "did not open" in host.signals[-1].err
    await transport.close()


async def test_an_offer_that_never_comes_is_given_up_too() -> None:
    transport, backend, host = make_transport(open_timeout=0.2, grace=5.0)
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    # The grace is longer than the deadline: the send stops waiting when P2P is given up.
    assert not await transport.try_send(SID, frame(1))
    assert backend.peers == []
    assert host.telemetry.events["p2p_failed"] == 1
    await transport.close()


async def test_peer_creation_failure_leaves_the_session_on_ws() -> None:
    transport, backend, host = make_transport()
    backend.fail_create = "no ports left"
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: host.kinds() == ["webrtc_error"])
    assert "no ports left" in host.signals[0].err
    await transport.close()


async def test_peer_connections_are_bounded() -> None:
    transport, backend, host = make_transport(max_peers=1)
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await transport.on_inbound_accepted(host.add(SID2, "inbound"))
    await until(lambda: "webrtc_error" in host.kinds())
    assert len(backend.peers) == 1
    await transport.on_session_closed(SID)
    await until(lambda: host.telemetry.events.get("p2p_peers") == 0)
    await transport.close()


# ---------------------------------------------------------------- sending


async def test_first_frames_wait_for_the_channel_then_go_p2p() -> None:
    transport, backend, host = make_transport(grace=5.0)
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    await transport.on_signal(offer_signal())
    await until(lambda: bool(backend.peers))
    send = asyncio.create_task(transport.try_send(SID, frame(1)))
    await settle()
    assert not send.done()  # waiting in the grace period
    backend.peers[0].fire_open()
    assert await send
    assert [decode_frame(m).seq for m in backend.peers[0].sent] == [1]
    assert host.telemetry.events["ws_fallbacks"] == 0
    await transport.close()


async def test_no_channel_within_the_grace_means_ws_counted_once_per_session() -> None:
    transport, _backend, host = make_transport(grace=0.1)
    for sid in (SID, SID2):
        host.add(sid, "outbound")
        await transport.on_outbound_accepted(host.sessions[sid])
    for seq in (1, 2, 3, 4, 5):
        assert not await transport.try_send(SID, frame(seq))
    assert not await transport.try_send(SID2, frame(1))
    assert host.telemetry.events["ws_fallbacks"] == 2
    await transport.close()


async def test_later_frames_do_not_wait() -> None:
    transport, _backend, host = make_transport(grace=30.0)
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    # seq 4 while still negotiating: straight to the WebSocket (a 30 s wait would time out).
    async with asyncio.timeout(5):
        assert not await transport.try_send(SID, frame(4))
    await transport.close()


async def test_open_channel_carries_frames_in_order() -> None:
    transport, _backend, _host, peer = await open_sender()
    for seq in range(1, 6):
        assert await transport.try_send(SID, frame(seq))
    assert [decode_frame(m) for m in peer.sent] == [frame(s) for s in range(1, 6)]
    await transport.close()


async def test_frame_larger_than_the_remote_max_message_size_goes_ws() -> None:
    transport, _backend, host, peer = await open_sender()
    peer.max_size = len(message(1, 1000)) - 1
    assert not await transport.try_send(SID, frame(1, 1000))
    assert await transport.try_send(SID, frame(2, 10))  # the channel is still fine
    assert host.telemetry.events["ws_fallbacks"] == 1
    assert not peer.closed
    await transport.close()


async def test_send_failure_mid_stream_resends_recent_frames_over_ws() -> None:
    transport, _backend, host, peer = await open_sender()
    for seq in (1, 2, 3):
        assert await transport.try_send(SID, frame(seq))
    peer.send_error = ChannelNotOpenError("library refused")
    # The refused frame is not resent: the manager sends it (False), after the resends.
    assert not await transport.try_send(SID, frame(4))
    assert [(p.seq, p.pay) for p in host.ws if isinstance(p, HotlinkData)] == [
        (s, frame(s).payload) for s in (1, 2, 3)
    ]
    assert all(p.sid == SID for p in host.ws if isinstance(p, HotlinkData))
    await until(lambda: peer.closed)
    peer.send_error = None
    assert not await transport.try_send(SID, frame(5))  # failed for good
    assert len(host.ws) == 3  # nothing resent twice
    assert host.telemetry.events["p2p_resent_frames"] == 3
    assert host.telemetry.events["ws_fallbacks"] == 1
    assert transport.transport_kind(SID) == "ws"
    await transport.close()


async def test_backpressure_timeout_moves_the_session_to_ws() -> None:
    transport, _backend, host, peer = await open_sender()
    assert await transport.try_send(SID, frame(1))
    peer.send_error = BackpressureTimeoutError("stuck")
    assert not await transport.try_send(SID, frame(2))
    assert [p.seq for p in host.ws if isinstance(p, HotlinkData)] == [1]
    await until(lambda: peer.closed)
    await transport.close()


async def test_channel_closing_between_frames_resends_without_waiting_for_a_send() -> None:
    transport, _backend, host, peer = await open_sender()
    for seq in (1, 2):
        assert await transport.try_send(SID, frame(seq))
    peer.fire_closed("ice failed")
    await until(lambda: len(host.ws) == 2)
    assert [p.seq for p in host.ws if isinstance(p, HotlinkData)] == [1, 2]
    assert not await transport.try_send(SID, frame(3))
    assert len(host.ws) == 2
    await transport.close()


async def test_channel_closing_during_a_send_resends_once() -> None:
    transport, _backend, host, peer = await open_sender()
    assert await transport.try_send(SID, frame(1))

    async def close_then_refuse(data: bytes) -> None:
        peer.fire_closed("dtls gone")
        await settle()
        raise ChannelNotOpenError("closed while waiting to send")

    peer.send_hook = close_then_refuse
    assert not await transport.try_send(SID, frame(2))
    await settle(20)
    assert [p.seq for p in host.ws if isinstance(p, HotlinkData)] == [1]
    await transport.close()


async def test_p2p_only_refuses_the_websocket() -> None:
    transport, _backend, host = make_transport(p2p_only=True)
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    with pytest.raises(PeerSendError):
        await transport.try_send(SID, frame(1))
    await transport.close()


async def test_strict_mode_counts_a_violation() -> None:
    transport, _backend, host = make_transport(strict=True, grace=0.05)
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    with pytest.raises(PeerSendError):
        await transport.try_send(SID, frame(1))
    assert host.telemetry.events["strict_violations"] == 1
    await transport.close()


async def test_debug_kill_after_n_sent_frames() -> None:
    transport, _backend, host, peer = await open_sender(kill_after=2)
    assert await transport.try_send(SID, frame(1))
    assert await transport.try_send(SID, frame(2))
    await until(lambda: peer.closed)
    assert not await transport.try_send(SID, frame(3))
    assert [p.seq for p in host.ws if isinstance(p, HotlinkData)] == [1, 2]
    await transport.close()


# ---------------------------------------------------------------- the end of a stream


def resent(host) -> list[int]:  # type: ignore[no-untyped-def]
    return [p.seq for p in host.ws if isinstance(p, HotlinkData)]


async def send_p2p(transport, *seqs: int) -> None:  # type: ignore[no-untyped-def]
    for seq in seqs:
        assert await transport.try_send(SID, frame(seq))


async def test_drain_waits_for_the_send_buffer_and_resends_nothing_if_the_channel_holds() -> None:
    transport, _backend, host, peer = await open_sender()
    await send_p2p(transport, 1, 2, 3)
    peer.buffered = 4096  # the last frames are still queued in the library
    drain = asyncio.create_task(transport.drain(SID))
    await settle(20)
    assert not drain.done()
    peer.buffered = 0  # SCTP has them; an open channel delivers what it took
    await drain
    assert host.ws == []
    assert not peer.closed
    await transport.close()


async def test_the_receiver_closing_right_after_the_eof_is_no_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # After drain() the Close eof goes out; the receiver may close its channel before this
    # session has ended here. That is the normal end: no p2p_failed, no warning, no resend.
    transport, _backend, host, peer = await open_sender()
    await send_p2p(transport, 1, 2, 3)
    await transport.drain(SID)
    with caplog.at_level(logging.INFO, logger="hotlink.webrtc"):
        peer.events.on_channel_closed("remote closed")
        await until(lambda: peer.closed)
    assert host.telemetry.events.get("p2p_failed", 0) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert host.ws == []
    await transport.close()


async def test_channel_closing_while_draining_resends_the_window_before_drain_returns() -> None:
    transport, _backend, host, peer = await open_sender()
    await send_p2p(transport, 1, 2, 3)
    peer.buffered = 4096
    drain = asyncio.create_task(transport.drain(SID))
    await settle(20)
    peer.fire_closed("ice failed")
    await drain
    # Queued on the WebSocket before the Close eof that follows drain(); each exactly once.
    assert resent(host) == [1, 2, 3]
    await until(lambda: peer.closed)
    assert resent(host) == [1, 2, 3]
    await transport.close()


async def test_channel_killed_at_the_last_frame_is_resent_before_the_close() -> None:
    # The reported race: the channel dies right after the stream's last P2P frame, and the
    # sender's Close eof is next. The resend must be queued by the time drain() returns.
    transport, _backend, host, peer = await open_sender(kill_after=3)
    await send_p2p(transport, 1, 2, 3)
    await transport.drain(SID)
    assert resent(host) == [1, 2, 3]
    await until(lambda: peer.closed)
    assert resent(host) == [1, 2, 3]
    await transport.close()


async def test_a_channel_that_does_not_drain_in_time_is_given_up_and_resent() -> None:
    transport, _backend, host, peer = await open_sender(drain_wait=0.1)
    await send_p2p(transport, 1, 2)
    peer.buffered = 4096  # stuck: the far end stopped reading
    await transport.drain(SID)
    assert resent(host) == [1, 2]
    assert transport.transport_kind(SID) == "ws"
    await until(lambda: peer.closed)
    await transport.close()


async def test_drain_in_p2p_only_mode_fails_when_the_channel_may_have_lost_frames() -> None:
    transport, _backend, host, peer = await open_sender(p2p_only=True)
    await send_p2p(transport, 1)
    peer.buffered = 4096
    drain = asyncio.create_task(transport.drain(SID))
    await settle(20)
    peer.fire_closed("ice failed")
    with pytest.raises(PeerSendError):
        await drain
    assert host.ws == []  # no WebSocket in this mode
    await transport.close()


async def test_drain_without_p2p_frames_returns_at_once() -> None:
    transport, _backend, host = make_transport(grace=0.05)
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    assert not await transport.try_send(SID, frame(1))  # went over WS
    async with asyncio.timeout(5):
        await transport.drain(SID)
        await transport.drain(SID2)  # a session the transport never saw
    assert host.ws == []
    await transport.close()


async def test_no_backend_means_ws_for_everything() -> None:
    transport, _backend, host = make_transport()
    transport._backend = None
    transport._backend_error = "not installed"
    await transport.on_inbound_accepted(host.add(SID2, "inbound"))
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    assert not await transport.try_send(SID, frame(1))
    assert host.telemetry.events["ws_fallbacks"] == 1
    assert host.signals == []
    await transport.close()


# ---------------------------------------------------------------- receiving


async def test_received_frames_go_to_the_host_in_order_bad_ones_dropped() -> None:
    transport, backend, host = make_transport()
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: bool(backend.peers))
    peer = backend.peers[0]
    peer.fire_open()
    peer.events.on_message(message(1))
    peer.events.on_message(b"garbage")
    peer.events.on_message(message(2))
    await until(lambda: len(host.delivered) == 2)
    assert host.delivered == [(SID, frame(1)), (SID, frame(2))]
    assert not peer.closed
    await transport.close()


async def test_frames_go_straight_into_the_receive_path_without_a_queue() -> None:
    # The receive path never waits (flow control bounds what it holds), so a burst the
    # library delivers in one go is handed over at once, in order, and the channel stays.
    transport, backend, host = make_transport()
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: bool(backend.peers))
    peer = backend.peers[0]
    peer.fire_open()
    for seq in range(1, 5001):
        peer.events.on_message(message(seq))
    assert [f.seq for _, f in host.delivered] == list(range(1, 5001))
    assert not peer.closed
    await transport.close()


async def test_channel_closing_after_the_eof_is_not_a_failure() -> None:
    transport, backend, host = make_transport()
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: bool(backend.peers))
    peer = backend.peers[0]
    peer.fire_open()
    transport.stream_ending(SID)  # the opener's Close eof arrived
    peer.events.on_channel_closed("remote closed")
    await until(lambda: peer.closed)
    assert host.telemetry.events.get("p2p_failed", 0) == 0
    await transport.close()


# ---------------------------------------------------------------- closing and telemetry


async def test_closing_a_receiving_session_closes_its_peer_at_once() -> None:
    transport, backend, host = make_transport(linger_max=60.0)
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: bool(backend.peers))
    backend.peers[0].fire_open()
    await transport.on_session_closed(SID)
    await until(lambda: backend.peers[0].closed)
    assert transport.transport_kind(SID) == "ws"
    await transport.on_signal(cand_signal(CAND_1))  # late: ignored, not buffered
    assert SID not in transport._pending
    await transport.close()


async def test_a_sender_lingers_until_the_receiver_closes_its_end() -> None:
    transport, _backend, host, peer = await open_sender(linger_drained=60.0, linger_max=60.0)
    assert await transport.try_send(SID, frame(1))
    peer.buffered = 4096  # the last frame is still in the send buffer
    await transport.on_session_closed(SID)
    await settle(20)
    assert not peer.closed
    peer.fire_closed("remote closed")  # the receiver has everything and closed its end
    await until(lambda: peer.closed)
    assert host.ws == []  # a normal end resends nothing
    await transport.close()


async def test_a_sender_stops_lingering_once_its_buffer_stays_empty() -> None:
    transport, _backend, _host, peer = await open_sender(linger_drained=0.05)
    assert await transport.try_send(SID, frame(1))
    await transport.on_session_closed(SID)
    await until(lambda: peer.closed)
    await transport.close()


async def test_close_shuts_every_peer_and_task() -> None:
    transport, backend, host = make_transport(linger_max=60.0, linger_drained=60.0)
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    host.add(SID2, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID2])
    await transport.on_signal(offer_signal(SID2))
    await until(lambda: len(backend.peers) == 2)
    backend.peers[1].fire_open()
    assert await transport.try_send(SID2, frame(1))
    await transport.on_session_closed(SID2)  # lingering
    await transport.close()
    assert all(p.closed for p in backend.peers)
    assert host.telemetry.events["p2p_peers"] == 0
    assert host.telemetry.events["p2p_tasks"] == 0
    assert transport._tasks == set()


async def test_transport_kind_reports_a_relay_on_either_end() -> None:
    transport, backend, host = make_transport()
    host.add(SID, "outbound")
    await transport.on_outbound_accepted(host.sessions[SID])
    assert transport.transport_kind(SID) == "ws"
    await transport.on_signal(offer_signal())
    await until(lambda: bool(backend.peers))
    peer: FakePeer = backend.peers[0]
    peer.types = ("prflx", "relay")
    peer.fire_open()
    assert transport.transport_kind(SID) == "p2p-relay"
    assert host.telemetry.events["p2p_answers_ok"] == 2  # answer sent, channel open
    await transport.close()


async def test_ice_servers_come_from_our_env_else_the_server() -> None:
    headers = {
        "x-syft-hotlink-ice-servers": "turn:192.0.2.9:3478",
        "X-Syft-Hotlink-Turn-User": "1700000000:alice",
        "X-Syft-Hotlink-Turn-Pass": "secret",
    }
    transport, backend, host = make_transport(settings=ClientSettings())
    transport.on_server_connected(headers)
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: bool(backend.ice_servers))
    (server,) = backend.ice_servers[0]
    assert (server.url, server.username, server.credential) == (
        "turn:192.0.2.9:3478",
        "1700000000:alice",
        "secret",
    )
    await transport.close()

    own = ClientSettings(ice_servers_raw="stun:192.0.2.7:3478")
    transport, backend, host = make_transport(settings=own)
    transport.on_server_connected(headers)
    await transport.on_inbound_accepted(host.add(SID, "inbound"))
    await until(lambda: bool(backend.ice_servers))
    assert [s.url for s in backend.ice_servers[0]] == ["stun:192.0.2.7:3478"]
    await transport.close()
