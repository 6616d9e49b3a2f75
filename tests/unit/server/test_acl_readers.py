"""The ACL store's answers that spare the router work: who may read a path, and when any
decision may have changed (its epoch).

What users care about: an Open, or a FileWrite, reaches exactly the users who may read its
path, whether the relay asks the ACL about every connected user or only about the users the
rule names. So ``readers_of`` must never leave out a user ``can_access`` lets read.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotlink.protocol.acl import Access
from hotlink.server.acl_store import ACLStore

USERS = [f"{name}@example.com" for name in ("alice", "bob", "carol", "dave", "erin")]
ALICE, BOB, CAROL, DAVE, ERIN = USERS
OUTSIDER = "zed@other.org"
EVERYONE = [*USERS, OUTSIDER]


def acl(*rules: tuple[str, list[str], list[str], list[str]], terminal: bool = False) -> str:
    """An ACL file (JSON is YAML) from (pattern, admin, write, read) rules."""
    return json.dumps(
        {
            "terminal": terminal,
            "rules": [
                {"pattern": p, "access": {"admin": a, "write": w, "read": r}}
                for p, a, w, r in rules
            ],
        }
    )


def readers(store: ACLStore, path: str) -> set[str]:
    return {u for u in EVERYONE if store.can_access(path, u, Access.READ)}


def test_a_rule_that_names_its_readers_gives_them_and_the_owner():
    store = ACLStore()
    store.load(f"{ALICE}/app/syft.pub.yaml", acl(("**", [], [CAROL], [BOB])))
    path = f"{ALICE}/app/x.request"
    assert store.readers_of(path) == {ALICE, BOB, CAROL}
    assert readers(store, path) == {ALICE, BOB, CAROL}


def test_a_path_without_an_acl_is_read_by_its_owner_only():
    store = ACLStore()
    assert store.readers_of(f"{ALICE}/app/x") == {ALICE}
    assert readers(store, f"{ALICE}/app/x") == {ALICE}


def test_anyone_a_user_pattern_or_a_template_means_it_cannot_say():
    store = ACLStore()
    store.load(f"{ALICE}/pub/syft.pub.yaml", acl(("**", [], [], ["*"])))
    store.load(f"{ALICE}/team/syft.pub.yaml", acl(("**", [], [], ["*@example.com"])))
    store.load(f"{ALICE}/home/syft.pub.yaml", acl(("{{.UserEmail}}/**", [], [], [BOB])))
    for folder in ("pub", "team", "home"):
        assert store.readers_of(f"{ALICE}/{folder}/x") is None


def test_the_answer_follows_changes_to_the_acl():
    store = ACLStore()
    path = f"{ALICE}/app/x"
    store.load(f"{ALICE}/app/syft.pub.yaml", acl(("**", [], [], [BOB])))
    assert store.readers_of(path) == {ALICE, BOB}
    store.load(f"{ALICE}/app/syft.pub.yaml", acl(("**", [], [], [CAROL])))
    assert store.readers_of(path) == {ALICE, CAROL}
    store.remove(f"{ALICE}/app/syft.pub.yaml")
    assert store.readers_of(path) == {ALICE}


# ---------------------------------------------------------------- never leaves anyone out

PRINCIPALS = st.lists(
    st.sampled_from([*USERS, "*", "USER", "*@example.com", "b*@example.com", OUTSIDER]),
    max_size=3,
)
PATTERNS = st.sampled_from(
    ["**", "*", "x", "x/**", "x/*.request", "*.request", "{{.UserEmail}}/**", "sub/**", "y"]
)
RULES = st.lists(st.tuples(PATTERNS, PRINCIPALS, PRINCIPALS, PRINCIPALS), max_size=4)
FOLDERS = st.sampled_from(["", "app", "app/sub"])
PATHS = st.sampled_from(["x", "y", "x/a", "x/a.request", "sub/x", "sub/deep/z", "q.request"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    files=st.lists(st.tuples(FOLDERS, RULES, st.booleans()), max_size=3),
    where=FOLDERS,
    rest=PATHS,
)
def test_every_user_who_may_read_is_among_the_readers(files, where, rest):
    store = ACLStore()
    for folder, rules, terminal in files:
        directory = f"{ALICE}/{folder}".rstrip("/")
        store.load(f"{directory}/syft.pub.yaml", acl(*rules, terminal=terminal))
    path = f"{ALICE}/{where}/{rest}".replace("//", "/")
    named = store.readers_of(path)
    if named is not None:
        assert readers(store, path) <= named


# ---------------------------------------------------------------- the epoch


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_epoch_moves_with_every_acl_change_and_every_utc_day():
    clock = Clock()
    store = ACLStore(clock=clock)
    first = store.epoch()
    assert store.epoch() == first
    store.load(f"{ALICE}/app/syft.pub.yaml", acl(("**", [], [], [BOB])))
    loaded = store.epoch()
    assert loaded != first
    clock.now += 60
    assert store.epoch() == loaded  # the same day
    clock.now += 86400
    assert store.epoch() != loaded  # templates may name the date
    day = store.epoch()
    assert not store.remove(f"{BOB}/none/syft.pub.yaml")
    assert store.epoch() == day  # nothing was removed
    assert store.remove(f"{ALICE}/app/syft.pub.yaml")
    assert store.epoch() != day


def test_the_store_knows_a_file_it_holds_word_for_word():
    store = ACLStore()
    text = acl(("**", [], [], [BOB]))
    path = f"{ALICE}/app/syft.pub.yaml"
    assert not store.holds(path, text)
    store.load(path, text)
    assert store.holds(path, text)
    assert not store.holds(path, text + " ")
    store.remove(path)
    assert not store.holds(path, text)
    assert len(store) == 0
