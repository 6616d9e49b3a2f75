"""An app's side of a test stream: write a known byte pattern, read it back at a chosen pace,
and say how the stream ended, so every test checks the same contract: every byte in order
and a clean EOF, or a reset after a correct prefix; never a clean EOF after fewer bytes.

    pattern = Pattern()
    sent = await send_stream(writer, 32 * MIB, pattern)          # then write_eof
    got = await read_stream(reader, pattern, [(4e6, 5.0), (0, 15.0)])  # 4 MB/s 5 s, pause 15 s
    assert_whole_or_reset(got, sent)

Block ``i`` of a stream is ``i`` (8 bytes) and then the pattern's random fill, so every
block differs and the reader can check each byte where it stands, not only a final hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

MIB = 1024 * 1024

End = Literal["eof", "reset"]
Phase = tuple[float | None, float]  # (bytes per second, None: full speed, 0: pause; seconds)


class Pattern:
    """The bytes of a test stream: block ``i`` is ``i`` as 8 bytes, then a random fill."""

    def __init__(self, block: int = MIB) -> None:
        self.block = block
        self.fill = os.urandom(block - 8)
        self._last: tuple[int, bytes] = (-1, b"")

    def build(self, index: int) -> bytes:
        return index.to_bytes(8, "big") + self.fill

    def _cached(self, index: int) -> bytes:
        if self._last[0] != index:  # a reader walks the blocks in order: build each once
            self._last = (index, self.build(index))
        return self._last[1]

    def matches(self, offset: int, data: bytes) -> bool:
        """Whether ``data`` is what the stream holds at ``offset``."""
        return self.first_difference(offset, data) is None

    def first_difference(self, offset: int, data: bytes) -> int | None:
        """The stream offset of the first byte of ``data`` (read at ``offset``) that is not
        the pattern's byte there, or None when all are."""
        pos = 0
        while pos < len(data):
            index, within = divmod(offset + pos, self.block)
            take = min(len(data) - pos, self.block - within)
            want = self._cached(index)[within : within + take]
            got = data[pos : pos + take]
            if got != want:
                return offset + pos + next(i for i in range(take) if got[i] != want[i])
            pos += take
        return None

    def locate(self, data: bytes) -> str:
        """Where in the stream ``data`` (at least 16 bytes) could have come from: the block
        whose index it carries, or an offset within the fill (the block is then unknown)."""
        for start in range(len(data) - 7):
            if data[start + 8 : start + 24] == self.fill[:16]:
                index = int.from_bytes(data[start : start + 8], "big")
                return f"block {index} starts {start} bytes further on"
        at = self.fill.find(data[:16])
        return f"fill offset {at + 8} of some block" if at >= 0 else "not from this pattern"


@dataclass(frozen=True)
class Sent:
    """What an app wrote: ``size`` bytes with ``digest``, then ``end`` (its EOF, or the reset
    that stopped it)."""

    size: int
    digest: str
    end: End


@dataclass(frozen=True)
class Received:
    """What an app read before the connection ended with ``end``; ``in_order``: every byte
    was the pattern's byte at its place; otherwise ``first_bad`` says where it went wrong."""

    size: int
    digest: str
    end: End
    in_order: bool
    first_bad: str = ""


async def send_stream(
    writer: asyncio.StreamWriter, size: int, pattern: Pattern, *, eof: bool = True
) -> Sent:
    """Write ``size`` bytes of ``pattern``, then half-close (with ``eof``). A reset stops it;
    ``size`` and ``digest`` then count what was handed to the socket."""
    digest = hashlib.sha256()
    sent = 0
    try:
        for i in range(size // pattern.block):
            data = pattern.build(i)
            writer.write(data)
            await writer.drain()
            digest.update(data)
            sent += len(data)
        if eof:
            writer.write_eof()
            await writer.drain()
    except (ConnectionError, OSError):
        return Sent(sent, digest.hexdigest(), "reset")
    return Sent(sent, digest.hexdigest(), "eof")


async def read_stream(
    reader: asyncio.StreamReader,
    pattern: Pattern,
    phases: Sequence[Phase] = (),
    *,
    timeout: float = 600.0,
) -> Received:
    """Read until EOF or reset: first the ``phases``, then at full speed."""
    digest = hashlib.sha256()
    total = 0
    in_order = True
    first_bad = ""
    loop = asyncio.get_running_loop()

    def take(data: bytes) -> None:
        nonlocal total, in_order, first_bad
        if in_order and (bad := pattern.first_difference(total, data)) is not None:
            in_order = False
            seen = data[bad - total : bad - total + 4096]
            first_bad = (
                f"byte {bad} (block {bad // pattern.block} + {bad % pattern.block}) differs, "
                f"read {len(data)} bytes at {total}; what stands there: {pattern.locate(seen)}"
            )
        digest.update(data)
        total += len(data)

    def received(end: End) -> Received:
        return Received(total, digest.hexdigest(), end, in_order, first_bad)

    try:
        async with asyncio.timeout(timeout):
            for rate, seconds in phases:
                if rate == 0:
                    await asyncio.sleep(seconds)
                    continue
                started, taken = loop.time(), total
                while loop.time() - started < seconds:
                    data = await reader.read(64 * 1024)
                    if not data:
                        return received("eof")
                    take(data)
                    if rate is not None:
                        ahead = (total - taken) / rate - (loop.time() - started)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
            while data := await reader.read(MIB):
                take(data)
    except TimeoutError:
        raise  # a stall is not a reset (TimeoutError is an OSError)
    except (ConnectionError, OSError):
        return received("reset")
    return received("eof")


def assert_whole(got: Received, sent: Sent) -> None:
    """Every byte the app wrote, in order, then a clean EOF."""
    assert sent.end == "eof", f"the sending app was reset after {sent.size} bytes"
    assert got.end == "eof", f"the receiving app was reset after {got.size} of {sent.size} bytes"
    assert got.size == sent.size, f"clean EOF after {got.size} of {sent.size} bytes"
    assert got.in_order and got.digest == sent.digest, f"the bytes differ: {got.first_bad}"


def assert_reset(got: Received) -> None:
    """The stream could not be delivered: a reset, after a correct prefix."""
    assert got.end == "reset", f"the app saw a clean EOF after {got.size} bytes"
    assert got.in_order, f"the bytes before the reset differ from what was sent: {got.first_bad}"


def assert_whole_or_reset(got: Received, sent: Sent) -> None:
    """The contract: every byte and a clean EOF, or a reset. Never a short clean EOF."""
    if got.end == "eof":
        assert_whole(got, sent)
    else:
        assert_reset(got)
