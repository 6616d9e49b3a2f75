"""The client's memory ledger for inbound sessions: per-peer and total bounds, never leaking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.client.session.budget import (
    ITEM_OVERHEAD,
    STREAMS_PER_PEER,
    BudgetExceeded,
    BudgetLease,
    BudgetLimits,
    MemoryBudget,
    held_cost,
)
from hotlink.protocol.flow import DEFAULT_WINDOW, MAX_FRAME, MIB, ReceiveCredit

BOB = "bob@example.com"
CAROL = "carol@example.com"


def test_defaults_leave_room_for_eight_streams_that_follow_credit_per_peer() -> None:
    limits = BudgetLimits()
    assert limits == BudgetLimits.for_window(DEFAULT_WINDOW)
    assert (limits.bytes_per_peer, limits.bytes_total) == (128 * MIB, 256 * MIB)
    assert (limits.sessions_per_peer, limits.sessions_total) == (64, 1024)
    # A sender that follows credit makes a session hold at most a window plus the frame it
    # started just below its limit: with 64 KiB frames (the tunnel's chunks), and with the
    # largest frame a WebSocket message carries (its envelope takes some of the 8 MiB).
    chunk = 64 * 1024
    for frames in (
        [chunk] * (DEFAULT_WINDOW // chunk + 1),
        [DEFAULT_WINDOW - 1, MAX_FRAME - 1024],
    ):
        budget = MemoryBudget(limits)
        for _ in range(STREAMS_PER_PEER):
            lease = budget.open(BOB)
            for size in frames:
                lease.charge(held_cost(size))
        assert budget.held_by(BOB) <= limits.bytes_per_peer
    # One peer alone never reaches the total, so other peers still have room.
    assert limits.bytes_per_peer <= limits.bytes_total // 2
    # Per peer, the bound stops a sender that ignores credit well before many sessions each
    # holding their own hard limit could add up (the 12 x 31 MiB).
    assert 12 * ReceiveCredit(DEFAULT_WINDOW).hard_limit > limits.bytes_per_peer


def test_defaults_follow_a_larger_window() -> None:
    window = 64 * MIB
    limits = BudgetLimits.for_window(window)
    assert limits.bytes_per_peer == STREAMS_PER_PEER * (window + MAX_FRAME)
    assert limits.bytes_total == 2 * limits.bytes_per_peer
    assert BudgetLimits.for_window(64 * 1024).bytes_total == 256 * MIB


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="bytes_total"):
        BudgetLimits(bytes_total=0)


def test_sessions_per_peer_are_capped_without_touching_other_peers() -> None:
    budget = MemoryBudget(BudgetLimits(sessions_per_peer=2, sessions_total=3))
    first = budget.open(BOB)
    budget.open(BOB)
    with pytest.raises(BudgetExceeded, match="too many sessions from bob@") as exc:
        budget.open(BOB)
    assert exc.value.scope == "peer"
    budget.open(CAROL)  # another peer is not affected by bob's cap
    with pytest.raises(BudgetExceeded, match="too many inbound sessions") as exc:
        budget.open("dave@example.com")
    assert exc.value.scope == "total"
    assert budget.refused_opens == 2
    first.close()
    budget.open(BOB)  # a slot that ends is free again
    assert (budget.sessions_of(BOB), budget.sessions) == (2, 3)


def test_bytes_are_bounded_per_peer_and_in_total() -> None:
    budget = MemoryBudget(BudgetLimits(bytes_per_peer=100, bytes_total=150))
    bob1, bob2, carol = budget.open(BOB), budget.open(BOB), budget.open(CAROL)
    bob1.charge(60)
    bob2.charge(40)
    with pytest.raises(BudgetExceeded, match="memory budget of bob@") as exc:
        bob2.charge(1)
    assert exc.value.scope == "peer"
    assert budget.held_by(BOB) == 100  # a refused charge charges nothing
    carol.charge(50)
    with pytest.raises(BudgetExceeded, match="client's memory budget") as exc:
        carol.charge(1)
    assert exc.value.scope == "total"
    bob1.release(60)  # bob's app took its bytes: room for carol again
    carol.charge(1)
    assert budget.refused_frames == 2


def test_closing_a_lease_gives_back_everything_once() -> None:
    budget = MemoryBudget(BudgetLimits(bytes_per_peer=100))
    lease = budget.open(BOB)
    lease.charge(70)
    lease.release(500)  # more than held: clamped, never negative
    assert lease.held == 0 and budget.held == 0
    lease.charge(30)
    lease.close()
    lease.close()
    lease.release(10)
    assert (budget.held, budget.sessions, budget.peers) == (0, 0, 0)
    with pytest.raises(BudgetExceeded):
        lease.charge(1)


def test_held_cost_counts_the_objects_of_a_frame() -> None:
    assert held_cost(0) == ITEM_OVERHEAD
    assert held_cost(1000) == 1000 + ITEM_OVERHEAD


# ---------------------------------------------------------------- property

PEERS = ("a", "b", "c")
ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.sampled_from(PEERS), st.just(0)),
        st.tuples(st.just("charge"), st.integers(0, 20), st.integers(0, 60)),
        st.tuples(st.just("release"), st.integers(0, 20), st.integers(0, 80)),
        st.tuples(st.just("close"), st.integers(0, 20), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_ledger_matches_a_model_and_never_goes_past_a_bound(
    steps: list[tuple[str, object, int]],
) -> None:
    limits = BudgetLimits(
        sessions_per_peer=3, sessions_total=6, bytes_per_peer=100, bytes_total=160
    )
    budget = MemoryBudget(limits)
    leases: list[BudgetLease] = []
    model: dict[int, tuple[str, int]] = {}  # lease index -> (peer, held) for live leases
    for op, who, n in steps:
        if op == "open":
            assert isinstance(who, str)
            per_peer = sum(1 for p, _ in model.values() if p == who)
            fits = per_peer < limits.sessions_per_peer and len(model) < limits.sessions_total
            try:
                leases.append(budget.open(who))
            except BudgetExceeded:
                assert not fits
            else:
                assert fits
                model[len(leases) - 1] = (who, 0)
            continue
        assert isinstance(who, int)
        if not leases:
            continue
        i = who % len(leases)
        lease = leases[i]
        if op == "charge":
            if i not in model:
                with pytest.raises(BudgetExceeded):
                    lease.charge(n)
                continue
            peer, held = model[i]
            peer_held = sum(h for p, h in model.values() if p == peer)
            total = sum(h for _, h in model.values())
            fits = peer_held + n <= limits.bytes_per_peer and total + n <= limits.bytes_total
            try:
                lease.charge(n)
            except BudgetExceeded:
                assert not fits
            else:
                assert fits
                model[i] = (peer, held + n)
        elif op == "release":
            lease.release(n)
            if i in model:
                peer, held = model[i]
                model[i] = (peer, held - min(n, held))
        else:
            lease.close()
            model.pop(i, None)
        # The invariants after every step.
        assert budget.held == sum(h for _, h in model.values()) <= limits.bytes_total
        assert budget.sessions == len(model)
        for peer in PEERS:
            assert budget.held_by(peer) == sum(h for p, h in model.values() if p == peer)
            assert budget.held_by(peer) <= limits.bytes_per_peer
            assert budget.sessions_of(peer) == sum(1 for p, _ in model.values() if p == peer)
        assert all(lease.held == model[j][1] for j, lease in enumerate(leases) if j in model)
    for lease in leases:
        lease.close()
    assert (budget.held, budget.sessions, budget.peers) == (0, 0, 0)
