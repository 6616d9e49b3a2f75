"""ACL parsing and evaluation (PROTOCOL.md §3, DECISIONS.md #21, #28)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import hotlink.protocol.acl as acl_module
from hotlink.protocol.acl import (
    ACL_FILE,
    MAX_ACL_BYTES,
    MAX_ACL_DEPTH,
    MAX_ACL_PRINCIPALS,
    MAX_ACL_RULES,
    MAX_ERROR_CHARS,
    Access,
    ACLError,
    ACLTree,
    Rule,
    RuleSet,
    acl_dir,
    identity_problem,
    is_acl_path,
    normalize_path,
    parse_acl,
    prepare_acl,
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


# ---------------------------------------------------------------- hostile identities (D1)

INBOX = f"{ALICE}/inbox"
PER_USER = """
rules:
  - pattern: '{{.UserEmail}}/**'
    access: {read: ['USER'], write: ['USER']}
"""


def _inbox_tree(text: str = PER_USER) -> ACLTree:
    return _tree({f"{INBOX}/syft.pub.yaml": text})


@pytest.mark.parametrize(
    "user",
    [
        "*@example.com",
        "b*@example.com",
        "?ob@example.com",
        "bo?@example.com",
        "[b]ob@example.com",
        "{bob,x}@example.com",
        "{bob}@example.com",
        "**",
        "*",
    ],
)
def test_a_glob_shaped_user_gets_nothing_from_another_users_template_folder(user: str) -> None:
    tree = _inbox_tree()
    for level in (R, W):
        assert not tree.can_access(f"{INBOX}/{BOB}/note.request", user, level)
        assert not tree.can_access(f"{INBOX}/{BOB}", user, level)
    # Its own folder, taken literally, is still its own.
    assert tree.can_access(f"{INBOX}/{user}/note.request", user, W)


def test_a_templated_glob_matches_values_literally() -> None:
    text = """
rules:
  - pattern: '{{.UserEmail}}/*.request'
    access: {read: ['USER']}
  - pattern: 'x-{{.UserEmail}}.txt'
    access: {read: ['USER']}
"""
    tree = _inbox_tree(text)
    user = "b-{c,d}*@example.com"
    assert tree.can_access(f"{INBOX}/{user}/a.request", user, R)
    assert not tree.can_access(f"{INBOX}/b-c-x@example.com/a.request", user, R)
    assert tree.can_access(f"{INBOX}/x-{user}.txt", user, R)  # exact: no glob in its own text
    assert not tree.can_access(f"{INBOX}/x-b-cz@example.com.txt", user, R)


@pytest.mark.parametrize("user", ["a/b@example.com", f"{BOB}/..", "x/../" + BOB])
def test_a_rendered_value_never_spans_folders(user: str) -> None:
    tree = _inbox_tree()
    assert not tree.can_access(f"{INBOX}/{user}/f", user, R)
    assert not tree.can_access(f"{INBOX}/{BOB}/f", user, R)


_IDENTITY_CHARS = "ab.@-+_*?[]{},!\\/|~()^$%'\"" + "bob"


@settings(max_examples=300, deadline=None)
@given(user=st.text(alphabet=_IDENTITY_CHARS, min_size=1, max_size=16), data=st.data())
def test_property_a_rendered_identity_only_reaches_its_literal_folder(
    user: str, data: st.DataObject
) -> None:
    """For any identity, ``{{.UserEmail}}/**`` grants nothing outside ``<dir>/<identity>``."""
    tree = _inbox_tree()
    # Paths a glob reading of the identity could reach: each special character replaced by
    # something else, and other users' folders.
    replaced = "".join(
        data.draw(st.sampled_from(["", "b", "bo", "x", "b/x", ","])) if ch in "*?[]{},\\" else ch
        for ch in user
    )
    candidates = [replaced, BOB, "bob", "b", "x", "", "a", user + "x", "x" + user]
    literal = f"{INBOX}/{user}"
    for segment in candidates:
        for path in (f"{INBOX}/{segment}", f"{INBOX}/{segment}/f.request"):
            try:
                norm = normalize_path(path)
            except ProtocolError:
                continue
            inside = norm == literal or norm.startswith(literal + "/")
            if not inside and norm.split("/", 1)[0] != user:
                assert not tree.can_access(path, user, R), (user, path)


@pytest.mark.parametrize(
    "user,bad",
    [
        ("*@example.com", "*"),
        ("a?b@example.com", "?"),
        ("[a]@example.com", "["),
        ("x@[127.0.0.1]", "]"),
        ("{a}@example.com", "{"),
        ("a\\b@example.com", "\\"),
        ("a/b@example.com", "/"),
    ],
)
def test_identity_problem_names_the_character(user: str, bad: str) -> None:
    problem = identity_problem(user)
    assert problem is not None and repr(bad) in problem


@pytest.mark.parametrize(
    "user", [ALICE, "a.b+tag@sub.example.org", "o'brien@example.com", "x-1_2@a-b.example"]
)
def test_ordinary_identities_have_no_problem(user: str) -> None:
    assert identity_problem(user) is None


# ---------------------------------------------------------------- hostile files (D3, D4)

SOURCE = f"{ALICE}/app/syft.pub.yaml"


def _laughs(levels: int) -> str:
    """The classic: each level is nine references to the one before."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"rules: [{{pattern: '**', access: {{read: [*a{levels - 1}]}}}}]")
    return "\n".join(lines) + "\n"


@pytest.fixture(params=["libyaml", "python"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both YAML loaders: libyaml's parser when installed, and PyYAML's own."""
    if request.param == "python":
        monkeypatch.setattr(acl_module, "_Loader", acl_module._PyLoader)
    elif not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml")
    return str(request.param)


def _refusal(text: str) -> str:
    with pytest.raises(ACLError) as info:
        parse_acl(text, SOURCE)
    message = str(info.value)
    assert SOURCE in message
    assert len(message) <= MAX_ERROR_CHARS
    return message


def test_aliases_are_refused_without_expanding_them(loader: str) -> None:
    message = _refusal(_laughs(5))  # 9**5 "lol"s if expanded; its repr alone is 400 KB
    assert "alias" in message and "lol" not in message


@pytest.mark.timeout(20)  # a failure guard: expanding it would take many seconds and GBs
def test_a_billion_laughs_is_refused_at_once(loader: str) -> None:
    text = _laughs(9)
    assert len(text) < 512  # a few hundred bytes that would expand to 9**9 strings
    assert "alias" in _refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "rules: &r []\n",  # an anchor alone
        "a: &x 1\nrules: [{pattern: '**', access: {read: [*x]}}]\n",
        "rules:\n  - pattern: *txt\n    access: {}\n",  # an unquoted pattern is an alias
        "base: &b {read: ['*']}\nrules: [{pattern: '**', access: {<<: *b}}]\n",  # merge key
    ],
)
def test_anchors_and_aliases_are_refused(loader: str, text: str) -> None:
    assert "alias" in _refusal(text)


def test_a_file_over_the_size_limit_is_refused(loader: str) -> None:
    padding = "# " + "x" * (MAX_ACL_BYTES) + "\n"
    assert "larger than" in _refusal(padding + PUBLIC_RW)
    # The limit is in bytes: multi-byte characters count as what they weigh.
    assert "larger than" in _refusal("# " + "é" * (MAX_ACL_BYTES // 2) + "\n")
    # Just under it is fine.
    parse_acl("#" * (MAX_ACL_BYTES - len(PUBLIC_RW) - 1) + "\n" + PUBLIC_RW, SOURCE)


@pytest.mark.parametrize("depth", [MAX_ACL_DEPTH, 100, 12_000])
@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_refused(loader: str, opener: str, closer: str, depth: int) -> None:
    message = _refusal("rules: " + opener * depth + "1" + closer * depth + "\n")
    # Ours, or libyaml's own bound (1000 levels) when it trips first.
    assert f"deeper than {MAX_ACL_DEPTH}" in message or "nesting depth" in message


def test_nesting_up_to_the_limit_is_read(loader: str) -> None:
    deep = "[" * (MAX_ACL_DEPTH - 2) + "1" + "]" * (MAX_ACL_DEPTH - 2)  # + document + key
    parse_acl(f"other: {deep}\n", SOURCE)


def _rules(n: int, access: str = "{read: ['*']}") -> str:
    return "rules:\n" + "".join(
        f"  - pattern: 'p{i}/*.txt'\n    access: {access}\n" for i in range(n)
    )


def test_too_many_rules_are_refused(loader: str) -> None:
    parse_acl(_rules(MAX_ACL_RULES), SOURCE)
    assert f"more than {MAX_ACL_RULES} rules" in _refusal(_rules(MAX_ACL_RULES + 1))


def test_too_many_users_are_refused(loader: str) -> None:
    users = ", ".join(f"'u{i}@example.com'" for i in range(MAX_ACL_PRINCIPALS + 1))
    message = _refusal(f"rules: [{{pattern: '**', access: {{read: [{users}]}}}}]\n")
    assert f"more than {MAX_ACL_PRINCIPALS} users" in message


@pytest.mark.parametrize(
    "text,needle",
    [
        # One glob that alternates its way to 2**6 patterns.
        ("rules: [{pattern: '*{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}', access: {}}]", "expands"),
        ("rules: [{pattern: 'x', access: {read: ['*{a,b}{a,b}{a,b}{a,b}{a,b}']}}]", "expands"),
        # Many modest ones.
        (_rules(MAX_ACL_RULES, "{read: ['*@{a,b,c}.com']}"), "in total"),
        # Templated globs, compiled once per user checked, have their own small budget.
        (
            "rules:\n"
            + "".join(
                f"  - pattern: 'd{i}/{{{{.UserEmail}}}}/**'\n    access: {{}}\n" for i in range(9)
            ),
            "templated",
        ),
    ],
)
def test_glob_expansion_is_bounded(loader: str, text: str, needle: str) -> None:
    message = _refusal(text)
    assert needle in message or "expand" in message


@pytest.mark.parametrize(
    "text,secret",
    [
        ("rules: !!python/object:os.system_SECRET_PAYLOAD x\n", "SECRET"),
        ("rules: !SECRET x\n", "SECRET"),
        ("terminal: ['SECRET', 'PAYLOAD']\n", "SECRET"),
        ("rules: [{pattern: x, access: {read: [['SECRET' , 'x']]}}]\n", "SECRET"),
        ("rules: [{pattern: x, access: {read: {SECRET: 1}}}]\n", "SECRET"),
        ("rules: [{pattern: 'a/[SECRET" + "{a,b}" * 9 + "', access: {}}]\n", "SECRET"),
        ("rules: 1" + "1" * 5000 + "\n", "1111"),  # an int Python will not convert
        ("rules: [\n  SECRET: \t 'x'\n", "SECRET"),
    ],
)
def test_errors_never_repeat_the_input(loader: str, text: str, secret: str) -> None:
    assert secret not in _refusal(text)


def test_a_long_file_name_is_shortened_in_errors() -> None:
    source = f"{ALICE}/" + "d/" * 5000 + ACL_FILE
    with pytest.raises(ACLError) as info:
        parse_acl("rules: 5\n", source)
    assert len(str(info.value)) <= MAX_ERROR_CHARS and ACL_FILE in str(info.value)


def test_prepare_acl_compiles_what_install_loads() -> None:
    tree = ACLTree()
    tree.install(prepare_acl(PUBLIC_RW, f"{ALICE}/pub/{ACL_FILE}"))
    assert tree.can_access(f"{ALICE}/pub/x", BOB, W)
    assert not tree.can_access(f"{ALICE}/x", BOB, R)


def test_template_decisions_are_cached_per_day() -> None:
    now = [datetime(2026, 2, 7, 23, 59, tzinfo=UTC).timestamp()]
    tree = ACLTree(clock=lambda: now[0])
    text = "rules: [{pattern: 'logs/{{.Year}}-{{.Month}}-{{.Date}}/*', access: {read: ['*']}}]"
    tree.load(ALICE, parse_acl(text, "f"))
    assert tree.can_access(f"{ALICE}/logs/2026-02-07/f", BOB, R)
    now[0] += 120  # past midnight UTC: yesterday's folder is closed, today's open
    assert not tree.can_access(f"{ALICE}/logs/2026-02-07/f", BOB, R)
    assert tree.can_access(f"{ALICE}/logs/2026-02-08/f", BOB, R)
