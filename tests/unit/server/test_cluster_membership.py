"""Which replicas are alive, from what each heartbeat reads in Redis (time is injected).

What users care about: a replica that died is declared lost (so its sessions' peers are
told), a live one is never declared lost just because *this* replica has only now reached
Redis (after a start or an outage) and the others' keys were not renewed yet in its view.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.server.cluster.membership import Membership

TTL = 5.0
ME = "me~000001"


def _member() -> Membership:
    return Membership(ME, TTL)


# ---------------------------------------------------------------- found


def test_a_live_replica_is_found_once() -> None:
    m = _member()
    first = m.observe(0.0, {"a": True, "b": True})
    assert sorted(first.found) == ["a", "b"]
    assert first.lost == []
    for t in (1.0, 2.0, 10.0):
        again = m.observe(t, {"a": True, "b": True})
        assert (again.found, again.lost) == ([], [])
    assert m.known == {"a", "b"}


def test_a_replica_registered_later_is_found_then() -> None:
    m = _member()
    m.observe(0.0, {"a": True})
    changes = m.observe(1.0, {"a": True, "c": True})
    assert changes.found == ["c"]


def test_found_come_sorted() -> None:
    # Deterministic order, whatever order Redis listed the replicas in.
    m = _member()
    assert m.observe(0.0, {"c": True, "a": True, "b": True}).found == ["a", "b", "c"]


def test_own_ref_is_ignored() -> None:
    m = _member()
    assert m.observe(0.0, {ME: True}).found == []
    assert m.observe(TTL * 3, {ME: False}).lost == []
    assert m.observe(TTL * 4, {}).lost == []
    assert ME not in m.known


def test_a_dead_unknown_replica_is_not_found() -> None:
    m = _member()
    assert m.observe(0.0, {"a": False}).found == []
    assert m.known == set()


# ---------------------------------------------------------------- lost, after a whole TTL


def test_nothing_is_lost_before_a_whole_ttl_of_healthy_redis() -> None:
    m = _member()
    m.observe(0.0, {"a": True, "b": True})
    for t in (0.5, 2.5, TTL - 0.001):
        # "a" unregistered, "b" registered but its key expired: both look dead, too early.
        changes = m.observe(t, {"b": False})
        assert changes.lost == []
    assert m.known == {"a", "b"}


def test_a_registered_replica_whose_key_expired_is_lost_after_a_ttl() -> None:
    m = _member()
    m.observe(0.0, {"a": True, "b": True})
    changes = m.observe(TTL, {"a": True, "b": False})
    assert changes.lost == ["b"]
    assert changes.found == []
    assert m.known == {"a"}


def test_an_unregistered_known_replica_is_lost_after_a_ttl_once() -> None:
    m = _member()
    m.observe(0.0, {"a": True, "b": True})
    assert m.observe(TTL, {"a": True}).lost == ["b"]
    assert m.observe(TTL + 1, {"a": True}).lost == []
    assert m.known == {"a"}


def test_a_registered_dead_key_is_reported_for_clean_up_even_if_never_known() -> None:
    # Its entry in the set of replicas must be reaped by someone: whoever sees it.
    m = _member()
    m.observe(0.0, {})
    assert m.observe(TTL, {"ghost": False}).lost == ["ghost"]
    assert m.observe(TTL + 1, {"ghost": False}).lost == ["ghost"]  # until it is reaped
    assert "ghost" not in m.known
    assert m.observe(TTL + 2, {}).lost == []


def test_the_healthy_time_starts_at_the_first_reading_not_at_creation() -> None:
    m = _member()
    m.observe(100.0, {"a": True})
    assert m.observe(100.0 + TTL - 0.1, {}).lost == []
    assert m.observe(100.0 + TTL, {}).lost == ["a"]


def test_a_lost_replica_whose_key_is_back_is_found_again() -> None:
    m = _member()
    m.observe(0.0, {"a": True})
    assert m.observe(TTL, {"a": False}).lost == ["a"]
    assert m.observe(TTL + 1, {"a": True}).found == ["a"]


def test_a_replica_found_late_is_lost_without_a_new_grace() -> None:
    # The grace is about this replica's view of Redis, not about how long it knew the other.
    m = _member()
    m.observe(0.0, {})
    m.observe(TTL + 1, {"a": True})
    assert m.observe(TTL + 2, {"a": False}).lost == ["a"]


# ---------------------------------------------------------------- Redis outages


def test_redis_down_restarts_the_grace() -> None:
    m = _member()
    m.observe(0.0, {"a": True})
    m.observe(20.0, {"a": True})  # healthy for long
    m.redis_down()
    # Back: the others' keys may have expired while we could not see them renew.
    assert m.observe(21.0, {"a": False}).lost == []
    assert m.observe(21.0 + TTL - 0.1, {}).lost == []
    assert m.known == {"a"}
    assert m.observe(21.0 + TTL, {"a": False}).lost == ["a"]


def test_redis_down_twice_counts_from_the_last_recovery() -> None:
    m = _member()
    m.observe(0.0, {"a": True})
    m.redis_down()
    m.observe(10.0, {"a": True})
    m.redis_down()
    m.observe(12.0, {"a": True})
    assert m.observe(12.0 + TTL - 0.1, {}).lost == []
    assert m.observe(12.0 + TTL, {}).lost == ["a"]


def test_finding_goes_on_during_the_grace() -> None:
    m = _member()
    m.redis_down()
    changes = m.observe(0.0, {"a": True, "b": False})
    assert (changes.found, changes.lost) == (["a"], [])


# ---------------------------------------------------------------- forget


def test_forget_makes_a_live_replica_found_again() -> None:
    m = _member()
    m.observe(0.0, {"a": True, "b": True})
    m.forget("a")  # it said goodbye
    m.forget("never-seen")
    assert m.known == {"b"}
    assert m.observe(1.0, {"a": True, "b": True}).found == ["a"]


def test_a_forgotten_replica_is_not_lost_again() -> None:
    m = _member()
    m.observe(0.0, {"a": True})
    m.forget("a")
    assert m.observe(TTL, {}).lost == []


def test_forget_all_returns_what_was_known_and_clears_it() -> None:
    m = _member()
    m.observe(0.0, {"b": True, "a": True})
    assert m.forget_all() == ["a", "b"]
    assert m.known == set()
    assert m.forget_all() == []
    assert m.observe(TTL, {}).lost == []
    assert sorted(m.observe(TTL + 1, {"a": True, "b": True}).found) == ["a", "b"]


# ---------------------------------------------------------------- property

_refs = st.sampled_from(["a", "b", "c", ME])
_steps = st.one_of(
    st.tuples(
        st.just("observe"), st.floats(0, 3), st.dictionaries(_refs, st.booleans(), max_size=4)
    ),
    st.tuples(st.just("down"), st.just(0.0), st.just({})),
    st.tuples(st.just("forget"), st.just(0.0), st.dictionaries(_refs, st.just(True), max_size=1)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_steps, max_size=40))
def test_rules_hold_for_any_readings(steps: list[tuple[str, float, dict[str, bool]]]) -> None:
    m = _member()
    now = 0.0
    healthy_since: float | None = None
    for op, dt, alive in steps:
        if op == "down":
            m.redis_down()
            healthy_since = None
            continue
        if op == "forget":
            for ref in alive:
                m.forget(ref)
            continue
        now += dt
        if healthy_since is None:
            healthy_since = now
        before = set(m.known)
        changes = m.observe(now, alive)
        found, lost = set(changes.found), set(changes.lost)
        assert len(found) == len(changes.found) and len(lost) == len(changes.lost)
        assert ME not in found | lost | m.known
        assert not found & lost
        # Found: live now, and not known before.
        assert found == {r for r, live in alive.items() if live and r != ME} - before
        if now - healthy_since < TTL:
            assert lost == set()
        else:
            # Lost: known and now unregistered, or registered with an expired key.
            dead = {r for r, live in alive.items() if not live and r != ME}
            assert lost == dead | (before - alive.keys())
        assert m.known == (before | found) - lost
