"""The stream contract across the relay's per-message paths.

One hotlink session's frames (HotlinkData seq 1..N, then HotlinkClose ``eof:N``) reach the
other client in the order they were sent, a Close never overtakes the data before it, and
no frame of one session reaches another session or user, whichever way each frame goes:
the short way for msgpack Data (routed from its header, forwarded as received), the full
decode for everything else, a direct write or the writer task of a socket that is behind,
and a link to another replica in cluster mode. A session that cannot be served is ended
loudly for both ends, never left hanging.

The sockets are stand-ins that record the bytes written to them, so the tests read the very
WebSocket frames a client would; two replicas of a cluster are joined by an in-memory link
that carries their records (packed and unpacked as on Redis) in order.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from hotlink.protocol.codec import Encoding, encode_json, encode_msgpack
from hotlink.protocol.flow import FLOW_KIND, Credit, credit_token
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    HotlinkSignal,
    Message,
    MsgType,
    Payload,
)
from hotlink.server.app import Relay, RelayConfig
from hotlink.server.cluster import homes, link
from hotlink.server.cluster import records as rec
from hotlink.server.cluster.node import Claim
from hotlink.server.decisions import Send
from hotlink.server.hub import Connection
from hotlink.settings import ServerSettings
from unit.server.wire_fakes import HIGH_WATER, Wire, connect, messages_on, wire_of

ALICE, BOB, CAROL, DAVE = (
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "dave@example.com",
)
READ_ALL = "rules: [{pattern: '**', access: {read: ['*'], write: ['*']}}]"


def path_of(owner: str) -> str:
    return f"{owner}/app_data/x/rpc/hotlink/x.request"


# ---------------------------------------------------------------- sockets


def received(conn: Connection) -> list[Message]:
    """Every whole WebSocket frame written to ``conn``'s socket so far, decoded."""
    return messages_on(wire_of(conn))


async def turns(n: int = 5) -> None:
    """Let the loop run the writes scheduled so far (a guard, not a timing)."""
    for _ in range(n):
        await asyncio.sleep(0)


def wire(message: Message, encoding: Encoding) -> bytes | str:
    return encode_msgpack(message) if encoding == "msgpack" else encode_json(message)


def msg(payload: Payload, mid: str) -> Message:
    return Message(mid, payload)


# ---------------------------------------------------------------- one relay, every path

# sid -> (opener, acceptor). Alice writes msgpack (her Data takes the short way to bob and
# the full path to carol, who reads JSON); dave writes JSON (the full path to both).
SESSIONS = {
    "1111111111111111": (ALICE, BOB),
    "2222222222222222": (ALICE, CAROL),
    "3333333333333333": (DAVE, BOB),
    "4444444444444444": (DAVE, CAROL),
}
ENCODINGS: dict[str, Encoding] = {ALICE: "msgpack", DAVE: "json", BOB: "msgpack", CAROL: "json"}
SIZES = (1, 200, 16 * 1024, 16 * 1024 + 1, 70_000)  # around the relay's coalescing bound


@dataclass
class Step:
    kind: str  # data | inject | behind | drained | turn
    sid: int = 0
    size: int = 0
    who: str = BOB


steps = st.lists(
    st.one_of(
        st.builds(Step, st.just("data"), st.integers(0, 3), st.sampled_from(SIZES)),
        st.builds(Step, st.just("inject"), st.integers(0, 3)),
        st.builds(Step, st.sampled_from(["behind", "drained"]), who=st.sampled_from([BOB, CAROL])),
        st.builds(Step, st.just("turn"), size=st.integers(1, 3)),
    ),
    max_size=40,
)


def payload(sid: str, seq: int, size: int) -> bytes:
    return hashlib.sha256(f"{sid}/{seq}".encode()).digest() * (size // 32 + 1)


async def _streams(plan: list[Step]) -> None:
    relay = Relay(RelayConfig())
    relay.acls.load(f"{ALICE}/syft.pub.yaml", READ_ALL)
    relay.acls.load(f"{DAVE}/syft.pub.yaml", READ_ALL)
    conns = {user: connect(relay, user, ENCODINGS[user]) for user in (ALICE, DAVE, BOB, CAROL)}
    sids = list(SESSIONS)
    for sid, (opener, acceptor) in SESSIONS.items():
        open_ = msg(HotlinkOpen(sid, path_of(opener), to=acceptor), f"o{sid[:4]}")
        relay._handle_frame(conns[opener], wire(open_, ENCODINGS[opener]))
        accept = msg(HotlinkAccept(sid), f"a{sid[:4]}")
        relay._handle_frame(conns[acceptor], wire(accept, ENCODINGS[acceptor]))
    sent: dict[str, list[HotlinkData]] = {sid: [] for sid in sids}
    for n, step in enumerate(plan):
        if step.kind in ("data", "inject"):
            sid = sids[step.sid]
            opener = SESSIONS[sid][0]
            if step.kind == "data":
                seq = len(sent[sid]) + 1
                data = HotlinkData(sid, seq, path_of(opener), pay=payload(sid, seq, step.size))
                sent[sid].append(data)
            else:
                # The other opener sends on this session: no receiver may get it.
                opener = DAVE if opener == ALICE else ALICE
                data = HotlinkData(sid, 1, path_of(opener), pay=b"not yours")
            relay._handle_frame(conns[opener], wire(msg(data, f"d{n:04d}"), ENCODINGS[opener]))
        elif step.kind == "behind":
            # The peer stops taking bytes: over the high-water mark, the writer task sends
            # and waits in each send.
            conns[step.who].transport.held = HIGH_WATER + 1  # type: ignore[union-attr]
            conns[step.who].ws.drained.clear()  # type: ignore[attr-defined]
        elif step.kind == "drained":
            conns[step.who].transport.held = 0  # type: ignore[union-attr]
            conns[step.who].ws.drained.set()  # type: ignore[attr-defined]
        else:
            await turns(step.size)
    for sid, (opener, _acceptor) in SESSIONS.items():
        close = msg(HotlinkClose(sid, f"eof:{len(sent[sid])}"), f"c{sid[:4]}")
        relay._handle_frame(conns[opener], wire(close, ENCODINGS[opener]))
    for reader in (BOB, CAROL):
        conns[reader].transport.held = 0  # type: ignore[union-attr]
        conns[reader].ws.drained.set()  # type: ignore[attr-defined]
    for _ in range(100):  # a guard: until every queue is written out
        await turns()
        if not any(len(c.queue) or c._slow for c in conns.values()):
            break
    for reader in (BOB, CAROL):
        conn = conns[reader]
        assert not conn.closing, conn.close_reason
        got: dict[str, list[Payload]] = {}
        for m in received(conn):
            got.setdefault(m.payload.sid, []).append(m.payload)  # type: ignore[union-attr]
        mine = [sid for sid, (_o, acceptor) in SESSIONS.items() if acceptor == reader]
        assert sorted(got) == mine, f"{reader} got frames of {sorted(got)}"
        for sid in mine:
            opener = SESSIONS[sid][0]
            expected = [
                HotlinkOpen(sid, path_of(opener), frm=opener, to=reader),
                *sent[sid],
                HotlinkClose(sid, f"eof:{len(sent[sid])}"),
            ]
            assert got[sid] == expected, f"{reader}: session {sid} out of order or not whole"
    for c in conns.values():
        c.ws.closed = True  # type: ignore[attr-defined]
        await c.finish()
    assert relay.hub.ledger.total == 0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=steps)
def test_every_session_arrives_whole_in_order_and_only_to_its_reader(plan):
    """Four sessions between two openers and two readers, their frames interleaved with
    frames a non-opener sends on them, while the readers' sockets fall behind and catch
    up: each reader gets exactly its sessions, each as Open, Data 1..N, Close ``eof:N``,
    whichever path (short or full, direct write or writer task) each frame took."""
    asyncio.run(_streams(plan))


# ---------------------------------------------------------------- a cluster in one process


class Cluster:
    """Two replicas joined by an in-memory link: what one's outbox sends the other applies,
    in order, as its inbox would (records packed and unpacked as on Redis). Session-id
    claims always succeed; Redis itself is never reached."""

    def __init__(self) -> None:
        self.a = self._replica("a")
        self.b = self._replica("b")
        self._pending: list[tuple[Relay, Relay, rec.Record]] = []
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            assert src.cluster is not None and dst.cluster is not None
            src.cluster.membership.known.add(dst.cluster.ref)
            src.cluster.outbox.send = self._sender(src)  # type: ignore[method-assign]
            src.cluster.outbox.state = lambda op: None  # type: ignore[method-assign]

            async def claim(sid: str, user: str, cap: int) -> Claim:
                return Claim("ok")

            src.cluster.claim = claim  # type: ignore[method-assign]

    @staticmethod
    def _replica(name: str) -> Relay:
        settings = ServerSettings(redis_url="redis://127.0.0.1:9/0", node_id=name)
        relay = Relay(RelayConfig(settings=settings))
        relay.acls.load(f"{ALICE}/syft.pub.yaml", READ_ALL)
        relay.acls.load(f"{DAVE}/syft.pub.yaml", READ_ALL)
        return relay

    def _sender(self, src: Relay):  # type: ignore[no-untyped-def]
        def send(dst: str, record: rec.Record, size: int = 64) -> None:
            target = self.b if self.b.cluster.ref == dst else self.a  # type: ignore[union-attr]
            self._pending.append((src, target, record))

        return send

    async def pump(self) -> None:
        """Carry every record sent so far (and those sent while applying them)."""
        while self._pending:
            batch, self._pending = self._pending, []
            for src, dst, record in batch:
                assert src.cluster is not None and dst.cluster is not None
                (copy,) = rec.unpack(rec.pack([record]))
                await dst.cluster._apply(src.cluster.ref, copy)
        await turns()

    async def frame_from(self, relay: Relay, conn: Connection, data: bytes | str) -> None:
        """``data`` arrives on ``conn``, as the relay's read loop handles it."""
        pending = relay._handle_frame(conn, data)
        if isinstance(pending, Message):
            assert relay.bridge is not None
            await relay.bridge.open_claimed(conn, pending, data)
        await self.pump()

    async def close(self) -> None:
        for relay in (self.a, self.b):
            for conn in relay.hub:
                conn.ws.closed = True  # type: ignore[misc]  # no close handshake
                await conn.finish()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    await c.close()


# ---------------------------------------------------------------- cluster: found bugs


# Replica b's memory of where sessions live, scaled down from homes.MAX_HOMES and
# homes.MAX_PER_CONN (65,536 and 4,096 Opens would take seconds here; the policy is the same).
HOMES = 64


@pytest.mark.parametrize(
    ("answer", "offered_to"),
    [("credit", "carol"), ("close", "carol"), ("credit", "bob"), ("close", "bob")],
)
async def test_a_quiet_session_homed_elsewhere_still_reaches_its_opener(
    cluster, answer, offered_to
):
    """Bob (replica b) accepted alice's session, homed on replica a; alice waits for flow
    credit, so nothing of that session crosses for a while. Meanwhile replica b is offered
    other sessions homed on a: dave opens and closes them in turn (one Open per session
    id; the per-user session cap never binds), offered to carol (a busy cluster over time)
    or to bob himself (a user who may offer him Opens). Bob's answers on the quiet session,
    a credit grant or his Close, must still go home to alice: lost, alice waits for credit
    forever, or streams on into a session bob left, and nobody is told.

    The failure this guards against: replica b remembers the home of at most
    ``homes.MAX_HOMES`` sessions (and ``MAX_PER_CONN`` per connection), forgets the least
    recently noted first, live or not, and never forgets a closed one; once bob's session
    is forgotten, his messages on it are answered on b as for an unknown session (a Signal
    "unknown session"; a Close ignored) instead of going home.
    """
    a, b = cluster.a, cluster.b
    assert b.cluster is not None
    b.cluster.sessions = homes.RemoteSessions(max_homes=HOMES, max_per_conn=HOMES)
    alice = connect(a, ALICE)
    connect(a, DAVE)
    bob = connect(b, BOB)
    carol = connect(b, CAROL)
    await cluster.pump()
    sid = "0123456789abcdef"
    opened = msg(HotlinkOpen(sid, path_of(ALICE), to=BOB), "o1")
    await cluster.frame_from(a, alice, wire(opened, "msgpack"))
    await cluster.frame_from(b, bob, wire(msg(HotlinkAccept(sid), "a1"), "msgpack"))
    data = HotlinkData(sid, 1, path_of(ALICE), pay=b"x" * 100)
    await cluster.frame_from(a, alice, wire(msg(data, "d1"), "msgpack"))
    assert [m.typ for m in received(bob)[-2:]] == [MsgType.HOTLINK_OPEN, MsgType.HOTLINK_DATA]
    assert HotlinkAccept(sid) in [m.payload for m in received(alice)]

    target = {"bob": bob, "carol": carol}[offered_to]
    assert a.bridge is not None
    for i in range(2 * HOMES):
        other = f"{i:016x}"
        offer = msg(HotlinkOpen(other, path_of(DAVE), frm=DAVE), f"p{i:05d}")
        # What replica a sends for an Open of dave's offered to a connection on b (the
        # router's decision, taken directly to stay fast). Dave's Close of a session
        # nobody accepted sends nothing to b.
        a.bridge.deliver_remote(Send(target.id, offer, broadcast=True), {})
        await cluster.pump()
    assert isinstance(bob.transport, Wire)
    bob.transport.data.clear()

    before = len(received(alice))
    if answer == "close":
        reply: Payload = HotlinkClose(sid, "error")
    else:
        reply = HotlinkSignal(sid, FLOW_KIND, tok=credit_token(Credit(2 << 20, 1 << 20)))
    await cluster.frame_from(b, bob, wire(msg(reply, "r1"), "msgpack"))
    got = [m.payload for m in received(alice)[before:]]
    assert got == [reply], f"alice got {got}; bob got {[m.payload for m in received(bob)]}"


async def test_an_accept_past_the_cap_of_sessions_homed_elsewhere_is_refused_loudly(cluster):
    """A connection in as many sessions homed on other replicas as it may be gets its next
    Accept refused ("too many sessions"); its earlier sessions keep reaching their opener."""
    a, b = cluster.a, cluster.b
    assert b.cluster is not None
    b.cluster.sessions = homes.RemoteSessions(max_joined_per_conn=1)
    alice = connect(a, ALICE)
    bob = connect(b, BOB)
    await cluster.pump()
    first, second = "0123456789abcdef", "fedcba9876543210"
    for i, sid in enumerate((first, second)):
        opened = msg(HotlinkOpen(sid, path_of(ALICE), to=BOB), f"o{i}")
        await cluster.frame_from(a, alice, wire(opened, "msgpack"))
        await cluster.frame_from(b, bob, wire(msg(HotlinkAccept(sid), f"a{i}"), "msgpack"))
    accepted = [m.payload for m in received(alice) if m.typ == MsgType.HOTLINK_ACCEPT]
    assert accepted == [HotlinkAccept(first)]
    assert HotlinkReject(second, "too many sessions") in [m.payload for m in received(bob)]
    close = HotlinkClose(first, "done")
    await cluster.frame_from(b, bob, wire(msg(close, "c1"), "msgpack"))
    assert received(alice)[-1].payload == close


# ---------------------------------------------------------------- cluster: the link itself


class FlakyRedis:
    """What the outbox's writer asks of Redis: pipelines. Each ``execute`` runs the first
    ``plan[i]`` commands and then fails (as a connection that broke mid-pipeline), or runs
    them all once the plan is used up. XADDs land in per-inbox lists."""

    def __init__(self, plan: list[int]) -> None:
        self.plan = list(plan)
        self.inboxes: dict[str, list[dict[str, object]]] = {}

    def pipeline(self, transaction: bool = False) -> FlakyPipe:
        return FlakyPipe(self)


class FlakyPipe:
    def __init__(self, redis: FlakyRedis) -> None:
        self.redis = redis
        self.commands: list[tuple[str, dict[str, object]] | None] = []

    def xadd(self, key: str, fields: dict[str, object], **_: object) -> None:
        self.commands.append((key, dict(fields)))

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *args, **kwargs: self.commands.append(None)  # shared state: not ours

    async def execute(self) -> None:
        ok = self.redis.plan.pop(0) if self.redis.plan else len(self.commands)
        for command in self.commands[:ok]:
            if command is not None:
                self.redis.inboxes.setdefault(command[0], []).append(command[1])
        if ok < len(self.commands):
            raise RedisConnectionError("connection reset mid-pipeline")


class LinkedCluster(Cluster):
    """Two replicas whose outboxes write through :class:`FlakyRedis`; each inbox is read in
    order into the replica, as its reader task would."""

    def __init__(self, plan: list[int]) -> None:
        super().__init__()
        self.redis = FlakyRedis(plan)
        for relay in (self.a, self.b):
            assert relay.cluster is not None
            node = relay.cluster
            node.outbox = link.Outbox(
                self.redis,  # type: ignore[arg-type]
                node.keys,
                node.ref,
                max_bytes=1 << 30,
                on_health=node._health,
                on_overflow=node._overflow,
            )
            node.outbox.start()
        self._read: dict[str, int] = {}

    def inbox(self, relay: Relay) -> list[dict[str, object]]:
        """Every entry written to ``relay``'s inbox, the list itself: deleting entries not
        read yet loses them, as a Redis that restarted empty would."""
        node = relay.cluster
        assert node is not None
        return self.redis.inboxes.setdefault(node.keys.inbox(node.ref), [])

    async def read_inbox(self, relay: Relay) -> bool:
        """Apply what waits in ``relay``'s inbox, in order; True when anything did."""
        node = relay.cluster
        assert node is not None
        entries = self.inbox(relay)
        moved = False
        while self._read.get(node.ref, 0) < len(entries):
            fields = entries[self._read.get(node.ref, 0)]
            self._read[node.ref] = self._read.get(node.ref, 0) + 1
            moved = True
            await node._entry(
                str(fields["f"]),
                str(fields["e"]),
                int(fields["s"]),
                bytes(fields["r"]),
            )
        return moved

    async def pump(self) -> None:
        for _ in range(1000):  # a guard: until both outboxes and inboxes are empty
            await turns()
            moved = False
            for relay in (self.a, self.b):
                moved = await self.read_inbox(relay) or moved
            busy = any(
                link_.records or link_.entries
                for relay in (self.a, self.b)
                for link_ in relay.cluster.outbox._links.values()  # type: ignore[union-attr]
            )
            if not moved and not busy:
                return
        raise AssertionError("the link did not settle")

    async def close(self) -> None:
        await super().close()
        for relay in (self.a, self.b):
            assert relay.cluster is not None
            await relay.cluster.outbox.close()


@pytest.mark.parametrize(
    "plan",
    [[], [0], [1, 0, 2], [3, 1, 1, 0, 5], [2] * 4],
    ids=["no faults", "nothing", "partly", "several", "every pipeline breaks"],
)
async def test_a_stream_across_replicas_survives_pipelines_that_break_midway(monkeypatch, plan):
    """Alice (replica a) streams to bob (replica b) and carol (b, JSON) while Redis drops
    the connection in the middle of pipelines: the writer sends again what may not have
    landed, the reader drops what it had. Each reader gets Open, Data 1..N, Close ``eof:N``
    exactly once each and in order, over the short way (bob) and the full path (carol)."""
    monkeypatch.setattr(link, "RETRY_PAUSE", 0)
    # Small entries, so a pipeline carries several and can break between them.
    monkeypatch.setattr(link, "MAX_ENTRY_BYTES", 2000)
    cluster = LinkedCluster([])
    try:
        a, b = cluster.a, cluster.b
        alice = connect(a, ALICE)
        readers = {BOB: connect(b, BOB), CAROL: connect(b, CAROL, "json")}
        await cluster.pump()
        sids = {BOB: "1111111111111111", CAROL: "2222222222222222"}
        sent: dict[str, list[HotlinkData]] = {sid: [] for sid in sids.values()}
        for reader, sid in sids.items():
            await cluster.frame_from(
                a,
                alice,
                wire(msg(HotlinkOpen(sid, path_of(ALICE), to=reader), "o" + sid[:3]), "msgpack"),
            )
            accept = msg(HotlinkAccept(sid), "a" + sid[:3])
            await cluster.frame_from(b, readers[reader], wire(accept, readers[reader].encoding))
        cluster.redis.plan = list(plan)  # the faults hit the stream
        for burst in range(6):
            for i in range(5):
                for sid in sids.values():
                    seq = len(sent[sid]) + 1
                    data = HotlinkData(sid, seq, path_of(ALICE), pay=payload(sid, seq, 300 * i))
                    sent[sid].append(data)
                    a._handle_frame(alice, wire(msg(data, f"d{burst}{i}{sid[0]}"), "msgpack"))
            if burst % 2:
                await cluster.pump()
        for sid in sids.values():
            close = msg(HotlinkClose(sid, f"eof:{len(sent[sid])}"), "c" + sid[:3])
            a._handle_frame(alice, wire(close, "msgpack"))
        await cluster.pump()
        for reader, sid in sids.items():
            got = [m.payload for m in received(readers[reader])]
            assert got == [
                HotlinkOpen(sid, path_of(ALICE), frm=ALICE, to=reader),
                *sent[sid],
                HotlinkClose(sid, f"eof:{len(sent[sid])}"),
            ], f"{reader}: not whole, not in order, or repeated"
        assert a.cluster is not None and b.cluster is not None
        assert a.cluster.gaps == b.cluster.gaps == 0
        assert not cluster.redis.plan, "every planned fault happened"
    finally:
        await cluster.close()


async def test_after_lost_records_a_replica_is_joining_until_the_other_roster_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis restarted empty and lost an entry of a's: b notices the gap, forgets a's
    connections and asks for a new link. Until a's roster is back, an Open at b for alice
    would reach nobody, so b must not report itself healthy; after it, b knows alice again."""
    monkeypatch.setattr(link, "RETRY_PAUSE", 0)
    cluster = LinkedCluster([])
    try:
        a, b = cluster.a, cluster.b
        assert a.cluster is not None and b.cluster is not None
        for relay in (a, b):
            relay.cluster._joined = True  # type: ignore[union-attr]  # as start() leaves it
        alice = connect(a, ALICE)
        connect(b, BOB)
        await cluster.pump()
        assert a.cluster.status == b.cluster.status == "ok"
        assert alice.id in b.cluster.remote[a.cluster.ref]
        # An entry of a's for b is lost; the next one shows the gap.
        connect(a, CAROL)
        await turns()
        inbox = cluster.inbox(b)
        del inbox[cluster._read[b.cluster.ref] :]
        connect(a, DAVE)
        await turns()
        assert await cluster.read_inbox(b)
        assert b.cluster.gaps == 1
        assert a.cluster.ref not in b.cluster.remote
        assert b.cluster.status == "joining"
        await cluster.pump()  # the Reset, a's new link with its roster, b's answer
        assert a.cluster.status == b.cluster.status == "ok"
        assert alice.id in b.cluster.remote[a.cluster.ref]
    finally:
        await cluster.close()
