"""A WebSocket man-in-the-middle between hotlink clients and the real relay that garbles the
timing of WebRTC signals, for signal-order tests.

    async with signal_shuffler(srv.url, offer_delay=1.0, candidate_hold=0.5) as mitm:
        client = await asyncio.to_thread(start_client, mitm.url, ALICE, tmp_path / "alice")
        ...
        mitm.stats.offers_delayed, mitm.stats.candidates_before_offer, ...

Clients connect to ``mitm.url`` as if it were the server (:mod:`support.ws_mitm`). Frames
are forwarded byte for byte in both directions; only ``HotlinkSignal`` messages going
*to* a client are held back:

* ``sdp_offer`` for ``offer_delay`` seconds (``sdp_answer`` for ``answer_delay``);
* each ``ice_candidate``: with ``candidate_order="reverse"`` (the default) the n-th candidate
  of a session is held ``candidate_hold - n * 0.05`` s, so a session's candidates arrive in
  exactly the reverse order; with ``"random"`` each is held a random time in
  ``[0, candidate_hold)`` (``seed`` makes it repeatable). With an offer delay longer than the
  hold, candidates also arrive before the offer they belong to.

Everything else keeps its order. :class:`ShuffleStats` counts what happened, so a test can
assert that the disorder it wanted really occurred.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web

from hotlink.protocol.codec import decode
from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.messages import HotlinkSignal

from .ws_mitm import Link, WsFrame, WsMitm

# "reverse" order: each later candidate of a session is held this much less.
_REVERSE_STEP = 0.05


@dataclass
class ShuffleStats:
    connections: int = 0
    offers_delayed: int = 0
    answers_delayed: int = 0
    candidates: int = 0
    # Delivered after a candidate that reached the proxy later than it did.
    candidates_reordered: int = 0
    # Delivered to a client before the sdp_offer of the same session reached that client.
    candidates_before_offer: int = 0
    signals_by_kind: dict[str, int] = field(default_factory=dict)


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, shuffler: SignalShuffler, client: web.WebSocketResponse) -> None:
        self.shuffler = shuffler
        self.client = client
        self.queue: asyncio.Queue[tuple[aiohttp.WSMsgType, Any] | None] = asyncio.Queue()
        self.arrived = 0  # candidates seen on this link, numbered in arrival order
        self.newest_delivered = -1
        self.offers_held: set[str] = set()  # offers on their way to this client, delayed
        self.per_sid: dict[str, int] = {}  # candidates seen per session on this link
        self.timers: set[asyncio.TimerHandle] = set()

    def forward(self, kind: aiohttp.WSMsgType, data: Any) -> None:
        signal = _signal(data)
        if signal is None:
            self.queue.put_nowait((kind, data))
            return
        stats = self.shuffler.stats
        stats.signals_by_kind[signal.knd] = stats.signals_by_kind.get(signal.knd, 0) + 1
        delay = 0.0
        order = -1
        if signal.knd == "sdp_offer":
            self.offers_held.add(signal.sid)
            if self.shuffler.offer_delay > 0:
                delay = self.shuffler.offer_delay
                stats.offers_delayed += 1
        elif signal.knd == "sdp_answer" and self.shuffler.answer_delay > 0:
            delay = self.shuffler.answer_delay
            stats.answers_delayed += 1
        elif signal.knd == "ice_candidate":
            stats.candidates += 1
            order = self.arrived
            self.arrived += 1
            nth = self.per_sid.get(signal.sid, 0)
            self.per_sid[signal.sid] = nth + 1
            hold = self.shuffler.candidate_hold
            if self.shuffler.candidate_order == "reverse":
                delay = max(0.0, hold - nth * _REVERSE_STEP)
            else:
                delay = self.shuffler.rng.uniform(0, hold)
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, self._deliver, kind, data, signal, order)
        self.timers.add(handle)

    def _deliver(
        self, kind: aiohttp.WSMsgType, data: Any, signal: HotlinkSignal, order: int
    ) -> None:
        stats = self.shuffler.stats
        if signal.knd == "sdp_offer":
            self.offers_held.discard(signal.sid)
        elif signal.knd == "ice_candidate":
            if order < self.newest_delivered:
                stats.candidates_reordered += 1
            self.newest_delivered = max(self.newest_delivered, order)
            if signal.sid in self.offers_held:
                stats.candidates_before_offer += 1
        self.queue.put_nowait((kind, data))

    async def write_loop(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            kind, data = item
            if kind == aiohttp.WSMsgType.TEXT:
                await self.client.send_str(data)
            else:
                await self.client.send_bytes(data)

    def stop(self) -> None:
        for handle in self.timers:
            handle.cancel()
        self.queue.put_nowait(None)


def _signal(data: Any) -> HotlinkSignal | None:
    try:
        message = decode(data)
    except (ProtocolError, ValueError, TypeError):
        return None
    payload = message.payload
    return payload if isinstance(payload, HotlinkSignal) else None


class SignalShuffler(WsMitm):
    def __init__(
        self,
        upstream: str,
        *,
        offer_delay: float = 1.0,
        answer_delay: float = 0.0,
        candidate_hold: float = 0.5,
        candidate_order: Literal["reverse", "random"] = "reverse",
        seed: int | None = None,
    ) -> None:
        super().__init__(upstream)
        self.offer_delay = offer_delay
        self.answer_delay = answer_delay
        self.candidate_hold = candidate_hold
        self.candidate_order = candidate_order
        self.rng = random.Random(seed)
        self.stats = ShuffleStats()
        self._links: dict[int, _Link] = {}

    async def stop(self) -> None:
        for link in list(self._links.values()):
            link.stop()
        await super().stop()

    async def serve(self, link: Link) -> None:
        # Frames leave through the link's own writer, in the order their timers release them.
        shuffled = self._links[link.number] = _Link(self, link.client)
        self.stats.connections += 1
        writer = asyncio.create_task(shuffled.write_loop())
        try:
            await super().serve(link)
        finally:
            shuffled.stop()
            del self._links[link.number]
            await asyncio.gather(writer, return_exceptions=True)

    def toward_client(self, link: Link, kind: aiohttp.WSMsgType, data: Any) -> list[WsFrame]:
        self._links[link.number].forward(kind, data)
        return []


@contextlib.asynccontextmanager
async def signal_shuffler(upstream: str, **options: Any) -> AsyncIterator[SignalShuffler]:
    """A running :class:`SignalShuffler` in front of ``upstream`` (the relay's http URL)."""
    shuffler = SignalShuffler(upstream, **options)
    await shuffler.start()
    try:
        yield shuffler
    finally:
        await shuffler.stop()
