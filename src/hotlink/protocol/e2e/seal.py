"""Sealing hotlink frames with the session's keys (AES-256-GCM from ``cryptography``).

A sealed frame keeps its seq and path in the clear (the relay routes by the session, and
the receiver's reorder buffer by the seq) and carries in its payload::

    AES-GCM(key, nonce = direction (1 byte) | 3 zero bytes | seq (u64),
            plaintext = kind (1 byte) | etag length (u16) | etag | payload,
            associated data = label | sid | path | seq)

and ``etg = "e2e1"`` on the wire, which marks it sealed. The nonce follows from the direction
and the seq alone, so the resend of a frame over the other path is the same sealed bytes, a
duplicate stays harmless, and a seq is never sealed twice with different bytes under one
key (keys are fresh per session, :mod:`.handshake`). The path and seq are authenticated:
moving a frame to another seq or session fails to open.

The sender ends a sealed stream with a **fin** frame (kind 1, no payload) at the seq after
its last data frame, before Close ``eof``: the Close itself is not sealed, so without the fin
a relay could end the stream early and the app would read a clean EOF after a prefix.

The DTLS fingerprints of the data channel are bound the same way (:func:`seal_binding`), so
the peer-to-peer path has the same middleman check as the exchange.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..frames import Frame
from .errors import E2EError

SEALED_ETAG = "e2e1"
TAG_SIZE = 16
KIND_DATA = 0
KIND_FIN = 1
OPENER_TO_ACCEPTOR = 1
ACCEPTOR_TO_OPENER = 2
_INNER = struct.Struct(">BH")
_NONCE = struct.Struct(">B3xQ")
_SEQ = struct.Struct(">Q")
_AAD_LABEL = b"hotlink-e2e-frame-v1"
_BIND_LABEL = b"hotlink-e2e-dtls-v1"
# What sealing adds to a frame: the inner header, the tag, and the wire etag marker.
SEAL_OVERHEAD = _INNER.size + TAG_SIZE + len(SEALED_ETAG)
MAX_BINDING_TOKEN = 4096


def is_sealed(frame: Frame) -> bool:
    return frame.etag == SEALED_ETAG


class _Aad:
    """The associated data of one session's frames: ``label | sid | path | seq``, each
    length-prefixed; the part before the seq is kept for the last path seen (a stream's
    frames nearly always share one), since small frames are sealed at a high rate."""

    def __init__(self, sid: str) -> None:
        sid_b = sid.encode()
        self._head = _AAD_LABEL + struct.pack(">H", len(sid_b)) + sid_b
        self._path = ""
        self._prefix = self._with_path("")

    def _with_path(self, path: str) -> bytes:
        path_b = path.encode()
        return self._head + struct.pack(">I", len(path_b)) + path_b

    def __call__(self, path: str, seq: int) -> bytes:
        if path != self._path:
            self._path, self._prefix = path, self._with_path(path)
        return self._prefix + _SEQ.pack(seq)


@dataclass(frozen=True, slots=True)
class Opened:
    """A frame that opened: ``fin`` or the original frame (its etag restored)."""

    frame: Frame
    fin: bool


class FrameSealer:
    """Seals one direction of one session."""

    def __init__(self, key: bytes, direction: int, sid: str) -> None:
        self._aead = AESGCM(key)
        self._aad = _Aad(sid)
        self.direction = direction
        self.sid = sid

    def seal(self, frame: Frame) -> Frame:
        etag = frame.etag.encode()
        inner = b"".join((_INNER.pack(KIND_DATA, len(etag)), etag, frame.payload))
        return self._sealed(frame.seq, frame.path, inner)

    def fin(self, seq: int, path: str) -> Frame:
        return self._sealed(seq, path, _INNER.pack(KIND_FIN, 0))

    def _sealed(self, seq: int, path: str, inner: bytes) -> Frame:
        nonce = _NONCE.pack(self.direction, seq)
        sealed = self._aead.encrypt(nonce, inner, self._aad(path, seq))
        return Frame(path, SEALED_ETAG, seq, sealed)


class FrameOpener:
    """Opens one direction of one session; anything that does not open raises E2EError."""

    def __init__(self, key: bytes, direction: int, sid: str) -> None:
        self._aead = AESGCM(key)
        self._aad = _Aad(sid)
        self.direction = direction
        self.sid = sid

    def open(self, frame: Frame) -> Opened:
        if not is_sealed(frame):
            raise E2EError(f"frame seq {frame.seq} is not sealed")
        nonce = _NONCE.pack(self.direction, frame.seq)
        try:
            inner = self._aead.decrypt(nonce, frame.payload, self._aad(frame.path, frame.seq))
        except InvalidTag:
            raise E2EError(
                f"frame seq {frame.seq} failed authentication (forged or damaged)"
            ) from None
        if len(inner) < _INNER.size:
            raise E2EError(f"frame seq {frame.seq} is sealed but empty")
        kind, etag_len = _INNER.unpack_from(inner)
        body = memoryview(inner)[_INNER.size :]
        if kind == KIND_FIN and etag_len == 0 and not body:
            return Opened(Frame(frame.path, "", frame.seq, b""), fin=True)
        if kind != KIND_DATA or etag_len > len(body):
            raise E2EError(f"frame seq {frame.seq} has a sealed header we do not know")
        try:
            etag = str(body[:etag_len], "utf-8")
        except UnicodeDecodeError:
            raise E2EError(f"frame seq {frame.seq} has a sealed etag that is not UTF-8") from None
        return Opened(Frame(frame.path, etag, frame.seq, bytes(body[etag_len:])), fin=False)


def seal_binding(key: bytes, sid: str, fingerprints: tuple[str, ...]) -> str:
    """The token of an ``e2e_dtls`` signal: our DTLS fingerprints, sealed with our binding
    key. Each binding key seals exactly one message, so the fixed nonce is never reused with
    other bytes (the caller sends one list per session)."""
    data = json.dumps(sorted(fingerprints)).encode()
    sealed = AESGCM(key).encrypt(bytes(12), data, _BIND_LABEL + sid.encode())
    return base64.urlsafe_b64encode(sealed).decode("ascii")


def open_binding(key: bytes, sid: str, token: str) -> tuple[str, ...]:
    """The peer's DTLS fingerprints from its ``e2e_dtls`` token; raises E2EError."""
    if len(token) > MAX_BINDING_TOKEN:
        raise E2EError(f"an e2e_dtls of {len(token)} characters is not a peer's")
    try:
        sealed = base64.urlsafe_b64decode(token)
        data = AESGCM(key).decrypt(bytes(12), sealed, _BIND_LABEL + sid.encode())
        doc = json.loads(data)
    except InvalidTag:
        raise E2EError("the peer's DTLS fingerprint binding failed authentication") from None
    except (binascii.Error, ValueError):
        raise E2EError("the peer's DTLS fingerprint binding is malformed") from None
    if not isinstance(doc, list) or not all(isinstance(f, str) for f in doc):
        raise E2EError("the peer's DTLS fingerprint binding is malformed")
    return tuple(doc)
