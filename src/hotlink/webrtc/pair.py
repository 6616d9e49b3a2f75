"""Two peers in one process, signaled directly: for tests, benchmarks and diagnostics.

:func:`connect_pair` plays both sides of the hotlink signaling (offer, answer, trickled
candidates) without a server, so a backend's data channel can be exercised and measured on
its own. Candidates can be delivered the normal way (trickled as they appear), all before the
descriptions they belong to, or in shuffled order, to show that buffering works.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from hotlink.protocol.ice import IceCandidate, IceServer

from .base import (
    DEFAULT_BACKPRESSURE_WAIT,
    DEFAULT_BUFFERED_HIGH,
    Backend,
    Peer,
    WebRTCError,
)

CandidateDelivery = Literal["trickle", "early", "shuffled"]

# Candidates in flight between the two sides; far more than any host ever gathers.
_SIGNAL_QUEUE_SIZE = 256


class PairEndpoint:
    """The :class:`~.base.PeerEvents` of one side: records events, forwards candidates.

    Messages go to ``sink`` when one is given (benchmarks), else into ``messages``.
    """

    def __init__(self, name: str, sink: Callable[[bytes], None] | None = None) -> None:
        self.name = name
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.closed_reason: str | None = None
        self.open_count = 0
        self.messages: deque[bytes] = deque()
        self.message_arrived = asyncio.Event()
        self.local_candidates: list[IceCandidate | None] = []
        self.signals: asyncio.Queue[IceCandidate | None] = asyncio.Queue(_SIGNAL_QUEUE_SIZE)
        self.gathering_done = asyncio.Event()
        self.events_before_open: list[str] = []
        self._sink = sink

    def on_local_candidate(self, cand: IceCandidate | None) -> None:
        self.local_candidates.append(cand)
        self.signals.put_nowait(cand)
        if cand is None:
            self.gathering_done.set()

    def on_channel_open(self) -> None:
        self.open_count += 1
        self.opened.set()

    def on_message(self, data: bytes) -> None:
        if not self.opened.is_set():
            self.events_before_open.append("message")
        if self._sink is not None:
            self._sink(data)
        else:
            self.messages.append(data)
            self.message_arrived.set()

    def on_channel_closed(self, reason: str) -> None:
        self.closed_reason = reason
        self.closed.set()

    async def next_message(self, limit: float = 10.0) -> bytes:
        """The next message, waiting at most ``limit`` seconds for it."""
        while not self.messages:
            self.message_arrived.clear()
            await asyncio.wait_for(self.message_arrived.wait(), limit)
        return self.messages.popleft()


@dataclass
class PeerPair:
    """An offerer and an answerer, connected. Close it (``async with`` or :meth:`close`)."""

    offerer: Peer
    answerer: Peer
    offer_events: PairEndpoint
    answer_events: PairEndpoint
    offer_sdp: str = ""
    answer_sdp: str = ""
    _relays: list[asyncio.Task[None]] = field(default_factory=list)

    async def wait_open(self, limit: float = 15.0) -> None:
        """Wait until both sides report the channel open (at most ``limit`` seconds)."""
        async with asyncio.timeout(limit):
            await self.offer_events.opened.wait()
            await self.answer_events.opened.wait()

    async def close(self) -> None:
        for task in self._relays:
            task.cancel()
        for task in self._relays:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._relays.clear()
        await asyncio.gather(self.offerer.close(), self.answerer.close())

    async def __aenter__(self) -> PeerPair:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _relay(source: PairEndpoint, target: Peer) -> None:
    while True:
        await target.add_remote_candidate(await source.signals.get())


async def _drain_all(source: PairEndpoint, limit: float) -> list[IceCandidate | None]:
    """Every candidate of ``source`` up to its end-of-candidates."""
    async with asyncio.timeout(limit):
        await source.gathering_done.wait()
    out = []
    while not source.signals.empty():
        out.append(source.signals.get_nowait())
    return out


async def _deliver(cands: list[IceCandidate | None], target: Peer, shuffle: bool) -> None:
    real = [c for c in cands if c is not None]
    if shuffle:
        random.shuffle(real)
    for cand in real:
        await target.add_remote_candidate(cand)
    if None in cands:
        await target.add_remote_candidate(None)


async def connect_pair(
    offer_backend: Backend,
    answer_backend: Backend,
    *,
    ice_servers: list[IceServer] | None = None,
    relay_only: bool = False,
    delivery: CandidateDelivery = "trickle",
    open_timeout: float = 15.0,
    offer_sink: Callable[[bytes], None] | None = None,
    answer_sink: Callable[[bytes], None] | None = None,
    wait_open: bool = True,
    buffered_high: int = DEFAULT_BUFFERED_HIGH,
    backpressure_wait: float = DEFAULT_BACKPRESSURE_WAIT,
) -> PeerPair:
    """Create, signal and (by default) open a pair of peers.

    ``delivery``: ``trickle`` forwards candidates as they come; ``early`` hands each side all
    of the other's candidates *before* the description they belong to (the offerer's before
    the answerer sees the offer, the answerer's before the offerer sees the answer);
    ``shuffled`` is ``early`` in random order. ``buffered_high`` and ``backpressure_wait``
    go to ``create_peer``.
    """
    servers = list(ice_servers or [])
    offer_events = PairEndpoint("offerer", offer_sink)
    answer_events = PairEndpoint("answerer", answer_sink)
    offerer = offer_backend.create_peer(
        servers,
        offer_events,
        relay_only=relay_only,
        buffered_high=buffered_high,
        backpressure_wait=backpressure_wait,
    )
    try:
        answerer = answer_backend.create_peer(
            servers,
            answer_events,
            relay_only=relay_only,
            buffered_high=buffered_high,
            backpressure_wait=backpressure_wait,
        )
    except BaseException:
        await offerer.close()
        raise
    pair = PeerPair(offerer, answerer, offer_events, answer_events)
    try:
        pair.offer_sdp = await offerer.create_offer()
        if delivery == "trickle":
            pair._relays.append(asyncio.create_task(_relay(offer_events, answerer)))
            pair._relays.append(asyncio.create_task(_relay(answer_events, offerer)))
            pair.answer_sdp = await answerer.accept_offer(pair.offer_sdp)
            await offerer.set_answer(pair.answer_sdp)
        else:
            shuffle = delivery == "shuffled"
            await _deliver(await _drain_all(offer_events, open_timeout), answerer, shuffle)
            pair.answer_sdp = await answerer.accept_offer(pair.offer_sdp)
            await _deliver(await _drain_all(answer_events, open_timeout), offerer, shuffle)
            await offerer.set_answer(pair.answer_sdp)
        if wait_open:
            await pair.wait_open(open_timeout)
    except TimeoutError as exc:
        await pair.close()
        raise WebRTCError(f"data channel did not open within {open_timeout}s") from exc
    except BaseException:
        await pair.close()
        raise
    return pair
