"""The backend-independent peer logic, with a fake library underneath (no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotlink.protocol.ice import IceCandidate
from hotlink.webrtc import (
    BackpressureTimeoutError,
    ChannelNotOpenError,
    MessageTooLargeError,
    WebRTCError,
)
from hotlink.webrtc._common import (
    MAX_PENDING_CANDIDATES,
    require_datachannel_section,
    resolve_mid,
    sdp_mids,
)
from support.fake_peer import FakePeer

SDP_ONE_MID = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:data\r\n"
SDP_BIG = SDP_ONE_MID + "a=max-message-size:262144\r\n"


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    def on_local_candidate(self, cand: IceCandidate | None) -> None:
        self.log.append(("candidate", cand))

    def on_channel_open(self) -> None:
        self.log.append(("open", None))

    def on_message(self, data: bytes) -> None:
        self.log.append(("message", data))

    def on_channel_closed(self, reason: str) -> None:
        self.log.append(("closed", reason))


def cand(n: int, mid: str = "0", index: int = 0) -> IceCandidate:
    return IceCandidate(f"{n} 1 udp 1 192.0.2.{n} 4000 typ host", mid, index)


def test_only_descriptions_with_a_data_channel_section_are_accepted() -> None:
    require_datachannel_section(SDP_ONE_MID, "offer")
    require_datachannel_section("v=0\nm=application 9 DTLS/SCTP 5000\n", "offer")  # legacy
    for bad in ("", "garbage", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"):
        with pytest.raises(WebRTCError, match="no data-channel"):
            require_datachannel_section(bad, "offer")


def test_sdp_mids_in_order() -> None:
    sdp = "v=0\r\nm=audio 9 x\r\na=mid:a0\r\nm=application 9 y\r\na=mid:1\r\n"
    assert sdp_mids(sdp) == ["a0", "1"]
    assert sdp_mids("v=0\r\n") == []


@pytest.mark.parametrize(
    ("mid", "index", "mids", "expected"),
    [
        ("data", 0, ["data"], ("data", 0)),  # known mid wins
        ("", 0, ["data"], ("data", 0)),  # Rust: empty sdpMid, use the m-line index
        ("0", 0, ["data"], ("data", 0)),  # our default "0" against a peer naming it "data"
        ("x", 1, ["a", "b"], ("b", 1)),  # unknown mid: the index picks
        ("x", 7, ["a", "b"], ("a", 0)),  # neither known: the first m-line
        ("0", 0, [], ("0", 0)),  # no remote SDP parsed: pass through
    ],
)
def test_resolve_mid(
    mid: str, index: int, mids: list[str], expected: tuple[str | None, int]
) -> None:
    assert resolve_mid(IceCandidate("1 1 udp 1 192.0.2.1 1 typ host", mid, index), mids) == expected


async def test_candidates_before_the_remote_description_are_applied_after_it_in_order() -> None:
    peer = FakePeer(Recorder())
    await peer.add_remote_candidate(cand(1, mid=""))
    await peer.add_remote_candidate(cand(2))
    await peer.add_remote_candidate(None)
    assert peer.applied == []
    await peer.accept_offer(SDP_ONE_MID)
    assert peer.applied == [(cand(1, mid=""), "data", 0), (cand(2), "data", 0), (None, "data", 0)]
    await peer.add_remote_candidate(cand(3))
    assert peer.applied[-1] == (cand(3), "data", 0)


async def test_pending_candidates_are_bounded() -> None:
    peer = FakePeer(Recorder())
    for n in range(MAX_PENDING_CANDIDATES + 10):
        await peer.add_remote_candidate(cand(n % 250))
    await peer.set_answer(SDP_ONE_MID)
    assert len(peer.applied) == MAX_PENDING_CANDIDATES


async def test_a_rejected_candidate_is_logged_not_raised() -> None:
    peer = FakePeer(Recorder())
    await peer.set_answer(SDP_ONE_MID)
    peer.fail_candidates = True
    await peer.add_remote_candidate(cand(1))  # no exception


async def test_events_keep_their_promises() -> None:
    rec = Recorder()
    peer = FakePeer(rec)
    peer._emit_message(b"early")  # open is reported first, whatever the library did
    peer._emit_open()  # at most once
    peer._emit_closed("remote closed")
    peer._emit_closed("again")  # at most once
    peer._emit_message(b"after close")  # nothing after closed
    assert rec.log == [("open", None), ("message", b"early"), ("closed", "remote closed")]


async def test_no_callbacks_after_close_and_owner_errors_are_contained() -> None:
    class Exploding(Recorder):
        def on_channel_open(self) -> None:
            raise RuntimeError("owner bug")

    rec = Exploding()
    peer = FakePeer(rec)
    peer._emit_open()  # swallowed and logged
    peer._emit_message(b"still delivered")
    await peer.close()
    peer._emit_message(b"after local close")
    peer._emit_closed("late")
    peer._emit_candidate(None)
    assert rec.log == [("message", b"still delivered")]


async def test_send_checks_size_and_state() -> None:
    peer = FakePeer(Recorder())
    with pytest.raises(MessageTooLargeError):
        await peer.send(bytes(65537))  # no remote SDP: RFC 8841's 64 KiB default
    with pytest.raises(ChannelNotOpenError):
        await peer.send(b"x")
    await peer.set_answer(SDP_BIG)
    assert peer.max_message_size == 262144
    peer.open = True
    await peer.send(bytes(262144))
    assert peer.sent == [bytes(262144)]
    peer.open = False
    with pytest.raises(ChannelNotOpenError):
        await peer.send(b"x")


async def test_a_refused_message_ends_the_channel_so_no_later_one_overtakes_it() -> None:
    rec = Recorder()
    peer = FakePeer(rec)
    peer.open = True
    peer.refuse = True
    with pytest.raises(ChannelNotOpenError, match="send failed"):
        await peer.send(b"lost")
    assert rec.log[-1] == ("closed", "send failed: association is going down")
    peer.refuse = False  # even if the library would take the next one
    with pytest.raises(ChannelNotOpenError):
        await peer.send(b"next")
    assert peer.sent == []


async def test_send_waits_for_the_buffer_to_drain() -> None:
    peer = FakePeer(Recorder(), buffered_high=100, backpressure_wait=30)
    peer.open = True
    peer.buffered = 500
    sending = asyncio.create_task(peer.send(b"x"))
    await asyncio.sleep(0.1)
    assert not sending.done() and peer.sent == []
    peer.buffered = 100
    peer._notify_drained()
    await asyncio.wait_for(sending, 5)
    assert peer.sent == [b"x"]


async def test_send_times_out_with_a_clear_error() -> None:
    peer = FakePeer(Recorder(), buffered_high=100, backpressure_wait=0.1)
    peer.open = True
    peer.buffered = 101
    with pytest.raises(BackpressureTimeoutError, match="above 100 bytes"):
        await peer.send(b"x")
    assert peer.sent == []


async def test_a_sender_waiting_on_backpressure_sees_the_close() -> None:
    peer = FakePeer(Recorder(), buffered_high=100, backpressure_wait=30)
    peer.open = True
    peer.buffered = 500
    sending = asyncio.create_task(peer.send(b"x"))
    await asyncio.sleep(0.05)
    peer.open = False
    peer._emit_closed("remote closed")
    with pytest.raises(ChannelNotOpenError):
        await asyncio.wait_for(sending, 5)


async def test_concurrent_senders_are_served_in_call_order() -> None:
    peer = FakePeer(Recorder(), buffered_high=100, backpressure_wait=30)
    peer.open = True
    peer.buffered = 500
    senders = [asyncio.create_task(peer.send(bytes([i]))) for i in range(20)]
    await asyncio.sleep(0.1)
    peer.buffered = 0
    await asyncio.wait_for(asyncio.gather(*senders), 5)
    assert peer.sent == [bytes([i]) for i in range(20)]


async def test_closed_peer_refuses_signaling() -> None:
    peer = FakePeer(Recorder())
    await peer.close()
    with pytest.raises(WebRTCError):
        peer._check_not_closed()
    await peer.add_remote_candidate(cand(1))  # ignored, no error
    assert peer.applied == []
    assert peer.buffered_amount == 0
    assert not peer.is_open


def test_invalid_limits_are_rejected() -> None:
    async def make(**kwargs: Any) -> None:
        FakePeer(Recorder(), **kwargs)

    with pytest.raises(ValueError):
        asyncio.run(make(buffered_high=0))
    with pytest.raises(ValueError):
        asyncio.run(make(backpressure_wait=-1))
