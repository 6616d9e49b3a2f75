"""Reorder buffer: exactly once, in order; bounded; gap timeout with injected time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.reorder import GapTimeout, ReorderBuffer, ReorderOverflow


def _payload(seq: int) -> bytes:
    return seq.to_bytes(4, "big")


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.data())))
def test_any_permutation_with_duplicates_delivers_each_seq_once_in_order(
    args: tuple[int, st.DataObject],
) -> None:
    n, data = args
    seqs = list(range(1, n + 1))
    dups = data.draw(st.lists(st.sampled_from(seqs), max_size=n))
    arrival = data.draw(st.permutations(seqs + dups))
    buf = ReorderBuffer()
    out: list[bytes] = []
    for t, seq in enumerate(arrival):
        out.extend(buf.push(seq, _payload(seq), now=float(t)))
    assert out == [_payload(s) for s in seqs]
    assert buf.next_seq == n + 1
    assert buf.pending == 0
    assert buf.pending_bytes == 0
    assert buf.gap_since is None
    assert buf.duplicates == len(dups)
    assert buf.delivered == n


def test_in_order_passes_straight_through() -> None:
    buf = ReorderBuffer()
    for seq in range(1, 6):
        assert buf.push(seq, b"x%d" % seq, 0.0) == [b"x%d" % seq]
    assert buf.gap_since is None


def test_out_of_order_releases_run() -> None:
    buf = ReorderBuffer()
    assert buf.push(3, b"c", 0.0) == []
    assert buf.push(2, b"b", 0.0) == []
    assert (buf.pending, buf.pending_bytes) == (2, 2)
    assert buf.push(1, b"a", 1.0) == [b"a", b"b", b"c"]
    assert buf.next_seq == 4


def test_stale_and_repeated_seqs_are_duplicates() -> None:
    buf = ReorderBuffer()
    buf.push(1, b"a", 0.0)
    assert buf.push(1, b"a", 0.0) == []
    assert buf.push(0, b"?", 0.0) == []  # below the first seq
    buf.push(3, b"c", 0.0)
    assert buf.push(3, b"c", 0.0) == []
    assert buf.duplicates == 3
    assert buf.pending == 1


def test_custom_start_seq() -> None:
    buf = ReorderBuffer(next_seq=0)
    assert buf.push(0, b"z", 0.0) == [b"z"]
    assert buf.next_seq == 1


def test_overflow_on_count() -> None:
    buf = ReorderBuffer(max_pending=3)
    for seq in (2, 3, 4):
        buf.push(seq, b"x", 0.0)
    with pytest.raises(ReorderOverflow):
        buf.push(5, b"x", 0.0)


def test_overflow_on_bytes() -> None:
    buf = ReorderBuffer(max_pending_bytes=10)
    buf.push(2, b"x" * 6, 0.0)
    with pytest.raises(ReorderOverflow, match="bytes"):
        buf.push(3, b"x" * 5, 0.0)
    # Exactly at the limit is fine.
    buf.push(3, b"x" * 4, 0.0)
    assert buf.pending_bytes == 10


def test_seq_too_far_ahead_overflows_at_once() -> None:
    buf = ReorderBuffer(max_pending=100)
    buf.push(101, b"x", 0.0)  # 100 ahead: reachable with 100 held frames
    with pytest.raises(ReorderOverflow, match="ahead"):
        buf.push(2**63, b"x", 0.0)


def test_overflow_is_a_protocol_error() -> None:
    assert issubclass(ReorderOverflow, ProtocolError)
    assert issubclass(GapTimeout, ProtocolError)


def test_gap_timeout_with_injected_time() -> None:
    buf = ReorderBuffer(gap_timeout=30.0)
    buf.check(1000.0)  # nothing held: never times out
    buf.push(2, b"b", 100.0)
    assert buf.gap_since == 100.0
    buf.check(129.9)
    with pytest.raises(GapTimeout, match="seq 1 missing"):
        buf.check(130.0)


def test_progress_restarts_the_gap_clock() -> None:
    buf = ReorderBuffer(gap_timeout=10.0)
    buf.push(2, b"b", 0.0)
    buf.push(4, b"d", 5.0)
    assert buf.gap_since == 0.0
    assert buf.push(1, b"a", 9.0) == [b"a", b"b"]
    # seq 3 is now missing; its wait starts at the time of the progress.
    assert buf.gap_since == 9.0
    buf.check(18.9)
    with pytest.raises(GapTimeout):
        buf.check(19.0)
    assert buf.push(3, b"c", 19.5) == [b"c", b"d"]
    assert buf.gap_since is None
    buf.check(1e9)


def test_duplicates_do_not_touch_the_gap_clock() -> None:
    buf = ReorderBuffer(gap_timeout=10.0)
    buf.push(3, b"c", 0.0)
    buf.push(3, b"c", 8.0)
    assert buf.gap_since == 0.0
