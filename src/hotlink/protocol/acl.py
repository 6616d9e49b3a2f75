"""ACLs: ``syft.pub.yaml`` parsing and access evaluation (PROTOCOL.md §3; DECISIONS.md #21, #28).

An ACL file governs the folder it sits in. To decide whether ``user`` may read or write a
path, the nearest ACL file on the way down from the root is found (no inheritance, a
``terminal`` file stops the descent), its rules are tried from most to least specific, and
the first whose glob matches the path decides. Glob matching uses ``wcmatch`` with
doublestar semantics (DECISIONS.md #28). The owner of a datasite (the path's first segment,
matched exactly per DECISIONS.md #21) may do anything in it.

ACL files come from other users, so everything here is bounded (the ``MAX_*`` limits below):
parsing refuses YAML anchors and aliases, deep nesting, big files and many rules, and errors
say what was wrong in a few words without repeating the input. Values rendered into a
``{{...}}`` template are matched literally, never as globs: whether a templated pattern is a
glob depends only on its own text outside the ``{{...}}`` actions, and a value never spans a
``/``. So a user called ``*@example.com`` gets nothing from ``{{.UserEmail}}/**`` but the
folder literally named ``*@example.com`` (the relay refuses such names anyway, see
:func:`identity_problem`).
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import IntFlag
from typing import Any

import yaml
from wcmatch import fnmatch as wc_fnmatch
from wcmatch import glob as wc_glob
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import Node
from yaml.resolver import Resolver

from .errors import ProtocolError

ACL_FILE = "syft.pub.yaml"
EVERYONE = "*"
USER_TOKEN = "USER"

# Doublestar semantics: ``**`` spans folders only as a whole segment, ``*`` matches dot-files,
# ``{a,b}`` alternation, case-sensitive ``/`` paths on every OS.
GLOB_FLAGS = wc_glob.GLOBSTAR | wc_glob.BRACE | wc_glob.DOTGLOB | wc_glob.FORCEUNIX
PRINCIPAL_FLAGS = wc_fnmatch.DOTMATCH | wc_fnmatch.BRACE | wc_fnmatch.FORCEUNIX
_GLOB_CHARS = frozenset("*?[")
_PRINCIPAL_GLOB_CHARS = frozenset("*?[]")

# ---------------------------------------------------------------- limits
#
# A real syft.pub.yaml is a few hundred bytes with a handful of rules. The bounds below are far
# above any real use and keep the worst file cheap: parsing, compiling and evaluating it takes
# milliseconds to a few tenths of a second on a worker thread, never seconds, never much memory.

MAX_ACL_RULES = 100
"""Rules in one file (the private catch-all the parser may add is not counted)."""
MAX_ACL_PRINCIPALS = 1000
"""``admin`` + ``write`` + ``read`` entries over all rules of one file."""
MAX_ACL_DEPTH = 16
"""YAML nesting levels; a valid file needs 6 (the document, rules, a rule, access, a list of
users, a user)."""
MAX_ACL_BYTES = 64 * 1024
"""UTF-8 bytes of one file. 100 rules of ~400 bytes or 1000 principals of ~60 bytes fit with
room to spare, so a bigger file can only be padding. At this size the worst parse takes about
0.1-0.2 s of a worker thread (without a bound, a 7 MB file took 15 s)."""
MAX_GLOB_EXPANSIONS = 16
"""Patterns one glob may expand to by ``{a,b}`` alternation (``D/**`` counts as two: it also
matches ``D``). Each expansion is a regex to compile (about 0.25 ms) and to try."""
MAX_ACL_GLOB_PATTERNS = 256
"""Expanded glob patterns of one file in total (rule patterns and user globs), which bounds
what loading it compiles."""
MAX_ACL_TEMPLATE_PATTERNS = 16
"""Expanded patterns of the templated globs of one file (``{{.UserEmail}}/*.request``): these
are compiled once per user they are checked for, and anyone can make the relay check a new
user name (an Open's ``to``), so they get a budget of their own."""
MAX_ERROR_CHARS = 200
"""Length of an :class:`ACLError` message (it goes into a Nack and a log line)."""
_MAX_SOURCE_CHARS = 100  # how much of a file's path an error message shows

IDENTITY_SPECIAL_CHARS = frozenset("*?[]{}\\/")
"""Characters a user id may not contain, because the ACL matcher or templates read them.

With :data:`GLOB_FLAGS` wcmatch treats ``*`` ``?`` ``[`` ``]`` as wildcards and classes,
``{`` ``}`` as alternation and ``\\`` as its escape; ``/`` separates folders (a value with a
``/`` would reach into another folder); ``{`` ``}`` also delimit template actions. Other
characters wcmatch can give a meaning (``!`` ``|`` ``(`` ``)`` ``@`` ``+`` ``~`` ``-`` ``,``)
have one only inside ``[...]`` or ``{...}`` (refused above) or with flags we do not use
(NEGATE, SPLIT, EXTGLOB, GLOBTILDE); template words (``|``, ``"``, ``.``) are read only in a
pattern's own text, never in a value substituted into it.
"""


def identity_problem(user: str) -> str | None:
    """Why ``user`` cannot be an identity the ACLs judge, or None if it can."""
    bad = sorted(set(user) & IDENTITY_SPECIAL_CHARS)
    if not bad:
        return None
    special = " ".join(sorted(IDENTITY_SPECIAL_CHARS))
    return (
        f"contains {' '.join(repr(c) for c in bad)} (ACL patterns read {special} "
        "as wildcards or folder separators)"
    )


class Access(IntFlag):
    READ = 1
    CREATE = 2
    WRITE = 4
    ADMIN = 8


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_path(path: str, limit: int = _MAX_SOURCE_CHARS) -> str:
    """A path for a message: whole when short, else its head and tail around ``...``."""
    if len(path) <= limit:
        return path
    tail = (limit - 3) // 2
    return path[: limit - 3 - tail] + "..." + path[-tail:]


class ACLError(ProtocolError):
    """An ACL file that cannot be used; the message names the file and is at most
    :data:`MAX_ERROR_CHARS` long."""

    def __init__(self, message: str) -> None:
        super().__init__(_clip(message, MAX_ERROR_CHARS))


@dataclass(frozen=True)
class Rule:
    pattern: str
    admin: tuple[str, ...]
    write: tuple[str, ...]
    read: tuple[str, ...]


@dataclass(frozen=True)
class RuleSet:
    terminal: bool
    rules: tuple[Rule, ...]


PRIVATE_RULE = Rule("**", (), (), ())


# ---------------------------------------------------------------- paths


def is_acl_path(path: str) -> bool:
    return path == ACL_FILE or path.endswith("/" + ACL_FILE)


def normalize_path(path: str) -> str:
    """Clean ``.``/``..``, use ``/``, strip the leading ``/``; ``..`` above the root is an error."""
    text = path.replace("\\", "/").lstrip("/")
    if not text:
        return ""
    cleaned = posixpath.normpath(text)
    if cleaned == ".":
        return ""
    if cleaned == ".." or cleaned.startswith("../"):
        raise ProtocolError(f"path {short_path(path)!r} escapes the datasites root")
    return cleaned


def acl_dir(acl_path: str) -> str:
    """The folder an ACL file governs."""
    norm = normalize_path(acl_path)
    return norm.rsplit("/", 1)[0] if "/" in norm else ""


# ---------------------------------------------------------------- the YAML loader


class _Refused(Exception):
    """The YAML uses something an ACL file may not (aliases, deep nesting)."""


class _BoundedComposer(Composer):
    """SafeLoader's composition without anchors and aliases, and with a depth bound.

    An alias is refused before anything is built for it, so nothing is ever expanded: a
    "billion laughs" file fails at its first ``*`` after a few hundred bytes of work. The depth
    is checked as each node starts, before the parser reads what it contains.
    """

    _depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[attr-defined]  # from the parser half
        if isinstance(event, AliasEvent) or (
            isinstance(event, NodeEvent) and event.anchor is not None
        ):
            raise _Refused(
                "anchors and aliases (& and *) are not allowed; quote a pattern that starts with *"
            )
        self._depth += 1
        try:
            if self._depth > MAX_ACL_DEPTH:
                raise _Refused(f"nested deeper than {MAX_ACL_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PyLoader(_BoundedComposer, yaml.SafeLoader):
    """yaml.SafeLoader with the bounded composer."""


_Loader: Callable[[str], Any] = _PyLoader
if yaml.__with_libyaml__:
    from yaml.cyaml import CParser  # type: ignore[attr-defined]  # re-exported, not in the stubs

    class _CLoader(_BoundedComposer, CParser, SafeConstructor, Resolver):
        """libyaml's parser (events only, about twice as fast) under the same Python
        composition: the composer comes first in the MRO, so libyaml composes nothing."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _Loader = _CLoader

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _unquote_input(match: re.Match[str]) -> str:
    inner = match.group(0)[1:-1]
    # Token names ('<scalar>') and one character's repr ('\t') say what was wrong; anything
    # longer (a tag, a key) is the input itself.
    keep = (inner.startswith("<") and inner.endswith(">")) or len(inner) <= 6
    return match.group(0) if keep else "'...'"


def _yaml_error(exc: yaml.YAMLError) -> str:
    """The parser's complaint and where, without the input: PyYAML's quoted fragments of the
    input are elided and its context snippet is dropped."""
    problem = " ".join(str(getattr(exc, "problem", None) or "cannot be parsed").split())
    problem = _clip(_QUOTED.sub(_unquote_input, problem), 80)
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {problem}"


def _load_yaml(text: str, source: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise ACLError(f"{source}: invalid YAML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ACLError(f"{source}: {_yaml_error(exc)}") from None
    except Exception:  # a value the constructor cannot build, e.g. an int of 5000 digits
        raise ACLError(f"{source}: invalid YAML: a value cannot be read") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------- parsing


def _type_name(value: Any) -> str:
    """What a value is, for an error message that must not repeat the value itself."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


@dataclass
class _Budget:
    """Expanded glob patterns counted while parsing one file (see the limits above)."""

    source: str
    patterns: int = 0
    templated: int = 0
    principals: int = 0

    def add(self, patterns: int, *, templated: bool = False) -> None:
        self.patterns += patterns
        if self.patterns > MAX_ACL_GLOB_PATTERNS:
            raise ACLError(
                f"{self.source}: globs expand to more than {MAX_ACL_GLOB_PATTERNS} patterns"
            )
        if templated:
            self.templated += patterns
            if self.templated > MAX_ACL_TEMPLATE_PATTERNS:
                raise ACLError(
                    f"{self.source}: templated globs expand to more than "
                    f"{MAX_ACL_TEMPLATE_PATTERNS} patterns"
                )


def _entries(value: Any, where: str, budget: _Budget) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ACLError(f"{where} must be a YAML list of users, got {_type_name(value)}")
    budget.principals += len(value)
    if budget.principals > MAX_ACL_PRINCIPALS:
        raise ACLError(f"{budget.source}: more than {MAX_ACL_PRINCIPALS} users in access lists")
    out = []
    for item in value:
        if item is None or isinstance(item, (list, dict)):
            raise ACLError(f"{where} entries must be strings, got {_type_name(item)}")
        entry = str(item).strip()
        if _PRINCIPAL_GLOB_CHARS & set(entry):
            try:
                regexes, _ = wc_fnmatch.translate(
                    entry, flags=PRINCIPAL_FLAGS, limit=MAX_GLOB_EXPANSIONS
                )
            except Exception:
                raise ACLError(
                    f"{where}: a user glob expands to more than {MAX_GLOB_EXPANSIONS} patterns"
                ) from None
            budget.add(len(regexes))
        out.append(entry)
    return tuple(out)


def _check_glob(pattern: str, where: str, budget: _Budget) -> None:
    """Refuse a bad glob and count what it expands to, as :func:`compile_acl` will use it."""
    template = _is_template(pattern)
    full = _full_pattern("d", pattern)
    if not _is_glob(full, template):
        return
    if template:
        # A harmless value in place of each action; each real user's is escaped the same way.
        try:
            full = render_template(full, "user@example.com", date(2000, 1, 1))
        except _TemplateError:
            return  # a template that does not render matches nothing; not an error (reference)
    try:
        regexes, _ = wc_glob.translate(
            _glob_patterns(full), flags=GLOB_FLAGS, limit=MAX_GLOB_EXPANSIONS
        )
    except Exception:  # wcmatch raises plain Exception subclasses for bad patterns
        raise ACLError(
            f"{where}: bad glob in 'pattern', or one that expands to more than "
            f"{MAX_GLOB_EXPANSIONS} patterns"
        ) from None
    budget.add(len(regexes), templated=template)


def parse_acl(text: str, source: str) -> RuleSet:
    """Parse ``syft.pub.yaml`` text; any problem raises :class:`ACLError` naming ``source``.

    Bounded by the ``MAX_ACL_*`` limits; safe to run on a worker thread.
    """
    source = short_path(source)
    if len(text) > MAX_ACL_BYTES or len(text.encode("utf-8")) > MAX_ACL_BYTES:
        raise ACLError(f"{source}: larger than {MAX_ACL_BYTES} bytes")
    doc = _load_yaml(text, source)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ACLError(f"{source}: an ACL file must be a YAML mapping")
    terminal = doc.get("terminal", False)
    if terminal is None:
        terminal = False
    if not isinstance(terminal, bool):
        raise ACLError(f"{source}: 'terminal' must be true or false, got {_type_name(terminal)}")
    raw_rules = doc.get("rules")
    if raw_rules is None:
        return RuleSet(terminal, (PRIVATE_RULE,))
    if not isinstance(raw_rules, list):
        raise ACLError(f"{source}: 'rules' must be a list")
    if len(raw_rules) > MAX_ACL_RULES:
        raise ACLError(f"{source}: more than {MAX_ACL_RULES} rules")
    rules = []
    budget = _Budget(source)
    for i, raw in enumerate(raw_rules):
        where = f"{source}: rules[{i}]"
        if not isinstance(raw, dict):
            raise ACLError(f"{where} must be a mapping with pattern and access")
        pattern = raw.get("pattern")
        if pattern is None or isinstance(pattern, (list, dict)) or not str(pattern).strip():
            raise ACLError(f"{where}: 'pattern' is required and must be a non-empty string")
        pattern = str(pattern).strip()
        access = raw.get("access")
        if not isinstance(access, dict):
            raise ACLError(f"{where}: 'access' is required and must be a mapping")
        _check_glob(pattern, where, budget)
        rules.append(
            Rule(
                pattern,
                _entries(access.get("admin"), f"{where}.access.admin", budget),
                _entries(access.get("write"), f"{where}.access.write", budget),
                _entries(access.get("read"), f"{where}.access.read", budget),
            )
        )
    if not any(r.pattern == "**" for r in rules):
        rules.append(PRIVATE_RULE)
    return RuleSet(terminal, tuple(rules))


# ---------------------------------------------------------------- templates


def _is_template(pattern: str) -> bool:
    return "{{" in pattern and "}}" in pattern


def _is_glob(pattern: str, template: bool) -> bool:
    """PROTOCOL.md §3.3 step 6, except that for a template only its own text counts, not the
    values rendered into it: those are always literal."""
    return bool(_GLOB_CHARS & set(_ACTION.sub("", pattern) if template else pattern))


def user_hash(user: str) -> str:
    """``.UserHash``: hex of the first 8 bytes of SHA-256(user)."""
    return hashlib.sha256(user.encode("utf-8")).hexdigest()[:16]


def _sha2(value: str, n: int | None = None) -> str:
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
    if n is None:
        return digest
    if n <= 0:
        n = 16
    return digest[: min(n, 64)]


_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_ARG = re.compile(r'\s*(\.[A-Za-z]+|-?[0-9]+|"(?:[^"\\]|\\.)*"|[A-Za-z0-9_]+)')


class _TemplateError(Exception):
    pass


def render_template(
    pattern: str, user: str, now: date, *, escape: Callable[[str], str] | None = None
) -> str:
    """Render the ``{{...}}`` actions of a pattern (Go text/template subset of the reference).

    Variables ``.UserEmail``, ``.UserHash``, ``.Year``, ``.Month``, ``.Date`` (UTC, zero
    padded); functions ``sha2 s [n]``, ``upper s``, ``lower s``; ``a | f`` pipelines.
    Anything else raises, and the rule then matches nothing; so does a value containing
    ``/`` (a value is never more than part of one folder name). ``escape`` is applied to each
    value (the glob escape, so a value is matched literally).
    """
    variables = {
        ".UserEmail": user,
        ".UserHash": user_hash(user),
        ".Year": f"{now.year:04d}",
        ".Month": f"{now.month:02d}",
        ".Date": f"{now.day:02d}",
    }

    def arg(token: str) -> str | int:
        if token.startswith("."):
            if token not in variables:
                raise _TemplateError(f"unknown variable {token}")
            return variables[token]
        if token.startswith('"'):
            return token[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        if re.fullmatch(r"-?[0-9]+", token):
            return int(token)
        raise _TemplateError(f"unknown word {token}")

    def call(words: list[str], piped: str | int | None) -> str | int:
        head, *rest = words
        args = [arg(w) for w in rest]
        if piped is not None:
            args.append(piped)
        if head.startswith(".") or head.startswith('"') or re.fullmatch(r"-?[0-9]+", head):
            if args:
                raise _TemplateError(f"{head} takes no arguments")
            return arg(head)
        if head in ("upper", "lower"):
            if len(args) != 1:
                raise _TemplateError(f"{head} takes one argument")
            return str(args[0]).upper() if head == "upper" else str(args[0]).lower()
        if head == "sha2":
            if not 1 <= len(args) <= 2:
                raise _TemplateError("sha2 takes a string and an optional length")
            n = args[1] if len(args) == 2 else None
            if n is not None and not isinstance(n, int):
                raise _TemplateError("sha2 length must be a number")
            return _sha2(str(args[0]), n)
        raise _TemplateError(f"unknown function {head}")

    def action(match: re.Match[str]) -> str:
        value: str | int | None = None
        for stage in match.group(1).split("|"):
            words = [m.group(1) for m in _ARG.finditer(stage)]
            if not words or "".join(stage.split()) != "".join(words):
                raise _TemplateError(f"cannot parse {stage.strip()!r}")
            value = call(words, value)
        text = str(value)
        if "/" in text:
            raise _TemplateError("a rendered value may not contain /")
        return escape(text) if escape is not None else text

    return _ACTION.sub(action, pattern)


def _escape_glob(value: str) -> str:
    return wc_glob.escape(value, unix=True)


@functools.lru_cache(maxsize=4096)
def _rendered_target(full: str, glob: bool, user: str, day: date) -> Any:
    """What a templated rule matches for ``user`` on ``day``: a compiled glob (values
    escaped), an exact path, or None when the template does not render. Cached: the
    result depends on nothing else, and rendering plus compiling costs far more than a match."""
    try:
        if not glob:
            return render_template(full, user, day)
        rendered = render_template(full, user, day, escape=_escape_glob)
        return wc_glob.compile(
            _glob_patterns(rendered), flags=GLOB_FLAGS, limit=MAX_GLOB_EXPANSIONS
        )
    except Exception:  # _TemplateError, or a glob wcmatch refuses: the rule matches nothing
        return None


# ---------------------------------------------------------------- evaluation


def specificity(pattern: str, *, template: bool = False) -> int:
    """PROTOCOL.md §3.3 step 5: more specific rules are tried first."""
    if pattern == "**":
        return -100
    if pattern == "**/*":
        return -99
    score = 2 * len(pattern) + 10 * pattern.count("/")
    if template:
        score += 50
    for i, ch in enumerate(pattern):
        if ch == "*":
            score -= 20 if i == 0 else 10
        elif ch in "?![{":
            score -= 2
    return score


@dataclass(frozen=True)
class _Principals:
    """One access list, ready to test: ``*`` or ``USER`` admit anyone (``USER`` stands for
    whoever asks), else an exact entry or a glob entry matching the user does."""

    anyone: bool
    exact: frozenset[str]
    globs: tuple[Any, ...]  # compiled wcmatch matchers

    @classmethod
    def of(cls, entries: tuple[str, ...]) -> _Principals:
        globs = []
        for entry in entries:
            if _PRINCIPAL_GLOB_CHARS & set(entry):
                try:
                    globs.append(
                        wc_fnmatch.compile(entry, flags=PRINCIPAL_FLAGS, limit=MAX_GLOB_EXPANSIONS)
                    )
                except Exception:  # a malformed principal glob grants nothing
                    continue
        anyone = EVERYONE in entries or USER_TOKEN in entries
        return cls(anyone, frozenset(entries), tuple(globs))

    def admit(self, user: str) -> bool:
        return self.anyone or user in self.exact or any(g.match(user) for g in self.globs)


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    full: str  # <acl dir>/<pattern>
    template: bool
    glob: bool  # a glob, not an exact path (for a template: decided by its own text)
    matcher: Any  # a compiled wcmatch matcher for a plain glob, else None
    admin: _Principals
    write: _Principals
    read: _Principals

    def matches(self, path: str, user: str, day: date) -> bool:
        if not self.template:
            return self.matcher.match(path) if self.matcher is not None else path == self.full
        target = _rendered_target(self.full, self.glob, user, day)
        if target is None:
            return False
        if isinstance(target, str):
            return path == target
        return bool(target.match(path))

    def allows(self, user: str, level: Access) -> bool:
        admin = self.admin.admit(user)
        writer = admin or self.write.admit(user)
        reader = writer or self.read.admit(user)
        if level & Access.ADMIN:
            return admin
        if level & (Access.WRITE | Access.CREATE):
            return writer
        return reader


def _glob_patterns(pattern: str) -> list[str]:
    # Doublestar's ``D/**`` also matches ``D`` itself; wcmatch's does not.
    if pattern.endswith("/**"):
        return [pattern, pattern[:-3]]
    return [pattern]


def _full_pattern(directory: str, pattern: str) -> str:
    joined = f"{directory}/{pattern}" if directory else pattern
    return posixpath.normpath(joined).lstrip("/")


@dataclass(frozen=True)
class CompiledACL:
    """One ACL file ready to evaluate (see :func:`compile_acl`)."""

    directory: str
    ruleset: RuleSet
    rules: tuple[_Compiled, ...]  # most specific first


def compile_acl(directory: str, ruleset: RuleSet) -> CompiledACL:
    """Compile the globs and access lists of the ACL governing ``directory``.

    Pure and thread-safe, so the relay runs it on a worker thread with the parse.
    """
    key = normalize_path(directory)
    scored = []
    for rule in ruleset.rules:
        template = _is_template(rule.pattern)
        full = _full_pattern(key, rule.pattern)
        glob = _is_glob(full, template)
        matcher = None
        if glob and not template:
            try:
                matcher = wc_glob.compile(
                    _glob_patterns(full), flags=GLOB_FLAGS, limit=MAX_GLOB_EXPANSIONS
                )
            except Exception:
                continue  # parse_acl rejects these; a hand-built RuleSet just loses the rule
        compiled = _Compiled(
            rule,
            full,
            template,
            glob,
            matcher,
            _Principals.of(rule.admin),
            _Principals.of(rule.write),
            _Principals.of(rule.read),
        )
        scored.append((specificity(rule.pattern, template=template), compiled))
    # Stable sort: equal scores keep file order, so decisions are repeatable.
    scored.sort(key=lambda item: -item[0])
    return CompiledACL(key, ruleset, tuple(c for _, c in scored))


def prepare_acl(text: str, acl_path: str) -> CompiledACL:
    """Parse and compile one ACL file's text (bounded; safe on a worker thread).

    ``acl_path`` is the file's normalised path; errors name it. Raises :class:`ACLError`.
    """
    return compile_acl(acl_dir(acl_path), parse_acl(text, acl_path))


class ACLTree:
    """The loaded ACL files, keyed by the folder each governs.

    ``clock`` gives the time for date variables in templated patterns (injected so tests
    control it). Decisions are cached (bounded LRU, keyed by the UTC day for the date
    variables) until the next load or remove.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, cache_size: int = 65536):
        self._clock = clock
        self._acls: dict[str, CompiledACL] = {}
        self._cache: OrderedDict[tuple[str, str, int, date], bool] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self._acls)

    def __contains__(self, directory: object) -> bool:
        return isinstance(directory, str) and normalize_path(directory) in self._acls

    def load(self, directory: str, ruleset: RuleSet) -> None:
        self.install(compile_acl(directory, ruleset))

    def install(self, compiled: CompiledACL) -> None:
        """Load an ACL compiled by :func:`compile_acl` (cheap: the work is done)."""
        self._acls[compiled.directory] = compiled
        self._cache.clear()

    def remove(self, directory: str) -> None:
        self._acls.pop(normalize_path(directory), None)
        self._cache.clear()

    def _nearest_key(self, path: str) -> str | None:
        segments = path.split("/") if path else []
        candidate: str | None = None
        if "" in self._acls:
            candidate = ""
            if self._acls[""].ruleset.terminal:
                return candidate
        for depth in range(1, len(segments) + 1):
            prefix = "/".join(segments[:depth])
            acl = self._acls.get(prefix)
            if acl is None:
                continue
            candidate = prefix
            if acl.ruleset.terminal:
                break
        return candidate

    def nearest(self, path: str) -> tuple[str, RuleSet] | None:
        """The folder and rules of the ACL that governs ``path`` (terminal files stop descent).

        Raises ProtocolError for a path that escapes the root.
        """
        key = self._nearest_key(normalize_path(path))
        return None if key is None else (key, self._acls[key].ruleset)

    def can_access(self, path: str, user: str, level: Access) -> bool:
        """Whether ``user`` has ``level`` access to ``path`` (PROTOCOL.md §3.3).

        A path that escapes the root (``../x``) is simply denied: it names nothing anyone owns.
        """
        try:
            norm = normalize_path(path)
        except ProtocolError:
            return False
        if not user:
            return False
        # DECISIONS.md #21: owning means the first segment *is* the user, not a prefix of it.
        if norm.split("/", 1)[0] == user:
            return True
        day = datetime.fromtimestamp(self._clock(), UTC).date()
        cache_key = (norm, user, int(level), day)
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached
        directory = self._nearest_key(norm)
        if directory is None:
            return False
        if posixpath.basename(norm) == ACL_FILE and level & (
            Access.CREATE | Access.WRITE | Access.ADMIN
        ):
            # Changing an ACL file is an admin act.
            level = Access.ADMIN
        allowed = False
        for compiled in self._acls[directory].rules:
            if compiled.matches(norm, user, day):
                owner = directory.split("/", 1)[0]
                allowed = owner == user or compiled.allows(user, level)
                break
        self._cache[cache_key] = allowed
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return allowed
