"""ACLs: ``syft.pub.yaml`` parsing and access evaluation (PROTOCOL.md §3; DECISIONS.md #21, #28).

An ACL file governs the folder it sits in. To decide whether ``user`` may read or write a
path, the nearest ACL file on the way down from the root is found (no inheritance, a
``terminal`` file stops the descent), its rules are tried from most to least specific, and
the first whose glob matches the path decides. Glob matching uses ``wcmatch`` with
doublestar semantics (DECISIONS.md #28). The owner of a datasite (the path's first segment,
matched exactly per DECISIONS.md #21) may do anything in it.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntFlag
from typing import Any

import yaml
from wcmatch import fnmatch as wc_fnmatch
from wcmatch import glob as wc_glob

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


class Access(IntFlag):
    READ = 1
    CREATE = 2
    WRITE = 4
    ADMIN = 8


class ACLError(ProtocolError):
    """An ACL file that cannot be used; the message names the file."""


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
        raise ProtocolError(f"path {path!r} escapes the datasites root")
    return cleaned


def acl_dir(acl_path: str) -> str:
    """The folder an ACL file governs."""
    norm = normalize_path(acl_path)
    return norm.rsplit("/", 1)[0] if "/" in norm else ""


# ---------------------------------------------------------------- parsing


def _entries(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ACLError(f"{where} must be a YAML list of users, got {type(value).__name__}")
    out = []
    for item in value:
        if item is None or isinstance(item, (list, dict)):
            raise ACLError(f"{where} entries must be strings, got {item!r}")
        out.append(str(item).strip())
    return tuple(out)


def _check_glob(pattern: str, where: str) -> None:
    if _GLOB_CHARS & set(pattern) and not _is_template(pattern):
        try:
            wc_glob.compile(pattern, flags=GLOB_FLAGS)
        except Exception as exc:  # wcmatch raises plain Exception subclasses for bad patterns
            raise ACLError(f"{where}: bad glob {pattern!r}: {exc}") from exc


def parse_acl(text: str, source: str) -> RuleSet:
    """Parse ``syft.pub.yaml`` text; any problem raises :class:`ACLError` naming ``source``."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ACLError(f"{source}: invalid YAML: {exc}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ACLError(f"{source}: an ACL file must be a YAML mapping")
    terminal = doc.get("terminal", False)
    if terminal is None:
        terminal = False
    if not isinstance(terminal, bool):
        raise ACLError(f"{source}: 'terminal' must be true or false, got {terminal!r}")
    raw_rules = doc.get("rules")
    if raw_rules is None:
        return RuleSet(terminal, (PRIVATE_RULE,))
    if not isinstance(raw_rules, list):
        raise ACLError(f"{source}: 'rules' must be a list")
    rules = []
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
        _check_glob(pattern, where)
        rules.append(
            Rule(
                pattern,
                _entries(access.get("admin"), f"{where}.access.admin"),
                _entries(access.get("write"), f"{where}.access.write"),
                _entries(access.get("read"), f"{where}.access.read"),
            )
        )
    if not any(r.pattern == "**" for r in rules):
        rules.append(PRIVATE_RULE)
    return RuleSet(terminal, tuple(rules))


# ---------------------------------------------------------------- templates


def _is_template(pattern: str) -> bool:
    return "{{" in pattern and "}}" in pattern


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


def render_template(pattern: str, user: str, now: datetime) -> str:
    """Render the ``{{...}}`` actions of a pattern (Go text/template subset of the reference).

    Variables ``.UserEmail``, ``.UserHash``, ``.Year``, ``.Month``, ``.Date`` (UTC, zero
    padded); functions ``sha2 s [n]``, ``upper s``, ``lower s``; ``a | f`` pipelines.
    Anything else raises, and the rule then matches nothing.
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
        return str(value)

    return _ACTION.sub(action, pattern)


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


def _principal_in(entries: tuple[str, ...], user: str) -> bool:
    for entry in entries:
        if entry == USER_TOKEN:
            entry = user
        if entry == EVERYONE or entry == user:
            return True
        if _PRINCIPAL_GLOB_CHARS & set(entry):
            try:
                if wc_fnmatch.fnmatch(user, entry, flags=PRINCIPAL_FLAGS):
                    return True
            except Exception:  # a malformed principal glob grants nothing
                continue
    return False


def _rule_allows(rule: Rule, user: str, level: Access) -> bool:
    admin = _principal_in(rule.admin, user)
    writer = admin or _principal_in(rule.write, user)
    reader = writer or _principal_in(rule.read, user)
    if level & Access.ADMIN:
        return admin
    if level & (Access.WRITE | Access.CREATE):
        return writer
    return reader


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    full: str  # <acl dir>/<pattern>
    template: bool
    matcher: Any  # a compiled wcmatch matcher, or None for an exact pattern / a template

    def matches(self, path: str, user: str, now: Callable[[], float]) -> bool:
        if not self.template:
            return self.matcher.match(path) if self.matcher is not None else path == self.full
        try:
            rendered = render_template(self.full, user, datetime.fromtimestamp(now(), UTC))
        except _TemplateError:
            return False
        if _GLOB_CHARS & set(rendered):
            try:
                return bool(wc_glob.globmatch(path, _glob_patterns(rendered), flags=GLOB_FLAGS))
            except Exception:
                return False
        return path == rendered


def _glob_patterns(pattern: str) -> list[str]:
    # Doublestar's ``D/**`` also matches ``D`` itself; wcmatch's does not.
    if pattern.endswith("/**"):
        return [pattern, pattern[:-3]]
    return [pattern]


def _full_pattern(directory: str, pattern: str) -> str:
    joined = f"{directory}/{pattern}" if directory else pattern
    return posixpath.normpath(joined).lstrip("/")


def _compile(directory: str, ruleset: RuleSet) -> tuple[_Compiled, ...]:
    scored = []
    for rule in ruleset.rules:
        template = _is_template(rule.pattern)
        full = _full_pattern(directory, rule.pattern)
        matcher = None
        if not template and _GLOB_CHARS & set(full):
            try:
                matcher = wc_glob.compile(_glob_patterns(full), flags=GLOB_FLAGS)
            except Exception:
                continue  # parse_acl rejects these; a hand-built RuleSet just loses the rule
        scored.append(
            (specificity(rule.pattern, template=template), _Compiled(rule, full, template, matcher))
        )
    # Stable sort: equal scores keep file order, so decisions are repeatable.
    scored.sort(key=lambda item: -item[0])
    return tuple(c for _, c in scored)


class ACLTree:
    """The loaded ACL files, keyed by the folder each governs.

    ``clock`` gives the time for date variables in templated patterns (injected so tests
    control it). Decisions are cached (bounded LRU) until the next load or remove.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, cache_size: int = 65536):
        self._clock = clock
        self._rulesets: dict[str, RuleSet] = {}
        self._compiled: dict[str, tuple[_Compiled, ...]] = {}
        self._has_template: dict[str, bool] = {}
        self._cache: OrderedDict[tuple[str, str, int], bool] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self._rulesets)

    def __contains__(self, directory: object) -> bool:
        return isinstance(directory, str) and normalize_path(directory) in self._rulesets

    def load(self, directory: str, ruleset: RuleSet) -> None:
        key = normalize_path(directory)
        self._rulesets[key] = ruleset
        self._compiled[key] = _compile(key, ruleset)
        self._has_template[key] = any(c.template for c in self._compiled[key])
        self._cache.clear()

    def remove(self, directory: str) -> None:
        key = normalize_path(directory)
        self._rulesets.pop(key, None)
        self._compiled.pop(key, None)
        self._has_template.pop(key, None)
        self._cache.clear()

    def _nearest_key(self, path: str) -> str | None:
        segments = path.split("/") if path else []
        candidate: str | None = None
        if "" in self._rulesets:
            candidate = ""
            if self._rulesets[""].terminal:
                return candidate
        for depth in range(1, len(segments) + 1):
            prefix = "/".join(segments[:depth])
            ruleset = self._rulesets.get(prefix)
            if ruleset is None:
                continue
            candidate = prefix
            if ruleset.terminal:
                break
        return candidate

    def nearest(self, path: str) -> tuple[str, RuleSet] | None:
        """The folder and rules of the ACL that governs ``path`` (terminal files stop descent).

        Raises ProtocolError for a path that escapes the root.
        """
        key = self._nearest_key(normalize_path(path))
        return None if key is None else (key, self._rulesets[key])

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
        cache_key = (norm, user, int(level))
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
        for compiled in self._compiled[directory]:
            if compiled.matches(norm, user, self._clock):
                owner = directory.split("/", 1)[0]
                allowed = owner == user or _rule_allows(compiled.rule, user, level)
                break
        if not self._has_template[directory]:
            self._cache[cache_key] = allowed
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return allowed
