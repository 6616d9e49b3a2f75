"""The demo's payload: a deterministic pseudo-random byte stream, and a checker for it.

The sender produces the stream block by block; the receiver regenerates it and compares every
byte as it arrives, so a 64 MiB transfer is checked without keeping 64 MiB in memory, and a
wrong, missing, repeated or reordered chunk is reported with the offset of the first byte
that differs. Each 1 MiB block is SHAKE-128 of (seed, block index), so no two blocks (and no
two chunks at different offsets) look alike.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

BLOCK = 1024 * 1024
DEFAULT_SEED = b"hotlink-demo"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``64MiB`` -> 67108864; accepts B, KB/KiB, MB/MiB, GB/GiB (case-insensitive) or bytes."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 4MiB, 64MiB, 1GiB or a number of bytes)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return size


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def block(index: int, seed: bytes = DEFAULT_SEED) -> bytes:
    """Block ``index`` (``BLOCK`` bytes) of the stream."""
    return hashlib.shake_128(seed + index.to_bytes(8, "big")).digest(BLOCK)


def stream_blocks(size: int, seed: bytes = DEFAULT_SEED) -> Iterator[bytes]:
    """The first ``size`` bytes of the stream, as ``BLOCK``-sized pieces (the last shorter)."""
    index = 0
    sent = 0
    while sent < size:
        piece = block(index, seed)[: size - sent]
        yield piece
        sent += len(piece)
        index += 1


@dataclass
class Mismatch:
    offset: int
    expected: int | None  # None: more bytes arrived than were sent
    got: int

    def describe(self) -> str:
        if self.expected is None:
            return f"unexpected extra byte 0x{self.got:02x} at offset {self.offset}"
        return f"byte {self.offset} differs: expected 0x{self.expected:02x}, got 0x{self.got:02x}"


class StreamChecker:
    """Compares received bytes with the expected stream of ``size`` bytes, incrementally."""

    def __init__(self, size: int, seed: bytes = DEFAULT_SEED) -> None:
        self.size = size
        self.seed = seed
        self.received = 0
        self.mismatch: Mismatch | None = None
        self._block_index = -1
        self._block = b""

    @property
    def complete(self) -> bool:
        return self.received >= self.size

    @property
    def ok(self) -> bool:
        """Every byte so far matched and nothing extra arrived (not: everything arrived)."""
        return self.mismatch is None

    def _expected(self, offset: int) -> bytes:
        index = offset // BLOCK
        if index != self._block_index:
            self._block_index = index
            self._block = block(index, self.seed)
        return self._block

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Check the next received bytes; remembers the first byte that differs."""
        view = memoryview(data)
        while len(view):
            pos = self.received
            if pos >= self.size:
                if self.mismatch is None:
                    self.mismatch = Mismatch(pos, None, view[0])
                self.received += len(view)
                return
            expected = self._expected(pos)
            start = pos % BLOCK
            n = min(len(view), BLOCK - start, self.size - pos)
            want = expected[start : start + n]
            got = view[:n]
            if self.mismatch is None and got != want:
                i = next(k for k in range(n) if got[k] != want[k])
                self.mismatch = Mismatch(pos + i, want[i], got[i])
            self.received += n
            view = view[n:]
