"""A bounded single-consumer queue with byte accounting, used between the client's tasks.

``asyncio.Queue`` bounds only the item count and cannot be closed; sessions need both a byte
bound (a 60 KiB chunk and a 10-byte control item are not the same) and a close that wakes
every waiter with a clear error, so a producer blocked on a dead session never hangs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class QueueClosed(Exception):
    """The queue was closed; ``reason`` says why (the owner's close reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BoundedQueue[T]:
    def __init__(self, max_items: int, max_bytes: int, size: Callable[[T], int]) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._size = size
        self._items: deque[T] = deque()
        self._bytes = 0
        self._closed: str | None = None
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _fits(self, item: T) -> bool:
        if not self._items:
            return True  # an item larger than the bound must still get through, alone
        return (
            len(self._items) < self.max_items and self._bytes + self._size(item) <= self.max_bytes
        )

    def _append(self, item: T) -> None:
        self._items.append(item)
        self._bytes += self._size(item)
        self._ready.set()

    def put_nowait(self, item: T) -> bool:
        """Enqueue if there is room; False when full. Raises QueueClosed when closed."""
        if self._closed is not None:
            raise QueueClosed(self._closed)
        if not self._fits(item):
            return False
        self._append(item)
        return True

    def put_final(self, item: T) -> None:
        """Enqueue regardless of the bound (an end-of-stream marker must never block)."""
        if self._closed is not None:
            raise QueueClosed(self._closed)
        self._append(item)

    async def put(self, item: T, within: float | None = None) -> None:
        """Wait for room, then enqueue. TimeoutError after ``within`` s; QueueClosed."""
        async with asyncio.timeout(within):
            while True:
                if self.put_nowait(item):
                    return
                self._space.clear()
                await self._space.wait()

    async def get(self, within: float | None = None) -> T:
        """The oldest item. TimeoutError after ``within`` s; QueueClosed once closed."""
        async with asyncio.timeout(within):
            while not self._items:
                if self._closed is not None:
                    raise QueueClosed(self._closed)
                self._ready.clear()
                await self._ready.wait()
        if self._closed is not None:
            raise QueueClosed(self._closed)
        item = self._items.popleft()
        self._bytes -= self._size(item)
        self._space.set()
        return item

    def close(self, reason: str) -> None:
        """Drop everything and wake every waiter with QueueClosed(reason)."""
        if self._closed is None:
            self._closed = reason
        self._items.clear()
        self._bytes = 0
        self._ready.set()
        self._space.set()
