"""A client's long-term identity key (Ed25519) and the fingerprint users compare.

The key signs each session's ephemeral key exchange (:mod:`.handshake`), so a peer that has
pinned it (:mod:`.pins`) notices a relay that swaps the exchange. The fingerprint is what
``hotlink status`` shows and what the ``e2e_peers`` setting lists: the first 128 bits of the
SHA-256 of the raw public key, as 32 hex digits in groups of four (``3f2a-91c0-...``).
"""

from __future__ import annotations

import hashlib
import string

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import E2EError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
FINGERPRINT_DIGITS = 32
_HEX = frozenset(string.hexdigits)
_SEPARATORS = frozenset(" -:")


def fingerprint(public: bytes) -> str:
    """The displayed fingerprint of a raw Ed25519 public key."""
    digits = hashlib.sha256(public).hexdigest()[:FINGERPRINT_DIGITS]
    return "-".join(digits[i : i + 4] for i in range(0, FINGERPRINT_DIGITS, 4))


def normalize_fingerprint(text: str) -> str:
    """``text`` in the displayed form; spaces, colons and dashes anywhere, any case.

    Raises ValueError for anything but 32 hex digits (a typo must not pin nothing)."""
    digits = "".join(c for c in text.strip() if c not in _SEPARATORS).lower()
    if len(digits) != FINGERPRINT_DIGITS or not set(digits) <= _HEX:
        raise ValueError(
            f"a key fingerprint is {FINGERPRINT_DIGITS} hex digits (as `hotlink status` shows "
            f"it), got {text!r}"
        )
    return "-".join(digits[i : i + 4] for i in range(0, FINGERPRINT_DIGITS, 4))


class Identity:
    """The private identity key of this client."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.fingerprint = fingerprint(self.public)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> Identity:
        """Raises ValueError when ``data`` is not an unencrypted Ed25519 PKCS#8 key."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"not an Ed25519 key but {type(key).__name__}")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def verify(public: bytes, signature: bytes, data: bytes) -> None:
    """Raises E2EError unless ``signature`` is ``public``'s over ``data``."""
    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise E2EError("malformed identity key or signature")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except InvalidSignature:
        raise E2EError("the key exchange's signature does not verify") from None
