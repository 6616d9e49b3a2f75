"""A WebSocket man-in-the-middle between hotlink clients and the real relay that puts another
DTLS certificate's fingerprint into every SDP it relays, as a relay would that wants to sit
on the peer-to-peer path too (it would then relay the DTLS handshakes with its own
certificates; this one only rewrites the SDPs, which is what the end-to-end binding checks).

    async with sdp_tamper(srv.url) as mitm:
        client = await asyncio.to_thread(start_client, mitm.url, ALICE, tmp_path / "alice")
        ...
        mitm.stats.tampered["sdp_offer"], mitm.stats.seen["e2e_dtls"], ...

Clients connect to ``mitm.url`` as if it were the server (:mod:`support.ws_mitm`). Every
frame is forwarded in order, byte for byte, except the ``HotlinkSignal``\\ s of the ``kinds`` given
(``sdp_offer`` and ``sdp_answer`` by default) going *to* a client: in their SDP the first
octet of every ``a=fingerprint:`` value is changed, and the message is encoded again in the
form it came in (JSON text or the msgpack envelope).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from hotlink.protocol.codec import Encoding, decode, encode, peek_data
from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.messages import HotlinkSignal, Message

from .ws_mitm import Link, WsFrame, WsMitm

_FINGERPRINT = re.compile(r"(a=fingerprint:\S+[ \t]+)([0-9A-Fa-f]{2})")


@dataclass
class TamperStats:
    # Signals that reached a client, by kind, and those whose SDP was rewritten.
    seen: Counter[str] = field(default_factory=Counter)
    tampered: Counter[str] = field(default_factory=Counter)


def forge_fingerprints(sdp: str) -> str:
    """``sdp`` with the first octet of each ``a=fingerprint:`` value changed."""

    def other(match: re.Match[str]) -> str:
        octet = (int(match.group(2), 16) + 0x5A) % 256
        return f"{match.group(1)}{octet:02X}"

    return _FINGERPRINT.sub(other, sdp)


def _tampered(signal: HotlinkSignal) -> HotlinkSignal | None:
    try:
        token = json.loads(signal.tok)
    except ValueError:
        return None
    if not isinstance(token, dict) or not isinstance(token.get("sdp"), str):
        return None
    forged = forge_fingerprints(token["sdp"])
    if forged == token["sdp"]:
        return None
    token["sdp"] = forged
    return HotlinkSignal(sid=signal.sid, knd=signal.knd, tok=json.dumps(token), err=signal.err)


class SdpTamper(WsMitm):
    def __init__(
        self, upstream: str, *, kinds: Iterable[str] = ("sdp_offer", "sdp_answer")
    ) -> None:
        super().__init__(upstream)
        self.kinds = frozenset(kinds)
        self.stats = TamperStats()

    def toward_client(self, link: Link, kind: aiohttp.WSMsgType, data: Any) -> list[WsFrame]:
        return [(kind, self.rewrite(kind, data))]

    def rewrite(self, kind: aiohttp.WSMsgType, data: Any) -> Any:
        """What goes to the client in place of ``data``."""
        if isinstance(data, bytes) and peek_data(data) is not None:
            return data  # stream data: forwarded without decoding it
        try:
            message = decode(data)
        except (ProtocolError, ValueError, TypeError):
            return data
        signal = message.payload
        if not isinstance(signal, HotlinkSignal):
            return data
        self.stats.seen[signal.knd] += 1
        if signal.knd not in self.kinds:
            return data
        forged = _tampered(signal)
        if forged is None:
            return data
        self.stats.tampered[signal.knd] += 1
        encoding: Encoding = "json" if kind == aiohttp.WSMsgType.TEXT else "msgpack"
        return encode(Message(message.id, forged), encoding)


@contextlib.asynccontextmanager
async def sdp_tamper(upstream: str, **options: Any) -> AsyncIterator[SdpTamper]:
    """A running :class:`SdpTamper` in front of ``upstream`` (the relay's http URL)."""
    tamper = SdpTamper(upstream, **options)
    await tamper.start()
    try:
        yield tamper
    finally:
        await tamper.stop()
