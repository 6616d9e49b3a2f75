"""FileWrite, FileDelete and ACLManifest from clients (PROTOCOL.md §1.11), without sockets.

The relay stores no files (it is not a SyftBox blob store): a FileWrite is checked, answered
with Ack or Nack, and fanned out to the connections that may read it; the content is not
kept. ACL files are the exception that matters: a client's FileWrite of ``<its own
datasite>/.../syft.pub.yaml`` is parsed and loaded into the ACL store before the Ack, so the
hotlink messages that follow are checked against it.

An ACL file comes from a user and may be hostile, so it is parsed off the event loop: for an
ACL FileWrite that passes the cheap checks (owner, size, UTF-8, path) :meth:`FileHandler.handle`
returns an :class:`ACLUpload`, and the app awaits :meth:`FileHandler.load_acl` in that
connection's read loop. So at most one parse per connection is in flight (its next frames
wait for it, and are judged by the new rules), at most :data:`MAX_ACL_PARSES` run at once on
worker threads, and no other connection waits. A refusal's Nack says what was wrong in a few
words and never repeats the file.

Where we differ from the reference: only the datasite owner may change its ACL files (the
reference also lets Admin users); an ACL that does not parse gets a Nack with the parse
error (the reference Acks and only logs); a write refusal is an ``Error{cod:403}`` like the
reference *plus* a Nack, so a client waiting for its Ack fails at once instead of timing
out; and a FileDelete of one's own ACL file removes its rules.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from ..protocol.acl import MAX_ACL_BYTES, Access, ACLError, is_acl_path, prepare_acl, short_path
from ..protocol.errors import ProtocolError
from ..protocol.messages import (
    Ack,
    ACLManifest,
    FileDelete,
    FileWrite,
    Message,
    Nack,
)
from .acl_store import ACLStore, normalize_path, owner_of
from .decisions import ConnectionTable, ConnId, FanOut, Outcome, error_reply
from .router import IGNORED, PERMISSION_DENIED

WRITE_DENIED = "permission denied for write operation"
INVALID_ACL = "invalid acl"
INVALID_PATH = "invalid path"

# ACL parses running at once on worker threads, relay-wide. Each is bounded (milliseconds for
# a real file, a few tenths of a second for the worst allowed one) and holds the GIL in turns
# with the event loop, so a small number keeps the loop responsive while many users upload.
MAX_ACL_PARSES = 2


@dataclass(frozen=True)
class ACLUpload:
    """An ACL FileWrite that passed the cheap checks; :meth:`FileHandler.load_acl` parses it."""

    conn: ConnId
    user: str
    message: Message
    path: str  # normalised
    text: str


def hash_principal(principal: str) -> str:
    """``public`` for ``*``, else hex of the first 8 bytes of SHA-256 (PROTOCOL.md §1.9)."""
    if principal == "*":
        return "public"
    return hashlib.sha256(principal.encode("utf-8")).hexdigest()[:16]


class FileHandler:
    """A loaded ACL file's broadcast is answered as one :class:`FanOut` instead of a send
    per connection (the relay queues it once for everyone, see :mod:`.fanout`)."""

    def __init__(self, acls: ACLStore, connections: ConnectionTable) -> None:
        self.acls = acls
        self.connections = connections
        self._parse_slots = asyncio.Semaphore(MAX_ACL_PARSES)

    def handle(self, conn: ConnId, message: Message) -> Outcome | ACLUpload:
        """Decide on one file message; an ACL FileWrite to parse comes back as an
        :class:`ACLUpload` for :meth:`load_acl`."""
        user = self.connections.user(conn)
        if user is None:
            return Outcome().refuse(IGNORED, "message from a connection that is already gone")
        payload = message.payload
        if isinstance(payload, FileWrite):
            return self._write(conn, user, message, payload)
        if isinstance(payload, FileDelete):
            return self._delete(user, payload)
        if isinstance(payload, ACLManifest):
            return self._manifest(conn, user, message, payload)
        return Outcome().refuse(IGNORED, f"unhandled {message.typ.name} message")

    def _write(
        self, conn: ConnId, user: str, message: Message, p: FileWrite
    ) -> Outcome | ACLUpload:
        out = Outcome()
        try:
            path = normalize_path(p.pth)
        except ProtocolError as exc:
            out.send(conn, Message.new(Nack(oid=message.id, err=f"invalid path: {exc}")))
            return out.refuse(INVALID_PATH, f"file write: {exc}")
        if is_acl_path(path):
            return self._write_acl(conn, user, message, p, path)
        if not self.acls.can_access(path, user, Access.WRITE):
            return self._denied(
                out, conn, message, p.pth, f"{user} may not write {short_path(path)}"
            )
        out.send(conn, Message.new(Ack(oid=message.id)))
        for peer in self._readers(path, user):
            out.send(peer, message, broadcast=True)
        out.detail = (
            f"file write {short_path(path)} ({len(p.con)} bytes) "
            f"sent to {len(out.sends) - 1} conn(s)"
        )
        return out

    def _readers(self, path: str, user: str) -> list[ConnId]:
        """The connections of every other user who may read ``path``, in connection order:
        only those of the users its rule names when it names them all."""
        named = self.acls.readers_of(path)
        if named is not None:
            peers: list[ConnId] = []
            for reader in named:
                if reader != user and self.acls.can_access(path, reader, Access.READ):
                    peers += self.connections.of_user(reader)
            return self.connections.in_order(peers)
        peers = []
        readable: dict[str, bool] = {}
        for peer, peer_user in self.connections.items():
            if peer_user == user:
                continue
            if peer_user not in readable:
                readable[peer_user] = self.acls.can_access(path, peer_user, Access.READ)
            if readable[peer_user]:
                peers.append(peer)
        return peers

    def _write_acl(
        self, conn: ConnId, user: str, message: Message, p: FileWrite, path: str
    ) -> Outcome | ACLUpload:
        owner = owner_of(path)
        if owner != user:
            shown = short_path(owner, 60)
            return self._denied(
                Outcome(),
                conn,
                message,
                p.pth,
                f"{user} may not change ACL files of {shown}",
                nack=f"permission denied: only {shown} may change ACL files under {shown}/",
            )
        # Size first: nothing else is done with an oversized file, not even decoding it.
        if len(p.con) > MAX_ACL_BYTES:
            return self._acl_refused(
                conn, message, f"{short_path(path)}: larger than {MAX_ACL_BYTES} bytes"
            )
        try:
            text = p.con.decode("utf-8")
            self.acls.check(path)
        except (UnicodeDecodeError, ACLError) as exc:
            reason = str(exc) if isinstance(exc, ACLError) else f"{short_path(path)}: not UTF-8"
            return self._acl_refused(conn, message, reason)
        return ACLUpload(conn, user, message, path, text)

    async def load_acl(self, upload: ACLUpload) -> Outcome:
        """Parse and compile an upload on a worker thread, then load it and answer.

        Awaited by the uploading connection's read loop; cancelling it (the connection
        closed) leaves the thread to finish its bounded work and loads nothing.
        """
        try:
            await self.install(upload.path, upload.text)
        except ACLError as exc:
            return self._acl_refused(upload.conn, upload.message, str(exc))
        out = Outcome()
        out.send(upload.conn, Message.new(Ack(oid=upload.message.id)))
        # ACL files go to every other user unchecked, as in the reference: clients need them
        # to know what they may send.
        out.fan_out = FanOut(upload.message, upload.user)
        out.detail = f"loaded ACL file {short_path(upload.path)}"
        return out

    async def install(self, path: str, text: str) -> None:
        """Parse the ACL file ``text`` at ``path`` (normalised) on a worker thread and load
        it; :class:`ACLError` if it does not parse or does not fit. Also for files another
        relay replica loaded."""
        # A client re-publishes all its ACL files on every (re)connect; one the store holds
        # already, word for word, changes nothing and is not parsed again.
        if self.acls.holds(path, text):
            return
        async with self._parse_slots:
            compiled = await asyncio.to_thread(prepare_acl, text, path)
        self.acls.install(path, compiled, text)

    def _acl_refused(self, conn: ConnId, message: Message, reason: str) -> Outcome:
        out = Outcome()
        out.send(conn, Message.new(Nack(oid=message.id, err=reason)))
        return out.refuse(INVALID_ACL, f"ACL file not loaded: {reason}")

    def _denied(
        self,
        out: Outcome,
        conn: ConnId,
        message: Message,
        raw_path: str,
        detail: str,
        *,
        nack: str = WRITE_DENIED,
    ) -> Outcome:
        out.sends.append(error_reply(conn, 403, WRITE_DENIED, path=raw_path))
        out.send(conn, Message.new(Nack(oid=message.id, err=nack)))
        return out.refuse(PERMISSION_DENIED, f"file write refused: {detail}")

    def _delete(self, user: str, p: FileDelete) -> Outcome:
        out = Outcome()
        try:
            path = normalize_path(p.pth)
        except ProtocolError as exc:
            return out.refuse(INVALID_PATH, f"file delete: {exc}")
        if is_acl_path(path) and owner_of(path) == user:
            if self.acls.remove(path):
                out.detail = f"removed ACL file {short_path(path)}"
            return out
        return out.refuse(IGNORED, f"file delete {short_path(path)}: the relay stores no files")

    def _manifest(self, conn: ConnId, user: str, message: Message, p: ACLManifest) -> Outcome:
        out = Outcome()
        if p.datasite != user:
            return out.refuse(
                PERMISSION_DENIED,
                f"ACL manifest for {short_path(p.datasite, 60)!r} from {user}: dropped",
            )
        for peer, peer_user in self.connections.items():
            if peer_user == user:
                continue
            if p.for_hash == "public" or hash_principal(peer_user) == p.for_hash:
                out.send(peer, message, broadcast=True)
        return out
