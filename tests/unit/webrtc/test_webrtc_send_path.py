"""The per-message send path (fast path without the lock) and the libdatachannel MTU option."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotlink.protocol.ice import IceCandidate
from hotlink.webrtc import ChannelNotOpenError, MessageTooLargeError, load_backend
from hotlink.webrtc._common import PeerBase

SDP_BIG = (
    "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n"
    "a=max-message-size:262144\r\n"
)


class Events:
    def on_local_candidate(self, cand: IceCandidate | None) -> None:
        pass

    def on_channel_open(self) -> None:
        pass

    def on_message(self, data: bytes) -> None:
        pass

    def on_channel_closed(self, reason: str) -> None:
        pass


class Library(PeerBase):
    """A fake library whose buffered amount the test sets; counts how often it is asked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Events(), **kwargs)
        self.sent: list[bytes] = []
        self.buffered = 0
        self.open = True

    async def _apply_candidate(
        self, cand: IceCandidate | None, mid: str | None, index: int
    ) -> None:
        pass

    def _send_now(self, data: bytes) -> None:
        self.sent.append(data)

    def _channel_open(self) -> bool:
        return self.open

    def _buffered(self) -> int:
        return self.buffered

    def _create_channel(self) -> None:
        pass

    async def _local_description(self, kind: str) -> str:
        return ""

    async def _apply_remote_description(self, sdp: str, kind: str) -> None:
        pass

    async def create_offer(self) -> str:
        return ""

    async def accept_offer(self, sdp: str) -> str:
        await self._remote_description_applied(sdp)
        return ""

    async def set_answer(self, sdp: str) -> None:
        await self._remote_description_applied(sdp)

    def selected_candidate_type(self) -> str | None:
        return None

    async def close(self) -> None:
        self._closed = True


async def test_a_send_that_needs_no_wait_completes_without_yielding() -> None:
    peer = Library()
    sending = peer.send(b"now")
    with pytest.raises(StopIteration):
        sending.send(None)  # finished in its first step: no task switch on the hot path
    assert peer.sent == [b"now"]


async def test_a_later_sender_never_overtakes_one_waiting_on_backpressure() -> None:
    peer = Library(buffered_high=100, backpressure_wait=30)
    peer.buffered = 500
    first = asyncio.create_task(peer.send(b"first"))
    await asyncio.sleep(0.01)
    assert peer.sent == []
    # The buffer drains, but the first sender has not run yet: the second must queue behind.
    peer.buffered = 0
    second = asyncio.create_task(peer.send(b"second"))
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert peer.sent == [b"first", b"second"]
    # With nobody waiting any more, the fast path is back.
    await peer.send(b"third")
    assert peer.sent[-1] == b"third"


async def test_a_cancelled_waiting_sender_does_not_block_the_fast_path() -> None:
    peer = Library(buffered_high=100, backpressure_wait=30)
    peer.buffered = 500
    waiting = asyncio.create_task(peer.send(b"dropped"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    peer.buffered = 0
    await peer.send(b"next")
    assert peer.sent == [b"next"]


async def test_the_fast_path_checks_size_and_state() -> None:
    peer = Library()
    with pytest.raises(MessageTooLargeError):
        await peer.send(bytes(65537))
    await peer.set_answer(SDP_BIG)
    assert peer.max_message_size == 262144  # re-read with each remote description
    await peer.send(bytes(262144))
    peer.open = False
    with pytest.raises(ChannelNotOpenError):
        await peer.send(b"x")
    assert len(peer.sent) == 1


def test_libdatachannel_mtu_is_checked() -> None:
    pytest.importorskip("aiolibdatachannel")
    from hotlink.webrtc.libdatachannel_backend import MAX_MTU, LibdatachannelBackend

    assert load_backend("libdatachannel").mtu == 0  # type: ignore[attr-defined]
    assert load_backend("libdatachannel", mtu=1500).mtu == 1500  # type: ignore[attr-defined]
    for bad in (100, MAX_MTU + 1, 9000):
        with pytest.raises(ValueError, match="MTU"):
            LibdatachannelBackend(mtu=bad)
    # aiortc has no such option: the value is ignored there.
    assert load_backend("aiortc", mtu=1500).name == "aiortc"
