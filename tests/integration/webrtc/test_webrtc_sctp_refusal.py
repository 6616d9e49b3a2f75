"""A real peer whose SCTP refuses the association: ICE and DTLS connect, the channel never opens.

libdatachannel meets an aiortc peer patched by :mod:`support.sctp_refusal` (as pion releases
before 2024 meet libdatachannel), in this process, on loopback, host candidates only. Each
backend must then report ``transport_connected`` while the channel stays shut, which is what
lets the owner blame SCTP rather than the network path. A control pair without the patch
opens, so the patch (not the setup) is what keeps the channel shut. Every test closes both
peers and leaves no task or file descriptor behind.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest

from hotlink.webrtc import Backend, Peer
from hotlink.webrtc.pair import PeerPair, connect_pair
from support.sctp_refusal import sctp_refused

from .conftest import backend_or_skip

# Failure guards only: on loopback each step takes milliseconds.
CONNECT_LIMIT = 15.0
# How long a refused channel must stay shut. A silent remote makes libdatachannel retransmit
# its INIT for about 35 s before it gives up, so the transport is still up all along.
NEVER_OPENS_WITHIN = 8.0

DIRECTIONS = [("libdatachannel", "aiortc"), ("aiortc", "libdatachannel")]
IDS = ["ldc-offers-refusing-aiortc", "refusing-aiortc-offers-ldc"]


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


async def _until(check: Callable[[], bool], limit: float = CONNECT_LIMIT) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 (no event for transport state; a guard bounds it)
            await asyncio.sleep(0.02)


async def _leaves_nothing_behind(run: Callable[[], Awaitable[None]], names: list[str]) -> None:
    """Run ``run`` after a warm-up pair (both stacks keep process-wide machinery from their
    first use), then check that its peers left no task or file descriptor behind."""
    async with await connect_pair(*(backend_or_skip(n) for n in names)):
        pass
    fds, tasks = _fds(), _tasks()
    await run()
    for _ in range(200):  # teardown that finishes just after close() returns
        if _fds() <= fds and _tasks() <= tasks:
            break
        await asyncio.sleep(0.025)
    assert _tasks() <= tasks, [t.get_coro() for t in _tasks() - tasks]
    assert _fds() <= fds, os.listdir("/proc/self/fd")


def _sides(pair: PeerPair, offerer: str) -> tuple[Peer, Peer]:
    """(the libdatachannel peer, the aiortc peer) of the pair."""
    if offerer == "libdatachannel":
        return pair.offerer, pair.answerer
    return pair.answerer, pair.offerer


async def _any_opens(pair: PeerPair, limit: float) -> bool:
    waits = [
        asyncio.create_task(pair.offer_events.opened.wait()),
        asyncio.create_task(pair.answer_events.opened.wait()),
    ]
    done, pending = await asyncio.wait(waits, timeout=limit, return_when="FIRST_COMPLETED")
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return bool(done)


@pytest.mark.slow
@pytest.mark.parametrize(("offerer", "answerer"), DIRECTIONS, ids=IDS)
async def test_ice_and_dtls_connect_but_a_refused_channel_never_opens(
    offerer: str, answerer: str
) -> None:
    async def run() -> None:
        backends = (backend_or_skip(offerer), backend_or_skip(answerer))
        with sctp_refused("drop"):
            pair = await connect_pair(*backends, ice_servers=[], wait_open=False)
            try:
                await _until(lambda: pair.offerer.transport_connected)
                await _until(lambda: pair.answerer.transport_connected)
                assert not await _any_opens(pair, NEVER_OPENS_WITHIN)
                assert pair.offer_events.open_count == pair.answer_events.open_count == 0
                assert not pair.offerer.is_open and not pair.answerer.is_open
                # Still up: the path and DTLS work, only SCTP does not.
                assert pair.offerer.transport_connected and pair.answerer.transport_connected
            finally:
                await pair.close()
        assert not pair.offerer.transport_connected and not pair.answerer.transport_connected

    await _leaves_nothing_behind(run, [offerer, answerer])


@pytest.mark.parametrize(("offerer", "answerer"), DIRECTIONS, ids=IDS)
async def test_an_sctp_abort_fails_libdatachannel_at_once_yet_it_knows_dtls_had_connected(
    offerer: str, answerer: str
) -> None:
    # The pion case: the remote answers the INIT with an ABORT. libdatachannel then fails
    # the whole connection, so transport_connected is already False when the owner hears
    # of the closed channel; transport_was_connected still tells what happened.
    async def run() -> None:
        backends = (backend_or_skip(offerer), backend_or_skip(answerer))
        with sctp_refused("abort"):
            pair = await connect_pair(*backends, ice_servers=[], wait_open=False)
            try:
                ldc, aiortc = _sides(pair, offerer)
                ldc_events = pair.offer_events if ldc is pair.offerer else pair.answer_events
                async with asyncio.timeout(CONNECT_LIMIT):
                    await ldc_events.closed.wait()
                assert ldc_events.open_count == 0
                assert ldc_events.closed_reason
                assert ldc.transport_was_connected and not ldc.transport_connected
                # The refusing side never tried an association: its transport stays up.
                await _until(lambda: aiortc.transport_connected)
                assert not aiortc.is_open
            finally:
                await pair.close()

    await _leaves_nothing_behind(run, [offerer, answerer])


@pytest.mark.parametrize(("offerer", "answerer"), DIRECTIONS, ids=IDS)
async def test_without_the_refusal_the_same_pair_opens(offerer: str, answerer: str) -> None:
    backends: tuple[Backend, Backend] = (backend_or_skip(offerer), backend_or_skip(answerer))

    async def run() -> None:
        async with await connect_pair(*backends, ice_servers=[]) as pair:
            assert pair.offerer.is_open and pair.answerer.is_open
            await _until(lambda: pair.offerer.transport_connected)
            await _until(lambda: pair.answerer.transport_connected)
            await pair.offerer.send(b"ping")
            assert await pair.answer_events.next_message() == b"ping"
        assert not pair.offerer.transport_connected and not pair.answerer.transport_connected

    await _leaves_nothing_behind(run, [offerer, answerer])
