"""TunedSctpTransport on its own, fed SCTP packets directly (no DTLS, no network): messages
reassembled complete and in order whatever the arrival order, SACKs at least every second
packet and at once on anything unusual, and no more in flight than the peer's window."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    USERDATA_MAX_LENGTH,
    DataChunk,
    RTCSctpTransport,
    SackChunk,
    parse_packet,
    serialize_packet,
)

from hotlink.webrtc.aiortc_sctp import TunedSctpTransport

STREAM = 1
PPID = 53  # WebRTC binary
FIRST_TSN = 1000


@dataclass
class FakeQueue:
    """aioice's receive queue, as far as the SACK decision looks at it."""

    waiting: int = 0

    def qsize(self) -> int:
        return self.waiting


@dataclass
class FakeIce:
    queue: FakeQueue = field(default_factory=FakeQueue)

    @property
    def _connection(self) -> Any:
        return self

    @property
    def _queue(self) -> FakeQueue:
        return self.queue


@dataclass
class FakeDtls:
    """Stands in for RTCDtlsTransport: records the SCTP packets sent."""

    state: str = "connected"
    _role: str = "client"
    transport: FakeIce = field(default_factory=FakeIce)
    sent: list[bytes] = field(default_factory=list)

    async def _send_data(self, data: bytes) -> None:
        self.sent.append(data)

    def _register_data_receiver(self, receiver: Any) -> None:
        pass

    def sacks(self) -> list[SackChunk]:
        return [c for p in self.sent for c in parse_packet(p)[3] if isinstance(c, SackChunk)]


def established(cls: type[RTCSctpTransport]) -> tuple[Any, FakeDtls, list[bytes]]:
    """An association past its handshake whose delivered messages land in a list."""
    dtls = FakeDtls()
    sctp = RTCSctpTransport(dtls)  # type: ignore[arg-type]
    sctp.__class__ = cls
    sctp._association_state = RTCSctpTransport.State.ESTABLISHED
    sctp._remote_port = 5000
    sctp._last_received_tsn = FIRST_TSN - 1
    delivered: list[bytes] = []

    async def receive(stream_id: int, pp_id: int, data: bytes) -> None:
        delivered.append(data)

    sctp._receive = receive  # type: ignore[method-assign]
    return sctp, dtls, delivered


def fragments(messages: list[bytes], size: int = 100) -> list[DataChunk]:
    """DATA chunks of ordered messages on one stream, consecutive TSNs from FIRST_TSN."""
    chunks = []
    tsn = FIRST_TSN
    for seq, message in enumerate(messages):
        pieces = [message[i : i + size] for i in range(0, len(message), size)]
        for i, piece in enumerate(pieces):
            chunk = DataChunk()
            chunk.flags = (SCTP_DATA_FIRST_FRAG if i == 0 else 0) | (
                SCTP_DATA_LAST_FRAG if i == len(pieces) - 1 else 0
            )
            chunk.tsn = tsn
            chunk.stream_id = STREAM
            chunk.stream_seq = seq
            chunk.protocol = PPID
            chunk.user_data = piece
            chunks.append(chunk)
            tsn += 1
    return chunks


def packet(sctp: RTCSctpTransport, chunk: Any) -> bytes:
    return serialize_packet(5000, 5000, sctp._local_verification_tag, chunk)


async def test_messages_complete_and_in_order_when_a_late_fragment_fills_a_hole() -> None:
    messages = [bytes([i]) * 300 for i in range(3)]  # three fragments each
    chunks = fragments(messages)
    # The middle message's first fragment comes last: the third message is complete before
    # it but must wait, and the late fragment is neither new nor a last fragment.
    order = [0, 1, 2, 4, 5, 6, 7, 8, 3]
    sctp, _, delivered = established(TunedSctpTransport)
    window = sctp._advertised_rwnd
    for i in order:
        await sctp._receive_data_chunk(chunks[i])
        if i == 2:
            assert delivered == messages[:1]
        if i == 8:
            assert delivered == messages[:1]  # held back behind the hole
    assert delivered == messages
    assert sctp._advertised_rwnd == window  # every byte credited back


async def test_reassembly_matches_stock_aiortc_for_shuffled_arrivals() -> None:
    import random

    rng = random.Random(7)
    messages = [rng.randbytes(rng.randint(1, 900)) for _ in range(60)]
    chunks = fragments(messages)
    for _ in range(5):
        order = list(range(len(chunks)))
        order += rng.sample(order, 20)  # some arrive twice
        rng.shuffle(order)
        results = []
        for cls in (RTCSctpTransport, TunedSctpTransport):
            sctp, _, delivered = established(cls)
            for i in order:
                await sctp._receive_data_chunk(chunks[i])
            results.append(delivered)
            assert sctp._last_received_tsn == chunks[-1].tsn
            assert not sctp._sack_misordered
        assert results[0] == messages
        assert results[1] == messages


async def test_sack_every_second_packet_while_more_are_queued() -> None:
    sctp, dtls, delivered = established(TunedSctpTransport)
    chunks = fragments([bytes(100)] * 6)
    dtls.transport.queue.waiting = 3  # more datagrams already waiting behind each one
    await sctp._handle_data(packet(sctp, chunks[0]))
    assert dtls.sacks() == []
    await sctp._handle_data(packet(sctp, chunks[1]))
    assert [s.cumulative_tsn for s in dtls.sacks()] == [FIRST_TSN + 1]
    # The queue ran dry: the next packet is acknowledged at once.
    dtls.transport.queue.waiting = 0
    await sctp._handle_data(packet(sctp, chunks[2]))
    assert [s.cumulative_tsn for s in dtls.sacks()] == [FIRST_TSN + 1, FIRST_TSN + 2]
    assert len(delivered) == 3


async def test_a_delayed_sack_goes_out_by_the_end_of_the_batch() -> None:
    sctp, dtls, _ = established(TunedSctpTransport)
    chunk = fragments([bytes(100)])[0]
    dtls.transport.queue.waiting = 5  # the rest of the batch turns out not to be SCTP
    await sctp._handle_data(packet(sctp, chunk))
    assert dtls.sacks() == []
    for _ in range(5):
        await asyncio.sleep(0)
    assert [s.cumulative_tsn for s in dtls.sacks()] == [FIRST_TSN]


async def test_out_of_order_and_duplicate_packets_are_acknowledged_at_once() -> None:
    sctp, dtls, _ = established(TunedSctpTransport)
    chunks = fragments([bytes(100)] * 4)
    dtls.transport.queue.waiting = 3
    await sctp._handle_data(packet(sctp, chunks[2]))  # a gap before it
    assert len(dtls.sacks()) == 1
    assert dtls.sacks()[-1].gaps
    await sctp._handle_data(packet(sctp, chunks[2]))  # a duplicate
    assert len(dtls.sacks()) == 2
    assert dtls.sacks()[-1].duplicates == [FIRST_TSN + 2]


async def sent_data_chunks(rwnd: int | None) -> int:
    sctp, dtls, _ = established(TunedSctpTransport)
    sctp._cwnd = 100 * USERDATA_MAX_LENGTH
    sctp._hl_retransmit_possible = False
    sctp._hl_peer_rwnd = rwnd
    try:
        await sctp._send(STREAM, PPID, bytes(20 * USERDATA_MAX_LENGTH))
        return sum(isinstance(c, DataChunk) for p in dtls.sent for c in parse_packet(p)[3])
    finally:
        sctp._t3_cancel()


async def test_the_peer_window_bounds_what_is_in_flight() -> None:
    assert await sent_data_chunks(None) == 4  # aiortc's burst limit alone
    assert await sent_data_chunks(2000) == 2  # 0 and 1160 bytes in flight were below 2000
    # A closed window still lets one chunk go when nothing is in flight (a window probe),
    # so the association cannot wait forever for a window update that never comes.
    assert await sent_data_chunks(0) == 1


async def test_a_lost_chunk_is_retransmitted_after_three_gap_reports() -> None:
    sctp, dtls, _ = established(TunedSctpTransport)
    sctp._cwnd = 100 * USERDATA_MAX_LENGTH
    sctp._ssthresh = sctp._cwnd
    try:
        await sctp._send(STREAM, PPID, bytes(20 * USERDATA_MAX_LENGTH))
        first = sctp._sent_queue[0].tsn
        # The first chunk is lost; the peer reports the next ones arriving, one per SACK.
        for received in range(1, 4):
            sack = SackChunk()
            sack.cumulative_tsn = (first - 1) % 2**32
            sack.advertised_rwnd = 1024 * 1024
            sack.gaps = [(2, received + 1)]
            await sctp._receive_sack_chunk(sack)
        tsns = [c.tsn for p in dtls.sent for c in parse_packet(p)[3] if isinstance(c, DataChunk)]
        assert tsns.count(first) == 2
        assert sctp._hl_peer_rwnd == 1024 * 1024
    finally:
        sctp._t3_cancel()
