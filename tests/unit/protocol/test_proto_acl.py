"""ACL parsing and evaluation (PROTOCOL.md §3, DECISIONS.md #21, #28)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from hotlink.protocol.acl import (
    ACL_FILE,
    Access,
    ACLError,
    ACLTree,
    Rule,
    RuleSet,
    acl_dir,
    is_acl_path,
    normalize_path,
    parse_acl,
    render_template,
    specificity,
    user_hash,
)
from hotlink.protocol.errors import ProtocolError

ALICE = "alice@example.com"
BOB = "bob@example.com"
EVE = "eve@evil.com"
CAROL = "carol@company.com"

R, W, C, A = Access.READ, Access.WRITE, Access.CREATE, Access.ADMIN

PRIVATE = """
terminal: false
rules:
  - pattern: '**'
    access:
      admin: []
      write: []
      read: []
"""
PUBLIC_RW = """
rules:
  - pattern: '**'
    access:
      write: ['*']
      read: ['*']
"""
TCP_TEST = f"""
terminal: false
rules:
  - pattern: '**'
    access:
      admin: []
      write: ['{ALICE}', '{BOB}']
      read: ['{ALICE}', '{BOB}']
"""
# The hotlink-protocol endpoint ACLs of PROTOCOL.md §9.2.
RPC = """
rules:
  - pattern: '**/syft.pub.yaml'
    access:
      read: ['*']
"""
ENDPOINT = """
rules:
  - pattern: '**.request'
    access:
      read: ['*']
      write: ['*']
  - pattern: '**.response'
    access:
      read: ['*']
      write: ['*']
"""


def _tree(files: dict[str, str]) -> ACLTree:
    tree = ACLTree(clock=lambda: datetime(2026, 2, 7, tzinfo=UTC).timestamp())
    for path, text in files.items():
        tree.load(acl_dir(path), parse_acl(text, path))
    return tree


@pytest.fixture
def tree() -> ACLTree:
    return _tree(
        {
            f"{ALICE}/syft.pub.yaml": PRIVATE,
            f"{ALICE}/public/syft.pub.yaml": PUBLIC_RW,
            f"{ALICE}/shared/flows/tcp-test/syft.pub.yaml": TCP_TEST,
            f"{ALICE}/shared/flows/tcp-test/run1/_mpc/0_to_1/syft.pub.yaml": TCP_TEST,
            f"{ALICE}/app_data/latency/rpc/syft.pub.yaml": RPC,
            f"{ALICE}/app_data/latency/rpc/hotlink-protocol/syft.pub.yaml": ENDPOINT,
        }
    )


TCP_PATH = f"{ALICE}/shared/flows/tcp-test/run1/_mpc/0_to_1/stream.tcp.request"
EP = f"{ALICE}/app_data/latency/rpc/hotlink-protocol"


@pytest.mark.parametrize(
    "path,user,level,allowed",
    [
        # The owner may do anything in their datasite, with or without ACLs.
        (f"{ALICE}/private/x.txt", ALICE, A, True),
        (f"{ALICE}/anything", ALICE, W, True),
        # Private root: nobody else.
        (f"{ALICE}/private/x.txt", BOB, R, False),
        (f"{ALICE}/notes.txt", BOB, R, False),
        # Public folder: everyone reads and writes, nobody else administers.
        (f"{ALICE}/public/a/b/c.txt", BOB, R, True),
        (f"{ALICE}/public/a/b/c.txt", EVE, W, True),
        (f"{ALICE}/public/a/b/c.txt", EVE, C, True),
        (f"{ALICE}/public/a/b/c.txt", EVE, A, False),
        (f"{ALICE}/public", EVE, R, True),  # the folder itself (file name segment included)
        # TCP test channel: both parties, nobody else.
        (TCP_PATH, BOB, R, True),
        (TCP_PATH, BOB, W, True),
        (TCP_PATH, EVE, R, False),
        (f"{ALICE}/shared/flows/tcp-test/other.txt", BOB, R, True),
        (f"{ALICE}/shared/flows/other/x", BOB, R, False),
        # RPC endpoint: **.request matches only in the endpoint folder itself.
        (f"{EP}/x.request", EVE, W, True),
        (f"{EP}/x.response", EVE, R, True),
        (f"{EP}/sub/x.request", EVE, R, False),
        (f"{EP}/x.txt", EVE, R, False),
        (f"{EP}/stream.accept", BOB, R, False),
        # The app's rpc ACL grants read of ACL files below it... but the nearest ACL wins.
        (f"{ALICE}/app_data/latency/rpc/other/syft.pub.yaml", BOB, R, True),
        (f"{ALICE}/app_data/latency/rpc/other/x.request", BOB, R, False),
        # Paths are normalised before evaluation.
        (f"/{ALICE}/public/./a/../b.txt", BOB, R, True),
        (f"{ALICE}/public/../private.txt", BOB, R, False),
        # No ACL at all for a datasite: deny.
        (f"{BOB}/x", ALICE, R, False),
    ],
)
def test_table(tree: ACLTree, path: str, user: str, level: Access, allowed: bool) -> None:
    assert tree.can_access(path, user, level) is allowed
    # A second call (possibly cached) gives the same answer.
    assert tree.can_access(path, user, level) is allowed


def test_owner_is_exact_first_segment_not_prefix() -> None:
    # DECISIONS.md #21: "alice@example.co" is a prefix of "alice@example.com" but not its owner.
    tree = _tree({f"{ALICE}/syft.pub.yaml": PRIVATE})
    assert not tree.can_access(f"{ALICE}/x", "alice@example.co", R)
    assert not tree.can_access(f"{ALICE}.evil/x", ALICE, R)
    assert tree.can_access(f"{ALICE}/x", ALICE, A)


def test_nearest_acl_wins_without_inheritance() -> None:
    tree = _tree(
        {
            f"{ALICE}/syft.pub.yaml": PUBLIC_RW,
            f"{ALICE}/secret/syft.pub.yaml": PRIVATE,
        }
    )
    assert tree.can_access(f"{ALICE}/a.txt", BOB, R)
    assert not tree.can_access(f"{ALICE}/secret/a.txt", BOB, R)
    assert not tree.can_access(f"{ALICE}/secret/deep/er/a.txt", BOB, R)
    nearest = tree.nearest(f"{ALICE}/secret/deep/a.txt")
    assert nearest is not None and nearest[0] == f"{ALICE}/secret"
    assert tree.nearest(f"{BOB}/x") is None


def test_terminal_stops_descent() -> None:
    tree = _tree(
        {
            f"{ALICE}/syft.pub.yaml": "terminal: true\n" + PUBLIC_RW,
            f"{ALICE}/secret/syft.pub.yaml": PRIVATE,
        }
    )
    assert tree.can_access(f"{ALICE}/secret/a.txt", BOB, R)
    nearest = tree.nearest(f"{ALICE}/secret/a.txt")
    assert nearest is not None and nearest[0] == ALICE


def test_remove_and_reload_invalidate_decisions() -> None:
    tree = _tree({f"{ALICE}/syft.pub.yaml": PRIVATE, f"{ALICE}/p/syft.pub.yaml": PUBLIC_RW})
    assert tree.can_access(f"{ALICE}/p/x", BOB, R)
    tree.remove(f"{ALICE}/p")
    assert not tree.can_access(f"{ALICE}/p/x", BOB, R)
    tree.load(f"{ALICE}/p", parse_acl(PUBLIC_RW, "again"))
    assert tree.can_access(f"{ALICE}/p/x", BOB, R)
    tree.load(f"{ALICE}/p", parse_acl(PRIVATE, "private now"))
    assert not tree.can_access(f"{ALICE}/p/x", BOB, R)
    assert f"{ALICE}/p" in tree and len(tree) == 2


def test_cache_is_bounded() -> None:
    tree = ACLTree(cache_size=8)
    tree.load(ALICE, parse_acl(PUBLIC_RW, "x"))
    for i in range(100):
        assert tree.can_access(f"{ALICE}/f{i}", BOB, R)
    assert len(tree._cache) <= 8


def test_specificity_picks_the_most_specific_rule() -> None:
    text = f"""
rules:
  - pattern: '**'
    access: {{read: ['*']}}
  - pattern: 'secret/**'
    access: {{read: ['{BOB}']}}
  - pattern: 'secret/top.txt'
    access: {{read: []}}
"""
    tree = _tree({f"{ALICE}/syft.pub.yaml": text})
    assert tree.can_access(f"{ALICE}/open.txt", EVE, R)
    assert not tree.can_access(f"{ALICE}/secret/a.txt", EVE, R)
    assert tree.can_access(f"{ALICE}/secret/a.txt", BOB, R)
    assert tree.can_access(f"{ALICE}/secret", BOB, R)  # D/** also matches D
    assert not tree.can_access(f"{ALICE}/secret/top.txt", BOB, R)


@pytest.mark.parametrize(
    "pattern,score",
    [
        ("**", -100),
        ("**/*", -99),
        ("a.txt", 10),
        ("a/b.txt", 2 * 7 + 10),
        ("*.txt", 2 * 5 - 20),
        ("a/*.txt", 2 * 7 + 10 - 10),
        ("a/?.txt", 2 * 7 + 10 - 2),
        ("a/{x,y}", 2 * 7 + 10 - 2),
        ("[ab]/**", 2 * 7 + 10 - 2 - 20),
    ],
)
def test_specificity_scores(pattern: str, score: int) -> None:
    assert specificity(pattern) == score


def test_template_bonus() -> None:
    assert specificity("{{.UserEmail}}/x", template=True) == specificity("{{.UserEmail}}/x") + 50


@pytest.mark.parametrize(
    "pattern,path,matches",
    [
        ("**", "a/b/c", True),
        ("*", "a", True),
        ("*", "a/b", False),
        ("*.txt", ".hidden.txt", True),
        ("**/*.txt", "x.txt", True),
        ("**/*.txt", "a/b/x.txt", True),
        ("a/**/z", "a/z", True),
        ("a/**/z", "a/b/c/z", True),
        ("a/**", "a", True),
        ("a/**", "a/b/c", True),
        ("a/**", "ab", False),
        ("**.request", "x.request", True),
        ("**.request", "d/x.request", False),
        ("x?.txt", "x1.txt", True),
        ("x?.txt", "x12.txt", False),
        ("[ab].txt", "b.txt", True),
        ("[!ab].txt", "b.txt", False),
        ("*.{md,txt}", "r.md", True),
        ("*.{md,txt}", "r.rst", False),
        ("{a,b}.txt", "a.txt", False),  # no *, ? or [: an exact string (PROTOCOL.md §11.28)
        ("{a,b}.txt", "{a,b}.txt", True),
        ("exact.txt", "exact.txt", True),
        ("exact.txt", "exact.txt.bak", False),
        ("*.TXT", "a.txt", False),  # case-sensitive
    ],
)
def test_glob_semantics(pattern: str, path: str, matches: bool) -> None:
    text = f"rules:\n  - pattern: '{pattern}'\n    access: {{read: ['*']}}\n"
    tree = _tree({f"{ALICE}/syft.pub.yaml": text})
    assert tree.can_access(f"{ALICE}/{path}", BOB, R) is matches


@pytest.mark.parametrize(
    "principal,user,allowed",
    [
        ("*", EVE, True),
        ("*@company.com", CAROL, True),
        ("*@company.com", EVE, False),
        ("carol@company.co?", CAROL, True),
        ("[bc]*@company.com", CAROL, True),
        ("[bc]*@company.com", "dave@company.com", False),
        (CAROL, CAROL, True),
        (CAROL, CAROL.upper(), False),
        ("USER", EVE, True),
        ("someone@else.com", EVE, False),
    ],
)
def test_principals(principal: str, user: str, allowed: bool) -> None:
    text = f"rules:\n  - pattern: '**'\n    access: {{read: ['{principal}']}}\n"
    tree = _tree({f"{ALICE}/syft.pub.yaml": text})
    assert tree.can_access(f"{ALICE}/x", user, R) is allowed


def test_access_hierarchy() -> None:
    text = f"""
rules:
  - pattern: '**'
    access:
      admin: ['{CAROL}']
      write: ['{BOB}']
      read: ['{EVE}']
"""
    tree = _tree({f"{ALICE}/syft.pub.yaml": text})
    expected = {
        CAROL: {R: True, C: True, W: True, A: True},
        BOB: {R: True, C: True, W: True, A: False},
        EVE: {R: True, C: False, W: False, A: False},
        "nobody@x.com": {R: False, C: False, W: False, A: False},
    }
    for user, levels in expected.items():
        for level, allowed in levels.items():
            assert tree.can_access(f"{ALICE}/f", user, level) is allowed, (user, level)


def test_writing_an_acl_file_needs_admin() -> None:
    tree = _tree({f"{ALICE}/syft.pub.yaml": PUBLIC_RW})
    assert tree.can_access(f"{ALICE}/x/data.txt", BOB, W)
    assert tree.can_access(f"{ALICE}/x/syft.pub.yaml", BOB, R)
    assert not tree.can_access(f"{ALICE}/x/syft.pub.yaml", BOB, W)
    assert not tree.can_access(f"{ALICE}/x/syft.pub.yaml", BOB, C)
    assert tree.can_access(f"{ALICE}/x/syft.pub.yaml", ALICE, W)


def test_templates_render_user_and_date() -> None:
    text = """
rules:
  - pattern: '{{.UserEmail}}/**'
    access: {write: ['USER']}
  - pattern: 'by-hash/{{.UserHash}}/*'
    access: {read: ['*']}
  - pattern: 'logs/{{.Year}}-{{.Month}}-{{.Date}}/*'
    access: {read: ['*']}
"""
    tree = _tree({f"{ALICE}/inbox/syft.pub.yaml": text})
    assert tree.can_access(f"{ALICE}/inbox/{BOB}/msg.request", BOB, W)
    assert not tree.can_access(f"{ALICE}/inbox/{BOB}/msg.request", EVE, W)
    assert tree.can_access(f"{ALICE}/inbox/by-hash/{user_hash(EVE)}/f", EVE, R)
    assert not tree.can_access(f"{ALICE}/inbox/by-hash/{user_hash(BOB)}/f", EVE, R)
    assert tree.can_access(f"{ALICE}/inbox/logs/2026-02-07/f", EVE, R)
    assert not tree.can_access(f"{ALICE}/inbox/logs/2026-02-08/f", EVE, R)


_DIGEST = hashlib.sha256(b"a@b.c").hexdigest()


@pytest.mark.parametrize(
    "template,expected",
    [
        ("{{.UserEmail}}", "a@b.c"),
        ("{{ .UserEmail }}", "a@b.c"),
        ("{{upper .UserEmail}}", "A@B.C"),
        ("{{.UserEmail | upper}}", "A@B.C"),
        ('{{lower "MiXed"}}', "mixed"),
        ("{{sha2 .UserEmail}}", _DIGEST),
        ("{{sha2 .UserEmail 8}}", _DIGEST[:8]),
        ("{{sha2 .UserEmail 0}}", _DIGEST[:16]),  # n <= 0 means 16
        ("{{sha2 .UserEmail 100}}", _DIGEST),  # capped at 64
        ("{{.UserHash}}", _DIGEST[:16]),
        ("{{.Year}}/{{.Month}}/{{.Date}}", "2026/01/05"),
        ("x/{{.UserEmail}}/*.request", "x/a@b.c/*.request"),
    ],
)
def test_render_template(template: str, expected: str) -> None:
    assert render_template(template, "a@b.c", datetime(2026, 1, 5, tzinfo=UTC)) == expected


@pytest.mark.parametrize("template", ["{{.Nope}}", "{{rm .UserEmail}}", "{{sha2}}", "{{upper}}"])
def test_bad_template_matches_nothing(template: str) -> None:
    text = f"rules:\n  - pattern: '{template}/**'\n    access: {{read: ['*']}}\n"
    tree = _tree({f"{ALICE}/syft.pub.yaml": text})
    assert not tree.can_access(f"{ALICE}/{BOB}/x", BOB, R)


# ---------------------------------------------------------------- parsing


def test_parse_reference_example() -> None:
    rs = parse_acl(TCP_TEST, "x/syft.pub.yaml")
    assert rs == RuleSet(False, (Rule("**", (), (ALICE, BOB), (ALICE, BOB)),))


def test_missing_rules_means_private() -> None:
    assert parse_acl("terminal: true\n", "f") == RuleSet(True, (Rule("**", (), (), ()),))
    assert parse_acl("", "f") == RuleSet(False, (Rule("**", (), (), ()),))


def test_private_catch_all_appended() -> None:
    rs = parse_acl("rules:\n  - pattern: '*.txt'\n    access: {read: ['*']}\n", "f")
    assert [r.pattern for r in rs.rules] == ["*.txt", "**"]
    assert rs.rules[-1] == Rule("**", (), (), ())


def test_missing_access_keys_are_empty_and_limits_ignored() -> None:
    text = "rules:\n  - pattern: x\n    access: {}\n    limits: {maxFileSize: 10}\nother: 1\n"
    rs = parse_acl(text, "f")
    assert rs.rules[0] == Rule("x", (), (), ())


@pytest.mark.parametrize(
    "text,needle",
    [
        ("rules: [", "invalid YAML"),
        ("rules:\n  - pattern: **\n    access: {}\n", "invalid YAML"),  # unquoted alias
        ("- a\n- b\n", "mapping"),
        ("terminal: maybe\n", "terminal"),
        ("rules: {}\n", "list"),
        ("rules:\n  - just a string\n", "mapping"),
        ("rules:\n  - access: {read: ['*']}\n", "pattern"),
        ("rules:\n  - pattern: ''\n    access: {read: ['*']}\n", "pattern"),
        ("rules:\n  - pattern: x\n", "access"),
        ("rules:\n  - pattern: x\n    access: [a]\n", "access"),
        ("rules:\n  - pattern: x\n    access: {read: 'bob@x.com'}\n", "YAML list"),
        ("rules:\n  - pattern: x\n    access: {read: [[a]]}\n", "strings"),
        ("rules:\n  - pattern: 'a/[*'\n    access: {read: ['*']}\n", None),
    ],
)
def test_invalid_acl_names_the_file(text: str, needle: str | None) -> None:
    source = f"{ALICE}/some/dir/syft.pub.yaml"
    try:
        parse_acl(text, source)
    except ACLError as exc:
        assert source in str(exc)
        if needle is not None:
            assert needle in str(exc)
    else:
        # wcmatch treats an unclosed class literally; that is fine as long as it is not an error
        assert needle is None


def test_acl_error_is_a_protocol_error() -> None:
    assert issubclass(ACLError, ProtocolError)


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "path,expected",
    [
        ("a/b/c", "a/b/c"),
        ("/a/b/", "a/b"),
        ("a/./b", "a/b"),
        ("a/x/../b", "a/b"),
        ("a//b", "a/b"),
        ("a\\b\\c", "a/b/c"),
        ("", ""),
        ("/", ""),
        (".", ""),
    ],
)
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "/../etc/passwd"])
def test_normalize_rejects_escape(path: str) -> None:
    with pytest.raises(ProtocolError, match="escapes"):
        normalize_path(path)


def test_escaping_path_is_denied_not_raised(tree: ACLTree) -> None:
    assert tree.can_access(f"{ALICE}/../{ALICE}/x", ALICE, R)  # cleans to alice/x
    assert not tree.can_access("../etc/passwd", ALICE, R)
    assert not tree.can_access(f"{ALICE}/../../x", ALICE, R)
    with pytest.raises(ProtocolError):
        tree.nearest("../x")


def test_empty_user_is_denied(tree: ACLTree) -> None:
    assert not tree.can_access(f"{ALICE}/public/x", "", R)


def test_acl_paths() -> None:
    assert is_acl_path(ACL_FILE)
    assert is_acl_path(f"{ALICE}/x/syft.pub.yaml")
    assert not is_acl_path(f"{ALICE}/x/not-syft.pub.yaml")
    assert not is_acl_path(f"{ALICE}/syft.pub.yaml.bak")
    assert acl_dir(f"{ALICE}/x/syft.pub.yaml") == f"{ALICE}/x"
    assert acl_dir(f"{ALICE}/syft.pub.yaml") == ALICE
