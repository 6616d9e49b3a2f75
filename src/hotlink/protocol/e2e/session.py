"""One hotlink session's end-to-end state: pending, then sealed or plaintext, for good.

Both sides send an ``e2e_hello`` (:mod:`.handshake`) when the session is accepted: the
acceptor right behind its Accept, the opener when the Accept arrives. The opener starts
sending once the acceptor's hello is here (sealed) or did not come in time (plaintext: the
acceptor is a reference client or has it off). The acceptor follows what arrives: sealed
frames once it has the opener's hello, plaintext frames otherwise.

Plaintext is refused, and the session closes loudly, when the peer is known to seal (it
has a pin or a listed key, :mod:`.pins`) or the user requires sealing: a relay that drops
the hellos to read the stream gets a closed session instead. A session that has sealed
never goes back to plaintext, nor the other way round.

The DTLS binding (:func:`~.seal.seal_binding`) ties the data channel to the same exchange:
each side sends its own fingerprints sealed under its binding key, once it has both, and
checks the peer's against the fingerprints in the peer's SDP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..frames import Frame
from .errors import E2EError
from .handshake import Handshake, Hello, Role, SessionKeys, SessionParams
from .identity import Identity
from .pins import PinBook, Verdict
from .seal import (
    ACCEPTOR_TO_OPENER,
    OPENER_TO_ACCEPTOR,
    FrameOpener,
    FrameSealer,
    Opened,
    is_sealed,
    open_binding,
    seal_binding,
)

E2E_DTLS = "e2e_dtls"
State = Literal["pending", "sealed", "plaintext"]


@dataclass(slots=True)
class _Binding:
    local: tuple[str, ...] | None = None  # our DTLS fingerprints (from our SDP)
    remote: tuple[str, ...] | None = None  # the peer's, from its SDP
    peer_token: str | None = None  # the peer's e2e_dtls
    sent: bool = False
    verified: bool = False
    outbox: list[str] = field(default_factory=list)


class E2ESession:
    """The end-to-end state of one session (either role)."""

    def __init__(
        self,
        *,
        role: Role,
        params: SessionParams,
        identity: Identity,
        pins: PinBook,
        refuse_plaintext: bool,
    ) -> None:
        self.role: Role = role
        self.params = params
        self.handshake = Handshake(params, role, identity)
        self.pins = pins
        # Required by the user, or the peer is known to seal: plaintext means a downgrade.
        self.refuse_plaintext = refuse_plaintext
        self.state: State = "pending"
        self.keys: SessionKeys | None = None
        # The key the peer proved in its hello, kept even when the pins refused it.
        self._presented = ""
        self.verdict: Verdict | None = None
        self.plaintext_reason = ""
        self.fin_seq: int | None = None
        self._peer_hello = ""
        self._sealer: FrameSealer | None = None
        self._opener: FrameOpener | None = None
        self._binding = _Binding()

    @property
    def peer_email(self) -> str:
        return self.params.acceptor if self.role == "opener" else self.params.opener

    @property
    def peer_fingerprint(self) -> str:
        """The peer's identity key as its hello proved it ("" before one); on a session the
        pins refused, the refused key (the one to compare out of band)."""
        return self._presented

    @property
    def sealed(self) -> bool:
        return self.state == "sealed"

    def hello_token(self) -> str:
        return self.handshake.hello.token()

    # ------------------------------------------------------------ the exchange

    def on_hello(self, token: str) -> bool:
        """The peer's ``e2e_hello``. True when it sealed the session now (False: a repeat of
        the hello we have). Raises E2EError: the session must close."""
        if self.state == "sealed":
            if token == self._peer_hello:
                return False
            raise E2EError("a second, different key exchange for the session")
        if self.state == "plaintext":
            raise E2EError(
                "a key exchange arrived after the stream had started in plaintext "
                f"({self.plaintext_reason})"
            )
        keys = self.handshake.complete(Hello.parse(token))
        self._presented = keys.peer_fingerprint
        self.verdict = self.pins.admit(self.peer_email, keys.peer_fingerprint)
        self.keys = keys
        self._peer_hello = token
        out, into = (
            (OPENER_TO_ACCEPTOR, ACCEPTOR_TO_OPENER)
            if self.role == "opener"
            else (ACCEPTOR_TO_OPENER, OPENER_TO_ACCEPTOR)
        )
        self._sealer = FrameSealer(keys.send_data, out, self.params.sid)
        self._opener = FrameOpener(keys.recv_data, into, self.params.sid)
        self.state = "sealed"
        self._advance_binding()
        return True

    def go_plaintext(self, why: str) -> None:
        """No exchange: the session carries plaintext. Raises E2EError when it must not."""
        if self.state == "plaintext":
            return
        if self.state == "sealed":
            raise E2EError(f"plaintext on a sealed session ({why})")
        if self.refuse_plaintext:
            known = self.pins.knows(self.peer_email)
            raise E2EError(
                f"{why}, but "
                + (
                    f"{self.peer_email or 'the peer'} has sealed before (a pinned or listed "
                    "key): refusing plaintext (a relay dropping the key exchange?)"
                    if known
                    else "end-to-end encryption is required (SYFTBOX_HOTLINK_E2E=required)"
                )
            )
        self.state = "plaintext"
        self.plaintext_reason = why

    # ------------------------------------------------------------ frames

    def seal(self, frame: Frame) -> Frame:
        """The frame as it goes on either path (unchanged when not sealed)."""
        return self._sealer.seal(frame) if self._sealer is not None else frame

    def fin(self, seq: int, path: str) -> Frame:
        """The sealed end of the stream, at ``seq`` (after the last data frame)."""
        assert self._sealer is not None, "fin on a session that is not sealed"
        return self._sealer.fin(seq, path)

    def needs_keys(self, frame: Frame) -> bool:
        """A sealed frame that came before the peer's hello: hold it until the hello."""
        return self.state == "pending" and is_sealed(frame)

    def open(self, frame: Frame) -> Opened:
        """A received frame as the app may see it; raises E2EError (the session must close,
        and nothing of the frame reaches the app)."""
        if self._opener is not None:
            opened = self._opener.open(frame)
            if self.fin_seq is not None and frame.seq >= self.fin_seq:
                raise E2EError(f"frame seq {frame.seq} after the sealed end at {self.fin_seq}")
            if opened.fin:
                self.fin_seq = frame.seq
            return opened
        if is_sealed(frame):
            raise E2EError(f"a sealed frame (seq {frame.seq}) on a plaintext session")
        self.go_plaintext("the peer sends plaintext")
        return Opened(frame, fin=False)

    def check_end(self, last_seq: int) -> None:
        """The peer's Close ``eof:last_seq`` after everything up to it was released: on a
        sealed session that must be the sealed end; a stream that ends without any frame or
        exchange was plaintext (a sealed one always has its fin). Raises E2EError."""
        if self.state == "pending":
            self.go_plaintext("the stream ended without a key exchange")
        if self.state == "sealed" and self.fin_seq != last_seq:
            raise E2EError(
                f"the stream's end (eof at seq {last_seq}) is not the sender's sealed end: "
                "it was cut short on the way"
            )

    # ------------------------------------------------------------ the DTLS binding

    def bind_local(self, fingerprints: tuple[str, ...]) -> None:
        """Our DTLS fingerprints, from the SDP we made."""
        if self._binding.local is None:
            self._binding.local = fingerprints
            self._advance_binding()

    def bind_remote(self, fingerprints: tuple[str, ...]) -> None:
        """The peer's DTLS fingerprints, from its SDP. Raises E2EError on a mismatch."""
        if self._binding.remote is None:
            self._binding.remote = fingerprints
            self._advance_binding()

    def on_binding(self, token: str) -> None:
        """The peer's ``e2e_dtls``. Raises E2EError."""
        if self._binding.peer_token is None:
            self._binding.peer_token = token
            self._advance_binding()

    def take_binding(self) -> str | None:
        """Our ``e2e_dtls`` token, once, when it can be made (keys and our SDP)."""
        return self._binding.outbox.pop() if self._binding.outbox else None

    @property
    def dtls_verified(self) -> bool:
        """The peer's DTLS fingerprints are bound to the exchange (sealed sessions only)."""
        return self._binding.verified

    def _advance_binding(self) -> None:
        b, keys = self._binding, self.keys
        if keys is None:
            return
        if b.local is not None and not b.sent:
            b.sent = True
            b.outbox.append(seal_binding(keys.send_bind, self.params.sid, b.local))
        if b.remote is not None and b.peer_token is not None and not b.verified:
            bound = open_binding(keys.recv_bind, self.params.sid, b.peer_token)
            if set(bound) != set(b.remote):
                raise E2EError(
                    "the data channel's DTLS fingerprint is not the one the peer bound to the "
                    "key exchange: a middleman on the peer-to-peer path"
                )
            b.verified = True
