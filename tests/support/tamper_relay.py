"""An active relay for end-to-end tests: a WebSocket man-in-the-middle in front of the real
relay that rewrites hotlink messages on their way to a client.

    with tamper_relay_thread(server.url) as relay:         # its own thread and event loop
        tunnel = start_tunnel(relay.url, tmp_path, env=...)  # clients connect through it
        relay.tamper = FlipBit(sid, nth=3)                  # the test picks the attack
        relay.session_records(), relay.client_data(sid)     # what went through

Clients connect to ``relay.url`` as if it were the server (:mod:`support.ws_mitm`). What a
client sends goes to the server unchanged (its
``HotlinkData`` is recorded, so a test can say which bytes left a client); what the server
sends a client is decoded (:mod:`hotlink.protocol.codec`, msgpack or JSON, binary or text)
and, for a session the relay saw opened, handed to the current :class:`Tamper`:

* :class:`FlipBit`: flip one bit in the payload of the n-th ``HotlinkData`` of a session;
* :class:`Middleman`: answer each side's ``e2e_hello`` with the relay's own, signed by an
  identity key of its own for the peer it impersonates, and re-seal every frame, so on first
  contact (nothing pinned or listed) it reads the stream unnoticed;
* :class:`SwapEphemeral`: replace the ephemeral key of each hello, keeping its signature;
* :class:`DropHellos`: drop every ``e2e_hello`` (a downgrade to plaintext);
* :class:`TruncateTail`: hold the last ``drop`` frames back, drop them at the Close, and
  forward the Close with a forged ``eof:K`` (K: the last seq forwarded);
* :class:`EraseStream`: drop the opener's hello toward the acceptor and every frame, and
  forward the Close as ``eof:0`` (an empty stream, as far as the acceptor can tell).

A message the tamper leaves alone goes on byte for byte; one it changes is encoded again in
the form it came in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hotlink.protocol.codec import (
    ENC_JSON,
    ENVELOPE_MAGIC,
    ENVELOPE_VERSION,
    decode,
    encode_json,
    encode_msgpack,
)
from hotlink.protocol.e2e.errors import E2EError
from hotlink.protocol.e2e.handshake import E2E_HELLO, Handshake, Hello, SessionKeys, SessionParams
from hotlink.protocol.e2e.identity import Identity
from hotlink.protocol.e2e.seal import OPENER_TO_ACCEPTOR, FrameOpener, FrameSealer, is_sealed
from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.frames import Frame
from hotlink.protocol.messages import (
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkSignal,
    Message,
    Payload,
)

from .ws_mitm import Link, WsFrame, WsMitm


def _norm(email: str) -> str:
    return email.strip().lower()


# ---------------------------------------------------------------- what went through


class Relayed(NamedTuple):
    """One ``HotlinkData``: seq, etag and payload as they were on that hop."""

    seq: int
    etag: str
    payload: bytes


@dataclass
class SessionRecord:
    """A session the relay saw opened (its Open went to the acceptor through the relay)."""

    sid: str
    path: str
    opener: str  # normalised emails, as the peers sign them
    acceptor: str
    acceptor_link: int
    arrived: list[Relayed] = field(default_factory=list)  # data from the server
    forwarded: list[Relayed] = field(default_factory=list)  # data passed on to the acceptor
    hellos: list[str] = field(default_factory=list)  # "<toward> <action>" per e2e_hello
    closes: list[tuple[str, str | None]] = field(default_factory=list)  # (rsn, forwarded rsn)

    @property
    def params(self) -> SessionParams:
        return SessionParams(self.sid, self.path, self.opener, self.acceptor)


# ---------------------------------------------------------------- what the relay does


class Tamper:
    """What the relay does to one session's messages toward a client (base: nothing).

    ``opener``: only sessions this email opened (None: all)."""

    def __init__(self, *, opener: str | None = None) -> None:
        self.opener = _norm(opener) if opener else None

    def applies(self, session: SessionRecord) -> bool:
        return self.opener is None or session.opener == self.opener

    def on_hello(
        self, session: SessionRecord, signal: HotlinkSignal, toward_acceptor: bool
    ) -> HotlinkSignal | None:
        """The signal to forward instead (None: drop it)."""
        return signal

    def on_data(self, session: SessionRecord, data: HotlinkData) -> list[HotlinkData]:
        """What to forward now, in order, for one frame toward the acceptor."""
        return [data]

    def on_close(self, session: SessionRecord, close: HotlinkClose) -> HotlinkClose | None:
        return close


class FlipBit(Tamper):
    """Flip bit ``bit`` of the middle byte of the ``nth`` frame (from 1) of session ``sid``
    that the relay passes on."""

    def __init__(self, sid: str, nth: int, *, bit: int = 0) -> None:
        super().__init__()
        self.sid = sid
        self.nth = nth
        self.bit = bit
        self.flipped: list[Relayed] = []  # the frames as they were before the flip

    def on_data(self, session: SessionRecord, data: HotlinkData) -> list[HotlinkData]:
        # ``arrived`` already counts this frame: it is the session's len(arrived)-th.
        if session.sid != self.sid or len(session.arrived) != self.nth or not data.pay:
            return [data]
        self.flipped.append(Relayed(data.seq, data.etg, data.pay))
        pay = bytearray(data.pay)
        pay[len(pay) // 2] ^= 1 << self.bit
        return [dataclasses.replace(data, pay=bytes(pay))]


class DropHellos(Tamper):
    """Drop every ``e2e_hello``: neither side hears that the other seals."""

    def __init__(self, *, opener: str | None = None) -> None:
        super().__init__(opener=opener)
        self.dropped = 0

    def on_hello(
        self, session: SessionRecord, signal: HotlinkSignal, toward_acceptor: bool
    ) -> HotlinkSignal | None:
        self.dropped += 1
        return None


class SwapEphemeral(Tamper):
    """Put a fresh X25519 key of the relay's into each hello, keeping the peer's identity
    key and signature (a middleman that cannot sign)."""

    def __init__(self, *, opener: str | None = None) -> None:
        super().__init__(opener=opener)
        self.swapped = 0

    def on_hello(
        self, session: SessionRecord, signal: HotlinkSignal, toward_acceptor: bool
    ) -> HotlinkSignal | None:
        real = Hello.parse(signal.tok)
        eph = X25519PrivateKey.generate().public_key().public_bytes_raw()
        self.swapped += 1
        return dataclasses.replace(signal, tok=Hello(eph, real.identity, real.sig).token())


@dataclass
class _Between:
    """A middleman's two exchanges in one session."""

    as_acceptor: Handshake  # shown to the opener, as if from the acceptor
    as_opener: Handshake  # shown to the acceptor, as if from the opener
    with_opener: SessionKeys | None = None
    with_acceptor: SessionKeys | None = None
    opener: FrameOpener | None = None
    sealer: FrameSealer | None = None


class Middleman(Tamper):
    """A middleman with identity keys of its own: one per peer it impersonates, kept across
    sessions (as a real one would, to stay consistent with what a peer pinned).

    Each side's hello is answered with the relay's, signed for the right session and role,
    so both exchanges complete, each with the relay; frames toward the acceptor are opened
    with the opener's keys (:attr:`read` keeps the plaintext) and sealed again with the
    acceptor's. A peer that pinned or lists the real key refuses the relay's."""

    def __init__(self, *, opener: str | None = None) -> None:
        super().__init__(opener=opener)
        self.identities: dict[str, Identity] = {}
        self.read: dict[str, bytearray] = {}  # sid -> the stream's plaintext, as it passed
        self.replaced = 0
        self._sessions: dict[str, _Between] = {}

    def identity_for(self, email: str) -> Identity:
        """The relay's key for impersonating ``email``."""
        key = _norm(email)
        if key not in self.identities:
            self.identities[key] = Identity.generate()
        return self.identities[key]

    def _between(self, session: SessionRecord) -> _Between:
        state = self._sessions.get(session.sid)
        if state is None:
            params = session.params
            state = self._sessions[session.sid] = _Between(
                Handshake(params, "acceptor", self.identity_for(session.acceptor)),
                Handshake(params, "opener", self.identity_for(session.opener)),
            )
        return state

    def on_hello(
        self, session: SessionRecord, signal: HotlinkSignal, toward_acceptor: bool
    ) -> HotlinkSignal | None:
        state = self._between(session)
        real = Hello.parse(signal.tok)
        sid = session.sid
        if toward_acceptor:  # the opener's hello
            state.with_opener = state.as_acceptor.complete(real)
            state.opener = FrameOpener(state.with_opener.recv_data, OPENER_TO_ACCEPTOR, sid)
            mine = state.as_opener.hello
        else:  # the acceptor's hello
            state.with_acceptor = state.as_opener.complete(real)
            state.sealer = FrameSealer(state.with_acceptor.send_data, OPENER_TO_ACCEPTOR, sid)
            mine = state.as_acceptor.hello
        self.replaced += 1
        return dataclasses.replace(signal, tok=mine.token())

    def on_data(self, session: SessionRecord, data: HotlinkData) -> list[HotlinkData]:
        state = self._sessions.get(session.sid)
        if state is None or state.opener is None or state.sealer is None:
            return [data]
        frame = Frame(data.pth or session.path, data.etg, data.seq, data.pay)
        opened = state.opener.open(frame)
        if opened.fin:
            resealed = state.sealer.fin(data.seq, frame.path)
        else:
            self.read.setdefault(session.sid, bytearray()).extend(opened.frame.payload)
            resealed = state.sealer.seal(opened.frame)
        return [dataclasses.replace(data, etg=resealed.etag, pay=resealed.payload)]


class TruncateTail(Tamper):
    """Cut a stream's end: hold the last ``drop`` frames back; at the opener's Close
    ``eof:N`` drop them (on a sealed stream the last is the sealed end) and forward
    ``eof:K``, K the last seq forwarded, as if the stream had ended there."""

    def __init__(self, drop: int, *, opener: str | None = None) -> None:
        super().__init__(opener=opener)
        self.drop = drop
        self.dropped: dict[str, list[Relayed]] = {}
        self.forged: dict[str, str] = {}  # sid -> the eof reason sent instead
        self._held: dict[str, deque[HotlinkData]] = {}

    def on_data(self, session: SessionRecord, data: HotlinkData) -> list[HotlinkData]:
        held = self._held.setdefault(session.sid, deque())
        held.append(data)
        return [held.popleft()] if len(held) > self.drop else []

    def on_close(self, session: SessionRecord, close: HotlinkClose) -> HotlinkClose | None:
        head, _, last = close.rsn.partition(":")
        held = self._held.pop(session.sid, deque())
        if head != "eof" or not last.isdigit():
            return close
        self.dropped[session.sid] = [Relayed(d.seq, d.etg, d.pay) for d in held]
        forged = f"eof:{int(last) - len(held)}"
        self.forged[session.sid] = forged
        return dataclasses.replace(close, rsn=forged)


class EraseStream(Tamper):
    """Cut a stream to nothing: drop the opener's hello toward the acceptor (so its side
    never learns the stream is sealed), every frame, and forward the Close as ``eof:0``."""

    def __init__(self, *, opener: str | None = None) -> None:
        super().__init__(opener=opener)
        self.dropped: dict[str, list[Relayed]] = {}
        self.forged: dict[str, str] = {}

    def on_hello(
        self, session: SessionRecord, signal: HotlinkSignal, toward_acceptor: bool
    ) -> HotlinkSignal | None:
        return None if toward_acceptor else signal

    def on_data(self, session: SessionRecord, data: HotlinkData) -> list[HotlinkData]:
        self.dropped.setdefault(session.sid, []).append(Relayed(data.seq, data.etg, data.pay))
        return []

    def on_close(self, session: SessionRecord, close: HotlinkClose) -> HotlinkClose | None:
        if not close.rsn.startswith("eof"):
            return close
        self.forged[session.sid] = "eof:0"
        return dataclasses.replace(close, rsn="eof:0")


# ---------------------------------------------------------------- the proxy


class TamperRelay(WsMitm):
    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        # Set by the test (from any thread; one attribute write); None: forward everything.
        self.tamper: Tamper | None = None
        # Records are written on the relay's loop and read from the test's thread.
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionRecord] = {}
        self._order: list[str] = []
        self._client_data: list[tuple[str, Relayed]] = []

    # ------------------------------------------------------------ records, for the test

    def session_count(self) -> int:
        with self._lock:
            return len(self._order)

    def session_records(self, since: int = 0) -> list[SessionRecord]:
        """Sessions in the order their Open went through (the records stay live)."""
        with self._lock:
            return [self._sessions[sid] for sid in self._order[since:]]

    def client_data(self, sid: str | None = None) -> list[Relayed]:
        """The ``HotlinkData`` of ``sid`` (None: of every session) as clients sent them to
        the relay."""
        with self._lock:
            return [d for s, d in self._client_data if sid is None or s == sid]

    def from_client(self, link: Link, data: Any) -> None:
        message = _decode(data)
        if message is not None and isinstance(message.payload, HotlinkData):
            p = message.payload
            with self._lock:
                self._client_data.append((p.sid, Relayed(p.seq, p.etg, p.pay)))

    # ------------------------------------------------------------ toward a client

    def toward_client(self, link: Link, kind: aiohttp.WSMsgType, data: Any) -> list[WsFrame]:
        message = _decode(data)
        if message is None:
            return [(kind, data)]
        payload = message.payload
        email = link.email
        if isinstance(payload, HotlinkOpen):
            self._note_open(link.number, email, payload)
            return [(kind, data)]
        if not isinstance(payload, (HotlinkSignal, HotlinkData, HotlinkClose)):
            return [(kind, data)]
        with self._lock:
            session = self._sessions.get(payload.sid)
        if session is None:
            return [(kind, data)]
        tamper = self.tamper
        if tamper is not None and not tamper.applies(session):
            tamper = None
        out: list[Payload]
        if isinstance(payload, HotlinkData):
            session.arrived.append(Relayed(payload.seq, payload.etg, payload.pay))
            sent = [payload]
            if tamper is not None:
                with contextlib.suppress(E2EError):  # a frame the tamper cannot use goes on
                    sent = tamper.on_data(session, payload)
            session.forwarded.extend(Relayed(d.seq, d.etg, d.pay) for d in sent)
            out = list(sent)
        elif isinstance(payload, HotlinkClose):
            close = tamper.on_close(session, payload) if tamper is not None else payload
            session.closes.append((payload.rsn, close.rsn if close is not None else None))
            out = [close] if close is not None else []
        elif payload.knd == E2E_HELLO:
            # By the link's user (a reconnected acceptor has a new link), else by the link.
            toward_acceptor = (
                email == session.acceptor if email else link.number == session.acceptor_link
            )
            signal: HotlinkSignal | None = payload
            if tamper is not None:
                with contextlib.suppress(E2EError):  # a hello the tamper cannot use goes on
                    signal = tamper.on_hello(session, payload, toward_acceptor)
            action = "kept" if signal is payload else "dropped" if signal is None else "replaced"
            session.hellos.append(f"{'acceptor' if toward_acceptor else 'opener'} {action}")
            out = [signal] if signal is not None else []
        else:
            return [(kind, data)]
        return [
            (kind, data) if p is payload else _encode_like(kind, data, Message(message.id, p))
            for p in out
        ]

    def _note_open(self, link: int, email: str, msg: HotlinkOpen) -> None:
        acceptor = _norm(msg.to) or email
        if not msg.sid or not acceptor:
            return
        with self._lock:
            if msg.sid in self._sessions:
                return
            self._sessions[msg.sid] = SessionRecord(
                msg.sid, msg.pth, _norm(msg.frm), acceptor, link
            )
            self._order.append(msg.sid)


def _decode(data: bytes | str) -> Message | None:
    try:
        return decode(data)
    except (ProtocolError, ValueError, TypeError):
        return None


def _encode_like(kind: aiohttp.WSMsgType, original: Any, message: Message) -> WsFrame:
    """``message`` in the form ``original`` came in: a text frame of JSON, or a binary frame
    whose envelope holds msgpack or JSON."""
    if kind == aiohttp.WSMsgType.TEXT:
        return kind, encode_json(message)
    if original[3] == ENC_JSON:
        envelope = ENVELOPE_MAGIC + bytes((ENVELOPE_VERSION, ENC_JSON))
        return kind, envelope + encode_json(message).encode()
    return kind, encode_msgpack(message)


def sealed_frames(frames: list[Relayed]) -> bool:
    """Whether every frame is sealed end to end (the relay saw no plaintext payload)."""
    return all(is_sealed(Frame("", f.etag, f.seq, f.payload)) for f in frames)


# ---------------------------------------------------------------- running one


@contextlib.asynccontextmanager
async def tamper_relay(upstream: str) -> AsyncIterator[TamperRelay]:
    """A running :class:`TamperRelay` on the current event loop."""
    relay = TamperRelay(upstream)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


@contextlib.contextmanager
def tamper_relay_thread(upstream: str, timeout: float = 10.0) -> Iterator[TamperRelay]:
    """A running :class:`TamperRelay` on an event loop of its own, in a thread: usable from
    sync fixtures of any scope, whatever loop the tests run on."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tamper-relay", daemon=True)
    thread.start()
    relay = TamperRelay(upstream)
    try:
        asyncio.run_coroutine_threadsafe(relay.start(), loop).result(timeout)
        yield relay
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(relay.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()
