"""The key exchange that opens a sealed session, carried in ``e2e_hello`` signals.

Each side makes a fresh X25519 key for the session and sends one ``e2e_hello``::

    HotlinkSignal{sid, knd: "e2e_hello", tok: '{"v":1,"eph":"<b64>","id":"<b64>","sig":"<b64>"}'}

``sig`` is its identity key's (:mod:`.identity`) signature over the session id, the session
path, both emails (opener and acceptor), its role, its ephemeral key and its identity key.
So a hello is good for one session, one direction of the pair and one signer: a relay
cannot replay it into another session, reflect it, or pass it off as someone else's, and a
relay that swaps the ephemeral keys (a middleman) must also forge a signature by a key the
peer pinned (:mod:`.pins`).

The keys come from HKDF-SHA256 over the X25519 secret, salted with the hash of both signed
hellos: four 256-bit keys, data and binding, one per direction. Both ephemeral keys are
fresh, so keys never repeat across sessions (frames of an old session do not open in a new
one) and a stolen identity key does not open recorded sessions (forward secrecy).

Plaintext by choice is not negotiated here: a peer that sends no hello (a reference client,
or ``SYFTBOX_HOTLINK_E2E=0``) is one that does not seal (:mod:`.session` decides what that
is allowed to mean).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import E2EError
from .identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, fingerprint, verify

E2E_HELLO = "e2e_hello"
E2E_VERSION = 1
# A hello is about 200 characters; anything much longer is not a peer's.
MAX_HELLO_TOKEN = 1024
KEY_SIZE = 32

Role = Literal["opener", "acceptor"]
_HELLO_LABEL = b"hotlink-e2e-hello-v1"
_KEYS_INFO = b"hotlink-e2e-v1 keys"


@dataclass(frozen=True, slots=True)
class SessionParams:
    """What both sides agree the session is: signed into every hello."""

    sid: str
    path: str
    opener: str  # the opener's email (the Open's frm)
    acceptor: str  # the acceptor's email (the Open's to)

    def email_of(self, role: Role) -> str:
        return self.opener if role == "opener" else self.acceptor


@dataclass(frozen=True, slots=True)
class Hello:
    eph: bytes  # X25519 public key for this session
    identity: bytes  # Ed25519 public key of the signer
    sig: bytes

    def token(self) -> str:
        return json.dumps(
            {
                "v": E2E_VERSION,
                "eph": _b64(self.eph),
                "id": _b64(self.identity),
                "sig": _b64(self.sig),
            },
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, token: str) -> Hello:
        """Raises E2EError for anything but a version-1 hello of the right sizes."""
        if len(token) > MAX_HELLO_TOKEN:
            raise E2EError(f"an e2e_hello of {len(token)} characters is not a peer's")
        try:
            doc = json.loads(token)
        except ValueError:
            raise E2EError("the e2e_hello is not JSON") from None
        if not isinstance(doc, dict) or doc.get("v") != E2E_VERSION:
            raise E2EError("the e2e_hello has another version")
        hello = cls(_unb64(doc.get("eph")), _unb64(doc.get("id")), _unb64(doc.get("sig")))
        if (
            len(hello.eph) != PUBLIC_KEY_SIZE
            or len(hello.identity) != PUBLIC_KEY_SIZE
            or len(hello.sig) != SIGNATURE_SIZE
        ):
            raise E2EError("the e2e_hello's keys have the wrong size")
        return hello


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """What one side holds after the exchange."""

    role: Role
    send_data: bytes
    recv_data: bytes
    send_bind: bytes
    recv_bind: bytes
    peer_identity: bytes

    @property
    def peer_fingerprint(self) -> str:
        return fingerprint(self.peer_identity)


class Handshake:
    """One side of one session's exchange: :meth:`hello` to send, :meth:`complete` with the
    peer's hello."""

    def __init__(self, params: SessionParams, role: Role, identity: Identity) -> None:
        self.params = params
        self.role: Role = role
        self.identity = identity
        self._eph = X25519PrivateKey.generate()
        eph_public = self._eph.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        signed = hello_transcript(params, role, eph_public, identity.public)
        self.hello = Hello(eph_public, identity.public, identity.sign(signed))

    def complete(self, peer: Hello) -> SessionKeys:
        """Verify the peer's hello (signed by its identity, for this session and the other
        role) and derive the keys. Raises E2EError; the caller checks the peer's identity
        against its pins."""
        peer_role: Role = "acceptor" if self.role == "opener" else "opener"
        peer_signed = hello_transcript(self.params, peer_role, peer.eph, peer.identity)
        verify(peer.identity, peer.sig, peer_signed)
        if peer.eph == self.hello.eph:
            raise E2EError("the peer's e2e_hello repeats our own key (a reflection)")
        try:
            shared = self._eph.exchange(X25519PublicKey.from_public_bytes(peer.eph))
        except ValueError:
            raise E2EError("the peer's ephemeral key is not usable (low order)") from None
        own_signed = hello_transcript(self.params, self.role, self.hello.eph, self.identity.public)
        parts = (own_signed, peer_signed) if self.role == "opener" else (peer_signed, own_signed)
        salt = hashlib.sha256(_frame(*parts)).digest()
        okm = HKDF(hashes.SHA256(), 4 * KEY_SIZE, salt, _KEYS_INFO).derive(shared)
        o2a_data, a2o_data, o2a_bind, a2o_bind = (
            okm[i : i + KEY_SIZE] for i in range(0, 4 * KEY_SIZE, KEY_SIZE)
        )
        if self.role == "opener":
            return SessionKeys("opener", o2a_data, a2o_data, o2a_bind, a2o_bind, peer.identity)
        return SessionKeys("acceptor", a2o_data, o2a_data, a2o_bind, o2a_bind, peer.identity)


def hello_transcript(params: SessionParams, role: Role, eph: bytes, identity: bytes) -> bytes:
    """The bytes a hello's signature covers (each field length-prefixed: unambiguous)."""
    return _frame(
        _HELLO_LABEL,
        params.sid.encode(),
        params.path.encode(),
        params.opener.encode(),
        params.acceptor.encode(),
        role.encode(),
        eph,
        identity,
    )


def _frame(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(value: object) -> bytes:
    if not isinstance(value, str) or len(value) > MAX_HELLO_TOKEN:
        raise E2EError("the e2e_hello has a missing or malformed field")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise E2EError("the e2e_hello has a field that is not base64") from None
