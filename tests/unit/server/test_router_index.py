"""The router with the server's ACL store: Opens reach their readers through the indexes,
Data finds its receivers from the session id alone, and cached decisions follow every
change (an ACL edit mid-stream, an acceptor leaving).

What users care about: the same connections receive an Open, a FileWrite or a Data frame
as when the router asked about every connection and every frame.
"""

from __future__ import annotations

import json

import pytest

from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    Message,
)
from hotlink.server.acl_store import ACLStore
from hotlink.server.decisions import ConnectionTable, Outcome
from hotlink.server.router import HotlinkRouter

ALICE, BOB, CAROL, MALLORY = (
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "mallory@example.com",
)
FOLDER = f"{ALICE}/app"
PATH = f"{FOLDER}/x.request"
SID = "0123456789abcdef"


def acl_text(read: list[str], write: list[str] | None = None) -> str:
    rule = {"pattern": "**", "access": {"admin": [], "write": write or [], "read": read}}
    return json.dumps({"rules": [rule]})


def table_of(n_idle: int) -> ConnectionTable:
    """alice (a1, a2), bob (b1, b2), carol (c1) and mallory (m1), with idle users between."""
    table = ConnectionTable()
    conns = [("a1", ALICE), ("b1", BOB), ("m1", MALLORY), ("c1", CAROL), ("a2", ALICE)]
    for i, (conn, user) in enumerate(conns):
        table.add(conn, user)
        for k in range(n_idle):
            table.add(f"idle{i}-{k}", f"idle{i}-{k}@example.com")
    table.add("b2", BOB)
    return table


def routers(store: ACLStore, table: ConnectionTable) -> tuple[HotlinkRouter, HotlinkRouter]:
    """The relay's router (indexes, cached decisions) and one that asks about everything."""
    fast = HotlinkRouter(store, table, acl_epoch=store.epoch, readers_of=store.readers_of)
    return fast, HotlinkRouter(store, table)


def targets(out: Outcome) -> list[str]:
    return [s.conn for s in out.sends]


def open_msg(to: str = "", sid: str = SID) -> Message:
    return Message("op0001", HotlinkOpen(sid=sid, pth=PATH, to=to))


@pytest.mark.parametrize(
    "read",
    [[BOB], [BOB, CAROL], ["*"], ["*@example.com"], [], [MALLORY, "nobody@example.com"]],
    ids=["bob", "bob-carol", "anyone", "pattern", "nobody", "mallory-and-a-stranger"],
)
@pytest.mark.parametrize("to", ["", BOB, CAROL])
def test_an_open_reaches_the_same_connections_in_the_same_order(read, to):
    store = ACLStore()
    store.load(f"{FOLDER}/syft.pub.yaml", acl_text(read))
    fast, slow = routers(store, table_of(50))
    expected = slow.handle("a1", open_msg(to))
    got = fast.handle("a1", open_msg(to))
    assert targets(got) == targets(expected)
    assert [s.message.payload for s in got.sends] == [s.message.payload for s in expected.sends]
    assert got.refusal == expected.refusal


def test_an_open_to_a_named_reader_skips_the_idle_crowd():
    """The indexed Open asks the ACL about the named readers only, not about every user."""
    store = ACLStore()
    store.load(f"{FOLDER}/syft.pub.yaml", acl_text([BOB]))
    asked: list[str] = []
    real = store.can_access

    def spy(path: str, user: str, level: object) -> bool:
        asked.append(user)
        return real(path, user, level)  # type: ignore[arg-type]

    store.can_access = spy  # type: ignore[method-assign]
    fast, _ = routers(store, table_of(200))
    assert targets(fast.handle("a1", open_msg())) == ["b1", "b2"]
    assert len(asked) < 10  # the opener's write, bob's read; not 1000 idle users


# ---------------------------------------------------------------- Data


def data(seq: int, sid: str = SID) -> Message:
    return Message(f"d{seq:05d}", HotlinkData(sid=sid, seq=seq, pth=PATH, pay=b"x"))


def streaming(read: list[str]) -> tuple[ACLStore, HotlinkRouter]:
    store = ACLStore()
    store.load(f"{FOLDER}/syft.pub.yaml", acl_text(read))
    router, _ = routers(store, table_of(3))
    router.handle("a1", open_msg())
    for conn in ("b1", "c1", "b2"):
        router.handle(conn, Message("ac" + conn, HotlinkAccept(sid=SID)))
    return store, router


def test_data_targets_are_the_receivers_of_the_full_path():
    _, router = streaming([BOB, CAROL])
    assert router.data_targets("a1", SID) == ("b1", "c1", "b2")
    assert targets(router.handle("a1", data(1))) == ["b1", "c1", "b2"]
    # Another connection of the opener's user may send too.
    assert router.data_targets("a2", SID) == ("b1", "c1", "b2")


def test_data_targets_leave_every_refusal_to_the_full_path():
    _, router = streaming([BOB, CAROL])
    assert router.data_targets("a1", "no-such-session") is None  # Reject unknown session
    assert router.data_targets("b1", SID) is None  # an acceptor may not send: Error 403
    assert router.data_targets("m1", SID) is None  # a bystander: Error 403
    assert router.data_targets("gone", SID) is None  # a connection already removed


def test_an_acl_change_mid_stream_takes_effect_at_the_next_frame():
    store, router = streaming([BOB, CAROL])
    assert router.data_targets("a1", SID) == ("b1", "c1", "b2")
    store.load(f"{FOLDER}/syft.pub.yaml", acl_text([BOB]))  # carol may no longer read
    assert router.data_targets("a1", SID) == ("b1", "b2")
    assert targets(router.handle("a1", data(2))) == ["b1", "b2"]
    store.load(f"{FOLDER}/syft.pub.yaml", acl_text([BOB, CAROL]))
    assert targets(router.handle("a1", data(3))) == ["b1", "c1", "b2"]


def test_an_acceptor_that_leaves_gets_no_more_frames():
    _, router = streaming([BOB, CAROL])
    assert router.data_targets("a1", SID) == ("b1", "c1", "b2")
    router.handle("c1", Message("cl0001", HotlinkClose(sid=SID)))
    assert router.data_targets("a1", SID) == ("b1", "b2")
    router.disconnect("b1")
    assert targets(router.handle("a1", data(4))) == ["b2"]
    router.handle("c1", Message("ac2", HotlinkAccept(sid=SID)))  # and one that comes back
    assert router.data_targets("a1", SID) == ("b2", "c1")


def test_the_debug_trace_keeps_every_frame_on_the_full_path():
    store = ACLStore()
    store.load(f"{FOLDER}/syft.pub.yaml", acl_text([BOB]))
    lines: list[str] = []
    router = HotlinkRouter(
        store,
        table_of(0),
        data_relay_log=lines.append,
        acl_epoch=store.epoch,
        readers_of=store.readers_of,
    )
    router.handle("a1", open_msg(BOB))
    router.handle("b1", Message("ac1", HotlinkAccept(sid=SID)))
    assert router.data_targets("a1", SID) is None
    router.handle("a1", data(1))
    assert lines and "hotlink data relay" in lines[0]


# ---------------------------------------------------------------- the connection table


def test_the_table_knows_each_users_connections_in_order():
    table = ConnectionTable()
    for conn, user in [("a1", ALICE), ("b1", BOB), ("a2", ALICE), ("a3", ALICE)]:
        table.add(conn, user)
    assert table.of_user(ALICE) == ["a1", "a2", "a3"]
    table.remove("a2")
    assert table.of_user(ALICE) == ["a1", "a3"]
    assert table.in_order(["a3", "b1", "a1"]) == ["a1", "b1", "a3"]
    for conn in ("a1", "a3"):
        table.remove(conn)
    assert table.of_user(ALICE) == [] and table.user("a1") is None
    table.remove("a1")  # twice is fine
    assert len(table) == 1
