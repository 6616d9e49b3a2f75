"""Opening and closing many peer pairs leaks no tasks, threads or file descriptors.

Baselines are taken after one warm-up pair, because both stacks create some process-wide
machinery on first use and keep it: libdatachannel's worker-thread pool and usrsctp's timer
thread, and the event loop's default executor (which our libdatachannel teardown uses; it
grows on demand to at most ``min(32, cpus + 4)`` threads and then reuses them). Those are
bounded by constants, not by the number of peers, hence the small thread allowance below.
Tasks and file descriptors must return exactly to the baseline.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from hotlink.webrtc import Backend
from hotlink.webrtc.pair import PairEndpoint, connect_pair

# Executor threads (at most min(32, cpus + 4)) plus libdatachannel's pool, which is sized from
# the number of cores: both fixed, whatever the number of peers.
THREAD_ALLOWANCE = min(32, (os.cpu_count() or 1) + 4) + (os.cpu_count() or 1) + 2


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _os_threads() -> int:
    # Native threads that never called into Python are invisible to threading.
    return len(os.listdir("/proc/self/task"))


def _tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


async def _settle(baseline_fds: int, baseline_tasks: set[asyncio.Task[object]]) -> None:
    """Wait (bounded) for teardown that finishes just after close() returns."""
    for _ in range(200):
        if _fds() <= baseline_fds and _tasks() <= baseline_tasks:
            return
        await asyncio.sleep(0.025)


async def _open_close(backends: tuple[Backend, Backend], rounds: int) -> None:
    for i in range(rounds):
        pair = await connect_pair(*backends)
        await pair.offerer.send(i.to_bytes(4, "big"))
        assert await pair.answer_events.next_message() == i.to_bytes(4, "big")
        # Alternate who closes first, so both close paths (local and remote-initiated) run.
        if i % 2:
            await pair.answerer.close()
        await pair.close()


async def _abandon_mid_negotiation(backends: tuple[Backend, Backend], rounds: int) -> None:
    """Peers closed before ICE completes: offer made, answer never applied."""
    for _ in range(rounds):
        offer_backend, answer_backend = backends
        offerer = offer_backend.create_peer([], PairEndpoint("offerer"))
        answerer = answer_backend.create_peer([], PairEndpoint("answerer"))
        offer = await offerer.create_offer()
        await answerer.accept_offer(offer)
        await asyncio.gather(offerer.close(), answerer.close())


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_many_pairs_leak_no_tasks_threads_or_fds(backends: tuple[Backend, Backend]) -> None:
    await _open_close(backends, 1)
    await _abandon_mid_negotiation(backends, 1)
    baseline_fds, baseline_threads = _fds(), _os_threads()
    baseline_tasks = _tasks()
    baseline_py_threads = threading.active_count()

    await _open_close(backends, 200)
    await _abandon_mid_negotiation(backends, 20)

    await _settle(baseline_fds, baseline_tasks)
    assert _tasks() <= baseline_tasks, [t.get_coro() for t in _tasks() - baseline_tasks]
    assert _fds() <= baseline_fds, os.listdir("/proc/self/fd")
    assert _os_threads() <= baseline_threads + THREAD_ALLOWANCE
    assert threading.active_count() <= baseline_py_threads + THREAD_ALLOWANCE
