"""Real peer pairs on this host (host candidates only), for every backend combination.

Both peers live in the test's process and are signaled directly (``connect_pair``), so each
test shows one backend property end to end: the channel opens on both sides, bytes arrive
complete and in order, backpressure bounds memory, early or shuffled candidates still
connect, and a close on one side reaches the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import socket
import time
from typing import Any

import pytest

from hotlink.protocol.ice import IceCandidate, IceServer
from hotlink.webrtc import (
    CHANNEL_LABEL,
    Backend,
    BackpressureTimeoutError,
    ChannelNotOpenError,
    MessageTooLargeError,
    WebRTCError,
)
from hotlink.webrtc.aiortc_backend import AiortcBackend
from hotlink.webrtc.pair import PeerPair, connect_pair


def _channel_label(peer: Any) -> str:
    # Not part of the interface (nobody above layer 4 needs it); read from each backend.
    if hasattr(peer, "_dc"):
        return str(peer._dc.label())
    return str(peer._channel.label)


async def _receive(pair: PeerPair, side: str, count: int) -> list[bytes]:
    events = pair.answer_events if side == "answerer" else pair.offer_events
    return [await events.next_message(limit=30) for _ in range(count)]


async def test_channel_opens_on_both_sides_over_host_candidates(
    backends: tuple[Backend, Backend],
) -> None:
    async with await connect_pair(*backends) as pair:
        assert pair.offerer.is_open and pair.answerer.is_open
        assert pair.offer_events.open_count == 1 and pair.answer_events.open_count == 1
        # ICE and DTLS came up before the channel could open.
        assert pair.offerer.transport_connected and pair.answerer.transport_connected
        assert pair.offerer.selected_candidate_type() == "host"
        assert pair.answerer.selected_candidate_type() == "host"
        assert _channel_label(pair.offerer) == CHANNEL_LABEL
        assert _channel_label(pair.answerer) == CHANNEL_LABEL
        # Both stacks advertise 256 KiB; each side reads the other's limit from its SDP.
        assert pair.offerer.max_message_size == 262144
        assert pair.answerer.max_message_size == 262144
        assert pair.offer_events.closed_reason is None
        assert pair.answer_events.closed_reason is None


@pytest.mark.slow
async def test_2000_messages_of_varying_size_arrive_complete_and_in_order(
    backends: tuple[Backend, Backend],
) -> None:
    rng = random.Random(2000)
    async with await connect_pair(*backends) as pair:
        limit = pair.offerer.max_message_size
        # Log-uniform sizes from 1 byte to the limit, both ends included: mostly small frames,
        # some near the maximum, as a TCP tunnel produces.
        sizes = [1, limit] + [
            max(1, int(math.exp(rng.uniform(0, math.log(limit))))) for _ in range(1998)
        ]
        messages = [
            i.to_bytes(4, "big") * (size // 4) + bytes(size % 4) for i, size in enumerate(sizes)
        ]
        back = [bytes([i % 251]) * (i * 37 % 4096 + 1) for i in range(200)]

        async def send_all(peer: Any, items: list[bytes]) -> None:
            for item in items:
                await peer.send(item)

        received, received_back, _, _ = await asyncio.gather(
            _receive(pair, "answerer", len(messages)),
            _receive(pair, "offerer", len(back)),
            send_all(pair.offerer, messages),
            send_all(pair.answerer, back),
        )
        assert [len(m) for m in received] == [len(m) for m in messages]
        assert received == messages
        assert received_back == back


@pytest.mark.slow
async def test_16_mib_transfer_has_the_same_sha256(backends: tuple[Backend, Backend]) -> None:
    data = random.Random(16).randbytes(16 * 1024 * 1024)
    digest = hashlib.sha256()
    got = 0
    done = asyncio.Event()

    def sink(chunk: bytes) -> None:
        nonlocal got
        digest.update(chunk)
        got += len(chunk)
        if got >= len(data):
            done.set()

    async with await connect_pair(*backends, answer_sink=sink) as pair:
        chunk = min(60 * 1024, pair.offerer.max_message_size)
        view = memoryview(data)
        for pos in range(0, len(data), chunk):
            await pair.offerer.send(bytes(view[pos : pos + chunk]))
        await asyncio.wait_for(done.wait(), 120)
    assert got == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_backpressure_keeps_the_send_buffer_bounded(
    backends: tuple[Backend, Backend],
) -> None:
    high = 256 * 1024
    total = 6 * 1024 * 1024
    got = 0
    done = asyncio.Event()

    def sink(chunk: bytes) -> None:
        nonlocal got
        got += len(chunk)
        if got >= total:
            done.set()

    async with await connect_pair(*backends, answer_sink=sink, buffered_high=high) as pair:
        chunk = 64 * 1024
        peak = 0
        for _ in range(total // chunk):
            await pair.offerer.send(bytes(chunk))
            peak = max(peak, pair.offerer.buffered_amount)
        await asyncio.wait_for(done.wait(), 60)
    # send() only queues while the buffer is at or below the watermark, so it never holds
    # more than the watermark plus one message.
    assert peak <= high + chunk
    assert got == total


async def test_backpressure_wait_limit_raises_a_clear_error(
    backends: tuple[Backend, Backend],
) -> None:
    after = asyncio.Event()

    def sink(data: bytes) -> None:
        if data == b"after":
            after.set()

    async with await connect_pair(
        *backends, answer_sink=sink, buffered_high=1, backpressure_wait=0.0
    ) as pair:
        with pytest.raises(BackpressureTimeoutError, match="send buffer stayed above"):
            for _ in range(2000):
                await pair.offerer.send(bytes(64 * 1024))
        # The channel itself is fine: once drained, sending works again.
        for _ in range(1500):
            if pair.offerer.buffered_amount <= 1:
                break
            await asyncio.sleep(0.02)
        await pair.offerer.send(b"after")
        await asyncio.wait_for(after.wait(), 30)


@pytest.mark.parametrize("delivery", ["early", "shuffled"])
async def test_candidates_before_the_descriptions_are_buffered_not_dropped(
    backends: tuple[Backend, Backend], delivery: str
) -> None:
    async with await connect_pair(*backends, delivery=delivery) as pair:  # type: ignore[arg-type]
        # Every candidate reached the other side before its description: the channel only
        # opened because they were kept and applied afterwards.
        assert any(c is not None for c in pair.offer_events.local_candidates) or (
            "a=candidate:" in pair.offer_sdp
        )
        await pair.offerer.send(b"ping")
        assert await pair.answer_events.next_message() == b"ping"
        await pair.answerer.send(b"pong")
        assert await pair.offer_events.next_message() == b"pong"


@pytest.mark.parametrize("closing", ["offerer", "answerer"])
async def test_close_on_one_side_fires_channel_closed_on_the_other(
    backends: tuple[Backend, Backend], closing: str
) -> None:
    async with await connect_pair(*backends) as pair:
        if closing == "offerer":
            local, remote, remote_events = pair.offerer, pair.answerer, pair.answer_events
            local_events = pair.offer_events
        else:
            local, remote, remote_events = pair.answerer, pair.offerer, pair.offer_events
            local_events = pair.answer_events
        await local.close()
        await asyncio.wait_for(remote_events.closed.wait(), 15)
        assert remote_events.closed_reason
        assert not remote.is_open
        with pytest.raises(ChannelNotOpenError):
            await remote.send(b"late")
        # The closing side gets no callback for its own close, and cannot send either.
        assert local_events.closed_reason is None
        assert not local.is_open
        with pytest.raises(ChannelNotOpenError):
            await local.send(b"late")
        await local.close()  # idempotent


async def test_send_errors_are_clear(backend: Backend) -> None:
    peer = backend.create_peer([], _Ignore())
    try:
        with pytest.raises(ChannelNotOpenError):
            await peer.send(b"too early")
        with pytest.raises(MessageTooLargeError):
            await peer.send(bytes(65537))  # no remote SDP yet: the 64 KiB default applies
    finally:
        await peer.close()


class _Ignore:
    def on_local_candidate(self, cand: object) -> None: ...
    def on_channel_open(self) -> None: ...
    def on_message(self, data: bytes) -> None: ...
    def on_channel_closed(self, reason: str) -> None: ...


def _silent_udp_server() -> socket.socket:
    # Bound but never answering: like a STUN/TURN server behind a firewall that drops packets.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_unreachable_ice_servers_do_not_stall_the_offer_or_answer(backend: Backend) -> None:
    blackhole = _silent_udp_server()
    try:
        port = blackhole.getsockname()[1]
        servers = [
            IceServer(f"stun:127.0.0.1:{port}"),
            IceServer(f"turn:127.0.0.1:{port}?transport=udp", "u", "p"),
        ]
        gather_timeout = 0.5
        aiortc = AiortcBackend(gather_timeout=gather_timeout)
        offer_backend = aiortc if backend.name == "aiortc" else backend
        started = time.monotonic()
        pair = await connect_pair(offer_backend, aiortc, ice_servers=servers, wait_open=False)
        async with pair:
            elapsed = time.monotonic() - started
            # Without the bound, aiortc's gathering waits 5 s for the unreachable servers
            # before it can produce the offer, and 5 s again for the answer. With it, the
            # offer and answer together take about 2 x 0.5 s: less than one unbounded wait,
            # even on a loaded machine. (Only signaling is timed, not ICE and DTLS.)
            assert elapsed < 5.0, f"offer and answer took {elapsed:.1f}s"
            # Host candidates still connect the pair.
            await pair.wait_open(20)
            assert pair.offerer.selected_candidate_type() == "host"
    finally:
        blackhole.close()


@pytest.mark.parametrize("closing", ["sender", "receiver"])
async def test_close_during_a_transfer_stops_the_sender_cleanly(
    backends: tuple[Backend, Backend], closing: str
) -> None:
    got = 0
    flowing = asyncio.Event()

    def sink(data: bytes) -> None:
        nonlocal got
        got += len(data)
        if got >= 2 * 1024 * 1024:
            flowing.set()

    async with await connect_pair(*backends, answer_sink=sink) as pair:

        async def send_forever() -> None:
            while True:
                await pair.offerer.send(bytes(60 * 1024))

        sender = asyncio.create_task(send_forever())
        await asyncio.wait_for(flowing.wait(), 30)
        if closing == "receiver":
            await pair.answerer.close()
            await asyncio.wait_for(pair.offer_events.closed.wait(), 15)
        else:
            await pair.offerer.close()
            await asyncio.wait_for(pair.answer_events.closed.wait(), 15)
        # The sender ends with the clear error, neither hanging nor crashing the backend.
        with pytest.raises(ChannelNotOpenError):
            await asyncio.wait_for(sender, 15)


@pytest.mark.parametrize("sdp", ["garbage", "v=0\r\n", ""], ids=["garbage", "no-media", "empty"])
async def test_a_bad_remote_description_is_a_clear_error(backend: Backend, sdp: str) -> None:
    answerer = backend.create_peer([], _Ignore())
    offerer = backend.create_peer([], _Ignore())
    try:
        with pytest.raises(WebRTCError):
            await answerer.accept_offer(sdp)
        await offerer.create_offer()
        with pytest.raises(WebRTCError):
            await offerer.set_answer(sdp)
    finally:
        await asyncio.gather(answerer.close(), offerer.close())


async def test_malformed_remote_candidates_are_dropped_not_fatal(
    backends: tuple[Backend, Backend],
) -> None:
    bad = [
        IceCandidate("garbage"),
        IceCandidate("1 1 udp"),
        IceCandidate("1 1 udp 1 not-an-ip 99999 typ host"),
        IceCandidate("1 1 udp 1 192.0.2.250 9 typ host", sdp_mid="no-such-mid", sdp_mline_index=9),
    ]
    async with await connect_pair(*backends) as pair:
        for cand in bad:
            await pair.offerer.add_remote_candidate(cand)
            await pair.answerer.add_remote_candidate(cand)
        await pair.offerer.send(b"still fine")
        assert await pair.answer_events.next_message() == b"still fine"


async def test_the_sdp_is_returned_before_the_first_local_candidate(backend: Backend) -> None:
    returned = False
    seen: list[bool] = []
    gathered = asyncio.Event()

    class Events(_Ignore):
        def on_local_candidate(self, cand: object) -> None:
            seen.append(returned)
            if cand is None:
                gathered.set()

    peer = backend.create_peer([], Events())
    try:
        await peer.create_offer()
        returned = True  # what an owner does right after: queue the offer for sending
        await asyncio.wait_for(gathered.wait(), 10)
        assert seen and all(seen), "a candidate was reported before the offer was returned"
    finally:
        await peer.close()
