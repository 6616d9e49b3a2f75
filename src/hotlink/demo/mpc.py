"""A small additive-secret-sharing app that runs over hotlink TCP tunnels.

Each party holds a private vector. It splits every element into random shares that sum to
the element modulo a prime, keeps one share and sends one to each peer; each party adds the
shares it holds into a partial sum and sends that to every peer; the sum of all partial sums
is the sum of all inputs, and no party ever saw another party's input in the clear. It is
the shape of the reference's 3-party scenario, whose inputs [1,1,1], [1,1,2], [1,1,1] must
give [3,3,4] at every party.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import struct
from collections.abc import Mapping, Sequence

PRIME = (1 << 61) - 1
_LEN = struct.Struct(">I")
MAX_MESSAGE = 1 << 20


def split_shares(value: int, parties: int) -> list[int]:
    """``parties`` random shares that add up to ``value`` modulo PRIME."""
    shares = [secrets.randbelow(PRIME) for _ in range(parties - 1)]
    shares.append((value - sum(shares)) % PRIME)
    return shares


async def _send(writer: asyncio.StreamWriter, obj: object) -> None:
    body = json.dumps(obj).encode()
    writer.write(_LEN.pack(len(body)) + body)
    await writer.drain()


async def _recv(reader: asyncio.StreamReader) -> list[int]:
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if size > MAX_MESSAGE:
        raise ValueError(f"mpc message of {size} bytes is larger than {MAX_MESSAGE}")
    data = json.loads(await reader.readexactly(size))
    if not isinstance(data, list) or not all(isinstance(x, int) for x in data):
        raise ValueError("mpc message must be a list of integers")
    return data


async def _exchange(
    links: Mapping[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    outgoing: Mapping[int, list[int]],
) -> dict[int, list[int]]:
    """Send each peer its vector and read one vector back from each, all at once."""
    await asyncio.gather(*(_send(links[peer][1], vec) for peer, vec in outgoing.items()))
    replies = await asyncio.gather(*(_recv(links[peer][0]) for peer in outgoing))
    return dict(zip(outgoing, replies, strict=True))


async def run_party(
    party: int,
    inputs: Sequence[int],
    peer_ports: Mapping[int, int],
    host: str = "127.0.0.1",
    connect_timeout: float = 30.0,
) -> list[int]:
    """Run one party: connect to the local proxy port of each pairwise channel, return the sum."""
    parties = len(peer_ports) + 1
    links: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
    try:
        for peer, port in sorted(peer_ports.items()):
            links[peer] = await asyncio.wait_for(
                asyncio.open_connection(host, port), connect_timeout
            )
        # shares[i][k] is the share of element k meant for party i (party ids 0..n-1).
        per_element = [split_shares(v, parties) for v in inputs]
        shares = {i: [col[i] for col in per_element] for i in range(parties)}
        received = await _exchange(links, {peer: shares[peer] for peer in peer_ports})
        partial = [
            (mine + sum(vec[k] for vec in received.values())) % PRIME
            for k, mine in enumerate(shares[party])
        ]
        partials = await _exchange(links, {peer: partial for peer in peer_ports})
        return [
            (p + sum(vec[k] for vec in partials.values())) % PRIME for k, p in enumerate(partial)
        ]
    finally:
        for _, writer in links.values():
            writer.close()
        for _, writer in links.values():
            try:
                await writer.wait_closed()
            except OSError:
                pass
