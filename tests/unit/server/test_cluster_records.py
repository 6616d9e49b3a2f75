"""The records replicas send each other: wire form and the order of entries per link.

Round trips must give back exactly what was sent, frames keeping their type (a binary
envelope stays bytes, a JSON text frame stays text), and batches keep their order. Only
replicas write inboxes, so anything malformed is a bug or a foreign writer: it must turn
into :class:`ProtocolError` (which the node logs and drops) and never into another
exception, nor into a record carrying values of the wrong type.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.protocol.errors import ProtocolError
from hotlink.server.cluster.records import (
    AclDel,
    AclPut,
    Bye,
    ConnDown,
    ConnInfo,
    ConnUp,
    Deliver,
    EndSession,
    Frame,
    Ingress,
    Kind,
    LinkSeq,
    Order,
    Record,
    Reset,
    Roster,
    pack,
    unpack,
)

# ---------------------------------------------------------------- strategies

ids = st.text(max_size=24)
frames: st.SearchStrategy[Frame] = st.one_of(st.binary(max_size=256), st.text(max_size=256))
infos = st.builds(ConnInfo, ids, ids, ids)
msg_types = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry

roster_records = st.builds(Roster, st.lists(infos, max_size=6).map(tuple), st.booleans())
deliver_records = st.builds(
    Deliver,
    st.lists(ids, max_size=6).map(tuple),
    frames,
    msg_types,
    ids,
    st.booleans(),
    ids,
)
ingress_records = st.builds(Ingress, ids, frames)
acl_put_records = st.builds(AclPut, ids, st.text(max_size=512), ids, frames)

any_record: st.SearchStrategy[Record] = st.one_of(
    roster_records,
    st.builds(ConnUp, infos),
    st.builds(ConnDown, ids),
    deliver_records,
    ingress_records,
    acl_put_records,
    st.builds(AclDel, ids),
    st.builds(EndSession, ids, ids),
    st.just(Reset()),
    st.just(Bye()),
)


def _frame_of(record: Record) -> Frame:
    assert isinstance(record, Deliver | Ingress | AclPut)
    return record.frame


# One of each kind, with values a relay really sends.
EXAMPLES: list[Record] = [
    Roster((ConnInfo("r1~abc/0000000a", "alice@example.org", "msgpack"),), reply=True),
    Roster((), reply=False),
    ConnUp(ConnInfo("r1~abc/0000000b", "bob@example.org", "json")),
    ConnDown("r1~abc/0000000b"),
    Deliver(("r1~abc/0000000a", "r1~abc/0000000c"), b"\x82\xa1t\x04", 4, "m-1", False, "s1"),
    Deliver(("r1~abc/0000000a",), '{"type": 4}', 4, "m-2", True),
    Ingress("r2~def/00000001", b"\x00\x01\xff"),
    Ingress("r2~def/00000001", '{"type": 12}'),
    AclPut("alice@example.org/public/syft.pub.yaml", "rules: []\n", "alice@example.org", b"fw"),
    AclDel("alice@example.org/public/syft.pub.yaml"),
    EndSession("s1", "superseded"),
    Reset(),
    Bye(),
]


def _kind_on_wire(record: Record) -> Kind:
    (fields,) = msgpack.unpackb(pack([record]), raw=False)
    return Kind(fields[0])


def test_examples_cover_every_kind() -> None:
    # Guards the parametrized round trip below: a new kind must get an example.
    assert {_kind_on_wire(r) for r in EXAMPLES} == set(Kind)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_each_kind_round_trips(record: Record) -> None:
    assert unpack(pack([record])) == [record]


@settings(max_examples=400, deadline=None)
@given(any_record)
def test_any_record_round_trips(record: Record) -> None:
    (back,) = unpack(pack([record]))
    assert back == record
    assert type(back) is type(record)


@settings(max_examples=200, deadline=None)
@given(st.one_of(deliver_records, ingress_records, acl_put_records))
def test_frames_keep_their_type(record: Record) -> None:
    (back,) = unpack(pack([record]))
    assert type(_frame_of(back)) is type(_frame_of(record))
    assert _frame_of(back) == _frame_of(record)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        "",
        b"hello",  # bytes that are valid UTF-8 stay bytes
        "hello",
        b"\xff\xfe",  # bytes that are not UTF-8
        "\u00e9\U0001f600",  # text beyond ASCII stays text
        bytes(range(256)) * 64,  # 16 KiB
    ],
    ids=repr,
)
def test_frame_type_is_kept_for_every_frame_kind(frame: Frame) -> None:
    batch: list[Record] = [
        Deliver(("c",), frame, 4, "m", False, "s"),
        Ingress("c", frame),
        AclPut("p", "t", "u", frame),
    ]
    back = unpack(pack(batch))
    assert back == batch
    assert [type(_frame_of(r)) for r in back] == [type(frame)] * 3


def test_roster_keeps_every_connection_in_order() -> None:
    conns = tuple(ConnInfo(f"r~x/{i:08x}", f"u{i % 7}@example.org", "msgpack") for i in range(500))
    assert unpack(pack([Roster(conns, reply=True)])) == [Roster(conns, reply=True)]


def test_deliver_sid_defaults_to_empty() -> None:
    (back,) = unpack(pack([Deliver(("c",), b"f", 4, "m", False)]))
    assert isinstance(back, Deliver)
    assert back.sid == ""


def test_empty_batch_round_trips() -> None:
    assert unpack(pack([])) == []


@settings(max_examples=150, deadline=None)
@given(st.lists(any_record, max_size=60))
def test_a_batch_keeps_its_order(batch: list[Record]) -> None:
    assert unpack(pack(batch)) == batch


def test_a_large_batch_keeps_its_order() -> None:
    batch: list[Record] = []
    for i in range(3000):
        batch.append(Deliver((f"c{i % 5}",), i.to_bytes(4, "big"), 4, f"m{i}", False, "s"))
        if i % 100 == 0:
            batch.append(ConnUp(ConnInfo(f"c{i}", "u", "json")))
    back = unpack(pack(batch))
    assert back == batch
    delivered = [r.frame for r in back if isinstance(r, Deliver)]
    assert delivered == [i.to_bytes(4, "big") for i in range(3000)]


def test_pack_refuses_what_is_not_a_record() -> None:
    with pytest.raises(TypeError):
        pack([ConnInfo("c", "u", "e")])  # type: ignore[list-item]


# ---------------------------------------------------------------- malformed input


def _mp(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


MALFORMED: list[Any] = [
    # not msgpack at all, or not all of it
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="reserved-byte"),
    pytest.param(b"\x92\x91", id="truncated"),
    pytest.param(b"\xdd\xff\xff\xff\xff", id="array-longer-than-input"),
    pytest.param(_mp([]) + b"\x00", id="trailing-bytes"),
    pytest.param(b"\x91" * 100_000 + b"\x01", id="nested-too-deep"),
    pytest.param(b"\x91\x92\x03\xa1\xff", id="text-not-utf8"),
    pytest.param(b"\x91\x81\x01\x02", id="map-with-int-key"),
    # msgpack, but not a batch
    pytest.param(_mp(None), id="nil"),
    pytest.param(_mp(7), id="int"),
    pytest.param(_mp("records"), id="text"),
    pytest.param(_mp(b"records"), id="bin"),
    pytest.param(_mp({"kind": 3}), id="map"),
    # a batch with a bad record
    pytest.param(_mp([[]]), id="record-without-kind"),
    pytest.param(_mp([None]), id="record-nil"),
    pytest.param(_mp([7]), id="record-int"),
    pytest.param(_mp([{"k": 3}]), id="record-map"),
    pytest.param(_mp([[0]]), id="kind-0"),
    pytest.param(_mp([[8]]), id="kind-8-unused"),
    pytest.param(_mp([[12]]), id="kind-12"),
    pytest.param(_mp([[-1]]), id="kind-negative"),
    pytest.param(_mp([["deliver"]]), id="kind-text"),
    pytest.param(_mp([[[4]]]), id="kind-list"),
    pytest.param(_mp([[Kind.DOWN]]), id="down-missing-conn"),
    pytest.param(_mp([[Kind.UP, "c", "u"]]), id="up-missing-encoding"),
    pytest.param(_mp([[Kind.ROSTER, [["c", "u"]], False]]), id="roster-info-short"),
    pytest.param(_mp([[Kind.ROSTER, [["c", "u", "e", "x"]], False]]), id="roster-info-long"),
    pytest.param(_mp([[Kind.ROSTER, 5, False]]), id="roster-conns-int"),
    pytest.param(_mp([[Kind.ROSTER, [["c", "u", "e"]]]]), id="roster-missing-reply"),
    pytest.param(_mp([[Kind.DELIVER, ["c"], b"f", 4, "m", False]]), id="deliver-missing-sid"),
    pytest.param(_mp([[Kind.DELIVER, 5, b"f", 4, "m", False, ""]]), id="deliver-conns-int"),
    pytest.param(_mp([[Kind.DELIVER, ["c"], b"f", "x", "m", False, ""]]), id="deliver-typ-word"),
    pytest.param(_mp([[Kind.END, "s"]]), id="end-missing-reason"),
    pytest.param(_mp([[Kind.ACL_PUT, "p", "t", "u"]]), id="acl-put-missing-frame"),
    # frames of the wrong type
    pytest.param(_mp([[Kind.DELIVER, ["c"], 5, 4, "m", False, ""]]), id="deliver-frame-int"),
    pytest.param(_mp([[Kind.DELIVER, ["c"], None, 4, "m", False, ""]]), id="deliver-frame-nil"),
    pytest.param(_mp([[Kind.DELIVER, ["c"], [1], 4, "m", False, ""]]), id="deliver-frame-list"),
    pytest.param(_mp([[Kind.DELIVER, ["c"], 1.5, 4, "m", False, ""]]), id="deliver-frame-float"),
    pytest.param(_mp([[Kind.INGRESS, "c", 5]]), id="ingress-frame-int"),
    pytest.param(_mp([[Kind.INGRESS, "c", True]]), id="ingress-frame-bool"),
    pytest.param(_mp([[Kind.INGRESS, "c", {"a": 1}]]), id="ingress-frame-map"),
    pytest.param(_mp([[Kind.ACL_PUT, "p", "t", "u", 7]]), id="acl-put-frame-int"),
    # one bad record spoils the batch: nothing of it is applied
    pytest.param(_mp([[Kind.DOWN, "c"], [Kind.INGRESS, "c", 5]]), id="good-then-bad"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_input_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(data)


# Values of the wrong type where the record wants text, a number, a flag or a list. The
# module promises ProtocolError "for anything malformed", but it coerces them with str(),
# int() and bool() instead: an id that is an int, bytes or nil becomes "5", "b'c'" or
# "None", and a list of connections sent as one string becomes one connection per
# character. A writer with such a bug would be silently misrouted, not reported.
WRONG_FIELD_TYPES: list[Any] = [
    pytest.param(_mp([[Kind.DOWN, 5]]), id="conn-int"),
    pytest.param(_mp([[Kind.DOWN, b"c"]]), id="conn-bytes"),
    pytest.param(_mp([[Kind.DOWN, None]]), id="conn-nil"),
    pytest.param(_mp([[Kind.UP, "c", ["u"], "json"]]), id="user-list"),
    pytest.param(_mp([[Kind.END, "s", None]]), id="reason-nil"),
    pytest.param(_mp([[Kind.ACL_DEL, 1.5]]), id="path-float"),
    pytest.param(_mp([[Kind.DELIVER, "abc", b"f", 4, "m", False, ""]]), id="conns-text"),
    pytest.param(_mp([[Kind.DELIVER, [1, 2], b"f", 4, "m", False, ""]]), id="conns-of-ints"),
    pytest.param(_mp([[Kind.DELIVER, ["c"], b"f", "4", "m", False, ""]]), id="typ-text"),
    pytest.param(_mp([[Kind.DELIVER, ["c"], b"f", 4.7, "m", False, ""]]), id="typ-float"),
    pytest.param(_mp([[Kind.DELIVER, ["c"], b"f", 4, "m", "no", ""]]), id="broadcast-text"),
    pytest.param(_mp([[Kind.DELIVER, ["c"], b"f", 4, "m", False, None]]), id="sid-nil"),
    pytest.param(_mp([[Kind.ROSTER, ["abc"], False]]), id="roster-info-text"),
    pytest.param(_mp([[Kind.ROSTER, [], "yes"]]), id="reply-text"),
    pytest.param(_mp([[10.0]]), id="kind-float"),
    pytest.param(_mp([b"\x0a"]), id="record-bin"),
    pytest.param(_mp([msgpack.ExtType(10, b"")]), id="record-ext"),
]


@pytest.mark.parametrize("data", WRONG_FIELD_TYPES)
def test_wrong_field_types_are_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(data)


def _assert_well_typed(record: Record) -> None:
    """Whatever unpack returns has the field types the dataclasses declare."""
    match record:
        case Roster(conns, reply):
            assert isinstance(conns, tuple)
            assert isinstance(reply, bool)
            for info in conns:
                assert all(isinstance(v, str) for v in (info.conn, info.user, info.encoding))
        case ConnUp(info):
            assert all(isinstance(v, str) for v in (info.conn, info.user, info.encoding))
        case ConnDown(conn) | AclDel(conn):
            assert isinstance(conn, str)
        case Deliver(conns, frame, typ, msg_id, broadcast, sid):
            assert isinstance(conns, tuple)
            assert all(isinstance(c, str) for c in conns)
            assert isinstance(frame, bytes | str)
            assert isinstance(typ, int)
            assert isinstance(msg_id, str) and isinstance(sid, str)
            assert isinstance(broadcast, bool)
        case Ingress(conn, frame):
            assert isinstance(conn, str)
            assert isinstance(frame, bytes | str)
        case AclPut(path, text, exclude_user, frame):
            assert all(isinstance(v, str) for v in (path, text, exclude_user))
            assert isinstance(frame, bytes | str)
        case EndSession(sid, reason):
            assert isinstance(sid, str) and isinstance(reason, str)
        case Reset() | Bye():
            pass
        case _:
            pytest.fail(f"not a record: {record!r}")


def _unpack_or_protocol_error(data: bytes) -> None:
    try:
        batch = unpack(data)
    except ProtocolError:
        return
    # Any other exception fails the test as an error, which is the point.
    assert isinstance(batch, list)
    for record in batch:
        _assert_well_typed(record)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_unpack_or_raise_protocol_error(data: bytes) -> None:
    _unpack_or_protocol_error(data)


# msgpack values shaped a bit like records (a kind, then fields of any type, sometimes a
# list of lists), so the fuzz reaches the record decoder rather than stopping at the batch.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.binary(max_size=6),
)
_fields = st.one_of(
    _scalars, st.lists(st.one_of(_scalars, st.lists(_scalars, max_size=4)), max_size=4)
)
_kinds = st.sampled_from([*map(int, Kind), 0, 8, 12])
_record_like = st.builds(lambda kind, rest: [kind, *rest], _kinds, st.lists(_fields, max_size=7))


@settings(max_examples=600, deadline=None)
@given(st.lists(_record_like, max_size=4))
def test_record_shaped_values_unpack_or_raise_protocol_error(items: list[list[Any]]) -> None:
    _unpack_or_protocol_error(_mp(items))


@settings(max_examples=500, deadline=None)
@given(st.lists(any_record, min_size=1, max_size=8), st.data())
def test_damaged_batches_unpack_or_raise_protocol_error(
    batch: list[Record], data: st.DataObject
) -> None:
    wire = bytearray(pack(batch))
    cut = data.draw(st.integers(0, len(wire)), label="cut")
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(wire) - 1), st.integers(1, 255)), max_size=4),
        label="flips",
    )
    for at, mask in flips:
        wire[at] ^= mask
    _unpack_or_protocol_error(bytes(wire[:cut]))
    _unpack_or_protocol_error(bytes(wire))


# ---------------------------------------------------------------- LinkSeq


def test_in_order_entries_are_next() -> None:
    seq = LinkSeq()
    assert [seq.check("a", "e1", n) for n in range(1, 6)] == [Order.NEXT] * 5


def test_a_repeat_is_a_duplicate() -> None:
    seq = LinkSeq()
    for n in (1, 2, 3):
        seq.check("a", "e1", n)
    assert seq.check("a", "e1", 3) is Order.DUPLICATE
    assert seq.check("a", "e1", 1) is Order.DUPLICATE
    assert seq.check("a", "e1", 0) is Order.DUPLICATE  # below any number used
    assert seq.check("a", "e1", 4) is Order.NEXT  # the repeats changed nothing


def test_a_skipped_number_is_a_gap() -> None:
    seq = LinkSeq()
    seq.check("a", "e1", 1)
    seq.check("a", "e1", 2)
    assert seq.check("a", "e1", 4) is Order.GAP
    # A gap does not move the link on: what it missed is still the next.
    assert seq.check("a", "e1", 3) is Order.NEXT
    assert seq.check("a", "e1", 4) is Order.NEXT


def test_a_first_entry_from_an_unknown_sender_must_be_one() -> None:
    seq = LinkSeq()
    assert seq.check("a", "e1", 2) is Order.GAP
    assert seq.check("a", "e1", 1) is Order.NEXT


def test_a_new_epoch_at_one_is_a_new_link_when_the_sender_was_known() -> None:
    seq = LinkSeq()
    for n in (1, 2, 3):
        seq.check("a", "e1", n)
    assert seq.check("a", "e2", 1) is Order.NEW_LINK
    # The new epoch is now the link: it goes on from 1, and the old one is over.
    assert seq.check("a", "e2", 1) is Order.DUPLICATE
    assert seq.check("a", "e2", 2) is Order.NEXT
    assert seq.check("a", "e1", 4) is Order.GAP


def test_a_new_epoch_at_one_is_next_when_the_sender_was_unknown() -> None:
    seq = LinkSeq()
    assert seq.check("a", "e7", 1) is Order.NEXT


def test_a_new_epoch_not_at_one_is_a_gap() -> None:
    seq = LinkSeq()
    for n in (1, 2):
        seq.check("a", "e1", n)
    assert seq.check("a", "e2", 2) is Order.GAP
    assert seq.check("a", "e2", 5) is Order.GAP
    # The known link is untouched by it.
    assert seq.check("a", "e1", 3) is Order.NEXT


def test_forget_makes_the_next_entry_at_one_next() -> None:
    seq = LinkSeq()
    for n in (1, 2, 3):
        seq.check("a", "e1", n)
    seq.forget("a")
    assert seq.check("a", "e2", 1) is Order.NEXT  # not NEW_LINK: nothing left to drop
    seq.forget("a")
    assert seq.check("a", "e2", 2) is Order.GAP  # forgotten: only 1 may start it
    seq.forget("never-seen")  # forgetting an unknown sender is harmless


def test_a_broken_link_drops_the_rest_until_a_new_one_starts() -> None:
    seq = LinkSeq()
    assert seq.check("a", "e1", 1) is Order.NEXT
    assert seq.check("a", "e1", 3) is Order.GAP
    seq.break_link("a", "e1")
    # What the sender still writes on the broken link is not another loss to report.
    assert [seq.check("a", "e1", n) for n in (4, 5, 2)] == [Order.DUPLICATE] * 3
    assert seq.check("a", "e2", 1) is Order.NEW_LINK
    assert seq.check("a", "e2", 2) is Order.NEXT


def test_senders_are_independent() -> None:
    seq = LinkSeq()
    assert seq.check("a", "e", 1) is Order.NEXT
    assert seq.check("b", "e", 1) is Order.NEXT  # same epoch name, other sender
    assert seq.check("a", "e", 2) is Order.NEXT
    assert seq.check("b", "e", 3) is Order.GAP
    assert seq.check("b", "x", 1) is Order.NEW_LINK
    assert seq.check("a", "e", 3) is Order.NEXT


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.data())))
def test_any_permutation_with_duplicates_yields_next_once_for_the_in_order_prefix(
    args: tuple[int, st.DataObject],
) -> None:
    n, data = args
    seqs = list(range(1, n + 1))
    dups = data.draw(st.lists(st.sampled_from(seqs), max_size=n), label="dups")
    arrival = data.draw(st.permutations(seqs + dups), label="arrival")
    link = LinkSeq()
    got = [(s, link.check("a", "e1", s)) for s in arrival]

    nexts = [s for s, order in got if order is Order.NEXT]
    assert len(nexts) == len(set(nexts))  # never NEXT twice for one number
    # NEXT exactly for 1, 2, ... k: the numbers that arrived in order, each the first time.
    assert nexts == list(range(1, len(nexts) + 1))
    expected = 0
    for s, order in got:
        if s == expected + 1:
            assert order is Order.NEXT
            expected = s
        elif s <= expected:
            assert order is Order.DUPLICATE
        else:
            assert order is Order.GAP
    assert Order.NEW_LINK not in {order for _, order in got}
    assert len(nexts) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 6)), max_size=80))
def test_interleaved_senders_do_not_disturb_each_other(arrivals: list[tuple[str, int]]) -> None:
    together = LinkSeq()
    apart = {"a": LinkSeq(), "b": LinkSeq()}
    for src, n in arrivals:
        assert together.check(src, "e", n) is apart[src].check(src, "e", n)
