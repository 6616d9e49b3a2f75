"""The relay's delivery rule, without sockets: a frame fits its receiver's queue or is
dropped at once; a direct send that does not fit disconnects the receiver, a broadcast that
does not fit is only dropped; the read path never waits on another connection."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSCloseCode, WSMsgType

from hotlink.protocol.codec import Encoding, decode, encode_json, encode_msgpack
from hotlink.protocol.messages import (
    Ack,
    ACLManifest,
    Error,
    FileWrite,
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    HotlinkSignal,
    Message,
    Payload,
)
from hotlink.server.app import Relay, RelayConfig
from hotlink.server.decisions import Send
from hotlink.server.hub import Connection, TextFrame

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


class FakeTransport:
    """A socket whose write buffer holds ``buffered`` bytes the peer has not taken."""

    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        pass


def connect(
    relay: Relay,
    user: str,
    encoding: Encoding = "msgpack",
    *,
    conn_id: str | None = None,
    transport: FakeTransport | None = None,
) -> Connection:
    """A connection whose writer is not running: a receiver that reads nothing."""
    conn = Connection(
        conn_id or f"c-{user[:5]}",
        user,
        encoding,
        FakeWebSocket(),  # type: ignore[arg-type]
        queue_messages=relay.config.queue_messages,
        queue_bytes=relay.config.queue_bytes,
        transport=transport,  # type: ignore[arg-type]
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
    assert not inspect.iscoroutinefunction(Relay.deliver)
    assert not inspect.iscoroutinefunction(Relay._handle_frame)


async def test_a_frame_that_fits_is_queued_and_counted(relay):
    bob = connect(relay, BOB)
    message = data(1)
    relay.deliver([Send(bob.id, message)])
    assert len(bob.queue) == 1 and not bob.closing
    relayed = relay.metrics.registry.get_sample_value(
        "hotlink_relayed_messages_total", {"type": "HOTLINK_DATA"}
    )
    assert relayed == 1
    assert metric(relay, "hotlink_queue_drops_total") == 0


async def test_a_direct_send_that_does_not_fit_disconnects_the_receiver_at_once(relay):
    bob, carol = connect(relay, BOB), connect(relay, CAROL)
    fill(bob)
    relay.deliver([Send(bob.id, data(1)), Send(carol.id, data(1))])
    assert bob.closing and bob.close_reason == "send queue full"
    assert len(carol.queue) == 1 and not carol.closing  # the rest of the sends still go out
    assert metric(relay, "hotlink_slow_reader_disconnects_total") == 1
    assert metric(relay, "hotlink_queue_drops_total") == 1
    # Later frames for the closing receiver are dropped without counting it twice.
    relay.deliver([Send(bob.id, data(2))])
    assert metric(relay, "hotlink_slow_reader_disconnects_total") == 1
    await bob.finish()
    assert bob.ws.close_code == WSCloseCode.TRY_AGAIN_LATER


async def test_a_broadcast_that_does_not_fit_is_dropped_and_the_receiver_kept(relay):
    bob = connect(relay, BOB)
    fill(bob)
    queued = len(bob.queue)
    relay.deliver([Send(bob.id, Message.new(HotlinkOpen(sid=SID, pth=PATH)), broadcast=True)])
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
    relay.deliver([Send(alice.id, Message.new(Ack(oid="x")))])
    assert alice.closing
    relay.deliver([Send(alice.id, Message.new(HotlinkSignal(sid=SID, knd="k")))])
    assert metric(relay, "hotlink_slow_reader_disconnects_total") == 1


# ---------------------------------------------------------------- broadcasts never cut sessions

PUBLIC = f"{CAROL}/public"


def json_frame(payload: Payload) -> str:
    """What a JSON client sends for ``payload``."""
    return encode_json(Message.new(payload))


async def handle(relay: Relay, conn: Connection, frame: bytes | str) -> None:
    """What the read loop does with one frame (an ACL file is parsed off the loop)."""
    upload = relay._handle_frame(conn, frame)
    if upload is not None:
        await relay._load_acl(conn, upload, frame)


async def received(conn: Connection) -> Message:
    """The next message queued for ``conn``, whatever its encoding."""
    frame = await conn.queue.get()
    assert frame is not None
    return decode(frame.decode() if isinstance(frame, TextFrame) else frame)


def carols_broadcast(kind: str) -> bytes:
    """A broadcast carol can cause: her ACL file, an Open on her public path, her manifest."""
    if kind == "acl-file-write":
        acl = b"rules: [{pattern: '**', access: {read: ['*']}}]"
        return frame(FileWrite(pth=f"{PUBLIC}/syft.pub.yaml", con=acl, len=len(acl)))
    if kind == "open-on-public-path":
        return frame(HotlinkOpen(sid="p" * 16, pth=f"{PUBLIC}/chat.request"))
    return frame(ACLManifest(datasite=CAROL, for_="*", for_hash="public"))


@pytest.mark.parametrize("kind", ["acl-file-write", "open-on-public-path", "acl-manifest"])
async def test_a_broadcast_to_a_full_receiver_never_ends_its_session(relay, kind):
    """bob is mid-stream with a full queue when carol's broadcast arrives: it is dropped,
    bob stays connected, and his stream goes on where it was."""
    relay.acls.load(f"{PUBLIC}/syft.pub.yaml", "rules: [{pattern: '**', access: {read: ['*']}}]")
    alice, bob, carol = connect(relay, ALICE), connect(relay, BOB), connect(relay, CAROL)
    relay._handle_frame(alice, frame(HotlinkOpen(sid=SID, pth=PATH, to=BOB)))
    relay._handle_frame(bob, frame(HotlinkAccept(sid=SID)))
    for queue in (alice.queue, bob.queue, carol.queue):
        while len(queue):
            await queue.get()
    for seq in range(1, QUEUE + 1):  # bob's queue is now exactly full of his stream
        relay._handle_frame(alice, frame(HotlinkData(sid=SID, seq=seq, pth=PATH, pay=b"d")))
    assert len(bob.queue) == QUEUE

    for _ in range(5):
        await handle(relay, carol, carols_broadcast(kind))
        for reader in (alice, carol):  # they read (carol her Acks); only bob is full
            while len(reader.queue):
                await reader.queue.get()

    assert not bob.closing
    assert metric(relay, "hotlink_slow_reader_disconnects_total") == 0
    assert metric(relay, "hotlink_broadcast_drops_total") == 5
    got = [decode(await bob.queue.get()) for _ in range(QUEUE)]
    assert [m.payload.seq for m in got] == list(range(1, QUEUE + 1))  # type: ignore[attr-defined]
    # bob caught up: the stream goes on.
    relay._handle_frame(alice, frame(HotlinkData(sid=SID, seq=QUEUE + 1, pth=PATH, pay=b"d")))
    assert decode(await bob.queue.get()).payload.seq == QUEUE + 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------- bytes per connection


@pytest.fixture
async def byte_relay() -> AsyncIterator[Relay]:
    relay = Relay(RelayConfig(queue_messages=100, queue_bytes=1000))
    relay.acls.load(f"{ALICE}/app/syft.pub.yaml", "rules: [{pattern: '**', access: {read: ['*']}}]")
    yield relay
    for conn in relay.hub:
        await conn.finish()


def broadcast_of(size: int) -> Message:
    return Message.new(FileWrite(pth=f"{ALICE}/app/f.bin", con=b"x" * size, len=size))


async def test_bytes_in_the_socket_buffer_count_against_the_bound(byte_relay):
    """A peer that stopped reading holds its last frames in the socket's write buffer."""
    relay = byte_relay
    unsent = FakeTransport(buffered=900)
    bob = connect(relay, BOB, transport=unsent)
    relay.deliver([Send(bob.id, broadcast_of(200), broadcast=True)])
    assert len(bob.queue) == 0 and not bob.closing  # dropped: 900 + 200 > 1000
    assert metric(relay, "hotlink_broadcast_drops_total") == 1
    unsent.buffered = 0  # the peer read its buffer: the same broadcast fits again
    relay.deliver([Send(bob.id, broadcast_of(200), broadcast=True)])
    assert len(bob.queue) == 1
    unsent.buffered = 900  # and a direct send that does not fit disconnects the reader
    relay.deliver([Send(bob.id, data(1))])
    assert bob.closing and bob.close_reason == "send queue full"


async def test_an_idle_connection_takes_any_one_frame(byte_relay):
    bob = connect(byte_relay, BOB, transport=FakeTransport(0))
    byte_relay.deliver([Send(bob.id, broadcast_of(5000), broadcast=True)])
    assert len(bob.queue) == 1  # larger than the bound, but nothing else is held for bob


async def test_every_receiver_of_an_encoding_gets_the_same_bytes_object(relay):
    """Encoded once per encoding; JSON as UTF-8 bytes, so no per-connection copy is made."""
    readers = [connect(relay, f"r{i}@example.com", "json", conn_id=f"j{i}") for i in range(3)]
    readers += [connect(relay, f"m{i}@example.com", "msgpack", conn_id=f"m{i}") for i in range(3)]
    message = broadcast_of(100_000)
    relay.deliver([Send(r.id, message, broadcast=True) for r in readers])
    frames = [await r.queue.get() for r in readers]
    json_frames, msgpack_frames = frames[:3], frames[3:]
    assert all(isinstance(f, TextFrame) and f is json_frames[0] for f in json_frames)
    assert all(type(f) is bytes and f is msgpack_frames[0] for f in msgpack_frames)
    assert decode(json_frames[0].decode()) == decode(msgpack_frames[0]) == message


class Recorder:
    """Stands in for the WebSocket under a running writer: records what it sends."""

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, int]] = []
        self.closed = False

    async def send_frame(self, data: bytes, opcode: int) -> None:
        self.frames.append((data, opcode))

    async def send_bytes(self, data: bytes) -> None:
        self.frames.append((data, WSMsgType.BINARY))

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool:
        self.closed = True
        return True


async def test_a_json_frame_is_forwarded_as_received_and_sent_as_text(relay):
    alice, bob = connect(relay, ALICE, "json"), connect(relay, BOB, "json")
    relay._handle_frame(alice, json_frame(HotlinkOpen(sid=SID, pth=PATH, to=BOB)))
    relay._handle_frame(bob, json_frame(HotlinkAccept(sid=SID)))
    while len(alice.queue):
        await alice.queue.get()
    await bob.queue.get()
    sent = json_frame(HotlinkData(sid=SID, seq=1, pth=PATH, pay=b"\xff" * 10))
    relay._handle_frame(alice, sent)
    assert len(bob.queue) == 1
    recorder = Recorder()
    bob.ws = recorder  # type: ignore[assignment]
    bob.start()
    for _ in range(10):
        await asyncio.sleep(0)
    assert recorder.frames == [(sent.encode(), WSMsgType.TEXT)]


# ---------------------------------------------------------------- text with no UTF-8 form


async def test_a_lone_surrogate_is_refused_to_its_sender_and_reaches_nobody(relay):
    """JSON can escape a lone surrogate; no receiver, JSON or msgpack, could be sent it."""
    alice = connect(relay, ALICE, "json")
    bob, carol = connect(relay, BOB, "json"), connect(relay, CAROL, "msgpack")
    relay._handle_frame(alice, json_frame(HotlinkOpen(sid=SID, pth=PATH)))
    relay._handle_frame(bob, json_frame(HotlinkAccept(sid=SID)))
    relay._handle_frame(carol, frame(HotlinkAccept(sid=SID)))
    for queue in (alice.queue, bob.queue, carol.queue):
        while len(queue):
            await queue.get()
    evil = json_frame(HotlinkData(sid=SID, seq=1, pth=PATH, pay=b"x")).replace(
        PATH, PATH + "\\ud800"
    )
    relay._handle_frame(alice, evil)  # must not raise
    reply = await received(alice)
    assert isinstance(reply.payload, Error) and reply.payload.cod == 400
    assert "not valid Unicode" in reply.payload.msg
    assert len(bob.queue) == len(carol.queue) == 0
    assert not bob.closing and not carol.closing and not alice.closing
    assert metric(relay, "hotlink_internal_errors_total") == 0
    # The session still works.
    relay._handle_frame(alice, json_frame(HotlinkData(sid=SID, seq=1, pth=PATH, pay=b"ok")))
    ok = HotlinkData(sid=SID, seq=1, pth=PATH, pay=b"ok")
    assert (await received(carol)).payload == (await received(bob)).payload == ok


# ---------------------------------------------------------------- sessions per user


async def test_a_user_holds_at_most_max_sessions_per_user_over_all_connections():
    relay = Relay(RelayConfig(max_sessions_per_user=3))
    relay.acls.load(f"{ALICE}/app/syft.pub.yaml", "rules: [{pattern: '**', access: {read: ['*']}}]")
    a1 = connect(relay, ALICE, conn_id="a1")
    a2 = connect(relay, ALICE, conn_id="a2")
    sids = [f"sess-{i:04d}-xxxxxx" for i in range(4)]
    try:
        for sid, conn in zip(sids[:3], (a1, a2, a2), strict=True):
            relay._handle_frame(conn, frame(HotlinkOpen(sid=sid, pth=PATH)))
        relay._handle_frame(a1, frame(HotlinkOpen(sid=sids[3], pth=PATH)))
        reply = decode(await a1.queue.get())
        assert reply.payload == HotlinkReject(sid=sids[3], rsn="too many sessions")
        assert sids[3] not in relay.router.sessions
        # Re-opening one's own live session is not a new one.
        relay._handle_frame(a2, frame(HotlinkOpen(sid=sids[1], pth=PATH)))
        assert len(a2.queue) == 0
        # Closing one makes room.
        relay._handle_frame(a1, frame(HotlinkClose(sid=sids[0])))
        relay._handle_frame(a1, frame(HotlinkOpen(sid=sids[3], pth=PATH)))
        assert sids[3] in relay.router.sessions and len(a1.queue) == 0
    finally:
        for conn in relay.hub:
            await conn.finish()
