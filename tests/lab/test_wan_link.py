"""The user-space link's delay line, on UDP sockets instead of TAP devices (no root needed):
frames arrive in order, none invented, and a lossy line drops some but keeps the order."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator

import pytest

from hotlink.lab.wan_link import DelayLine


def udp_pair() -> tuple[socket.socket, socket.socket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    for s in (a, b):
        # Room for every frame of a test at once: the socket must not be what drops them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


async def pass_frames(
    sockets: list[socket.socket], count: int, *, delay: float, loss: float
) -> list[int]:
    """Send ``count`` numbered frames through a delay line; return the numbers that arrived."""
    loop = asyncio.get_running_loop()
    feed, line_in = udp_pair()
    line_out, sink = udp_pair()
    sockets += [feed, line_in, line_out, sink]
    stop = asyncio.Event()
    line = DelayLine(
        line_in.fileno(), line_out.fileno(), stop, delay=delay, loss=loss, rng=random.Random(7)
    )
    loop.add_reader(line_in.fileno(), line.on_readable)
    got: list[int] = []
    try:
        for i in range(count):
            feed.send(i.to_bytes(4, "big") * 100)
            if i % 20 == 19:
                await asyncio.sleep(0.002)
        # Every frame is delivered or counted as dropped by the line: wait for all of them
        # (the timeout is a failure guard only).
        async with asyncio.timeout(30):
            while len(got) + line.dropped < count:
                try:
                    async with asyncio.timeout(0.05):
                        frame = await loop.sock_recv(sink, 2048)
                except TimeoutError:
                    continue  # look at line.dropped again
                got.append(int.from_bytes(frame[:4], "big"))
    finally:
        loop.remove_reader(line_in.fileno())
    return got


async def test_delayed_frames_arrive_all_and_in_order(sockets: list[socket.socket]) -> None:
    got = await pass_frames(sockets, 200, delay=0.005, loss=0.0)
    assert got == list(range(200))


async def test_a_lossy_line_drops_some_and_keeps_order(sockets: list[socket.socket]) -> None:
    got = await pass_frames(sockets, 200, delay=0.002, loss=0.2)
    assert 0 < len(got) < 200
    assert got == sorted(set(got))
