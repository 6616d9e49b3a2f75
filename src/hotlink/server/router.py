"""The hotlink router: PROTOCOL.md §2.2 with DECISIONS.md #18, #20, #21, #22, and no sockets.

It takes one decoded hotlink message (types 9-14) from one connection and returns an
:class:`Outcome`: the messages to put on which connections' queues, and, when the input was
refused, a label and a sentence for the log. Access checks go through an ``AccessPolicy``
(the ACL store in the server, a table in tests).

Where we differ from the reference, and why:

* Sessions die with their connections (#18); the reference keeps them forever.
* Reject and Close are accepted only from participants (#20): the opener's user and the
  accepted connections. Before anyone accepted, a user the Open was (or would have been)
  offered to is a participant too, so a receiver may refuse without accepting first; once
  a connection accepted, a bystander who was merely offered the Open can no longer end it.
* An accepted connection that Closes, Rejects or disconnects leaves the session; the
  opener hears of it only when no accepted connection remains, so in a session several
  readers accepted, one leaving does not end the stream for the others.
* An Open's path, session id and target are bounded (:data:`MAX_PATH_BYTES`,
  :data:`MAX_SID_CHARS`, :data:`MAX_TARGET_CHARS`): a session keeps them for its life and
  the path is sent to every reader, so an unbounded one costs memory per session and per
  receiver.
* A message for a session the sender is not part of gets ``Error{cod:403}`` rather than a
  silent drop, so a confused client learns why; clients ignore Error, so it cannot upset a
  well-behaved peer.
* An Open may not take over another user's session id (the reference overwrites it), and a
  connection may hold at most ``max_sessions_per_conn`` open sessions.

Cost (what thousands of connections and tens of thousands of frames a second ask of it):
with an ``acl_epoch`` (the server's ACL store), a Data frame's readers are decided once per
session and ACL epoch, not per frame; :meth:`HotlinkRouter.data_targets` answers the relay's
question "where does this frame go" from the session id alone, so the relay can forward the
frame without decoding it. With ``readers_of``, an Open without a target is offered to the
connections of the users its path's rule names, and an Open with one to that user's
connections, without walking every connection; only a rule that admits anyone or a user
pattern still asks about every connected user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..protocol.acl import Access, normalize_path, short_path
from ..protocol.errors import ProtocolError
from ..protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    HotlinkSignal,
    Message,
)
from .acl_store import MAX_PATH_BYTES
from .decisions import ConnectionTable, ConnId, Outcome, error_reply
from .sessions import Session, SessionStore

# Reason strings on the wire (PROTOCOL.md §2.3, DECISIONS.md #22).
PERMISSION_DENIED = "permission denied"
UNKNOWN_SESSION = "unknown session"
ALREADY_ACCEPTED = "already accepted"
TOO_MANY_SESSIONS = "too many sessions"
PATH_TOO_LONG = "path too long"
BAD_SESSION_ID = "invalid session id"
DISCONNECTED = "disconnected"
SUPERSEDED = "superseded"
SIGNAL_ERROR_KIND = "webrtc_error"

# Refusal labels that are not wire strings (metrics and logs only).
NOT_PARTICIPANT = "not participant"
NOT_SENDER = "not sender"
IGNORED = "ignored"

DEFAULT_MAX_SESSIONS_PER_CONN = 1024
# Clients make 16-character ids and refuse signals whose sid is longer than 256.
MAX_SID_CHARS = 256
MAX_TARGET_CHARS = 254  # the longest email address


class AccessPolicy(Protocol):
    def can_access(self, path: str, user: str, level: Access) -> bool: ...


class HotlinkRouter:
    def __init__(
        self,
        access: AccessPolicy,
        connections: ConnectionTable,
        *,
        max_sessions_per_conn: int = DEFAULT_MAX_SESSIONS_PER_CONN,
        data_relay_log: Callable[[str], None] | None = None,
        acl_epoch: Callable[[], object] | None = None,
        readers_of: Callable[[str], frozenset[str] | None] | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.access = access
        self.connections = connections
        # Given, when another store keeps them (one that also shares them with replicas).
        self.sessions = sessions if sessions is not None else SessionStore()
        self.max_sessions_per_conn = max_sessions_per_conn
        # SYFTBOX_HOTLINK_DEBUG: the reference's "hotlink data relay" trace.
        self._data_relay_log = data_relay_log
        # Without them (a policy that cannot say when it changes, or who reads a path),
        # every decision is asked afresh and Opens ask about every connected user.
        self._acl_epoch = acl_epoch
        self._readers_of = readers_of

    # ------------------------------------------------------------ entry points

    def handle(self, conn: ConnId, message: Message) -> Outcome:
        """Route one hotlink message that arrived on ``conn``."""
        user = self.connections.user(conn)
        if user is None:
            return Outcome().refuse(IGNORED, "message from a connection that is already gone")
        payload = message.payload
        if isinstance(payload, HotlinkOpen):
            return self._open(conn, user, message, payload)
        if isinstance(payload, HotlinkAccept):
            return self._accept(conn, user, message, payload)
        if isinstance(payload, HotlinkReject):
            return self._reject(conn, user, message, payload)
        if isinstance(payload, HotlinkData):
            return self._data(conn, user, message, payload)
        if isinstance(payload, HotlinkClose):
            return self._close(conn, user, message, payload)
        if isinstance(payload, HotlinkSignal):
            return self._signal(conn, user, message, payload)
        return Outcome().refuse(IGNORED, f"{message.typ.name} is not a hotlink message")

    def data_targets(self, conn: ConnId, sid: str) -> tuple[ConnId, ...] | None:
        """The connections a Data frame on ``sid`` from ``conn`` is forwarded to, when
        forwarding is all there is to do: the session exists and ``conn``'s user opened it.
        None otherwise (and with the debug trace on): :meth:`handle` has the answer.

        Reads nothing but the session id, changes nothing: the relay asks before it
        decodes the frame, and decodes it only when the answer is None.
        """
        if self._data_relay_log is not None:
            return None
        session = self.sessions.get(sid)
        if session is None or self.connections.user(conn) != session.from_user:
            return None
        return self._data_readers(session)

    def disconnect(self, conn: ConnId, reason: str = DISCONNECTED) -> Outcome:
        """Clean up after ``conn`` closed (DECISIONS.md #18).

        Sessions it opened are closed and every accepted connection gets Close ``reason``;
        sessions it accepted forget it and their opener gets that Close once no accepted
        connection is left.
        """
        out = Outcome()
        for session in self.sessions.opened_by(conn):
            self.sessions.remove(session.sid)
            for peer in session.accepted:
                if peer != conn:
                    out.send(peer, _closed(session.sid, reason))
        for session in self.sessions.accepted_by(conn):
            self.sessions.unaccept(session, conn)
            if session.from_conn != conn and not session.accepted:
                out.send(session.from_conn, _closed(session.sid, reason))
        return out

    def end_session(self, sid: str, reason: str) -> Outcome:
        """End session ``sid`` from the relay's side: it is forgotten, and its opener and
        every accepted connection get Close ``reason``. Nothing to do for an unknown id."""
        out = Outcome()
        session = self.sessions.get(sid)
        if session is None:
            return out
        self.sessions.remove(sid)
        for peer in dict.fromkeys((session.from_conn, *session.accepted)):
            out.send(peer, _closed(sid, reason))
        out.detail = f"session {sid} ended: {reason}"
        return out

    # ------------------------------------------------------------ the six messages

    def _open(self, conn: ConnId, user: str, message: Message, p: HotlinkOpen) -> Outcome:
        out = Outcome()
        if len(p.sid) > MAX_SID_CHARS:
            return self._reject_to(
                out,
                conn,
                p.sid,
                BAD_SESSION_ID,
                f"open: a session id of {len(p.sid)} characters (at most {MAX_SID_CHARS})",
            )
        # Checked before any work on it: every reader would be sent the path, and the
        # session and the ACL decision cache keep it.
        if len(p.pth) > MAX_PATH_BYTES or len(p.pth.encode("utf-8")) > MAX_PATH_BYTES:
            return self._reject_to(
                out,
                conn,
                p.sid,
                PATH_TOO_LONG,
                f"open {p.sid}: a path of {len(p.pth)} characters (at most {MAX_PATH_BYTES} bytes)",
            )
        if len(p.to) > MAX_TARGET_CHARS:
            return self._reject_to(
                out,
                conn,
                p.sid,
                PERMISSION_DENIED,
                f"open {p.sid}: a target of {len(p.to)} characters is no user",
            )
        # The session, the checks and the forwarded Open all use the normalised path, so a
        # receiver sees the path that was judged (``a/./b``, ``/a//b`` and ``a/b`` are one).
        try:
            path = normalize_path(p.pth)
        except ProtocolError:
            path = ""
        if not path or not self._can(path, user, Access.WRITE):
            return self._reject_to(
                out,
                conn,
                p.sid,
                PERMISSION_DENIED,
                f"open {p.sid}: {user} may not write {short_path(p.pth)!r}",
            )
        to = p.to.strip()
        if to == user:
            to = ""
        if to and not self._can(path, to, Access.READ):
            return self._reject_to(
                out,
                conn,
                p.sid,
                PERMISSION_DENIED,
                f"open {p.sid}: target {short_path(to, 60)} may not read {short_path(path)}",
            )
        existing = self.sessions.get(p.sid)
        if existing is not None and existing.from_user != user:
            return self._reject_to(
                out,
                conn,
                p.sid,
                PERMISSION_DENIED,
                f"open {p.sid}: that session id belongs to {existing.from_user}",
            )
        if existing is None and self.sessions.count_opened_by(conn) >= self.max_sessions_per_conn:
            return self._reject_to(
                out,
                conn,
                p.sid,
                TOO_MANY_SESSIONS,
                f"open {p.sid}: connection already has {self.max_sessions_per_conn} open sessions",
            )
        replaced = self.sessions.put(Session(p.sid, path, user, to, conn))
        if replaced is not None:
            # The opener reused its own session id (the reference overwrites too): whoever
            # accepted the old session must hear that it ended, or it would wait forever.
            for peer in replaced.accepted:
                out.send(peer, _closed(p.sid, SUPERSEDED))
        # Same id as the opener's message; frm is always the authenticated user.
        forward = Message(message.id, HotlinkOpen(sid=p.sid, pth=path, frm=user, to=to))
        for peer in self._offer_to(user, path, to):
            out.send(peer, forward, broadcast=True)
        out.detail = f"open {p.sid} {short_path(path)} offered to {len(out.sends)} connection(s)"
        return out

    def _offer_to(self, user: str, path: str, to: str) -> list[ConnId]:
        """The connections an Open of ``path`` by ``user`` goes to, in connection order:
        those of every other user who may read it, or only of ``to`` (already checked)."""
        if to:
            return self.connections.of_user(to)
        readers = self._readers_of(path) if self._readers_of is not None else None
        if readers is not None:
            peers: list[ConnId] = []
            for reader in readers:
                if reader == user:
                    continue
                conns = self.connections.of_user(reader)
                if conns and self._can(path, reader, Access.READ):
                    peers += conns
            return self.connections.in_order(peers)
        peers = []
        readable: dict[str, bool] = {}
        for peer, peer_user in self.connections.items():
            if peer_user == user:
                continue
            if peer_user not in readable:
                readable[peer_user] = self._can(path, peer_user, Access.READ)
            if readable[peer_user]:
                peers.append(peer)
        return peers

    def _accept(self, conn: ConnId, user: str, message: Message, p: HotlinkAccept) -> Outcome:
        out = Outcome()
        session = self.sessions.get(p.sid)
        if session is None:
            return self._reject_to(out, conn, p.sid, UNKNOWN_SESSION, f"accept of unknown {p.sid}")
        if user == session.from_user:
            return out.refuse(IGNORED, f"accept {p.sid}: the opener cannot accept its own session")
        if session.to_user and user != session.to_user:
            return self._reject_to(
                out,
                conn,
                p.sid,
                PERMISSION_DENIED,
                f"accept {p.sid}: the session is for {session.to_user}, not {user}",
            )
        if session.is_tcp and any(u != user for u in session.accepted.values()):
            return self._reject_to(
                out, conn, p.sid, ALREADY_ACCEPTED, f"accept {p.sid}: another user accepted first"
            )
        if not self._can(session.path, user, Access.READ):
            return self._reject_to(
                out, conn, p.sid, PERMISSION_DENIED, f"accept {p.sid}: {user} may not read"
            )
        self.sessions.accept(session, conn, user)
        out.send(session.from_conn, message)
        return out

    def _reject(self, conn: ConnId, user: str, message: Message, p: HotlinkReject) -> Outcome:
        out = Outcome()
        session = self.sessions.get(p.sid)
        if session is None:
            return out.refuse(IGNORED, f"reject of unknown session {p.sid}")
        if user == session.from_user:
            return out.refuse(IGNORED, f"reject {p.sid} from the opener's own user")
        return self._leave(out, session, conn, user, message, "reject")

    def _data(self, conn: ConnId, user: str, message: Message, p: HotlinkData) -> Outcome:
        out = Outcome()
        session = self.sessions.get(p.sid)
        if session is None:
            return self._reject_to(
                out, conn, p.sid, UNKNOWN_SESSION, f"data seq {p.seq} for unknown {p.sid}"
            )
        if user != session.from_user:
            if conn in session.accepted:
                out.sends.append(
                    error_reply(conn, 403, f"only the opener may send data on session {p.sid}")
                )
                return out.refuse(NOT_SENDER, f"data {p.sid}: {user} is not the opener")
            return self._not_participant(out, conn, user, "data", p.sid)
        for peer in self._data_readers(session):
            out.send(peer, message)
        if self._data_relay_log is not None and (
            p.seq <= 3 or p.seq % 500 == 0 or len(out.sends) != 1
        ):
            self._data_relay_log(
                f"hotlink data relay sid={p.sid} seq={p.seq} pth={p.pth} "
                f"bytes={len(p.pay)} recipients={len(out.sends)}"
            )
        return out

    def _close(self, conn: ConnId, user: str, message: Message, p: HotlinkClose) -> Outcome:
        out = Outcome()
        session = self.sessions.get(p.sid)
        if session is None:
            return out.refuse(IGNORED, f"close of unknown session {p.sid}")
        if user == session.from_user:
            self.sessions.remove(p.sid)
            for peer in session.accepted:
                out.send(peer, message)
            return out
        return self._leave(out, session, conn, user, message, "close")

    def _signal(self, conn: ConnId, user: str, message: Message, p: HotlinkSignal) -> Outcome:
        out = Outcome()
        session = self.sessions.get(p.sid)
        if session is None:
            reply = HotlinkSignal(sid=p.sid, knd=SIGNAL_ERROR_KIND, err=UNKNOWN_SESSION)
            out.send(conn, Message.new(reply))
            return out.refuse(UNKNOWN_SESSION, f"signal {p.knd} for unknown session {p.sid}")
        if user == session.from_user:
            for peer in session.accepted:
                out.send(peer, message)
            return out
        if conn in session.accepted:
            out.send(session.from_conn, message)
            return out
        return self._not_participant(out, conn, user, f"signal {p.knd}", p.sid)

    def _leave(
        self, out: Outcome, session: Session, conn: ConnId, user: str, message: Message, what: str
    ) -> Outcome:
        """A receiver's Reject or Close: an acceptor leaves the session, and the opener hears
        of it when nobody accepted remains; before anyone accepted, an offered user refuses
        the Open for the opener to hear."""
        if self.sessions.unaccept(session, conn):
            if session.accepted:
                out.detail = (
                    f"{what} {session.sid}: {user} left; "
                    f"{len(session.accepted)} accepted connection(s) remain"
                )
                return out
            out.send(session.from_conn, message)
            return out
        if self._participates(session, conn, user):
            out.send(session.from_conn, message)
            return out
        return self._not_participant(out, conn, user, what, session.sid)

    # ------------------------------------------------------------ helpers

    def _data_readers(self, session: Session) -> tuple[ConnId, ...]:
        """The accepted connections whose users may read the session's path.

        Checked for every frame (an ACL change takes effect mid-stream, §3.4), but decided
        afresh only when the ACL epoch moved or the acceptors changed.
        """
        epoch = self._acl_epoch() if self._acl_epoch is not None else None
        if epoch is not None and session.readers_epoch == epoch:
            return session.readers
        readers = tuple(
            peer
            for peer, peer_user in session.accepted.items()
            if self._can(session.path, peer_user, Access.READ)
        )
        if epoch is not None:
            session.readers = readers
            session.readers_epoch = epoch
        return readers

    def _can(self, path: str, user: str, level: Access) -> bool:
        return self.access.can_access(path, user, level)

    def _participates(self, session: Session, conn: ConnId, user: str) -> bool:
        """An acceptor; or, while nobody has accepted, a user the Open was offered to.

        The second lets a receiver refuse an Open it cannot serve ("ipc unavailable")
        without accepting it first. Once a connection accepted, another receiver of the
        same Open must not be able to end the session it did not take.
        """
        if conn in session.accepted:
            return True
        if session.accepted:
            return False
        if session.to_user and user != session.to_user:
            return False
        return self._can(session.path, user, Access.READ)

    def _reject_to(self, out: Outcome, conn: ConnId, sid: str, reason: str, detail: str) -> Outcome:
        out.send(conn, Message.new(HotlinkReject(sid=sid, rsn=reason)))
        return out.refuse(reason, detail)

    def _not_participant(
        self, out: Outcome, conn: ConnId, user: str, what: str, sid: str
    ) -> Outcome:
        out.sends.append(error_reply(conn, 403, f"not a participant of hotlink session {sid}"))
        return out.refuse(NOT_PARTICIPANT, f"{what} {sid}: {user} is not part of that session")


def _closed(sid: str, reason: str = DISCONNECTED) -> Message:
    return Message.new(HotlinkClose(sid=sid, rsn=reason))
