"""The relay's delivery rule, without sockets: a frame fits its receiver's queue or is
dropped at once; a direct send that does not fit disconnects the receiver, a broadcast that
does not fit is only dropped; the read path never waits on another connection."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSCloseCode

from hotlink.protocol.codec import decode, encode_msgpack
from hotlink.protocol.messages import (
    Ack,
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkSignal,
    Message,
    Payload,
)
from hotlink.server.app import Relay, RelayConfig
from hotlink.server.decisions import Send
from hotlink.server.hub import Connection

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
QUEUE = 3
PATH = f"{ALICE}/app/x.request"
SID = "s" * 16


class FakeWebSocket:
    """Just what a Connection touches; ``close`` can be held to model a peer behind."""

    def __init__(self) -> None:
        self.closed = False
        self.close_code: int | None = None
        self.release_close = asyncio.Event()
        self.release_close.set()

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool:
        await self.release_close.wait()
        self.closed = True
        self.close_code = code
        return True

    async def send_bytes(self, data: bytes) -> None:  # the writer is never started here
        raise AssertionError("not expected")

    async def send_str(self, data: str) -> None:
        raise AssertionError("not expected")


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    relay = Relay(RelayConfig(queue_messages=QUEUE))
    relay.acls.load(f"{ALICE}/app/syft.pub.yaml", "rules: [{pattern: '**', access: {read: ['*']}}]")
    yield relay
    for conn in relay.hub:
        await conn.finish()


def connect(relay: Relay, user: str) -> Connection:
    """A connection whose writer is not running: a receiver that reads nothing."""
    conn = Connection(
        f"c-{user[:5]}",
        user,
        "msgpack",
        FakeWebSocket(),  # type: ignore[arg-type]
        queue_messages=relay.config.queue_messages,
    )
    relay.hub.add(conn)
    relay.connections.add(conn.id, user)
    return conn


def fill(conn: Connection) -> None:
    while conn.queue.try_put(b"backlog"):
        pass


def metric(relay: Relay, name: str) -> float:
    value = relay.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def frame(payload: Payload) -> bytes:
    """What a msgpack client sends for ``payload``."""
    return encode_msgpack(Message.new(payload))


def data(seq: int) -> Message:
    return Message.new(HotlinkData(sid=SID, seq=seq, pth=PATH, pay=b"p" * 100))


def test_delivery_and_frame_handling_cannot_wait():
    # Synchronous by construction: nothing in the read path can await another connection.
    assert not inspect.iscoroutinefunction(Relay._deliver)
    assert not inspect.iscoroutinefunction(Relay._handle_frame)


async def test_a_frame_that_fits_is_queued_and_counted(relay):
    bob = connect(relay, BOB)
    message = data(1)
    relay._deliver([Send(bob.id, message)])
    assert len(bob.queue) == 1 and not bob.closing
    relayed = relay.metrics.registry.get_sample_value(
        "hotlink_relayed_messages_total", {"type": "HOTLINK_DATA"}
    )
    assert relayed == 1
    assert metric(relay, "hotlink_queue_drops_total") == 0


async def test_a_direct_send_that_does_not_fit_disconnects_the_receiver_at_once(relay):
    bob, carol = connect(relay, BOB), connect(relay, CAROL)
    fill(bob)
    relay._deliver([Send(bob.id, data(1)), Send(carol.id, data(1))])
    assert bob.closing and bob.close_reason == "send queue full"
    assert len(carol.queue) == 1 and not carol.closing  # the rest of the sends still go out
    assert metric(relay, "hotlink_slow_reader_disconnects_total") == 1
    assert metric(relay, "hotlink_queue_drops_total") == 1
    # Later frames for the closing receiver are dropped without counting it twice.
    relay._deliver([Send(bob.id, data(2))])
    assert metric(relay, "hotlink_slow_reader_disconnects_total") == 1
    await bob.finish()
    assert bob.ws.close_code == WSCloseCode.TRY_AGAIN_LATER


async def test_a_broadcast_that_does_not_fit_is_dropped_and_the_receiver_kept(relay):
    bob = connect(relay, BOB)
    fill(bob)
    queued = len(bob.queue)
    relay._deliver([Send(bob.id, Message.new(HotlinkOpen(sid=SID, pth=PATH)), broadcast=True)])
    assert not bob.closing and len(bob.queue) == queued
    assert metric(relay, "hotlink_queue_drops_total") == 1
    assert metric(relay, "hotlink_slow_reader_disconnects_total") == 0


async def test_a_sender_to_a_stalled_receiver_is_never_held(relay):
    """The read path of alice handles frame after frame while bob reads nothing."""
    alice, bob, carol = connect(relay, ALICE), connect(relay, BOB), connect(relay, CAROL)

    relay._handle_frame(alice, frame(HotlinkOpen(sid=SID, pth=PATH, to=BOB)))
    relay._handle_frame(bob, frame(HotlinkAccept(sid=SID)))
    other = "o" * 16
    relay._handle_frame(alice, frame(HotlinkOpen(sid=other, pth=PATH, to=CAROL)))
    relay._handle_frame(carol, frame(HotlinkAccept(sid=other)))
    for queue in (bob.queue, carol.queue, alice.queue):
        while len(queue):
            await queue.get()  # the handshake was read; from here on bob reads nothing
    for seq in range(1, 3 * QUEUE):
        relay._handle_frame(alice, frame(HotlinkData(sid=SID, seq=seq, pth=PATH, pay=b"b")))
        relay._handle_frame(alice, frame(HotlinkData(sid=other, seq=seq, pth=PATH, pay=b"c")))
        got = await carol.queue.get()  # carol reads as she goes
        assert isinstance(got, bytes) and b"c" in got
    assert bob.closing and not alice.closing and not carol.closing
    assert len(bob.queue) == 0  # killed: its backlog is released
    assert metric(relay, "hotlink_slow_reader_disconnects_total") == 1


async def test_peers_hear_of_a_disconnect_before_its_own_close_completes(relay):
    alice, bob = connect(relay, ALICE), connect(relay, BOB)
    relay._handle_frame(alice, frame(HotlinkOpen(sid=SID, pth=PATH, to=BOB)))
    relay._handle_frame(bob, frame(HotlinkAccept(sid=SID)))
    while len(alice.queue):
        await alice.queue.get()
    bob.ws.release_close.clear()  # type: ignore[attr-defined]  # bob's close hangs
    leaving = asyncio.create_task(relay._disconnect(bob))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not leaving.done()
    got = await asyncio.wait_for(alice.queue.get(), 5)
    assert isinstance(got, bytes)
    assert decode(got).payload == HotlinkClose(sid=SID, rsn="disconnected")
    bob.ws.release_close.set()  # type: ignore[attr-defined]
    await asyncio.wait_for(leaving, 5)


async def test_replies_to_the_sender_follow_the_same_rule(relay):
    """A sender that does not read its own replies is the slow reader, not a waiter."""
    alice = connect(relay, ALICE)
    fill(alice)
    relay._deliver([Send(alice.id, Message.new(Ack(oid="x")))])
    assert alice.closing
    relay._deliver([Send(alice.id, Message.new(HotlinkSignal(sid=SID, knd="k")))])
    assert metric(relay, "hotlink_slow_reader_disconnects_total") == 1
