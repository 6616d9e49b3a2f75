"""The relay-wide ledger of bytes held for peers (``hub.QueuedBytes``), without sockets.

What users care about: however many connections a hostile user opens and never reads, the
relay holds at most ``--max-queued-bytes`` for them, and a broadcast shared by many
receivers costs its size once. So the ledger must count every distinct frame that is queued
*or* written and possibly still in a socket's write buffer, exactly once, and let go of it
as soon as nobody can hold it any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import WSCloseCode
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.protocol.messages import FileWrite, HotlinkData, Message
from hotlink.server.app import Relay, RelayConfig
from hotlink.server.decisions import Send
from hotlink.server.hub import (
    LEDGER_REFRESH_INTERVAL,
    Connection,
    Frame,
    Hub,
    QueuedBytes,
    SendQueue,
)

ALICE = "alice@example.com"


def frame(size: int, fill: int = 0) -> bytes:
    """A fresh bytes object (equal contents are still distinct frames: the ledger counts
    objects, since one broadcast is one object queued for every receiver)."""
    assert size >= 2  # CPython shares its one-byte and empty bytes objects
    return bytes([fill]) * size


def take(queue: SendQueue) -> Frame | None:
    """``queue.get()`` for a queue that has a frame (or is closed): it must not wait."""
    coro = queue.get()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("get() waited although a frame was queued")


# ---------------------------------------------------------------- QueuedBytes and SendQueue


def test_the_ledger_counts_a_frame_once_however_often_it_is_held():
    ledger = QueuedBytes(limit=1000)
    shared, other = frame(100), frame(100)  # equal bytes, distinct frames
    ledger.hold(shared)
    ledger.hold(shared)
    ledger.hold(other)
    assert (ledger.total, len(ledger)) == (200, 2)
    ledger.release(shared)
    assert ledger.total == 200  # still held once
    ledger.release(shared)
    assert (ledger.total, len(ledger)) == (100, 1)
    ledger.release(other)
    assert (ledger.total, len(ledger)) == (0, 0)


def test_a_queue_holds_its_frames_in_the_ledger_until_they_are_taken():
    ledger = QueuedBytes()
    q = SendQueue(10, 10_000, ledger)
    a, b = frame(300), frame(500)
    assert q.try_put(a) and q.try_put(b)
    assert ledger.total == 800
    assert take(q) is a
    assert ledger.total == 500
    assert take(q) is b
    assert (ledger.total, len(ledger)) == (0, 0)


def test_a_frame_the_queue_refuses_is_not_counted():
    ledger = QueuedBytes()
    q = SendQueue(max_messages=1, max_bytes=10_000, ledger=ledger)
    assert q.try_put(frame(100))
    assert not q.try_put(frame(200))  # full by count
    q.close()
    assert not q.try_put(frame(300))  # closed
    assert ledger.total == 0


def test_a_broadcast_queued_for_two_receivers_is_counted_once_and_released_by_the_last():
    ledger = QueuedBytes()
    bob, carol = SendQueue(10, 10_000, ledger), SendQueue(10, 10_000, ledger)
    broadcast = frame(1000)
    assert bob.try_put(broadcast) and carol.try_put(broadcast)
    assert ledger.total == 1000
    take(bob)
    assert ledger.total == 1000  # carol still holds it
    take(carol)
    assert ledger.total == 0


def test_closing_a_queue_releases_what_it_held_but_not_what_others_hold():
    ledger = QueuedBytes()
    bob, carol = SendQueue(10, 10_000, ledger), SendQueue(10, 10_000, ledger)
    shared, own = frame(1000), frame(200)
    bob.try_put(shared)
    bob.try_put(own)
    carol.try_put(shared)
    bob.close()
    assert ledger.total == 1000  # carol's copy of the broadcast
    carol.close()
    assert ledger.total == 0


# ---------------------------------------------------------------- the write path


class FakeTransport:
    """A socket whose write buffer holds ``buffered`` bytes its peer has not taken."""

    def __init__(self) -> None:
        self.buffered = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True
        self.buffered = 0


class FakeWebSocket:
    """Writes go into the transport's buffer (a peer that reads nothing); with ``stall``
    cleared a write waits, as aiohttp's does when the buffer is over its high-water mark."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.closed = False
        self.close_code: int | None = None
        self.sent: list[bytes] = []
        self.stall = asyncio.Event()
        self.stall.set()
        self.writing = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        self.writing.set()
        await self.stall.wait()
        self.sent.append(data)
        self.transport.buffered += len(data)

    async def send_frame(self, data: bytes, opcode: object) -> None:
        await self.send_bytes(data)

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool:
        self.closed = True
        self.close_code = code
        return True


def connection(
    ledger: QueuedBytes, conn_id: str = "c1", queue_bytes: int = 1 << 20
) -> tuple[Connection, FakeWebSocket, FakeTransport]:
    transport = FakeTransport()
    ws = FakeWebSocket(transport)
    conn = Connection(
        conn_id,
        f"{conn_id}@example.com",
        "msgpack",
        ws,  # type: ignore[arg-type]
        queue_bytes=queue_bytes,
        transport=transport,  # type: ignore[arg-type]
        ledger=ledger,
    )
    return conn, ws, transport


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the writer task run until ``condition`` holds (a guard, not a timing)."""
    async with asyncio.timeout(5):
        # Nothing to wait on: the writer task only needs turns of the loop.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)
    assert condition(), what


async def gone(ws: FakeWebSocket) -> None:
    """The peer is gone: ``finish`` then only stops the writer (no close handshake)."""
    ws.closed = True


async def test_written_frames_stay_counted_while_the_socket_buffer_may_hold_them():
    ledger = QueuedBytes()
    conn, ws, transport = connection(ledger)
    f1, f2, f3 = frame(100), frame(200), frame(300)
    conn.start()
    for f in (f1, f2, f3):
        assert conn.try_put(f)
    await until(lambda: len(ws.sent) == 3, "all three written")
    # The peer took nothing: the buffer holds all three, so does the ledger.
    assert len(conn.queue) == 0
    assert ledger.total == 600

    transport.buffered = 450  # the peer read f1 and part of f2
    conn.note_unsent()
    assert ledger.total == 500  # f2 (partly sent) and f3: never less than the truth
    transport.buffered = 301  # one byte of f2 is still there
    conn.note_unsent()
    assert ledger.total == 500
    transport.buffered = 300  # exactly f3
    conn.note_unsent()
    assert ledger.total == 300
    transport.buffered = 0
    conn.note_unsent()
    assert (ledger.total, len(ledger)) == (0, 0)
    await gone(ws)
    await conn.finish()


async def test_a_write_waiting_for_a_peer_that_never_reads_is_counted():
    """The frame left the queue, but the relay still holds it (in the pending write)."""
    ledger = QueuedBytes()
    conn, ws, _transport = connection(ledger)
    ws.stall.clear()
    conn.start()
    stuck = frame(4096)
    assert conn.try_put(stuck)
    await until(ws.writing.is_set, "the writer took the frame")
    assert len(conn.queue) == 0
    assert ledger.total == 4096
    await gone(ws)
    await conn.finish()
    assert ledger.total == 0


async def test_finish_releases_every_frame_the_connection_held():
    ledger = QueuedBytes()
    conn, ws, transport = connection(ledger)
    conn.start()
    written = [frame(1000, i) for i in range(3)]
    for f in written:
        conn.try_put(f)
    await until(lambda: len(ws.sent) == 3, "all written")
    ws.stall.clear()  # the next write waits: one frame in flight, more still queued
    conn.try_put(frame(2000))
    conn.try_put(frame(3000))
    await until(lambda: len(conn.queue) == 1, "one write in flight")
    assert transport.buffered == 3000
    assert ledger.total == 3000 + 2000 + 3000
    await gone(ws)
    await conn.finish()
    assert (ledger.total, len(ledger)) == (0, 0)


async def test_a_killed_connection_releases_everything_once_its_owner_finishes():
    ledger = QueuedBytes()
    conn, ws, transport = connection(ledger)
    conn.start()
    conn.try_put(frame(1000))
    await until(lambda: len(ws.sent) == 1, "written")
    transport.buffered = 0  # drained, so the close does not wait for the peer
    conn.kill("test")
    await conn.finish()
    assert ledger.total == 0


async def test_a_broadcast_written_to_one_socket_and_queued_for_another_is_counted_once():
    ledger = QueuedBytes()
    bob, bob_ws, bob_buffer = connection(ledger, "bob")
    carol, carol_ws, _ = connection(ledger, "carol")  # carol's writer never runs
    bob.start()
    broadcast = frame(5000)
    assert bob.try_put(broadcast) and carol.try_put(broadcast)
    await until(lambda: len(bob_ws.sent) == 1, "written to bob")
    assert ledger.total == 5000
    bob_buffer.buffered = 0
    bob.note_unsent()
    assert ledger.total == 5000  # carol's queue still holds it
    await gone(carol_ws)
    await carol.finish()
    assert ledger.total == 0
    await gone(bob_ws)
    await bob.finish()


# ---------------------------------------------------------------- Hub: the relay-wide bound


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fair_share_is_the_bound_over_the_connections_but_never_below_the_floor():
    hub = Hub(1000, fair_share_floor=100)
    assert hub.fair_share() == 1000  # nobody connected
    ledger = hub.ledger
    for i in range(4):
        hub.add(connection(ledger, f"c{i}")[0])
    assert hub.fair_share() == 250
    for i in range(4, 20):
        hub.add(connection(ledger, f"c{i}")[0])
    assert hub.fair_share() == 100


def test_over_budget_compares_what_is_held_plus_the_new_frame_with_the_bound():
    hub = Hub(1000)
    held = frame(600)
    hub.ledger.hold(held)
    assert not hub.over_budget(400)  # exactly at the bound is within it
    assert hub.over_budget(401)
    hub.ledger.release(held)
    assert not hub.over_budget(1000)


async def test_over_budget_looks_at_the_socket_buffers_again_at_most_every_interval():
    """Socket buffers drain without telling the relay; before refusing anything for the
    bound, the hub lets go of written frames the peers have taken, but not on every call."""
    clock = Clock()
    hub = Hub(1000, clock=clock)
    conn, ws, transport = connection(hub.ledger)
    hub.add(conn)
    conn.start()
    conn.try_put(frame(800))
    await until(lambda: len(ws.sent) == 1, "written")
    assert hub.ledger.total == 800

    transport.buffered = 0  # the peer read it; nobody has looked yet
    assert hub.ledger.total == 800
    assert not hub.over_budget(500)  # looked: the 800 bytes are gone
    assert hub.ledger.total == 0

    conn.try_put(frame(900))
    await until(lambda: len(ws.sent) == 2, "written")
    transport.buffered = 0
    clock.now += LEDGER_REFRESH_INTERVAL / 2
    assert hub.over_budget(500)  # too soon to look again: still counted
    clock.now += LEDGER_REFRESH_INTERVAL
    assert not hub.over_budget(500)
    await gone(ws)
    await conn.finish()


# ---------------------------------------------------------------- the bound in Relay.deliver


class IdleWebSocket:
    closed = False
    close_code = None

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool:
        self.closed = True
        return True


def idle_reader(relay: Relay, user: str, transport: FakeTransport | None = None) -> Connection:
    """A receiver that reads nothing (its writer never runs)."""
    conn = Connection(
        f"c-{user}",
        user,
        "msgpack",
        IdleWebSocket(),  # type: ignore[arg-type]
        queue_bytes=relay.config.queue_bytes,
        transport=transport,  # type: ignore[arg-type]
        ledger=relay.hub.ledger,
    )
    relay.hub.add(conn)
    relay.connections.add(conn.id, user)
    return conn


def file_write(size: int) -> Message:
    return Message.new(FileWrite(pth=f"{ALICE}/pub/f.bin", con=b"x" * size, len=size))


def broadcast(relay: Relay, message: Message, readers: list[Connection]) -> None:
    """One message fanned out (as the file handler does): one frame for every reader."""
    relay.deliver([Send(r.id, message, broadcast=True) for r in readers])


def counter(relay: Relay, name: str) -> float:
    return relay.metrics.registry.get_sample_value(name) or 0.0


async def test_over_the_bound_broadcasts_are_dropped_and_receivers_kept():
    relay = Relay(RelayConfig(max_queued_bytes=10_000))
    readers = [idle_reader(relay, f"r{i}@example.com") for i in range(3)]
    sent = 0
    while counter(relay, "hotlink_budget_broadcast_drops_total") == 0:
        assert sent < 100, "no broadcast was ever dropped"
        broadcast(relay, file_write(1000), readers)
        sent += 1
    assert relay.hub.ledger.total <= 10_000
    for _ in range(20):  # and it stays there
        broadcast(relay, file_write(1000), readers)
    assert relay.hub.ledger.total <= 10_000
    assert not any(r.closing for r in readers)
    assert counter(relay, "hotlink_budget_disconnects_total") == 0
    for r in readers:
        await r.finish()
    assert relay.hub.ledger.total == 0


def data(seq: int, size: int) -> Message:
    return Message.new(HotlinkData(sid="s" * 16, seq=seq, pth=f"{ALICE}/x", pay=b"d" * size))


async def test_over_the_bound_a_direct_send_cuts_the_hoarder_not_the_reader_within_its_share():
    """Over the bound, a receiver holding more than its share is disconnected as a slow
    reader; one within its share still gets its stream."""
    relay = Relay(RelayConfig(max_queued_bytes=1 << 20))
    relay.hub.fair_share_floor = 64 * 1024
    hoarder = idle_reader(relay, "hoarder@example.com")
    reader = idle_reader(relay, "reader@example.com")
    for i in range(9):  # about 900 KiB: under the bound, so queued whatever the share
        relay.deliver([Send(hoarder.id, data(i, 100 * 1024))])
    assert not hoarder.closing and relay.hub.ledger.total > relay.hub.fair_share()
    relay.deliver([Send(reader.id, data(1, 16 * 1024))])  # within the bound
    relay.deliver([Send(reader.id, data(2, 200 * 1024))])  # over it, within reader's share
    assert not reader.closing and len(reader.queue) == 2
    relay.deliver([Send(hoarder.id, data(10, 200 * 1024))])  # over it, hoarder over its share
    assert hoarder.closing
    assert counter(relay, "hotlink_budget_disconnects_total") == 1
    assert counter(relay, "hotlink_slow_reader_disconnects_total") == 1
    for conn in (hoarder, reader):
        await conn.finish()


async def test_many_connections_within_their_share_cannot_hold_more_than_the_bound():
    """Each hoarder stays under the share's floor, but together they pass the bound: the
    one holding the most is cut for each send over it, so the total stays near the bound
    however many hoarders there are, and the reader's stream goes on."""
    relay = Relay(RelayConfig(max_queued_bytes=1 << 20))
    relay.hub.fair_share_floor = 512 * 1024  # each hoarder below it: no one over its share
    hoarders = [idle_reader(relay, f"h{i}@example.com") for i in range(8)]
    reader = idle_reader(relay, "reader@example.com")
    seq = 0
    for _ in range(3):  # 3 x 8 x 100 KiB = 2.4 MiB offered to the hoarders
        for h in hoarders:
            seq += 1
            relay.deliver([Send(h.id, data(seq, 100 * 1024))])
    for i in range(20):  # the reader's stream, which its app takes as it comes
        relay.deliver([Send(reader.id, data(1000 + i, 64 * 1024))])
        assert not reader.closing
        while len(reader.queue):
            take(reader.queue)
    held = relay.hub.ledger.total
    assert held <= (1 << 20) + 200 * 1024, f"the relay holds {held} bytes"
    assert counter(relay, "hotlink_budget_disconnects_total") >= 1
    assert any(h.closing for h in hoarders)
    for conn in (*hoarders, reader):
        await conn.finish()


async def test_the_queued_bytes_gauge_reports_the_ledger():
    relay = Relay(RelayConfig())
    reader = idle_reader(relay, "r@example.com")
    relay.deliver([Send(reader.id, file_write(5000), broadcast=True)])
    await relay._metrics(None)  # type: ignore[arg-type]
    assert relay.metrics.registry.get_sample_value("hotlink_queued_bytes") == relay.hub.ledger.total
    assert relay.hub.ledger.total >= 5000
    await reader.finish()


async def test_a_broadcast_already_held_for_one_receiver_costs_nothing_for_the_next():
    relay = Relay(RelayConfig(max_queued_bytes=10_000))
    readers = [idle_reader(relay, f"r{i}@example.com") for i in range(3)]
    broadcast(relay, file_write(6000), readers)
    assert relay.hub.ledger.total < 10_000
    assert [len(r.queue) for r in readers] == [1, 1, 1]
    for r in readers:
        await r.finish()


# ---------------------------------------------------------------- property: the ledger is exact

QUEUES = 3
# Few sizes: frames of equal bytes (distinct objects) are common, and must count apart.
SIZES = st.lists(st.integers(2, 9), min_size=1, max_size=6)
OPS = st.lists(
    st.tuples(st.sampled_from(["put", "get", "close"]), st.integers(0, QUEUES - 1), st.integers()),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(sizes=SIZES, ops=OPS, max_messages=st.integers(1, 5), max_bytes=st.integers(2, 200))
def test_the_ledger_always_equals_the_distinct_frames_still_queued(
    sizes: list[int], ops: list[tuple[str, int, int]], max_messages: int, max_bytes: int
) -> None:
    """Any interleaving of puts (the same frame into several queues, or twice into one),
    gets and closes: the ledger's total is the size of the distinct frames some queue holds."""
    pool = [frame(size) for size in sizes]
    ledger = QueuedBytes()
    queues = [SendQueue(max_messages, max_bytes, ledger) for _ in range(QUEUES)]
    model: list[list[bytes]] = [[] for _ in range(QUEUES)]

    def check() -> None:
        distinct = {id(f): f for held in model for f in held}
        assert ledger.total == sum(len(f) for f in distinct.values())
        assert len(ledger) == len(distinct)
        assert ledger.total >= 0

    for op, index, pick in ops:
        q, held = queues[index], model[index]
        if op == "put":
            f = pool[pick % len(pool)]
            if q.try_put(f):
                held.append(f)
        elif op == "get":
            if held:
                assert take(q) is held.pop(0)
        else:
            q.close()
            held.clear()
        check()
    for q in queues:
        q.close()
    assert (ledger.total, len(ledger)) == (0, 0)
