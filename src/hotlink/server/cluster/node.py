"""One replica's place in the cluster: joining, heartbeats, the links, and what records do.

The relay (:class:`ClusterHost`) keeps deciding everything for the sessions homed on it;
this class tells it about the other replicas' connections, hands it the frames they send
for its sessions, and carries its answers to them. It owns three Redis connections (the
writer's, the reader's, and one for heartbeats and claims) and the tasks that use them,
and closes them all in :meth:`stop`.

States: ``joining`` until Redis answered, the ACL files are loaded and every replica found
sent its roster (or a guard passed), and again while a link is started afresh (records were
lost) until the other replica's roster arrives; ``ok``; ``degraded`` while Redis does not
answer (new connections and sessions are refused; sessions across replicas wait up to the
grace, then are closed with "relay link lost"). A replica whose key expired is lost: the
sessions it held are closed with "relay node lost".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ...protocol.errors import ProtocolError
from ...protocol.messages import MsgType
from ..metrics import ClusterStats
from . import records as rec
from .homes import RemoteSessions
from .keys import Keys
from .link import Inbox, Outbox
from .membership import Membership

log = logging.getLogger("hotlink.server.cluster")

NODE_LOST = "relay node lost"
LINK_LOST = "relay link lost"
UNAVAILABLE = "relay unavailable"

COMMAND_TIMEOUT = 2.0  # seconds for one Redis command before it counts as unreachable
SESSION_CLAIM_TTL_MS = 24 * 3600 * 1000  # a claim outlives a lost replica at most this long
# What may wait to be written for one other replica. Clients' credit windows bound what is
# in flight per session (8 MiB by default), so many sessions crossing one link may
# legitimately hold this much for a moment while Redis catches up.
DEFAULT_LINK_BYTES = 256 << 20

# Claim session KEYS[1] for user ARGV[1], homed here (ARGV[2]), with token ARGV[6]. Another
# user's claim stands while its replica lives (liveness keys are ARGV[3] .. replica); the
# same user's moves here. A new session counts against the user's cap (ARGV[5]) over the
# live replicas, kept per replica in KEYS[2]. Returns {verdict, old home}.
CLAIM = """
local cur = redis.call('HMGET', KEYS[1], 'user', 'home')
local user, home = cur[1], cur[2]
if user and user ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. home) == 1 then
  return {'taken', home}
end
if user == ARGV[1] and redis.call('EXISTS', ARGV[3] .. home) == 1 then
  if home ~= ARGV[2] then
    redis.call('HINCRBY', KEYS[2], home, -1)
    redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  end
else
  local counts = redis.call('HGETALL', KEYS[2])
  local total = 0
  for i = 1, #counts, 2 do
    if redis.call('EXISTS', ARGV[3] .. counts[i]) == 1 then
      total = total + tonumber(counts[i + 1])
    else
      redis.call('HDEL', KEYS[2], counts[i])
    end
  end
  if total >= tonumber(ARGV[5]) then return {'cap', ''} end
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  home = ''
end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'home', ARGV[2], 'tok', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {'ok', home or ''}
"""
# Give the claim up when it is still the one we made (KEYS[1], token ARGV[1]); the user's
# count of sessions on this replica (KEYS[2] field ARGV[2]) goes down with it.
RELEASE = """
if redis.call('HGET', KEYS[1], 'tok') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
  return 1
end
return 0
"""


class ClusterUnavailable(Exception):
    """Redis cannot be reached when the replica starts (it refuses to start)."""


def redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def node_of(conn: str) -> str:
    """The replica a connection id belongs to (``replica/8hex``; "" for a plain id)."""
    return conn.rpartition("/")[0]


def new_node_ref(node_id: str) -> str:
    """A name for this run of the replica: a restarted one is never taken for its past."""
    name = (node_id or socket.gethostname() or "relay").replace("/", "_")[:64]
    return f"{name}~{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Claim:
    verdict: str  # "ok", "taken", "cap" (too many sessions) or "unavailable"
    old_home: str = ""


class ClusterHost(Protocol):
    """What the relay does for the cluster (implemented by ``app.Relay``)."""

    def local_conns(self) -> list[rec.ConnInfo]: ...
    def cluster_deliver(self, src: str, record: rec.Deliver) -> None: ...
    def cluster_ingress(self, conn: str, frame: rec.Frame) -> None: ...
    def cluster_conn_up(self, info: rec.ConnInfo) -> None: ...
    def cluster_conn_down(self, conn: str, reason: str) -> None: ...
    def cluster_close(self, conn: str, sid: str, reason: str) -> None: ...
    def cluster_acl_put(self, record: rec.AclPut) -> Awaitable[None]: ...
    def cluster_acl_del(self, path: str) -> None: ...
    def cluster_acl_snapshot(self, documents: dict[str, str]) -> Awaitable[None]: ...
    def cluster_end_session(self, sid: str, reason: str) -> None: ...


class ClusterNode:
    def __init__(
        self,
        host: ClusterHost,
        url: str,
        *,
        node_id: str = "",
        ttl: float = 5.0,
        grace: float = 10.0,
        prefix: str = "hl",
        link_bytes: int = 0,
    ) -> None:
        self.host = host
        self.url = url
        self.ref = new_node_ref(node_id)
        self.keys = Keys(prefix)
        self.ttl = ttl
        self.grace = grace
        self.membership = Membership(self.ref, ttl)
        self.sessions = RemoteSessions()
        self.seq = rec.LinkSeq()
        # Remote connections, per replica, as its roster and records told us.
        self.remote: dict[str, dict[str, rec.ConnInfo]] = {}

        def client(timeout: float = COMMAND_TIMEOUT) -> Redis:
            # One retry on a fresh connection: after Redis restarted, the old connection's
            # first command fails although Redis is back (that is no outage to report).
            return Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=COMMAND_TIMEOUT,
                single_connection_client=True,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )

        self._writer_redis = client()
        # The reader blocks up to a second per XREAD: its timeout must be longer.
        self._reader_redis = client(COMMAND_TIMEOUT + 2)
        self._redis = client()
        self.outbox = Outbox(
            self._writer_redis,
            self.keys,
            self.ref,
            max_bytes=link_bytes or DEFAULT_LINK_BYTES,
            on_health=self._health,
            on_overflow=self._overflow,
        )
        self.inbox = Inbox(self._reader_redis, self.keys, self.ref, self._entry, self._health)
        self._claim = self._redis.register_script(CLAIM)
        self._failing: set[str] = set()
        self._down_since: float | None = None
        self._links_dropped = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._joined = False
        self._awaiting_roster: dict[str, float] = {}
        # The ACL files shared in the cluster, as text (to put back after a Redis restart).
        self.acl_documents: dict[str, str] = {}
        # Session id -> (claim token, user) of the sessions homed here.
        self._claims: dict[str, tuple[str, str]] = {}
        self.lost_nodes = 0
        self.gaps = 0

    # ------------------------------------------------------------ state

    @property
    def redis_up(self) -> bool:
        return not self._failing

    @property
    def status(self) -> str:
        if not self.redis_up:
            return "degraded"
        if not self._joined or self._awaiting_roster:
            return "joining"
        return "ok"

    def health(self) -> dict[str, object]:
        stats = self.stats()
        return {
            "status": self.status,
            "node": self.ref,
            "nodes": stats.nodes,
            "redis": "up" if stats.redis_up else "unreachable",
            "remote_connections": stats.remote_connections,
        }

    def stats(self) -> ClusterStats:
        return ClusterStats(
            nodes=1 + len(self.membership.known),
            redis_up=self.redis_up,
            remote_connections=sum(len(conns) for conns in self.remote.values()),
            entries_sent=self.outbox.sent_records,
            bytes_sent=self.outbox.sent_bytes,
            entries_received=self.inbox.received_entries,
            backlog_bytes=self.outbox.backlog(),
            gaps=self.gaps,
            lost_nodes=self.lost_nodes,
        )

    def _health(self, up: bool, part: str) -> None:
        name = part.split(":", 1)[0]
        was_up = self.redis_up
        if up:
            self._failing.discard(name)
        else:
            self._failing.add(name)
        if was_up and not self.redis_up:
            self._down_since = time.monotonic()
            self.membership.redis_down()
            log.warning(
                "cluster: Redis unreachable (%s); refusing new connections and sessions, "
                "sessions across replicas wait up to %.0f s",
                part,
                self.grace,
            )
        elif not was_up and self.redis_up:
            self._down_since = None
            log.warning("cluster: Redis reachable again")
            self._reshare_acls()

    # ------------------------------------------------------------ start and stop

    async def start(self) -> None:
        try:
            await self._beat()
            documents = await self._redis.hgetall(self.keys.acls)
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"cannot reach Redis at {redacted(self.url)}: {exc}") from None
        self.acl_documents = {_text(k): _text(v) for k, v in documents.items()}
        await self.host.cluster_acl_snapshot(dict(self.acl_documents))
        self.outbox.start()
        self.inbox.start()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="cluster-heartbeat")
        self._joined = True
        log.info(
            "cluster: joined as %s with %d other replica(s)", self.ref, len(self.membership.known)
        )

    async def stop(self) -> None:
        """Say goodbye (after the relay closed its connections), then close everything."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self.redis_up:
            for ref in self.membership.known:
                self.outbox.send(ref, rec.Bye())
            try:
                await asyncio.wait_for(self.outbox.flush(), COMMAND_TIMEOUT)
                pipe = self._redis.pipeline(transaction=False)
                pipe.srem(self.keys.nodes, self.ref)
                pipe.delete(self.keys.node(self.ref), self.keys.inbox(self.ref))
                await asyncio.wait_for(pipe.execute(), COMMAND_TIMEOUT)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("cluster: could not say goodbye: %s", exc)
        await self.outbox.close()
        await self.inbox.close()
        for client in (self._writer_redis, self._reader_redis, self._redis):
            await client.aclose()

    # ------------------------------------------------------------ heartbeats

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self._beat()
            except (RedisError, OSError, TimeoutError) as exc:
                self._health(False, f"heartbeat: {exc}")
            self._check_grace()

    async def _beat(self) -> None:
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self.keys.node(self.ref), info, px=int(self.ttl * 1000))
        pipe.sadd(self.keys.nodes, self.ref)
        pipe.smembers(self.keys.nodes)
        replies: list[Any] = await pipe.execute()
        members = sorted(m.decode() for m in replies[2] if m.decode() != self.ref)
        alive: dict[str, bool] = {}
        if members:
            values = await self._redis.mget([self.keys.node(m) for m in members])
            alive = {m: v is not None for m, v in zip(members, values, strict=True)}
        self._health(True, "heartbeat")
        known = set(self.membership.known)
        changes = self.membership.observe(time.monotonic(), alive)
        for ref in changes.found:
            log.info("cluster: found replica %s", ref)
            self._awaiting_roster[ref] = time.monotonic()
            self.outbox.send(ref, self._roster(reply=True))
        for ref in changes.lost:
            if ref in known:  # else a dead replica's leftovers, cleaned up here
                log.warning("cluster: replica %s is lost (its key expired)", ref)
                self.lost_nodes += 1
            self._forget_node(ref, NODE_LOST)
            pipe = self._redis.pipeline(transaction=False)
            pipe.srem(self.keys.nodes, ref)
            pipe.delete(self.keys.inbox(ref))
            await pipe.execute()
        guard = 3 * self.ttl
        now = time.monotonic()
        for ref, since in list(self._awaiting_roster.items()):
            if now - since > guard:
                log.warning("cluster: no roster from %s after %.0f s; going on", ref, guard)
                del self._awaiting_roster[ref]

    def _check_grace(self) -> None:
        if self._down_since is None or self._links_dropped:
            if self._down_since is None:
                self._links_dropped = False
            return
        if time.monotonic() - self._down_since < self.grace:
            return
        self._links_dropped = True
        gone = self.membership.forget_all()
        log.warning(
            "cluster: Redis unreachable for %.0f s: closing the sessions shared with %d replica(s)",
            self.grace,
            len(gone),
        )
        for ref in set(gone) | set(self.remote):
            self._forget_node(ref, LINK_LOST, alive=True)

    def _roster(self, *, reply: bool) -> rec.Roster:
        return rec.Roster(tuple(self.host.local_conns()), reply)

    # ------------------------------------------------------------ losing a link

    # A link has two directions: what we write to a replica (our outbox: an epoch and
    # numbers) and what it writes to us (LinkSeq). Whenever either side starts a new
    # outgoing link, its first record is its roster, so the receiver can rebuild its view.

    def _end_shared(self, ref: str, reason: str) -> None:
        """The sessions shared with replica ``ref`` end on this side: its connections leave
        the sessions homed here, and local connections in sessions homed there are told."""
        for conn in list(self.remote.pop(ref, {})):
            self.host.cluster_conn_down(conn, reason)
        for conn, sid in self.sessions.lose(ref):
            self.host.cluster_close(conn, sid, reason)

    def _forget_node(self, ref: str, reason: str, *, alive: bool = False) -> None:
        """Replica ``ref`` is dead (or, ``alive``, out of reach): everything shared with it
        goes. What a live one writes to us still counts in order, so its entries written
        meanwhile are neither taken for a loss nor let through with a hole."""
        self.outbox.forget(ref)
        if not alive:
            self.seq.forget(ref)
        self._awaiting_roster.pop(ref, None)
        self._end_shared(ref, reason)

    def _overflow(self, ref: str) -> None:
        log.warning(
            "cluster: more than %d bytes wait for replica %s; closing the sessions shared",
            self.outbox.max_bytes,
            ref,
        )
        # Called from inside Outbox.send; the clean-up delivers, so it runs next turn.
        asyncio.get_running_loop().call_soon(self._restart_link, ref)

    def _restart_link(self, ref: str) -> None:
        """Records of ours for ``ref`` were lost: end what we share, then a new link (which
        ends it on its side too) that starts with our roster and asks for its own."""
        self.outbox.forget(ref)
        self._end_shared(ref, LINK_LOST)
        self._awaiting_roster[ref] = time.monotonic()
        self.outbox.send(ref, self._roster(reply=True))

    # ------------------------------------------------------------ what the relay sends

    def conn_up(self, info: rec.ConnInfo) -> None:
        for ref in self.membership.known:
            self.outbox.send(ref, rec.ConnUp(info))

    def conn_down(self, conn: str) -> None:
        self.sessions.drop_conn(conn)
        for ref in self.membership.known:
            self.outbox.send(ref, rec.ConnDown(conn))

    def deliver(self, record: rec.Deliver, dst: str) -> None:
        self.outbox.send(dst, record, len(record.frame) + 64)

    def ingress(self, home: str, conn: str, frame: rec.Frame) -> None:
        self.outbox.send(home, rec.Ingress(conn, frame), len(frame) + 64)

    def _reshare_acls(self) -> None:
        """After an outage Redis may have come back empty (no persistence): put back the
        ACL files a replica joining later must find. A newer one already there wins."""
        documents = dict(self.acl_documents)

        def op(pipe: Any) -> None:
            for path, text in documents.items():
                pipe.hsetnx(self.keys.acls, path, text)

        if documents:
            self.outbox.state(op)

    def publish_acl(self, path: str, text: str, exclude_user: str, frame: rec.Frame) -> None:
        self.acl_documents[path] = text
        self.outbox.state(lambda pipe: pipe.hset(self.keys.acls, path, text))
        record = rec.AclPut(path, text, exclude_user, frame)
        for ref in self.membership.known:
            self.outbox.send(ref, record, len(text) + len(frame) + 64)

    def publish_acl_delete(self, path: str) -> None:
        self.acl_documents.pop(path, None)
        self.outbox.state(lambda pipe: pipe.hdel(self.keys.acls, path))
        for ref in self.membership.known:
            self.outbox.send(ref, rec.AclDel(path))

    def remote_count(self, user: str) -> int:
        return sum(1 for conns in self.remote.values() for c in conns.values() if c.user == user)

    def encoding_of(self, conn: str) -> str | None:
        info = self.remote.get(node_of(conn), {}).get(conn)
        return None if info is None else info.encoding

    async def claim(self, sid: str, user: str, cap: int) -> Claim:
        """Take session id ``sid`` for ``user``, homed here (an Open arrived here); ``cap``:
        the most sessions the user may hold over all replicas."""
        if not self.redis_up:
            return Claim("unavailable")
        token = secrets.token_hex(8)
        try:
            verdict, old = await asyncio.wait_for(
                self._claim(
                    keys=[self.keys.session(sid), self.keys.user_sessions(user)],
                    args=[user, self.ref, self.keys.node(""), SESSION_CLAIM_TTL_MS, cap, token],
                ),
                COMMAND_TIMEOUT,
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._health(False, f"claims: {exc}")
            return Claim("unavailable")
        self._health(True, "claims")
        old_home = _text(old)
        if old_home and old_home != self.ref and old_home in self.membership.known:
            # The same user opened this session id again here: its old home ends it.
            self.outbox.send(old_home, rec.EndSession(sid, "superseded"))
        result = Claim(_text(verdict), old_home)
        if result.verdict == "ok":
            self._claims[sid] = (token, user)
        return result

    def release(self, sid: str) -> None:
        """Session ``sid`` ended here: give its claim up (unless it moved on meanwhile)."""
        claim = self._claims.pop(sid, None)
        if claim is None:
            return
        token, user = claim
        keys = (self.keys.session(sid), self.keys.user_sessions(user))

        def op(pipe: Any) -> None:
            pipe.eval(RELEASE, 2, *keys, token, self.ref)

        self.outbox.state(op)

    # ------------------------------------------------------------ what others send

    async def _entry(self, src: str, epoch: str, seq: int, data: bytes) -> None:
        order = self.seq.check(src, epoch, seq)
        if order is rec.Order.DUPLICATE:
            return
        if order is rec.Order.GAP:
            self.gaps += 1
            log.error(
                "cluster: records from %s were lost (Redis lost data); closing the sessions "
                "shared with it",
                src,
            )
            # Ignore the rest of that link and have the sender start a new one; until its
            # roster arrives we do not know its connections (an Open for one of its users
            # would reach nobody), so we are joining again meanwhile.
            self.seq.break_link(src, epoch)
            self._end_shared(src, LINK_LOST)
            self._awaiting_roster[src] = time.monotonic()
            self.outbox.send(src, rec.Reset())
            return
        if order is rec.Order.NEW_LINK:
            # The sender forgot what we shared (its roster comes first on the new link).
            self._end_shared(src, LINK_LOST)
        try:
            batch = rec.unpack(data)
        except ProtocolError as exc:
            log.error("cluster: dropped an entry from %s: %s", src, exc)
            return
        for record in batch:
            try:
                await self._apply(src, record)
            except Exception:
                log.exception("cluster: internal error applying %s from %s", record, src)

    async def _apply(self, src: str, record: rec.Record) -> None:
        host = self.host
        match record:
            case rec.Deliver():
                if record.sid:
                    # A Close, or a Reject of its Accept: the connection is out of it.
                    ends = record.typ in (MsgType.HOTLINK_CLOSE, MsgType.HOTLINK_REJECT)
                    for conn in record.conns:
                        if ends:
                            self.sessions.left(conn, record.sid)
                        else:
                            self.sessions.note(record.sid, src, conn)
                host.cluster_deliver(src, record)
            case rec.Ingress(conn, frame):
                host.cluster_ingress(conn, frame)
            case rec.ConnUp(info):
                self.remote.setdefault(src, {})[info.conn] = info
                host.cluster_conn_up(info)
            case rec.ConnDown(conn):
                if self.remote.get(src, {}).pop(conn, None) is not None:
                    host.cluster_conn_down(conn, "disconnected")
            case rec.Roster(conns, reply):
                self.membership.known.add(src)
                self._awaiting_roster.pop(src, None)
                known = self.remote.setdefault(src, {})
                now = {info.conn: info for info in conns}
                for conn in [c for c in known if c not in now]:
                    del known[conn]
                    host.cluster_conn_down(conn, "disconnected")
                for conn, info in now.items():
                    if conn not in known:
                        known[conn] = info
                        host.cluster_conn_up(info)
                if reply:
                    self.outbox.send(src, self._roster(reply=False))
            case rec.AclPut():
                self.acl_documents[record.path] = record.text
                await host.cluster_acl_put(record)
            case rec.AclDel(path):
                self.acl_documents.pop(path, None)
                host.cluster_acl_del(path)
            case rec.EndSession(sid, reason):
                host.cluster_end_session(sid, reason)
            case rec.Reset():
                self._restart_link(src)
            case rec.Bye():
                log.info("cluster: replica %s stopped", src)
                self.membership.forget(src)
                self._forget_node(src, NODE_LOST)
