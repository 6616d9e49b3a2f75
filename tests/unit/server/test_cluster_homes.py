"""Sessions homed on other replicas: where each lives, and which local connections take part.

What users care about: when a replica is lost, every local connection in one of its
sessions is told (and no connection of another replica's sessions is), and a hostile
connection offering endless Opens costs bounded memory.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.server.cluster.homes import MAX_HOMES, MAX_PER_CONN, RemoteSessions


def test_defaults_are_bounded() -> None:
    assert 0 < MAX_PER_CONN <= MAX_HOMES


def test_home_of_is_unknown_before_a_note() -> None:
    rs = RemoteSessions()
    assert rs.home_of("s1") is None
    assert len(rs) == 0


def test_home_of_after_note() -> None:
    rs = RemoteSessions()
    rs.note("s1", "r1", "c1")
    rs.note("s2", "r2", "c1")
    rs.note("s1", "r1", "c2")  # a second local connection in the same session
    assert rs.home_of("s1") == "r1"
    assert rs.home_of("s2") == "r2"
    assert len(rs) == 2


def test_a_later_note_moves_the_session_home() -> None:
    rs = RemoteSessions()
    rs.note("s1", "r1", "c1")
    rs.note("s1", "r2", "c1")  # opened again elsewhere
    assert rs.home_of("s1") == "r2"
    assert rs.lose("r1") == []
    assert rs.lose("r2") == [("c1", "s1")]


# ---------------------------------------------------------------- bounds


def test_max_homes_evicts_the_oldest_session() -> None:
    rs = RemoteSessions(max_homes=3)
    for i in range(1, 5):
        rs.note(f"s{i}", "r1", f"c{i}")
    assert len(rs) == 3
    assert rs.home_of("s1") is None
    assert [rs.home_of(f"s{i}") for i in (2, 3, 4)] == ["r1"] * 3


def test_max_homes_counts_from_the_last_note() -> None:
    rs = RemoteSessions(max_homes=3)
    for sid in ("s1", "s2", "s3"):
        rs.note(sid, "r1", "c1")
    rs.note("s1", "r1", "c1")  # s1 is in use again: s2 is now the oldest
    rs.note("s4", "r1", "c1")
    assert rs.home_of("s1") == "r1"
    assert rs.home_of("s2") is None
    assert len(rs) == 3


def test_max_per_conn_evicts_the_oldest_participation_of_that_connection() -> None:
    rs = RemoteSessions(max_per_conn=2)
    for sid in ("s1", "s2", "s3"):
        rs.note(sid, "r1", "hostile")
    rs.note("s1", "r1", "other")
    told = rs.lose("r1")
    assert sorted(told) == [("hostile", "s2"), ("hostile", "s3"), ("other", "s1")]


def test_max_per_conn_counts_from_the_last_note() -> None:
    rs = RemoteSessions(max_per_conn=2)
    rs.note("s1", "r1", "c1")
    rs.note("s2", "r1", "c1")
    rs.note("s1", "r1", "c1")  # touched: s2 is the oldest of c1's
    rs.note("s3", "r1", "c1")
    assert sorted(rs.lose("r1")) == [("c1", "s1"), ("c1", "s3")]


def test_a_participation_outlives_its_evicted_home() -> None:
    # The home map is a cache for forwarding; telling the connection when the home is lost
    # must not depend on it.
    rs = RemoteSessions(max_homes=1)
    rs.note("s1", "r1", "c1")
    rs.note("s2", "r2", "c1")
    assert rs.home_of("s1") is None
    assert rs.lose("r1") == [("c1", "s1")]
    assert rs.home_of("s2") == "r2"


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.lists(st.tuples(st.integers(0, 12), st.sampled_from("xyz"), st.integers(0, 3)), max_size=80),
)
def test_bounds_hold_for_any_notes(
    max_homes: int, max_per_conn: int, notes: list[tuple[int, str, int]]
) -> None:
    rs = RemoteSessions(max_homes=max_homes, max_per_conn=max_per_conn)
    for sid, home, conn in notes:
        rs.note(f"s{sid}", home, f"c{conn}")
        assert len(rs) <= max_homes
        # The note just made is never the one evicted.
        assert rs.home_of(f"s{sid}") == home
    told = [pair for home in "xyz" for pair in rs.lose(home)]
    assert len(told) == len(set(told))
    assert max(Counter(conn for conn, _ in told).values(), default=0) <= max_per_conn
    assert len(rs) == 0


# ---------------------------------------------------------------- left and drop_conn


def test_left_removes_one_participation() -> None:
    rs = RemoteSessions()
    rs.note("s1", "r1", "c1")
    rs.note("s2", "r1", "c1")
    rs.note("s1", "r1", "c2")
    rs.left("c1", "s1")
    # The home is still known: another connection (or a late frame) may still need it.
    assert rs.home_of("s1") == "r1"
    assert sorted(rs.lose("r1")) == [("c1", "s2"), ("c2", "s1")]


def test_left_of_unknown_conn_or_session_is_harmless() -> None:
    rs = RemoteSessions()
    rs.left("c1", "s1")
    rs.note("s1", "r1", "c1")
    rs.left("c1", "s9")
    rs.left("c9", "s1")
    assert rs.lose("r1") == [("c1", "s1")]


def test_left_twice_and_note_again() -> None:
    rs = RemoteSessions()
    rs.note("s1", "r1", "c1")
    rs.left("c1", "s1")
    rs.left("c1", "s1")
    rs.note("s1", "r1", "c1")  # the session id is used again
    assert rs.lose("r1") == [("c1", "s1")]


def test_drop_conn_forgets_its_participations_only() -> None:
    rs = RemoteSessions()
    rs.note("s1", "r1", "c1")
    rs.note("s2", "r1", "c1")
    rs.note("s1", "r1", "c2")
    rs.drop_conn("c1")
    rs.drop_conn("never-seen")
    assert rs.home_of("s2") == "r1"
    assert rs.lose("r1") == [("c2", "s1")]


# ---------------------------------------------------------------- lose


def test_lose_returns_exactly_the_pairs_of_that_home() -> None:
    rs = RemoteSessions()
    rs.note("a1", "ra", "c1")
    rs.note("a1", "ra", "c2")
    rs.note("a2", "ra", "c2")
    rs.note("b1", "rb", "c1")
    rs.note("b2", "rb", "c3")
    told = rs.lose("ra")
    assert len(told) == len(set(told))
    assert set(told) == {("c1", "a1"), ("c2", "a1"), ("c2", "a2")}
    # Its sessions are forgotten...
    assert rs.home_of("a1") is None
    assert rs.home_of("a2") is None
    # ...the other home's are intact.
    assert rs.home_of("b1") == "rb"
    assert rs.home_of("b2") == "rb"
    assert len(rs) == 2
    assert rs.lose("ra") == []
    assert set(rs.lose("rb")) == {("c1", "b1"), ("c3", "b2")}
    assert len(rs) == 0


def test_lose_of_an_unknown_home_changes_nothing() -> None:
    rs = RemoteSessions()
    rs.note("s1", "r1", "c1")
    assert rs.lose("r9") == []
    assert rs.home_of("s1") == "r1"
    assert rs.lose("r1") == [("c1", "s1")]


def test_after_lose_a_connection_takes_part_afresh() -> None:
    rs = RemoteSessions()
    rs.note("s1", "r1", "c1")
    rs.lose("r1")
    rs.note("s1", "r2", "c1")  # the user reopened the session on another replica
    assert rs.home_of("s1") == "r2"
    assert rs.lose("r1") == []
    assert rs.lose("r2") == [("c1", "s1")]


# A model with no bounds: (conn, sid) -> home of the last note, removed by left/drop/lose.
_ops = st.one_of(
    st.tuples(st.just("note"), st.integers(0, 8), st.sampled_from("xyz"), st.integers(0, 4)),
    st.tuples(st.just("left"), st.integers(0, 8), st.just(""), st.integers(0, 4)),
    st.tuples(st.just("drop"), st.just(0), st.just(""), st.integers(0, 4)),
    st.tuples(st.just("lose"), st.just(0), st.sampled_from("xyz"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ops, max_size=100))
def test_matches_a_model_within_the_bounds(ops: list[tuple[str, int, str, int]]) -> None:
    rs = RemoteSessions()
    homes: dict[str, str] = {}
    parts: dict[tuple[str, str], str] = {}
    for op, s, home, c in ops:
        sid, conn = f"s{s}", f"c{c}"
        if op == "note":
            rs.note(sid, home, conn)
            homes[sid] = home
            parts[(conn, sid)] = home
        elif op == "left":
            rs.left(conn, sid)
            parts.pop((conn, sid), None)
        elif op == "drop":
            rs.drop_conn(conn)
            parts = {k: h for k, h in parts.items() if k[0] != conn}
        else:
            told = rs.lose(home)
            assert len(told) == len(set(told))
            assert set(told) == {k for k, h in parts.items() if h == home}
            parts = {k: h for k, h in parts.items() if h != home}
            homes = {sid: h for sid, h in homes.items() if h != home}
        assert len(rs) == len(homes)
        for probe in range(9):
            assert rs.home_of(f"s{probe}") == homes.get(f"s{probe}")


# ---------------------------------------------------------------- accepted sessions


def test_an_accepted_session_outlives_any_number_of_offers() -> None:
    # Bob accepted s1; endless Opens offered to him (or to anyone here) must not make this
    # replica forget where his credit grants and his Close for s1 go.
    rs = RemoteSessions(max_homes=4, max_per_conn=4)
    rs.note("s1", "r1", "bob")
    assert rs.join("bob", "s1", "r1")
    for i in range(100):
        rs.note(f"offer{i}", "r1", "bob" if i % 2 else "carol")
    assert rs.home_of("s1") is None  # the offers' memory forgot it...
    assert rs.home_for("bob", "s1") == "r1"  # ...bob's accepted session did not
    assert rs.home_for("carol", "s1") is None  # only for the connection that accepted
    assert ("bob", "s1") in rs.lose("r1")  # and he is told when its home goes


def test_a_connection_that_leaves_is_forgotten_and_told_nothing() -> None:
    rs = RemoteSessions()
    rs.note("s1", "r1", "bob")
    rs.join("bob", "s1", "r1")
    rs.left("bob", "s1")
    assert rs.lose("r1") == []
    rs.note("s2", "r1", "bob")
    rs.join("bob", "s2", "r1")
    rs.drop_conn("bob")
    assert rs.lose("r1") == []


def test_accepted_sessions_per_connection_are_capped_without_forgetting_old_ones() -> None:
    rs = RemoteSessions(max_joined_per_conn=2)
    assert rs.join("bob", "s1", "r1") and rs.join("bob", "s2", "r1")
    assert rs.join("bob", "s1", "r1")  # again: no new entry
    assert not rs.join("bob", "s3", "r1")  # a new one is refused...
    assert rs.home_for("bob", "s1") == rs.home_for("bob", "s2") == "r1"  # ...old ones kept
    assert rs.join("carol", "s3", "r1")  # the cap is per connection
    rs.left("bob", "s1")
    assert rs.join("bob", "s3", "r1")


def test_a_pair_in_both_tables_is_told_once() -> None:
    rs = RemoteSessions()
    rs.note("s1", "r1", "bob")
    rs.join("bob", "s1", "r1")
    rs.note("s2", "r2", "bob")
    rs.join("bob", "s2", "r2")
    assert rs.lose("r1") == [("bob", "s1")]
    assert rs.home_for("bob", "s1") is None
    assert rs.home_for("bob", "s2") == "r2"
