"""The router's bounds on an Open and the rule for sessions several connections accepted,
without sockets.

An Open's session id, path and target are bounded before any work is done on them: the
session keeps them for its life and every reader is sent the path, so an unbounded one
would cost memory per session, per receiver and per cached ACL decision. And in a session
several readers accepted, one of them leaving (Close, Reject or disconnect) must not end
the stream for the others: the opener hears of it only when no accepted connection remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hotlink.protocol.acl import Access
from hotlink.protocol.messages import (
    Error,
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkReject,
    Message,
    Payload,
)
from hotlink.server.acl_store import MAX_PATH_BYTES, ACLStore
from hotlink.server.decisions import ConnectionTable, Outcome
from hotlink.server.router import (
    BAD_SESSION_ID,
    DISCONNECTED,
    MAX_SID_CHARS,
    MAX_TARGET_CHARS,
    NOT_PARTICIPANT,
    PATH_TOO_LONG,
    PERMISSION_DENIED,
    HotlinkRouter,
)

ALICE, BOB, CAROL, DAVE = (
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "dave@example.com",
)
PATH = f"{ALICE}/app_data/chat/rpc/hotlink/x.request"
SID = "0123456789abcdef"


def email_of_length(n: int) -> str:
    domain = "@example.com"
    return "t" * (n - len(domain)) + domain


LONGEST_TARGET = email_of_length(MAX_TARGET_CHARS)


@dataclass
class RecordingAccess:
    """Everyone may read anything; only the owner (first segment) may write. Records every
    question, so a test can tell whether the router did any work on an Open."""

    asked: list[tuple[str, str]] = field(default_factory=list)

    def can_access(self, path: str, user: str, level: Access) -> bool:
        self.asked.append((path, user))
        if level & Access.WRITE:
            return path.split("/", 1)[0] == user
        return True


@pytest.fixture
def access() -> RecordingAccess:
    return RecordingAccess()


@pytest.fixture
def router(access: RecordingAccess) -> HotlinkRouter:
    table = ConnectionTable()
    for conn, user in [
        ("a1", ALICE),
        ("b1", BOB),
        ("b2", BOB),
        ("c1", CAROL),
        ("d1", DAVE),
        ("t1", LONGEST_TARGET),
    ]:
        table.add(conn, user)
    return HotlinkRouter(access, table)


def msg(payload: Payload, mid: str = "m00001") -> Message:
    return Message(mid, payload)


def open_msg(sid: str = SID, pth: str = PATH, to: str = "") -> Message:
    return msg(HotlinkOpen(sid=sid, pth=pth, to=to), "op0001")


def refused_at_once(out: Outcome, reason: str, sid: str = SID) -> None:
    """Only the opener hears of it (a Reject), nobody is offered the Open."""
    assert [(s.conn, s.message.payload, s.broadcast) for s in out.sends] == [
        ("a1", HotlinkReject(sid=sid, rsn=reason), False)
    ]
    assert out.refusal == reason
    assert len(out.detail) < 200  # the detail says how long, it does not quote


def own_path(nbytes: int, fill: str = "x") -> str:
    """A path in alice's datasite of exactly ``nbytes`` UTF-8 bytes."""
    head, tail = f"{ALICE}/big/", ".request"
    width = len(fill.encode())
    room = nbytes - len(head) - len(tail)
    body = fill * (room // width) + "x" * (room % width)
    path = head + body + tail
    assert len(path.encode()) == nbytes
    return path


# ---------------------------------------------------------------- session ids


def test_a_session_id_of_the_largest_size_opens(router):
    sid = "s" * MAX_SID_CHARS
    out = router.handle("a1", open_msg(sid))
    assert out.refusal is None and sid in router.sessions


def test_a_session_id_one_longer_is_refused_before_any_access_check(router, access):
    sid = "s" * (MAX_SID_CHARS + 1)
    out = router.handle("a1", open_msg(sid))
    refused_at_once(out, BAD_SESSION_ID, sid)
    assert sid not in router.sessions and len(router.sessions) == 0
    assert access.asked == []


def test_the_session_id_is_judged_first(router, access):
    sid = "s" * 100_000
    out = router.handle("a1", open_msg(sid, f"{ALICE}/" + "p" * 100_000, "x" * 100_000))
    refused_at_once(out, BAD_SESSION_ID, sid)


# ---------------------------------------------------------------- paths


def test_a_path_of_4096_bytes_opens_and_is_offered(router):
    path = own_path(MAX_PATH_BYTES)
    out = router.handle("a1", open_msg(pth=path))
    assert out.refusal is None
    assert {s.conn for s in out.sends} == {"b1", "b2", "c1", "d1", "t1"}
    assert router.sessions.get(SID).path == path


@pytest.mark.parametrize(
    ("nbytes", "fill"),
    [(MAX_PATH_BYTES + 1, "x"), (MAX_PATH_BYTES + 1, "\u00e9"), (MAX_PATH_BYTES + 1, "\u20ac")],
    ids=["ascii", "two-byte", "three-byte"],
)
def test_a_path_one_byte_too_long_is_refused_before_any_access_check(router, access, nbytes, fill):
    path = own_path(nbytes, fill)
    out = router.handle("a1", open_msg(pth=path))
    refused_at_once(out, PATH_TOO_LONG)
    assert SID not in router.sessions
    assert access.asked == []


def test_an_8_mib_path_is_refused_without_being_sent_to_anyone(router, access):
    out = router.handle("a1", open_msg(pth=f"{ALICE}/" + "p" * (8 << 20)))
    refused_at_once(out, PATH_TOO_LONG)
    assert access.asked == []


# ---------------------------------------------------------------- targets


def test_a_target_of_the_longest_email_is_offered_the_open(router):
    out = router.handle("a1", open_msg(to=LONGEST_TARGET))
    assert out.refusal is None
    assert [s.conn for s in out.sends] == ["t1"]


def test_a_target_one_longer_is_refused_before_any_access_check(router, access):
    out = router.handle("a1", open_msg(to=email_of_length(MAX_TARGET_CHARS + 1)))
    refused_at_once(out, PERMISSION_DENIED)
    assert SID not in router.sessions
    assert access.asked == []


# ---------------------------------------------------------------- the ACL store


def test_the_acl_store_denies_a_path_over_the_bound_without_looking_it_up(monkeypatch):
    """Even a path an ACL grants to everyone: nothing is asked of the tree, so nothing is
    kept in its decision cache (whose keys are the paths)."""
    store = ACLStore()
    store.load(f"{ALICE}/pub/syft.pub.yaml", "rules: [{pattern: '**', access: {read: ['*']}}]")
    asked: list[str] = []
    real = store.tree.can_access

    def spy(path: str, user: str, level: Access) -> bool:
        asked.append(path)
        return real(path, user, level)

    monkeypatch.setattr(store.tree, "can_access", spy)
    head = f"{ALICE}/pub/"
    fits = head + "x" * (MAX_PATH_BYTES - len(head))
    assert store.can_access(fits, BOB, Access.READ)
    assert asked == [fits]
    for too_long in (fits + "x", head + "\u00e9" * (MAX_PATH_BYTES // 2)):
        assert not store.can_access(too_long, BOB, Access.READ)
        assert not store.can_access(too_long, ALICE, Access.WRITE)  # not even its owner
    assert asked == [fits]


# ---------------------------------------------------------------- several acceptors


def accepted_by_three(router: HotlinkRouter) -> None:
    """alice's Open (no target, not TCP) accepted by bob's two connections and carol's."""
    router.handle("a1", open_msg())
    for conn in ("b1", "b2", "c1"):
        out = router.handle(conn, msg(HotlinkAccept(sid=SID), "ac" + conn))
        assert [s.conn for s in out.sends] == ["a1"]


def data(seq: int) -> Message:
    return msg(HotlinkData(sid=SID, seq=seq, pth=PATH, pay=b"x"), f"d{seq:05d}")


def receivers_of_data(router: HotlinkRouter, seq: int) -> list[str]:
    return [s.conn for s in router.handle("a1", data(seq)).sends]


def leave(router: HotlinkRouter, conn: str, how: str) -> Outcome:
    if how == "disconnect":
        return router.disconnect(conn)
    payload = HotlinkClose(sid=SID, rsn="eof:0") if how == "close" else HotlinkReject(sid=SID)
    return router.handle(conn, msg(payload, f"lv{conn}"))


@pytest.mark.parametrize(
    "order",
    [
        ("close", "reject", "disconnect"),
        ("disconnect", "close", "reject"),
        ("reject", "disconnect", "close"),
    ],
)
def test_the_opener_hears_only_when_the_last_acceptor_left(router, order):
    accepted_by_three(router)
    conns = ["b1", "c1", "b2"]
    for i, (conn, how) in enumerate(zip(conns, order, strict=True)):
        out = leave(router, conn, how)
        remaining = conns[i + 1 :]
        if remaining:
            assert out.sends == [], (conn, how)
            assert out.refusal is None
            assert receivers_of_data(router, 10 + i) == sorted(remaining)
        else:
            [send] = out.sends
            assert send.conn == "a1"
            if how == "disconnect":
                assert send.message.payload == HotlinkClose(sid=SID, rsn=DISCONNECTED)
            else:
                assert send.message.id == f"lv{conn}"  # the acceptor's own message
    assert receivers_of_data(router, 99) == []
    assert router.sessions.get(SID).accepted == {}


def test_one_connection_of_a_user_leaving_keeps_its_other_connection_in(router):
    accepted_by_three(router)
    assert leave(router, "b1", "close").sends == []
    assert receivers_of_data(router, 1) == ["b2", "c1"]


def test_an_acceptor_that_left_can_no_longer_end_the_session(router):
    accepted_by_three(router)
    leave(router, "b1", "close")
    for how in ("close", "reject"):
        out = leave(router, "b1", how)
        assert [(s.conn, type(s.message.payload)) for s in out.sends] == [("b1", Error)]
        assert out.refusal == NOT_PARTICIPANT
    assert receivers_of_data(router, 1) == ["b2", "c1"]


def test_an_offered_reader_who_did_not_accept_cannot_end_it_for_the_acceptors(router):
    accepted_by_three(router)
    leave(router, "b1", "close")
    for how in ("close", "reject"):
        out = leave(router, "d1", how)  # dave was offered the Open but never accepted
        assert [s.conn for s in out.sends] == ["d1"]
        assert out.refusal == NOT_PARTICIPANT
    assert receivers_of_data(router, 1) == ["b2", "c1"]


def test_the_opener_closing_tells_only_the_acceptors_that_remain(router):
    accepted_by_three(router)
    leave(router, "c1", "reject")
    close = msg(HotlinkClose(sid=SID, rsn="eof:3"), "cl0001")
    out = router.handle("a1", close)
    assert sorted(s.conn for s in out.sends) == ["b1", "b2"]
    assert SID not in router.sessions


def test_the_opener_hears_of_the_last_acceptor_once(router):
    accepted_by_three(router)
    leave(router, "b1", "disconnect")
    leave(router, "b2", "disconnect")
    assert [s.conn for s in leave(router, "c1", "close").sends] == ["a1"]
    assert router.disconnect("c1").sends == []  # its disconnect after its Close: nothing more
