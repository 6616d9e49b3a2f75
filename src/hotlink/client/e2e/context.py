"""What every session's end-to-end state shares: the mode, our identity, the pins.

The manager asks :class:`E2EContext` for each new session's :class:`E2ESession` (or None
when the session goes without); sessions hand back what it must keep (new pins) and report
plaintext, which is logged once per peer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...protocol.e2e.handshake import SessionParams
from ...protocol.e2e.identity import Identity
from ...protocol.e2e.pins import parse_expected
from ...protocol.e2e.session import E2ESession
from ...settings import ClientSettings, E2EMode
from ..session.outbound import HELLO_WAIT
from .keystore import PinFile, load_identity

log = logging.getLogger("hotlink.e2e")


class E2EContext:
    def __init__(
        self,
        *,
        mode: E2EMode,
        identity: Identity,
        pins: PinFile,
        hello_wait: float = HELLO_WAIT,
    ) -> None:
        self.mode: E2EMode = mode
        self.identity = identity
        self.pins = pins
        self.hello_wait = hello_wait
        self._warned: set[str] = set()

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> E2EContext | None:
        """None when sealing is off. Raises KeyFileError (bad key files) or ValueError."""
        if settings.e2e == "off":
            return None
        data_dir = Path(settings.data_dir)
        return cls(
            mode=settings.e2e,
            identity=load_identity(data_dir),
            pins=PinFile(data_dir, parse_expected(settings.e2e_peers)),
        )

    @property
    def required(self) -> bool:
        return self.mode == "required"

    def outbound(self, sid: str, path: str, local: str, to: str) -> E2ESession | None:
        """The state of a session we open to ``to``; None without a named peer (the relay
        sends such an Open to everyone who may read the path, so there is no one peer to
        exchange keys with)."""
        if not to or to == local:
            return None
        return self._session("opener", SessionParams(sid, path, _norm(local), _norm(to)), to)

    def inbound(self, sid: str, path: str, opener: str, to: str, local: str) -> E2ESession:
        """The state of a session ``opener`` opened to us (``to``: whom its Open named)."""
        params = SessionParams(sid, path, _norm(opener), _norm(local))
        session = self._session("acceptor", params, opener)
        if not to:
            # A broadcast Open: the opener seals nothing (see outbound), whoever it is.
            session.refuse_plaintext = self.required
        return session

    def _session(self, role: str, params: SessionParams, peer: str) -> E2ESession:
        book = self.pins.book()
        return E2ESession(
            role="opener" if role == "opener" else "acceptor",
            params=params,
            identity=self.identity,
            pins=book,
            refuse_plaintext=self.required or book.knows(peer),
        )

    def sealed(self, session: E2ESession) -> None:
        """``session`` completed its exchange: keep a new pin."""
        book = self.pins.book()
        if session.pins is not book and session.pins.dirty:
            # The file changed meanwhile: carry the new pin over to the current book.
            book.pin(session.peer_email, session.peer_fingerprint)
        self.pins.save()  # writes only a book with new pins

    def warn_plaintext(self, peer: str, sid: str, why: str) -> None:
        """One WARNING per peer: its sessions are not sealed."""
        who = peer or "every reader of its path (no named peer)"
        if peer in self._warned:
            log.info(
                "hotlink session %s with %s is not end-to-end encrypted: %s", sid[:8], who, why
            )
            return
        self._warned.add(peer)
        log.warning(
            "hotlink session %s with %s is NOT end-to-end encrypted (the relay can read it): %s. "
            "Further such sessions with them are logged at INFO.",
            sid[:8],
            who,
            why,
        )


def _norm(email: str) -> str:
    return email.strip().lower()
