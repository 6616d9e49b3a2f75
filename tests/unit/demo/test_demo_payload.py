"""The demo's payload checker catches every kind of damage, and sizes parse as people type them."""

from __future__ import annotations

import pytest

from hotlink.demo.payload import BLOCK, StreamChecker, parse_size, stream_blocks

SIZE = 2 * BLOCK + 12345


def _stream(size: int = SIZE) -> bytes:
    return b"".join(stream_blocks(size))


def _check(data: bytes, size: int = SIZE, piece: int = 60 * 1024) -> StreamChecker:
    checker = StreamChecker(size)
    for i in range(0, len(data), piece):
        checker.feed(data[i : i + piece])
    return checker


def test_the_intact_stream_passes_in_any_read_sizes() -> None:
    data = _stream()
    assert len(data) == SIZE
    for piece in (1, 7, 4096, 60 * 1024, BLOCK, SIZE):
        if piece == 1:
            data_small = data[: 3 * 4096]
            checker = _check(data_small, size=len(data_small), piece=1)
        else:
            checker = _check(data, piece=piece)
        assert checker.ok and checker.complete


def test_one_flipped_byte_is_reported_at_its_offset() -> None:
    data = bytearray(_stream())
    data[BLOCK + 99] ^= 0x01
    checker = _check(bytes(data))
    assert checker.mismatch is not None
    assert checker.mismatch.offset == BLOCK + 99
    assert "differs" in checker.mismatch.describe()


def test_swapped_chunks_are_caught() -> None:
    data = _stream()
    chunk = 60 * 1024
    swapped = data[chunk : 2 * chunk] + data[:chunk] + data[2 * chunk :]
    checker = _check(swapped)
    assert checker.mismatch is not None and checker.mismatch.offset == 0


def test_same_offset_in_another_block_is_caught() -> None:
    # Block-sized repetition (a stale block delivered twice) must not look right.
    data = _stream()
    repeated = data[:BLOCK] + data[:BLOCK] + data[2 * BLOCK :]
    checker = _check(repeated)
    assert checker.mismatch is not None and checker.mismatch.offset >= BLOCK


def test_missing_bytes_leave_it_incomplete_and_extra_bytes_fail() -> None:
    data = _stream()
    short = _check(data[:-1])
    assert short.ok and not short.complete
    extra = _check(data + b"x")
    assert extra.mismatch is not None and extra.mismatch.expected is None
    assert extra.mismatch.offset == SIZE


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 << 20), ("4mib", 4 << 20), ("1GiB", 1 << 30), ("100MB", 100_000_000),
     ("512KiB", 512 << 10), ("4096", 4096), ("1.5MiB", 3 << 19)],
)  # fmt: skip
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "-1", "0", "12 parsecs"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
