"""The p2p_host hint: its tag, its wire form, and the MTU a sender picks from it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.locality import (
    MAX_HOST_TOKEN,
    HostHint,
    MtuPolicy,
    encode_hint,
    host_tag,
    parse_hint,
)

STACK = b"6a547e42-959f-4904-81ac-b72f8355a9d5/net:[4026531833]"
OTHER_STACK = b"6a547e42-959f-4904-81ac-b72f8355a9d5/net:[4026532290]"
SID = "0123456789abcdef0123456789abcdef"


def test_a_tag_names_one_stack_for_one_session() -> None:
    tag = host_tag(STACK, SID)
    assert len(tag) == 32 and int(tag, 16) >= 0
    assert host_tag(STACK, SID) == tag
    # Another namespace, or another session: nothing to match against.
    assert host_tag(OTHER_STACK, SID) != tag
    assert host_tag(STACK, SID[::-1]) != tag
    # The stack id itself does not show.
    assert "4026531833" not in tag


@given(host=st.text("0123456789abcdef", min_size=32, max_size=32), mtu=st.integers(0, 65535))
def test_a_hint_survives_its_wire_form(host: str, mtu: int) -> None:
    hint = HostHint(host, mtu)
    tok = encode_hint(hint)
    assert len(tok) <= MAX_HOST_TOKEN
    assert parse_hint(tok) == hint


def test_unknown_keys_and_newer_versions_are_read_for_what_they_carry() -> None:
    tok = json.dumps({"v": 2, "host": "a" * 32, "mtu": 4096, "later": [1, 2]})
    assert parse_hint(tok) == HostHint("a" * 32, 4096)


@pytest.mark.parametrize(
    "tok",
    [
        "",
        "not json",
        "[]",
        '{"mtu": 4096}',
        '{"host": "A' + "a" * 31 + '", "mtu": 4096}',  # not lower-case hex
        '{"host": "' + "a" * 31 + '", "mtu": 4096}',
        '{"host": "' + "g" * 32 + '", "mtu": 4096}',
        '{"host": "' + "a" * 32 + '", "mtu": -1}',
        '{"host": "' + "a" * 32 + '", "mtu": 65536}',
        '{"host": "' + "a" * 32 + '", "mtu": true}',
        '{"host": "' + "a" * 32 + '", "mtu": "4096"}',
        '{"host": "' + "a" * 32 + '", "mtu": 4096, "pad": "' + "x" * 300 + '"}',
    ],
)
def test_a_bad_token_is_a_protocol_error(tok: str) -> None:
    with pytest.raises(ProtocolError, match="p2p_host token"):
        parse_hint(tok)


@given(st.text(max_size=400))
def test_any_text_parses_or_is_a_protocol_error(tok: str) -> None:
    try:
        hint = parse_hint(tok)
    except ProtocolError:
        return
    assert len(hint.host) == 32 and 0 <= hint.mtu <= 65535


SAME_HOST = MtuPolicy(same_host=4096, stack_id=STACK)


def _offerer_hint(stack: bytes = STACK, mtu: int = 4096) -> HostHint:
    hint = MtuPolicy(same_host=mtu, stack_id=stack).hint(SID)
    assert hint is not None
    return hint


def test_peers_on_one_stack_use_large_packets() -> None:
    assert SAME_HOST.sender_mtu(SID, _offerer_hint()) == 4096
    # The smaller of what the two stacks take.
    assert SAME_HOST.sender_mtu(SID, _offerer_hint(mtu=2048)) == 2048


def test_anything_else_keeps_the_default() -> None:
    assert SAME_HOST.sender_mtu(SID, None) == 0  # a reference peer, or a late hint
    assert SAME_HOST.sender_mtu(SID, _offerer_hint(OTHER_STACK)) == 0  # another namespace
    assert SAME_HOST.sender_mtu("another-session", _offerer_hint()) == 0  # a replayed hint
    assert SAME_HOST.sender_mtu(SID, _offerer_hint(mtu=1280)) == 0  # takes only the default
    no_id = MtuPolicy(same_host=4096, stack_id=None)
    assert no_id.hint(SID) is None and no_id.sender_mtu(SID, _offerer_hint()) == 0
    cannot = MtuPolicy(same_host=0, stack_id=STACK)  # aiortc: a fixed packet size
    assert cannot.hint(SID) is None and cannot.sender_mtu(SID, _offerer_hint()) == 0
    turn = MtuPolicy(same_host=4096, stack_id=STACK, relay_only=True)
    assert turn.hint(SID) is None and turn.sender_mtu(SID, _offerer_hint()) == 0


def test_a_pinned_mtu_wins() -> None:
    pinned = MtuPolicy(configured=1280, same_host=4096, stack_id=STACK)
    assert pinned.sender_mtu(SID, _offerer_hint()) == 1280
    assert pinned.sender_mtu(SID, None) == 1280
    # A pinned sender still tells its peers what it takes as a receiver.
    assert pinned.hint(SID) == HostHint(host_tag(STACK, SID), 4096)
