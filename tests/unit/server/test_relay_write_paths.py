"""How the relay writes: frames written directly and joined per turn of the loop, the
writer task when a socket is behind, and broadcasts to everyone caught up in batches.

What users care about: every receiver gets exactly its frames, whole and in the order the
relay handled them, from whichever path; broadcasts reach every other user's connections
once; a full receiver loses a broadcast, never its stream; and the relay lets go of every
byte it held. The sockets here are stand-ins that record the bytes written to them, so the
tests read the very WebSocket frames a client would.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import pytest

from hotlink.protocol.codec import Encoding, decode, encode_json, encode_msgpack
from hotlink.protocol.messages import (
    Ack,
    FileWrite,
    HotlinkAccept,
    HotlinkData,
    HotlinkOpen,
    Message,
    Payload,
)
from hotlink.server.app import Relay, RelayConfig
from hotlink.server.decisions import FanOut
from hotlink.server.frames import COALESCE_MAX_FRAME
from hotlink.server.hub import Connection
from unit.server.wire_fakes import (
    HIGH_WATER,
    OPCODE_BINARY,
    OPCODE_TEXT,
    Wire,
    connect,
    frames_on,
    messages_on,
    wire_of,
)

ALICE, BOB, CAROL, DAVE = (
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "dave@example.com",
)
PATH = f"{ALICE}/app/x.request"
SID = "0123456789abcdef"


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    relay = Relay(RelayConfig(queue_messages=64))
    read_all = "rules: [{pattern: '**', access: {read: ['*']}}]"
    relay.acls.load(f"{ALICE}/app/syft.pub.yaml", read_all)
    yield relay
    for conn in relay.hub:
        conn.ws.closed = True  # type: ignore[misc]  # the peer is gone: no close handshake
        await conn.finish()
    assert relay.hub.ledger.total == 0 and len(relay.hub.ledger) == 0


async def turns(n: int = 5) -> None:
    """Let the loop run the writes scheduled so far (a guard, not a timing)."""
    for _ in range(n):
        await asyncio.sleep(0)


def frame(payload: Payload, mid: str = "m00001") -> bytes:
    return encode_msgpack(Message(mid, payload))


async def streaming(
    relay: Relay, receiver_encoding: Encoding = "msgpack"
) -> tuple[Connection, Connection]:
    alice, bob = connect(relay, ALICE), connect(relay, BOB, receiver_encoding)
    relay._handle_frame(alice, frame(HotlinkOpen(sid=SID, pth=PATH, to=BOB)))
    relay._handle_frame(
        bob,
        encode_json(Message("ac0001", HotlinkAccept(sid=SID)))
        if receiver_encoding == "json"
        else frame(HotlinkAccept(sid=SID)),
    )
    await turns()
    wire_of(alice).data.clear()
    wire_of(bob).data.clear()
    return alice, bob


def data_frames(sizes: list[int]) -> list[bytes]:
    return [
        frame(HotlinkData(sid=SID, seq=i + 1, pth=PATH, pay=os.urandom(size)), f"d{i:05d}")
        for i, size in enumerate(sizes)
    ]


# ---------------------------------------------------------------- the direct path


async def test_a_burst_goes_out_as_the_very_frames_in_one_write(relay):
    alice, bob = await streaming(relay)
    sent = data_frames([4096] * 20)
    writes = wire_of(bob).writes
    for f in sent:
        relay._handle_frame(alice, f)
    await turns()
    assert [payload for _, payload in frames_on(wire_of(bob))] == sent
    assert wire_of(bob).writes == writes + 1  # one send for the whole burst
    assert relay.metrics.registry.get_sample_value(
        "hotlink_relayed_messages_total", {"type": "HOTLINK_DATA"}
    ) == len(sent)


async def test_frames_of_every_size_arrive_whole_and_in_order(relay):
    alice, bob = await streaming(relay)
    sizes = [0, 1, 100, 125, 126, 65535, COALESCE_MAX_FRAME, COALESCE_MAX_FRAME + 1, 300_000]
    sent = data_frames(sizes * 2)
    for f in sent:
        relay._handle_frame(alice, f)
    await turns()
    assert frames_on(wire_of(bob)) == [(OPCODE_BINARY, f) for f in sent]


async def test_a_json_receiver_gets_text_frames_of_the_same_messages(relay):
    alice, bob = await streaming(relay, "json")
    sent = data_frames([10, 5000, 70_000])
    for f in sent:
        relay._handle_frame(alice, f)
    await turns()
    got = frames_on(wire_of(bob))
    assert [op for op, _ in got] == [OPCODE_TEXT] * 3
    assert [decode(p.decode()) for _, p in got] == [decode(f) for f in sent]


async def test_a_socket_behind_hands_over_to_the_writer_and_the_order_holds(relay):
    """Over the transport's high-water mark frames go through aiohttp (which waits for the
    socket to drain); once the queue is empty the direct path takes over again."""
    alice, bob = await streaming(relay)
    sent = data_frames([2000] * 30)
    for f in sent[:10]:
        relay._handle_frame(alice, f)
    await turns()
    wire_of(bob).held = HIGH_WATER + 1  # the peer stopped reading for a while
    for f in sent[10:20]:
        relay._handle_frame(alice, f)
    await turns(20)
    assert bob.ws.aiohttp_sends == 10  # type: ignore[attr-defined]
    wire_of(bob).held = 0
    for f in sent[20:]:
        relay._handle_frame(alice, f)
    await turns(20)
    assert bob.ws.aiohttp_sends == 10  # type: ignore[attr-defined]  # direct again
    assert [payload for _, payload in frames_on(wire_of(bob))] == sent
    assert not bob.closing


# ---------------------------------------------------------------- broadcasts to everyone


def acl_write(owner: str, n: int = 0, size: int = 0) -> Message:
    content = json.dumps({"rules": [], "pad": "x" * size}).encode()
    path = f"{owner}/f{n}/syft.pub.yaml"
    return Message(f"fw{n:04d}", FileWrite(pth=path, con=content, len=len(content)))


async def test_broadcasts_to_idle_connections_are_written_together(relay):
    users = [f"u{i}@example.com" for i in range(12)]
    conns = [connect(relay, u, "json" if i % 3 == 0 else "msgpack") for i, u in enumerate(users)]
    await turns()
    for c in conns:
        wire_of(c).data.clear()
    writes = {c.id: wire_of(c).writes for c in conns}
    published = [(u, acl_write(u, i)) for i, u in enumerate(users[:8])]
    for sender, message in published:  # in one turn of the loop, as in a storm
        relay.fan_out(FanOut(message, sender), None)
    await turns()
    for c in conns:
        expected = [message for sender, message in published if sender != c.user]
        assert messages_on(wire_of(c)) == expected, c.user
        assert wire_of(c).writes == writes[c.id] + 1
    assert len(relay.broadcasts) == 0


async def test_what_a_connection_missed_goes_before_its_next_frame(relay):
    alice, bob, carol = connect(relay, ALICE), connect(relay, BOB), connect(relay, CAROL)
    await turns()
    wire_of(bob).data.clear()
    broadcast = acl_write(CAROL)
    relay.fan_out(FanOut(broadcast, CAROL), None)
    relay._handle_frame(alice, frame(HotlinkOpen(sid=SID, pth=PATH, to=BOB), "op0001"))
    await turns()
    got = messages_on(wire_of(bob))
    assert [m.payload for m in got] == [
        broadcast.payload,
        HotlinkOpen(sid=SID, pth=PATH, frm=ALICE, to=BOB),
    ]
    assert not carol.closing


async def test_a_full_receiver_drops_the_broadcast_at_once_and_keeps_its_stream(relay):
    alice, bob = await streaming(relay)
    carol = connect(relay, CAROL)
    await turns()
    wire_of(bob).held = HIGH_WATER + 1  # bob stopped reading ...
    bob.ws.closed = False  # type: ignore[misc]
    sent = data_frames([100] * relay.config.queue_messages)
    for f in sent:
        relay._handle_frame(alice, f)
    # ... and his writer waits (a real socket would block it): fill his queue.
    while len(bob.queue) < relay.config.queue_messages:
        assert bob.try_put(b"x" * 10)
    relay.fan_out(FanOut(acl_write(CAROL), CAROL), None)
    assert relay.metrics.registry.get_sample_value("hotlink_broadcast_drops_total") == 1
    assert not bob.closing and not carol.closing


async def test_a_connection_made_after_a_broadcast_does_not_get_it(relay):
    connect(relay, BOB)
    relay.fan_out(FanOut(acl_write(CAROL), CAROL), None)
    dave = connect(relay, DAVE)
    await turns()
    assert messages_on(wire_of(dave)) == []


async def test_a_large_broadcast_is_queued_at_once_as_one_shared_frame(relay):
    readers = [connect(relay, u) for u in (BOB, DAVE)]
    await turns()
    big = acl_write(CAROL, size=COALESCE_MAX_FRAME)
    relay.fan_out(FanOut(big, CAROL), None)
    assert len(relay.broadcasts) == 0
    queued = [r.queue.take_all() for r in readers]
    assert queued[0][0] is queued[1][0]  # one object for both
    for frames in queued:
        relay.hub.ledger.release_all(frames)
    assert relay.hub.ledger.total == 0


async def test_the_senders_own_ack_comes_first_and_its_own_connections_get_nothing(relay):
    carol1, carol2 = connect(relay, CAROL), connect(relay, CAROL)
    bob = connect(relay, BOB)
    await turns()
    for c in (carol1, carol2, bob):
        wire_of(c).data.clear()
    upload = acl_write(CAROL)
    relay.put(carol1, frame(Ack(oid=upload.id)), Ack.TYPE, "ack001", broadcast=False)
    relay.fan_out(FanOut(upload, CAROL), None)
    await turns()
    assert [m.payload for m in messages_on(wire_of(carol1))] == [Ack(oid=upload.id)]
    assert messages_on(wire_of(carol2)) == []
    assert messages_on(wire_of(bob)) == [upload]


# ---------------------------------------------------------------- the drain watch


async def _unsent_burst(relay: Relay) -> tuple[Connection, Wire]:
    """Bob's socket keeps what is written to it: a burst leaves bytes unsent."""
    alice, bob = await streaming(relay)
    wire = wire_of(bob)
    wire.held = 10_000
    for data in data_frames([1000] * 8):
        relay._handle_frame(alice, data)
    await turns()
    assert wire.data, "the burst was written on the direct path"
    assert bob._drain_timer is not None, "bytes left unsent are watched"
    return bob, wire


def _period_ends(conn: Connection) -> None:
    """What the watch's timer does when ``write_timeout`` has passed (run here, not waited)."""
    assert conn._drain_timer is not None
    conn._drain_timer.cancel()
    conn._check_drain()


async def test_a_reader_that_takes_nothing_is_cut_after_the_write_timeout(relay):
    bob, _wire = await _unsent_burst(relay)
    _period_ends(bob)
    assert bob.closing and "write timed out" in bob.close_reason
    assert bob._drain_timer is None


async def test_a_reader_that_keeps_taking_is_not_cut(relay):
    bob, wire = await _unsent_burst(relay)
    for _ in range(5):
        wire.held -= 1000  # the peer took some of what waited
        _period_ends(bob)
        assert not bob.closing, bob.close_reason
    wire.held = 0  # all taken: nothing left to watch
    _period_ends(bob)
    assert not bob.closing and bob._drain_timer is None
