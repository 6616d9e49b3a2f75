"""BoundedQueue: bounds by items and bytes, FIFO, close wakes everyone."""

from __future__ import annotations

import asyncio

import pytest

from hotlink.client.session.queues import BoundedQueue, QueueClosed
from unit.client.client_fakes import until


def _queue(items: int = 3, nbytes: int = 10) -> BoundedQueue[bytes]:
    return BoundedQueue(items, nbytes, len)


async def test_fifo_and_byte_bound() -> None:
    q = _queue()
    assert q.put_nowait(b"12345")
    assert q.put_nowait(b"12345")
    assert not q.put_nowait(b"1")  # 11 bytes would exceed the 10-byte bound
    assert await q.get() == b"12345"
    assert q.put_nowait(b"1")
    assert [await q.get(), await q.get()] == [b"12345", b"1"]


async def test_item_bound_and_oversized_item_alone() -> None:
    q = _queue(items=2, nbytes=4)
    assert q.put_nowait(b"way too big")  # an empty queue takes any single item
    assert not q.put_nowait(b"x")
    await q.get()
    assert q.put_nowait(b"a") and q.put_nowait(b"b")
    assert not q.put_nowait(b"c")


async def test_put_waits_for_room() -> None:
    q = _queue(items=1)
    q.put_nowait(b"a")
    putter = asyncio.create_task(q.put(b"b"))
    await asyncio.sleep(0.01)
    assert not putter.done()
    assert await q.get() == b"a"
    await putter
    assert await q.get() == b"b"


async def test_timeouts() -> None:
    q = _queue(items=1)
    with pytest.raises(TimeoutError):
        await q.get(within=0.01)
    q.put_nowait(b"a")
    with pytest.raises(TimeoutError):
        await q.put(b"b", within=0.01)


async def test_close_wakes_getters_and_putters_with_the_reason() -> None:
    q = _queue(items=1)
    q.put_nowait(b"a")
    putter = asyncio.create_task(q.put(b"b"))
    empty = _queue()
    getter = asyncio.create_task(empty.get())
    await asyncio.sleep(0.01)
    q.close("peer left")
    empty.close("bye")
    with pytest.raises(QueueClosed, match="peer left"):
        await putter
    with pytest.raises(QueueClosed, match="bye"):
        await getter
    with pytest.raises(QueueClosed):
        q.put_nowait(b"c")
    with pytest.raises(QueueClosed):
        q.put_final(b"c")
    await until(lambda: len(q) == 0)


async def test_put_final_ignores_the_bound() -> None:
    q = _queue(items=1)
    q.put_nowait(b"a")
    q.put_final(b"end")
    assert [await q.get(), await q.get()] == [b"a", b"end"]
