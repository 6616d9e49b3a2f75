"""libdatachannel with tuned SCTP (large buffers, other congestion control, no delayed SACK)
and the largest MTU we allow: a real pair on this host still carries every byte, in order,
both ways, including messages of the peer's maximum size."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

pytest.importorskip("aiolibdatachannel")

from hotlink.webrtc import Peer
from hotlink.webrtc.libdatachannel_backend import MAX_MTU, LibdatachannelBackend
from hotlink.webrtc.pair import connect_pair
from hotlink.webrtc.sctp_settings import (
    CC_HTCP,
    DEFAULT_SCTP_SETTINGS,
    MIB,
    SctpSettings,
    applied_sctp_settings,
)

TUNED = SctpSettings(
    recv_buffer_size=8 * MIB,
    send_buffer_size=8 * MIB,
    initial_congestion_window=32,
    max_burst=-1,
    congestion_control_module=CC_HTCP,
    delayed_sack_timeout_ms=-1,
)


class Collector:
    """A sink that keeps every message and says when ``expect`` bytes have arrived."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.messages: list[bytes] = []
        self.size = 0
        self.complete = asyncio.Event()

    def __call__(self, data: bytes) -> None:
        self.messages.append(data)
        self.size += len(data)
        if self.size >= self.expect:
            self.complete.set()

    def digest(self) -> bytes:
        return hashlib.sha256(b"".join(self.messages)).digest()


async def _send_all(peer: Peer, pieces: list[bytes]) -> None:
    for piece in pieces:
        await peer.send(piece)


@pytest.mark.parametrize(
    ("settings", "mtu"),
    [(TUNED, MAX_MTU), (DEFAULT_SCTP_SETTINGS, 0)],
    ids=["tuned-max-mtu", "defaults"],
)
async def test_tuned_sctp_carries_every_byte_in_order_both_ways(
    settings: SctpSettings, mtu: int
) -> None:
    limit = 256 * 1024  # both ends advertise it (checked below)
    chunks = [i.to_bytes(4, "big") * (60 * 1024 // 4) for i in range(160)]
    chunks.append(bytes(range(256)) * (limit // 256))  # one of the peer's maximum size
    forward = b"".join(chunks)
    back = bytes(range(256)) * 4096  # 1 MiB
    at_answerer, at_offerer = Collector(len(forward)), Collector(len(back))
    async with await connect_pair(
        LibdatachannelBackend(mtu=mtu, sctp_settings=settings),
        LibdatachannelBackend(mtu=mtu, sctp_settings=settings),
        offer_sink=at_offerer,
        answer_sink=at_answerer,
    ) as pair:
        # The settings were in force when both associations were made.
        assert applied_sctp_settings() == settings
        assert pair.offerer.max_message_size == pair.answerer.max_message_size == limit
        await asyncio.gather(
            _send_all(pair.offerer, chunks),
            _send_all(pair.answerer, [back[i : i + limit] for i in range(0, len(back), limit)]),
        )
        async with asyncio.timeout(60):
            await at_answerer.complete.wait()
            await at_offerer.complete.wait()
        assert at_answerer.size == len(forward) and at_offerer.size == len(back)
        assert at_answerer.digest() == hashlib.sha256(forward).digest()
        assert at_offerer.digest() == hashlib.sha256(back).digest()
        assert pair.offer_events.closed_reason is None
        assert pair.answer_events.closed_reason is None
