"""Which identity key each peer is trusted with: pinned on first use, or listed by the user.

A peer's key is pinned the first time a session with it completes an exchange (trust on
first use, as SSH does). From then on a different key is refused loudly until the user
accepts it (``hotlink e2e trust``). Keys the user lists (the ``e2e_peers`` setting) win over
pins: a peer listed there must present one of its listed keys, from the first session on.

A peer with a pin or a listed key is known to seal; a session with it that arrives without a
key exchange is refused (:mod:`.session`), so a relay cannot downgrade it to plaintext by
dropping the hellos.

Pure: the client loads and saves the book (``client/e2e/keystore.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import Enum

from .errors import E2EError
from .identity import normalize_fingerprint


class Verdict(Enum):
    NEW = "new"  # first key seen for this peer: pinned now
    PINNED = "pinned"  # the key pinned before
    LISTED = "listed"  # a key the user listed for this peer


def peer_key(email: str) -> str:
    return email.strip().lower()


class PinBook:
    def __init__(
        self,
        pins: Mapping[str, str] | None = None,
        expected: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.pins: dict[str, str] = {peer_key(e): fp for e, fp in (pins or {}).items()}
        self.expected = {peer_key(e): fps for e, fps in (expected or {}).items()}
        self.dirty = False  # pins changed since the last save

    def knows(self, email: str) -> bool:
        """The peer has shown (or is listed with) a key: it seals."""
        key = peer_key(email)
        return key in self.pins or key in self.expected

    def admit(self, email: str, fingerprint: str) -> Verdict:
        """May ``email`` use the key ``fingerprint``? Raises E2EError when not."""
        key = peer_key(email)
        listed = self.expected.get(key)
        if listed is not None:
            if fingerprint not in listed:
                raise E2EError(
                    f"{email} presented key {fingerprint}, which is not one of the keys the "
                    "e2e_peers setting lists for it: refusing the session (a middleman?)"
                )
            return Verdict.LISTED
        pinned = self.pins.get(key)
        if pinned is None:
            self.pin(email, fingerprint)
            return Verdict.NEW
        if pinned != fingerprint:
            raise E2EError(
                f"{email} presented key {fingerprint} but {pinned} is pinned for it: refusing "
                "the session (a middleman, or a reinstalled peer: compare fingerprints with "
                f"them, then `hotlink e2e trust {email} {fingerprint}`)"
            )
        return Verdict.PINNED

    def pin(self, email: str, fingerprint: str) -> None:
        self.pins[peer_key(email)] = normalize_fingerprint(fingerprint)
        self.dirty = True

    def forget(self, email: str) -> bool:
        found = self.pins.pop(peer_key(email), None) is not None
        self.dirty = self.dirty or found
        return found

    def to_json(self) -> str:
        return json.dumps({"version": 1, "peers": dict(sorted(self.pins.items()))}, indent=2)

    @classmethod
    def from_json(cls, text: str, expected: Mapping[str, frozenset[str]] | None = None) -> PinBook:
        """Raises ValueError for a file that is not a pin book (it is never guessed at)."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("not a version-1 pin book")
        peers = doc.get("peers")
        if not isinstance(peers, dict):
            raise ValueError("not a version-1 pin book")
        pins: dict[str, str] = {}
        for email, fp in peers.items():
            if not isinstance(email, str) or not isinstance(fp, str):
                raise ValueError(f"bad entry {email!r}")
            pins[email] = normalize_fingerprint(fp)
        return cls(pins, expected)


def parse_expected(text: str) -> dict[str, frozenset[str]]:
    """The ``e2e_peers`` setting: ``email=fingerprint`` entries separated by commas (an email
    may appear more than once, for several keys). Raises ValueError."""
    out: dict[str, set[str]] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        email, sep, fp = entry.partition("=")
        if not sep or "@" not in email:
            raise ValueError(f"expected email=fingerprint, got {entry!r}")
        out.setdefault(peer_key(email), set()).add(normalize_fingerprint(fp))
    return {email: frozenset(fps) for email, fps in out.items()}
