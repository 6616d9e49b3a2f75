"""The relay's side of cluster mode: what crosses between its connections and the cluster.

:class:`ClusterBridge` is the :class:`~.node.ClusterHost` a :class:`~.node.ClusterNode`
talks to. It turns records from other replicas into the relay's own deliveries and routing
decisions, and the relay's deliveries to connections on other replicas into records. The
relay (``server.app``) calls it at four points: an Open to claim, a message for a session
homed elsewhere, a delivery to a remote connection, and a Data frame's remote receivers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ...protocol.acl import ACLError
from ...protocol.codec import Encoding, decode
from ...protocol.messages import (
    HOTLINK_TYPES,
    HotlinkAccept,
    HotlinkClose,
    HotlinkOpen,
    HotlinkReject,
    Message,
    MsgType,
)
from ..decisions import FanOut, Outcome, Send, clip_text, error_reply
from ..frames import Frame, TextFrame, encode_frame
from ..hub import Connection
from ..router import MAX_SID_CHARS, PERMISSION_DENIED, TOO_MANY_SESSIONS
from . import records as rec
from .node import UNAVAILABLE, Claim, ClusterNode, node_of

if TYPE_CHECKING:
    from ..app import Relay

log = logging.getLogger("hotlink.server")

# Why an Open whose session id could not be claimed is rejected (else: permission denied).
_CLAIM_REFUSALS = {"unavailable": UNAVAILABLE, "cap": TOO_MANY_SESSIONS}


@dataclass(frozen=True)
class RemoteConn:
    """A connection on another replica, as this one's logs name it."""

    id: str
    user: str

    def __repr__(self) -> str:
        return f"<remote connection {self.id} ({self.user})>"


def record_frame(frame: bytes | str) -> rec.Frame:
    """A frame as a cluster record carries it: JSON as text, msgpack as bytes."""
    if isinstance(frame, TextFrame):
        return frame.decode("utf-8")
    return frame


class ClusterBridge:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        settings = relay.settings
        self.node = ClusterNode(
            self,
            settings.redis_url,
            node_id=settings.node_id,
            ttl=settings.node_ttl,
            grace=settings.cluster_grace,
            link_bytes=settings.cluster_link_bytes or 0,
        )

    # ------------------------------------------------------------ from the relay

    async def open_claimed(self, conn: Connection, message: Message, frame: bytes | str) -> None:
        """An Open of a session id this replica does not hold: claim the id cluster-wide
        first, so no user takes over another's session on another replica."""
        assert isinstance(message.payload, HotlinkOpen)
        sid = message.payload.sid
        if len(sid) > MAX_SID_CHARS:
            # The router refuses it; an id that long never becomes a key in Redis.
            claim = Claim("ok")
        else:
            claim = await self.node.claim(sid, conn.user, self.relay.config.max_sessions_per_user)
        if claim.verdict != "ok":
            out = Outcome()
            reason = _CLAIM_REFUSALS.get(claim.verdict, PERMISSION_DENIED)
            out.send(conn.id, Message.new(HotlinkReject(sid=sid, rsn=reason)))
            self.relay.report(
                conn, message, out.refuse(reason, f"open {clip_text(sid, 60)}: {reason}")
            )
            self.relay.deliver(out.sends)
            return
        try:
            outcome = self.relay.route(conn, message)
        except Exception:
            self.relay.metrics.internal_errors.inc()
            log.exception("%r: internal error handling an Open", conn)
            outcome = Outcome()
            outcome.sends.append(error_reply(conn.id, 500, "internal server error"))
        if sid not in self.relay.router.sessions:
            self.node.release(sid)  # refused: the id is free again
        assert isinstance(outcome, Outcome)
        self.relay.report(conn, message, outcome)
        self.relay.deliver(outcome.sends, received=(message, frame))
        self.relay.metrics.sessions.set(len(self.relay.router.sessions))

    def forward_home(self, conn: str, message: Message, frame: bytes | str) -> bool:
        """Send a hotlink message for a session homed on another replica there."""
        payload = message.payload
        sid = getattr(payload, "sid", "")
        if sid in self.relay.router.sessions:
            return False
        sessions = self.node.sessions
        home = sessions.home_for(conn, sid)
        if home is None:
            return False  # unknown here and there: our router answers as for any stranger
        if isinstance(payload, HotlinkAccept):
            if not sessions.join(conn, sid, home):
                self._refuse_accept(conn, message, sid)
                return True
        elif isinstance(payload, (HotlinkClose, HotlinkReject)):
            sessions.left(conn, sid)
        self.node.ingress(home, conn, frame)
        return True

    def _refuse_accept(self, conn_id: str, message: Message, sid: str) -> None:
        """``conn`` takes part in as many sessions homed elsewhere as a connection may: a
        new one is refused (its opener times out), not an old one forgotten."""
        conn = self.relay.hub.get(conn_id)
        if conn is None:
            return
        out = Outcome()
        detail = f"accept {clip_text(sid, 60)}: too many sessions homed on other replicas"
        out.send(conn_id, Message.new(HotlinkReject(sid=sid, rsn=TOO_MANY_SESSIONS)))
        self.relay.report(conn, message, out.refuse(TOO_MANY_SESSIONS, detail))
        self.relay.deliver(out.sends)

    def deliver_remote(self, send: Send, frames: dict[tuple[int, str], Frame]) -> None:
        """Queue ``send`` for a connection on another replica, encoded for it."""
        encoding = self.node.encoding_of(send.conn)
        if encoding is None:
            return  # gone meanwhile
        key = (id(send.message), encoding)
        frame = frames.get(key)
        if frame is None:
            try:
                frame = encode_frame(send.message, cast(Encoding, encoding))
            except Exception:
                self.relay.metrics.internal_errors.inc()
                log.exception("cannot encode %s", send.message.typ.name)
                return
            frames[key] = frame
        sid = getattr(send.message.payload, "sid", "") if send.message.typ in HOTLINK_TYPES else ""
        record = rec.Deliver(
            (send.conn,),
            record_frame(frame),
            send.message.typ,
            send.message.id,
            send.broadcast,
            sid,
        )
        self.node.deliver(record, node_of(send.conn))

    def deliver_data(self, peer: str, frame: bytes, msg_id: str, sid: str) -> None:
        """A msgpack Data frame, as received, for a receiver on another replica."""
        record = rec.Deliver((peer,), frame, MsgType.HOTLINK_DATA, msg_id, False, sid)
        self.node.deliver(record, node_of(peer))

    def publish_acl(self, path: str, text: str, exclude_user: str, frame: bytes | str) -> None:
        self.node.publish_acl(path, text, exclude_user, record_frame(frame))

    # ------------------------------------------------------------ from the cluster (ClusterHost)

    def local_conns(self) -> list[rec.ConnInfo]:
        return [rec.ConnInfo(c.id, c.user, c.encoding) for c in self.relay.hub]

    def cluster_deliver(self, src: str, record: rec.Deliver) -> None:
        frame: Frame = (
            TextFrame(record.frame, "utf-8") if isinstance(record.frame, str) else record.frame
        )
        typ = MsgType(record.typ)
        for conn in record.conns:
            target = self.relay.hub.get(conn)
            if target is not None and not target.closing:
                self.relay.put(target, frame, typ, record.msg_id, record.broadcast)

    def cluster_ingress(self, conn: str, frame: rec.Frame) -> None:
        user = self.relay.connections.user(conn)
        if user is None:
            return  # its replica said it left
        who = RemoteConn(conn, user)
        try:
            message = decode(frame)
            self.relay.metrics.received(message.typ, len(frame))
            outcome = self.relay.router.handle(conn, message)
        except Exception as exc:
            # Its own replica decoded it already: this is a bug, not a user.
            self.relay.metrics.internal_errors.inc()
            log.error("%r: cannot route a forwarded frame: %s", who, exc)
            return
        self.relay.report(who, message, outcome)
        if outcome.sends:
            self.relay.deliver(outcome.sends, received=(message, frame))
        self.relay.metrics.sessions.set(len(self.relay.router.sessions))

    def cluster_conn_up(self, info: rec.ConnInfo) -> None:
        self.relay.connections.add(info.conn, info.user)

    def cluster_conn_down(self, conn: str, reason: str) -> None:
        self.relay.connections.remove(conn)
        outcome = self.relay.router.disconnect(conn, reason)
        self.relay.deliver(outcome.sends)
        self.relay.metrics.sessions.set(len(self.relay.router.sessions))

    def cluster_close(self, conn: str, sid: str, reason: str) -> None:
        self.relay.deliver([Send(conn, Message.new(HotlinkClose(sid=sid, rsn=reason)))])

    def cluster_end_session(self, sid: str, reason: str) -> None:
        self.relay.deliver(self.relay.router.end_session(sid, reason).sends)
        self.relay.metrics.sessions.set(len(self.relay.router.sessions))

    async def _install_acl(self, path: str, text: str) -> bool:
        try:
            await self.relay.files.install(path, text)
        except ACLError as exc:
            log.warning("cluster: ACL file %s not loaded: %s", clip_text(path), exc)
            return False
        self.relay.metrics.acl_files.set(len(self.relay.acls))
        return True

    async def cluster_acl_put(self, record: rec.AclPut) -> None:
        if not await self._install_acl(record.path, record.text):
            return
        message = decode(record.frame)
        self.relay.fan_out(FanOut(message, record.exclude_user), received=(message, record.frame))

    def cluster_acl_del(self, path: str) -> None:
        self.relay.acls.remove(path)
        self.relay.metrics.acl_files.set(len(self.relay.acls))

    async def cluster_acl_snapshot(self, documents: dict[str, str]) -> None:
        for path, text in documents.items():
            await self._install_acl(path, text)
        if documents:
            log.info("cluster: loaded %d ACL file(s) shared by the cluster", len(self.relay.acls))
