"""The secret-sharing app gives every party the sum, over a stand-in for the tunnels."""

from __future__ import annotations

import asyncio
import itertools

from hotlink.demo.mpc import PRIME, run_party, split_shares


def test_shares_add_up_and_look_random() -> None:
    shares = split_shares(42, 3)
    assert sum(shares) % PRIME == 42
    assert len(set(split_shares(1, 3)[0] for _ in range(20))) > 1


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(65536):
        dst.write(data)
        await dst.drain()
    dst.close()


async def _crossover() -> tuple[int, int, list[asyncio.Server]]:
    """Two ports; whatever connects to one talks to whatever connects to the other."""
    waiting: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    ready = asyncio.Event()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        waiting.append((r, w))
        if len(waiting) == 2:
            ready.set()
        await ready.wait()
        other = waiting[1] if waiting[0][1] is w else waiting[0]
        await _pipe(r, other[1])

    servers = [await asyncio.start_server(on_conn, "127.0.0.1", 0) for _ in range(2)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    return ports[0], ports[1], servers


async def test_three_parties_compute_the_reference_sum() -> None:
    ports: dict[int, dict[int, int]] = {0: {}, 1: {}, 2: {}}
    servers = []
    for i, j in itertools.combinations(range(3), 2):
        pi, pj, srv = await _crossover()
        ports[i][j], ports[j][i] = pi, pj
        servers += srv
    inputs = {0: [1, 1, 1], 1: [1, 1, 2], 2: [1, 1, 1]}
    results = await asyncio.wait_for(
        asyncio.gather(*(run_party(p, inputs[p], ports[p]) for p in range(3))), 30
    )
    assert results == [[3, 3, 4]] * 3
    for s in servers:
        s.close()
