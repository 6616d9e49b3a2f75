"""The per-message send path (fast path without the lock), backpressure that waits for as long
as the buffer drains, and the libdatachannel MTU option."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotlink.webrtc import (
    BackpressureTimeoutError,
    ChannelNotOpenError,
    MessageTooLargeError,
    load_backend,
)
from support.fake_peer import FakePeer, NullEvents

SDP_BIG = (
    "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n"
    "a=max-message-size:262144\r\n"
)


class Library(FakePeer):
    """The fake library with its channel open and nobody listening to events."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NullEvents(), **kwargs)
        self.open = True


class ScriptedBuffer(Library):
    """A library whose buffered amount follows a script, one value per read, then stays at
    the last; records the loop time at which the amount last went down."""

    def __init__(self, amounts: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.amounts = list(amounts)
        self.reads = 0
        self.last_decrease_at = asyncio.get_running_loop().time()
        self._previous = self.amounts[0]

    def _buffered(self) -> int:
        self.reads += 1
        amount = self.amounts.pop(0) if len(self.amounts) > 1 else self.amounts[0]
        if amount < self._previous:
            self.last_decrease_at = asyncio.get_running_loop().time()
        self._previous = amount
        return amount


async def test_a_slow_but_steady_drain_is_waited_for_well_past_the_wait_limit() -> None:
    # The buffer loses 1 byte per look: a path far slower than the watermark needs, but moving.
    high, wait = 100, 0.02
    peer = ScriptedBuffer(
        list(range(high + 30, high - 1, -1)), buffered_high=high, backpressure_wait=wait
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(peer.send(b"x"), 30)
    assert peer.sent == [b"x"]
    # It waited through many wait limits; a deadline on the whole wait would have raised.
    assert loop.time() - started > 5 * wait


async def test_a_buffer_that_stops_draining_times_out_a_full_wait_after_its_last_progress() -> None:
    wait = 0.1
    peer = ScriptedBuffer(
        [500, 450, 400, 350, 300, 250, 200], buffered_high=100, backpressure_wait=wait
    )
    with pytest.raises(BackpressureTimeoutError, match=r"did not drain for 0\.10s"):
        await asyncio.wait_for(peer.send(b"x"), 30)
    assert peer.sent == []
    # The stall clock started at the last decrease, not at the start of the wait.
    assert asyncio.get_running_loop().time() - peer.last_decrease_at >= wait
    assert peer.amounts == [200]


async def test_a_stalled_send_leaves_the_channel_usable() -> None:
    peer = Library(buffered_high=100, backpressure_wait=0.05)
    peer.buffered = 500
    with pytest.raises(BackpressureTimeoutError):
        await peer.send(b"stalled")
    peer.buffered = 0
    await peer.send(b"later")
    assert peer.sent == [b"later"]


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
