"""The hotlink router without sockets: one test per rule and reason of PROTOCOL.md §2.2/§2.3
and per decision (DECISIONS.md #18, #20, #21 via the access policy, #22)."""

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
    HotlinkSignal,
    Message,
    Payload,
)
from hotlink.server.decisions import ConnectionTable, Outcome
from hotlink.server.router import (
    ALREADY_ACCEPTED,
    DISCONNECTED,
    IGNORED,
    NOT_PARTICIPANT,
    NOT_SENDER,
    PERMISSION_DENIED,
    SUPERSEDED,
    TOO_MANY_SESSIONS,
    UNKNOWN_SESSION,
    HotlinkRouter,
)
from hotlink.server.sessions import SessionStore

ALICE, BOB, CAROL, MALLORY = (
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "mallory@example.com",
)
PATH = f"{ALICE}/app_data/chat/rpc/hotlink/x.request"
TCP_PATH = f"{ALICE}/app_data/mpc/_mpc/0_to_1/stream.tcp.request"
SID = "0123456789abcdef"
# A reason a relay may end a session with other than a disconnect (clients take any reason
# but eof as an abort).
NODE_LOST = "relay node lost"


@dataclass
class TableAccess:
    """Readers per path; the owner (first segment) may do anything; writers = owner only."""

    readers: dict[str, set[str]] = field(default_factory=dict)
    writers: dict[str, set[str]] = field(default_factory=dict)

    def can_access(self, path: str, user: str, level: Access) -> bool:
        if path.split("/", 1)[0] == user:
            return True
        if level & Access.WRITE:
            return user in self.writers.get(path, set())
        return user in self.readers.get(path, set()) | self.writers.get(path, set())


@pytest.fixture
def access() -> TableAccess:
    return TableAccess(
        readers={PATH: {BOB, CAROL}, TCP_PATH: {BOB, CAROL}},
    )


@pytest.fixture
def router(access: TableAccess) -> HotlinkRouter:
    table = ConnectionTable()
    for conn, user in [
        ("a1", ALICE),
        ("a2", ALICE),
        ("b1", BOB),
        ("b2", BOB),
        ("c1", CAROL),
        ("m1", MALLORY),
    ]:
        table.add(conn, user)
    return HotlinkRouter(access, table)


def msg(payload: Payload, mid: str = "abc123") -> Message:
    return Message(mid, payload)


def targets(out: Outcome) -> list[str]:
    return [s.conn for s in out.sends]


def only(out: Outcome) -> tuple[str, Payload]:
    assert len(out.sends) == 1, out.sends
    return out.sends[0].conn, out.sends[0].message.payload


def open_session(router: HotlinkRouter, *, path: str = PATH, to: str = "") -> Outcome:
    return router.handle("a1", msg(HotlinkOpen(sid=SID, pth=path, to=to), "op0001"))


def accept(router: HotlinkRouter, conn: str, sid: str = SID) -> Outcome:
    return router.handle(conn, msg(HotlinkAccept(sid=sid), "ac" + conn))


# ---------------------------------------------------------------- HotlinkOpen


def test_open_without_write_access_is_rejected_with_permission_denied(router):
    out = router.handle("b1", msg(HotlinkOpen(sid=SID, pth=PATH)))
    assert only(out) == ("b1", HotlinkReject(sid=SID, rsn=PERMISSION_DENIED))
    assert out.refusal == PERMISSION_DENIED
    assert SID not in router.sessions


def test_open_with_target_that_cannot_read_is_rejected(router):
    out = open_session(router, to=MALLORY)
    assert only(out) == ("a1", HotlinkReject(sid=SID, rsn=PERMISSION_DENIED))
    assert SID not in router.sessions


def test_open_is_offered_to_readers_of_other_users_only(router):
    out = open_session(router)
    # Not a2 (the sender's own user), not m1 (cannot read).
    assert targets(out) == ["b1", "b2", "c1"]
    assert all(s.broadcast for s in out.sends)


def test_forwarded_open_keeps_id_and_carries_the_authenticated_opener(router):
    spoofed = msg(HotlinkOpen(sid=SID, pth=PATH, frm=MALLORY), "keepme")
    out = router.handle("a1", spoofed)
    for send in out.sends:
        assert send.message.id == "keepme"
        assert send.message.payload == HotlinkOpen(sid=SID, pth=PATH, frm=ALICE, to="")


@pytest.mark.parametrize(
    "raw",
    [
        f"/{ALICE}/app_data/chat/rpc/hotlink/x.request",
        f"{ALICE}/app_data/./chat/rpc//hotlink/x.request",
        f"{ALICE}/app_data/other/../chat/rpc/hotlink/x.request",
        f"{ALICE}\\app_data\\chat\\rpc\\hotlink\\x.request",
    ],
)
def test_open_is_judged_stored_and_forwarded_with_its_normalised_path(router, raw):
    """Readers get the path that was checked, not the opener's spelling of it."""
    out = router.handle("a1", msg(HotlinkOpen(sid=SID, pth=raw, to=BOB), "op0001"))
    assert targets(out) == ["b1", "b2"]
    assert {s.message.payload.pth for s in out.sends} == {PATH}  # type: ignore[attr-defined]
    assert router.sessions.get(SID).path == PATH
    # Data on the session is checked against that same path.
    accept(router, "b1")
    data = router.handle("a1", msg(HotlinkData(sid=SID, seq=1, pth=raw, pay=b"x")))
    assert targets(data) == ["b1"]


@pytest.mark.parametrize("raw", [f"{ALICE}/../../etc/passwd", "..", "", "/", "."])
def test_open_of_a_path_outside_every_datasite_is_rejected(router, raw):
    out = router.handle("a1", msg(HotlinkOpen(sid=SID, pth=raw)))
    assert only(out) == ("a1", HotlinkReject(sid=SID, rsn=PERMISSION_DENIED))
    assert SID not in router.sessions


def test_open_with_to_goes_only_to_the_target_user(router):
    out = open_session(router, to=f"  {BOB} ")
    assert targets(out) == ["b1", "b2"]
    assert out.sends[0].message.payload == HotlinkOpen(sid=SID, pth=PATH, frm=ALICE, to=BOB)


def test_open_to_self_counts_as_no_target(router):
    out = open_session(router, to=ALICE)
    assert targets(out) == ["b1", "b2", "c1"]
    assert router.sessions.get(SID).to_user == ""


def test_open_with_nobody_to_receive_it_still_creates_the_session(router, access):
    path = f"{ALICE}/private/x.request"
    out = open_session(router, path=path)
    assert out.sends == []
    assert router.sessions.get(SID).path == path


def test_open_reusing_own_sid_replaces_the_session(router):
    open_session(router)
    accept(router, "b1")
    router.handle("a1", msg(HotlinkOpen(sid=SID, pth=PATH)))
    assert router.sessions.get(SID).accepted == {}


def test_open_cannot_take_over_another_users_session_id(router, access):
    open_session(router)
    access.writers[PATH] = {BOB}
    out = router.handle("b1", msg(HotlinkOpen(sid=SID, pth=PATH)))
    assert only(out) == ("b1", HotlinkReject(sid=SID, rsn=PERMISSION_DENIED))
    assert router.sessions.get(SID).from_user == ALICE


def test_open_beyond_the_per_connection_session_limit_is_rejected(access):
    table = ConnectionTable()
    table.add("a1", ALICE)
    router = HotlinkRouter(access, table, max_sessions_per_conn=2)
    for sid in ("s1-aaaaaaaa", "s2-aaaaaaaa"):
        assert router.handle("a1", msg(HotlinkOpen(sid=sid, pth=PATH))).refusal is None
    out = router.handle("a1", msg(HotlinkOpen(sid="s3-aaaaaaaa", pth=PATH)))
    assert only(out) == ("a1", HotlinkReject(sid="s3-aaaaaaaa", rsn=TOO_MANY_SESSIONS))
    # Re-opening an existing id is not a new session.
    assert router.handle("a1", msg(HotlinkOpen(sid="s1-aaaaaaaa", pth=PATH))).refusal is None


# ---------------------------------------------------------------- HotlinkAccept


def test_reopening_a_session_id_tells_the_old_acceptors_it_ended(router):
    open_session(router)
    accept(router, "b1")
    out = open_session(router)  # the opener reuses its own id: the reference overwrites
    closes = [(s.conn, s.message.payload) for s in out.sends if not s.broadcast]
    assert closes == [("b1", HotlinkClose(sid=SID, rsn=SUPERSEDED))]
    assert router.sessions.get(SID).accepted == {}
    # The new session is offered again, so the old acceptor can accept it afresh.
    assert "b1" in [s.conn for s in out.sends if s.broadcast]


def test_accept_of_unknown_session_is_rejected_with_unknown_session(router):
    out = accept(router, "b1")
    assert only(out) == ("b1", HotlinkReject(sid=SID, rsn=UNKNOWN_SESSION))


def test_accept_from_the_opener_user_is_silently_ignored(router):
    open_session(router)
    out = accept(router, "a2")
    assert out.sends == [] and out.refusal == IGNORED
    assert router.sessions.get(SID).accepted == {}


def test_accept_by_someone_other_than_the_target_is_rejected(router):
    open_session(router, to=BOB)
    out = accept(router, "c1")
    assert only(out) == ("c1", HotlinkReject(sid=SID, rsn=PERMISSION_DENIED))


def test_accept_forwards_the_original_message_to_the_opener_connection(router):
    open_session(router)
    out = accept(router, "b1")
    assert len(out.sends) == 1
    send = out.sends[0]
    assert send.conn == "a1" and not send.broadcast
    assert send.message == msg(HotlinkAccept(sid=SID), "acb1")
    assert router.sessions.get(SID).accepted == {"b1": BOB}


def test_tcp_session_accepted_by_another_user_is_rejected_already_accepted(router):
    open_session(router, path=TCP_PATH)
    accept(router, "b1")
    out = accept(router, "c1")
    assert only(out) == ("c1", HotlinkReject(sid=SID, rsn=ALREADY_ACCEPTED))
    # A second connection of the same user may accept.
    out = accept(router, "b2")
    assert only(out) == ("a1", HotlinkAccept(sid=SID))
    assert router.sessions.get(SID).accepted == {"b1": BOB, "b2": BOB}


def test_non_tcp_session_may_be_accepted_by_several_users(router):
    open_session(router)
    accept(router, "b1")
    out = accept(router, "c1")
    assert only(out) == ("a1", HotlinkAccept(sid=SID))


def test_accept_without_read_access_is_rejected(router):
    open_session(router)
    out = accept(router, "m1")
    assert only(out) == ("m1", HotlinkReject(sid=SID, rsn=PERMISSION_DENIED))


# ---------------------------------------------------------------- HotlinkReject (#20)


def test_reject_of_unknown_session_is_ignored(router):
    out = router.handle("b1", msg(HotlinkReject(sid=SID, rsn="ipc unavailable")))
    assert out.sends == [] and out.refusal == IGNORED


def test_reject_from_the_opener_user_is_ignored(router):
    open_session(router)
    out = router.handle("a2", msg(HotlinkReject(sid=SID)))
    assert out.sends == [] and out.refusal == IGNORED


def test_reject_from_an_offered_receiver_is_forwarded_unchanged(router):
    open_session(router)
    rejection = msg(HotlinkReject(sid=SID, rsn="ipc unavailable"), "rj0001")
    out = router.handle("c1", rejection)
    assert [(s.conn, s.message) for s in out.sends] == [("a1", rejection)]
    assert SID in router.sessions


def test_reject_from_a_non_participant_is_dropped_with_an_error(router):
    open_session(router)
    out = router.handle("m1", msg(HotlinkReject(sid=SID)))
    conn, payload = only(out)
    assert conn == "m1" and isinstance(payload, Error) and payload.cod == 403
    assert out.refusal == NOT_PARTICIPANT


def test_reject_from_someone_other_than_the_target_is_dropped(router):
    open_session(router, to=BOB)
    out = router.handle("c1", msg(HotlinkReject(sid=SID)))
    assert out.refusal == NOT_PARTICIPANT
    assert targets(out) == ["c1"]


# ---------------------------------------------------------------- HotlinkData


def data(seq: int, sid: str = SID) -> Message:
    return msg(HotlinkData(sid=sid, seq=seq, pth=PATH, pay=b"x" * seq), f"d{seq:05d}")


def test_data_for_unknown_session_is_rejected_with_unknown_session(router):
    out = router.handle("a1", data(1))
    assert only(out) == ("a1", HotlinkReject(sid=SID, rsn=UNKNOWN_SESSION))


def test_data_goes_only_to_accepted_connections(router):
    open_session(router)
    accept(router, "b1")
    out = router.handle("a1", data(1))
    # b2 and c1 can read but did not accept.
    assert [(s.conn, s.message) for s in out.sends] == [("b1", data(1))]
    assert not out.sends[0].broadcast


def test_data_may_come_from_any_connection_of_the_opener_user(router):
    open_session(router)
    accept(router, "b1")
    assert targets(router.handle("a2", data(1))) == ["b1"]


def test_data_from_an_acceptor_is_dropped_not_sender(router):
    open_session(router)
    accept(router, "b1")
    out = router.handle("b1", data(1))
    conn, payload = only(out)
    assert conn == "b1" and isinstance(payload, Error)
    assert out.refusal == NOT_SENDER


def test_data_from_a_stranger_is_dropped_with_an_error(router):
    open_session(router)
    accept(router, "b1")
    out = router.handle("m1", data(1))
    conn, payload = only(out)
    assert conn == "m1" and isinstance(payload, Error) and payload.cod == 403
    assert out.refusal == NOT_PARTICIPANT


def test_data_rechecks_read_access_of_each_acceptor_per_message(router, access):
    open_session(router)
    accept(router, "b1")
    accept(router, "c1")
    access.readers[PATH].discard(CAROL)
    assert targets(router.handle("a1", data(2))) == ["b1"]


def test_data_relay_debug_log_on_first_frames_every_500th_and_odd_fanout(access):
    lines: list[str] = []
    table = ConnectionTable()
    table.add("a1", ALICE)
    table.add("b1", BOB)
    router = HotlinkRouter(access, table, data_relay_log=lines.append)
    open_session(router)
    accept(router, "b1")
    for seq in range(1, 1001):
        router.handle("a1", data(seq))
    assert [line.split("seq=")[1].split()[0] for line in lines] == ["1", "2", "3", "500", "1000"]
    assert "hotlink data relay" in lines[0]


# ---------------------------------------------------------------- HotlinkClose


def test_close_of_unknown_session_is_ignored(router):
    out = router.handle("a1", msg(HotlinkClose(sid=SID)))
    assert out.sends == [] and out.refusal == IGNORED


def test_close_from_the_opener_deletes_the_session_and_tells_every_acceptor(router):
    open_session(router)
    accept(router, "b1")
    accept(router, "c1")
    close = msg(HotlinkClose(sid=SID, rsn="eof"), "cl0001")
    out = router.handle("a2", close)  # any connection of the opener's user
    assert [(s.conn, s.message) for s in out.sends] == [("b1", close), ("c1", close)]
    assert SID not in router.sessions


def test_close_from_an_acceptor_removes_it_and_the_opener_hears_when_the_last_one_left(router):
    open_session(router)
    accept(router, "b1")
    accept(router, "c1")
    out = router.handle("b1", msg(HotlinkClose(sid=SID), "cl0002"))
    assert out.sends == [] and out.refusal is None  # carol still reads: alice goes on
    assert router.sessions.get(SID).accepted == {"c1": CAROL}
    assert targets(router.handle("a1", data(1))) == ["c1"]
    close = msg(HotlinkClose(sid=SID), "cl0003")
    out = router.handle("c1", close)
    assert [(s.conn, s.message) for s in out.sends] == [("a1", close)]
    assert router.sessions.get(SID).accepted == {}


def test_close_from_a_non_participant_is_dropped_with_an_error(router):
    open_session(router)
    accept(router, "b1")
    out = router.handle("m1", msg(HotlinkClose(sid=SID)))
    assert targets(out) == ["m1"] and out.refusal == NOT_PARTICIPANT
    assert router.sessions.get(SID).accepted == {"b1": BOB}


# ---------------------------------------------------------------- HotlinkSignal (#22)


def test_signal_for_unknown_session_gets_webrtc_error_unknown_session(router):
    out = router.handle("b1", msg(HotlinkSignal(sid=SID, knd="sdp_offer", tok="{}")))
    conn, payload = only(out)
    assert conn == "b1"
    assert payload == HotlinkSignal(sid=SID, knd="webrtc_error", err="unknown session")


def test_signal_from_the_opener_goes_to_all_acceptors(router):
    open_session(router)
    accept(router, "b1")
    accept(router, "c1")
    signal = msg(HotlinkSignal(sid=SID, knd="sdp_answer", tok='{"sdp":"x"}'), "sg0001")
    out = router.handle("a1", signal)
    assert [(s.conn, s.message) for s in out.sends] == [("b1", signal), ("c1", signal)]


def test_signal_from_an_acceptor_goes_to_the_opener_connection(router):
    open_session(router)
    accept(router, "b1")
    signal = msg(HotlinkSignal(sid=SID, knd="sdp_offer", tok='{"sdp":"x"}'), "sg0002")
    out = router.handle("b1", signal)
    assert [(s.conn, s.message) for s in out.sends] == [("a1", signal)]


def test_signal_is_relayed_whatever_its_kind(router):
    open_session(router)
    accept(router, "b1")
    out = router.handle("b1", msg(HotlinkSignal(sid=SID, knd="quic_offer", adr=("1.2.3.4:5",))))
    assert targets(out) == ["a1"]


def test_signal_from_a_non_acceptor_is_dropped_not_participant(router):
    open_session(router)
    accept(router, "b1")
    out = router.handle("c1", msg(HotlinkSignal(sid=SID, knd="sdp_offer")))
    conn, payload = only(out)
    assert conn == "c1" and isinstance(payload, Error)
    assert out.refusal == NOT_PARTICIPANT


# ---------------------------------------------------------------- disconnects (#18)


def test_opener_disconnect_closes_its_sessions_and_tells_acceptors(router):
    open_session(router)
    accept(router, "b1")
    accept(router, "c1")
    out = router.disconnect("a1")
    assert [(s.conn, s.message.payload) for s in out.sends] == [
        ("b1", HotlinkClose(sid=SID, rsn=DISCONNECTED)),
        ("c1", HotlinkClose(sid=SID, rsn=DISCONNECTED)),
    ]
    assert SID not in router.sessions
    assert len(router.sessions) == 0


def test_acceptor_disconnect_removes_it_and_the_opener_hears_when_the_last_one_left(router):
    open_session(router)
    accept(router, "b1")
    accept(router, "c1")
    assert router.disconnect("b1").sends == []
    assert router.sessions.get(SID).accepted == {"c1": CAROL}
    out = router.disconnect("c1")
    assert [(s.conn, s.message.payload) for s in out.sends] == [
        ("a1", HotlinkClose(sid=SID, rsn=DISCONNECTED))
    ]


def test_disconnect_of_the_opener_users_other_connection_keeps_the_session(router):
    open_session(router)
    accept(router, "b1")
    assert router.disconnect("a2").sends == []
    assert SID in router.sessions


def test_disconnect_cleans_up_every_session_of_the_connection(router):
    for i in range(5):
        router.handle("a1", msg(HotlinkOpen(sid=f"sess-{i:04d}-xx", pth=PATH)))
        accept(router, "b1", sid=f"sess-{i:04d}-xx")
    router.disconnect("a1")
    assert len(router.sessions) == 0
    assert router.sessions.accepted_by("b1") == []


def test_disconnect_with_a_reason_tells_it_to_both_sides(router):
    # A replica that lost the other party's node says so, rather than "disconnected".
    open_session(router)
    accept(router, "b1")
    out = router.disconnect("b1", NODE_LOST)
    assert [(s.conn, s.message.payload) for s in out.sends] == [
        ("a1", HotlinkClose(sid=SID, rsn=NODE_LOST))
    ]


def test_end_session_closes_it_for_the_opener_and_every_acceptor(router):
    open_session(router)
    accept(router, "b1")
    accept(router, "c1")
    out = router.end_session(SID, NODE_LOST)
    assert [(s.conn, s.message.payload) for s in out.sends] == [
        ("a1", HotlinkClose(sid=SID, rsn=NODE_LOST)),
        ("b1", HotlinkClose(sid=SID, rsn=NODE_LOST)),
        ("c1", HotlinkClose(sid=SID, rsn=NODE_LOST)),
    ]
    assert SID not in router.sessions
    assert router.sessions.opened_by("a1") == [] and router.sessions.accepted_by("b1") == []
    assert router.end_session(SID, NODE_LOST).sends == []  # already gone: nothing to say


def test_the_session_store_can_be_given(access):
    table = ConnectionTable()
    table.add("a1", ALICE)
    table.add("b1", BOB)
    store = SessionStore()
    router = HotlinkRouter(access, table, sessions=store)
    open_session(router)
    assert SID in store


def test_a_message_from_a_removed_connection_is_ignored(router):
    router.connections.remove("b1")
    out = router.handle("b1", msg(HotlinkOpen(sid=SID, pth=f"{BOB}/x.request")))
    assert out.sends == [] and out.refusal == IGNORED


# ---------------------------------------------------------------- ending a session someone took


@pytest.mark.parametrize("kind", ["reject", "close"])
def test_an_offered_bystander_cannot_end_a_session_another_user_accepted(router, kind):
    """carol was offered the Open too (she may read the path), but bob took it."""
    open_session(router)
    accept(router, "b1")
    payload = HotlinkReject(sid=SID, rsn="nope") if kind == "reject" else HotlinkClose(sid=SID)
    out = router.handle("c1", msg(payload))
    conn, reply = only(out)
    assert conn == "c1" and isinstance(reply, Error) and reply.cod == 403
    assert out.refusal == NOT_PARTICIPANT
    # Nothing reached alice; bob's session goes on.
    assert router.sessions.get(SID).accepted == {"b1": BOB}
    assert targets(router.handle("a1", data(1))) == ["b1"]


@pytest.mark.parametrize("kind", ["reject", "close"])
def test_another_connection_of_the_acceptor_cannot_end_the_session(router, kind):
    open_session(router)
    accept(router, "b1")
    payload = HotlinkReject(sid=SID) if kind == "reject" else HotlinkClose(sid=SID)
    out = router.handle("b2", msg(payload))
    assert targets(out) == ["b2"] and out.refusal == NOT_PARTICIPANT
    assert router.sessions.get(SID).accepted == {"b1": BOB}


def test_the_accepted_connection_and_the_opener_may_still_end_it(router):
    open_session(router)
    accept(router, "b1")
    rejection = msg(HotlinkReject(sid=SID, rsn="app gone"), "rj0002")
    assert [(s.conn, s.message) for s in router.handle("b1", rejection).sends] == [
        ("a1", rejection)
    ]
    assert router.sessions.get(SID).accepted == {}  # bob left with his Reject
    close = msg(HotlinkClose(sid=SID, rsn="eof:0"), "cl0003")
    assert router.handle("a2", close).sends == []
    assert SID not in router.sessions


def test_before_anyone_accepted_an_offered_user_may_still_close(router):
    open_session(router)
    close = msg(HotlinkClose(sid=SID, rsn="ipc unavailable"), "cl0004")
    assert [(s.conn, s.message) for s in router.handle("c1", close).sends] == [("a1", close)]


# ---------------------------------------------------------------- several acceptors of one session


@pytest.mark.parametrize("kind", ["reject", "close"])
def test_one_acceptor_leaving_does_not_end_the_session_for_the_others(router, kind):
    """A non-TCP Open without ``to``: bob and carol both accepted. bob leaving must not reach
    alice (her client would end the session for carol too); carol's leaving, the last, does."""
    open_session(router)
    accept(router, "b1")
    accept(router, "c1")

    def leave(mid: str) -> Message:
        payload = HotlinkReject(sid=SID, rsn="bye") if kind == "reject" else HotlinkClose(sid=SID)
        return msg(payload, mid)

    out = router.handle("b1", leave("lv0001"))
    assert out.sends == [] and out.refusal is None
    assert router.sessions.get(SID).accepted == {"c1": CAROL}
    assert targets(router.handle("a1", data(1))) == ["c1"]  # bob gets no more data

    last = leave("lv0002")
    out = router.handle("c1", last)
    assert [(s.conn, s.message) for s in out.sends] == [("a1", last)]
    assert router.sessions.get(SID).accepted == {}


def test_a_reject_from_an_acceptor_removes_it_from_the_session(router):
    open_session(router, path=TCP_PATH)
    accept(router, "b1")
    out = router.handle("b1", msg(HotlinkReject(sid=SID, rsn="ipc unavailable"), "rj0003"))
    assert targets(out) == ["a1"]
    assert router.sessions.get(SID).accepted == {}
    assert router.handle("a1", data(1)).sends == []  # bob receives nothing more


# ---------------------------------------------------------------- bounded Opens


def _own_path(nbytes: int, fill: str = "x") -> str:
    """A path in alice's datasite of exactly ``nbytes`` UTF-8 bytes."""
    head = f"{ALICE}/big/"
    width = len(fill.encode("utf-8"))
    body = fill * ((nbytes - len(head) - len(".request")) // width)
    path = head + body + ".request"
    assert len(path.encode("utf-8")) == nbytes, len(path.encode("utf-8"))
    return path


def test_an_open_path_of_4_kib_is_accepted(router):
    path = _own_path(4096)
    out = router.handle("a1", msg(HotlinkOpen(sid=SID, pth=path)))
    assert out.refusal is None
    assert router.sessions.get(SID).path == path


@pytest.mark.parametrize("fill", ["x", "\u00e9"], ids=["ascii", "two-byte"])
def test_an_open_path_over_4_kib_is_rejected_and_offered_to_nobody(router, access, fill):
    path = _own_path(4098, fill)
    access.readers[path] = {BOB, CAROL}
    out = router.handle("a1", msg(HotlinkOpen(sid=SID, pth=path)))
    assert only(out) == ("a1", HotlinkReject(sid=SID, rsn="path too long"))
    assert SID not in router.sessions
    assert len(out.detail) < 200  # the detail says how long, it does not quote it


def test_an_open_path_of_a_mebibyte_is_rejected_without_a_broadcast(router, access):
    path = f"{ALICE}/p/" + "x" * (1 << 20)
    access.readers[path] = {BOB, CAROL, MALLORY}
    out = router.handle("a1", msg(HotlinkOpen(sid=SID, pth=path)))
    assert [s for s in out.sends if s.broadcast] == []
    assert targets(out) == ["a1"]


def test_an_open_with_a_session_id_over_256_characters_is_rejected(router):
    sid = "s" * 257
    out = router.handle("a1", msg(HotlinkOpen(sid=sid, pth=PATH)))
    assert only(out) == ("a1", HotlinkReject(sid=sid, rsn="invalid session id"))
    assert sid not in router.sessions
    assert router.handle("a1", msg(HotlinkOpen(sid="s" * 256, pth=PATH))).refusal is None


def test_an_open_with_a_target_longer_than_any_email_is_rejected(router, access):
    target = "b" * 300 + "@example.com"
    out = router.handle("a1", msg(HotlinkOpen(sid=SID, pth=PATH, to=target)))
    assert only(out) == ("a1", HotlinkReject(sid=SID, rsn=PERMISSION_DENIED))
    assert SID not in router.sessions


def test_the_acl_store_denies_a_path_over_4_kib_even_to_its_owner():
    from hotlink.server.acl_store import ACLStore

    store = ACLStore()
    assert store.can_access(_own_path(4096), ALICE, Access.WRITE)
    assert not store.can_access(_own_path(4098), ALICE, Access.WRITE)
    assert not store.can_access(_own_path(4098), BOB, Access.READ)
