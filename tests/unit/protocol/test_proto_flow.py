"""Flow credit: tokens round-trip, bad tokens are refused, and a sender that follows the
grants never makes the receiver hold more than its window plus one frame, whatever the
interleaving of sends, consumption and (delayed, repeated, reordered) grants."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.flow import (
    MAX_FRAME,
    MIN_WINDOW,
    Credit,
    ReceiveCredit,
    SendCredit,
    credit_token,
    parse_credit_token,
)

counts = st.integers(0, (1 << 63) - 1)


@given(counts, counts)
def test_token_round_trip(limit: int, window: int) -> None:
    credit = Credit(limit, window)
    assert parse_credit_token(credit_token(credit)) == credit


def test_token_wire_form() -> None:
    assert credit_token(Credit(8388608, 8388608)) == '{"v":1,"limit":8388608,"window":8388608}'


def test_newer_versions_are_read_by_their_limit() -> None:
    tok = json.dumps({"v": 7, "limit": 5, "window": 3, "extra": [1, 2]})
    assert parse_credit_token(tok) == Credit(5, 3)
    assert parse_credit_token('{"limit":9}') == Credit(9, 0)


@pytest.mark.parametrize(
    "tok",
    [
        "",
        "nope",
        "[]",
        "12",
        '{"v":1}',
        '{"limit":-1}',
        '{"limit":1.5}',
        '{"limit":true}',
        '{"limit":"5"}',
        '{"limit":9223372036854775808}',
        '{"limit":5,"window":-2}',
        '{"limit":5,"pad":"' + "x" * 300 + '"}',
    ],
)
def test_bad_tokens_are_protocol_errors(tok: str) -> None:
    with pytest.raises(ProtocolError):
        parse_credit_token(tok)


def test_sender_is_unlimited_until_the_first_grant() -> None:
    send = SendCredit()
    send.on_sent(100 * MAX_FRAME)
    assert send.can_send() and not send.controlled and send.available is None
    assert send.on_credit(Credit(10, 10)) is False  # was not blocked before
    assert send.controlled and not send.can_send()
    # A stale (smaller) grant never takes credit back; a larger one opens room.
    send.on_credit(Credit(5, 10))
    assert send.limit == 10
    assert send.on_credit(Credit(100 * MAX_FRAME + 1, 10)) is True
    assert send.available == 1


def test_receiver_grants_a_window_and_more_as_the_app_consumes() -> None:
    recv = ReceiveCredit(MIN_WINDOW * 4)
    first = recv.initial()
    assert first == Credit(recv.window, recv.window)
    recv.on_received(recv.window)
    assert recv.on_consumed(recv.threshold - 1) is None  # not worth a signal yet
    grant = recv.on_consumed(1)
    assert grant is not None and grant.limit == recv.threshold + recv.window
    assert recv.buffered == recv.window - recv.threshold


def test_window_too_small_is_refused() -> None:
    with pytest.raises(ValueError):
        ReceiveCredit(MIN_WINDOW - 1)


# A step of the simulation: the sender sends a frame of this size if it may; the receiver's
# app consumes this many buffered bytes; or the oldest grant in flight arrives (maybe twice).
step = st.one_of(
    st.tuples(st.just("send"), st.integers(1, 70_000)),
    st.tuples(st.just("consume"), st.integers(1, 300_000)),
    st.tuples(st.just("deliver"), st.booleans()),
    st.tuples(st.just("shuffle"), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(st.integers(MIN_WINDOW, 4 * MIN_WINDOW), st.lists(step, max_size=400))
def test_a_sender_that_follows_grants_stays_within_the_window(
    window: int, steps: list[tuple[str, object]]
) -> None:
    send, recv = SendCredit(), ReceiveCredit(window)
    in_flight = [recv.initial()]  # the first grant leaves with the Accept
    # The receiver holds at most a window plus the frame started just below the limit.
    biggest = 0
    for kind, arg in steps:
        if kind == "send":
            assert isinstance(arg, int)
            if send.controlled and send.can_send():
                assert recv.admits(arg)
                send.on_sent(arg)
                recv.on_received(arg)
                biggest = max(biggest, arg)
        elif kind == "consume":
            assert isinstance(arg, int)
            grant = recv.on_consumed(min(arg, recv.buffered))
            if grant is not None:
                in_flight.append(grant)
        elif kind == "deliver" and in_flight:
            grant = in_flight.pop(0)
            send.on_credit(grant)
            if arg:
                in_flight.append(grant)  # the same grant again, later
        elif kind == "shuffle":
            in_flight.reverse()  # grants may overtake each other
        assert recv.buffered <= window + biggest
        assert recv.buffered <= recv.hard_limit
    # No deadlock: once the app has consumed everything and every grant arrived, the sender
    # may send again.
    grant = recv.on_consumed(recv.buffered)
    for g in [*in_flight, *([grant] if grant else [])]:
        send.on_credit(g)
    assert send.can_send()
