"""The server's ACL store: the loaded ``syft.pub.yaml`` files and the access decisions.

Fed by clients' FileWrites of their own ACL files and by ``--acl-dir`` at start-up (a folder
holding datasite-relative trees: ``DIR/<email>/.../syft.pub.yaml``). The router and the file
handler only ask ``can_access``; a path that cannot be normalised is simply denied.

A FileWrite is loaded in three steps so that the costly middle one can run on a worker
thread: :meth:`ACLStore.check` (path and count, on the event loop), :func:`prepare_acl`
(parse and compile, pure, bounded by the ``MAX_ACL_*`` limits), :meth:`ACLStore.install`
(on the event loop, cheap).

Two questions the router asks many times, answered without asking the tree each time:
:meth:`ACLStore.epoch` changes whenever any decision may have (an ACL loaded or removed, a
new UTC day for the date variables of templates), so a decision made in one epoch can be
kept until the next; :meth:`ACLStore.readers_of` names everyone who may read a path when its
rule lists them, so an Open is offered to those users' connections without asking about
every connected user.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..protocol.acl import (
    ACL_FILE,
    MAX_ACL_BYTES,
    Access,
    ACLError,
    ACLTree,
    CompiledACL,
    acl_dir,
    is_acl_path,
    prepare_acl,
    short_path,
)
from ..protocol.acl import normalize_path as _normalize
from ..protocol.errors import ProtocolError

log = logging.getLogger("hotlink.server")

# A datasite cannot grow the server's memory without bound by uploading ACL files.
MAX_ACL_FILES_PER_DATASITE = 10_000
MAX_ACL_FILE_BYTES = MAX_ACL_BYTES  # --acl-dir files get the same bound as uploads
# Longer than any file system allows (Linux's PATH_MAX): such a path names nothing anyone
# can hold, and a decision about it would be kept in the decision cache, up to 8 MiB a key.
MAX_PATH_BYTES = 4096
# Paths whose readers are remembered (until an ACL changes); past it the memory starts over.
READERS_CACHE_SIZE = 4096
DAY_SECONDS = 86400


def normalize_path(path: str) -> str:
    """The cleaned datasite-relative path; a path escaping the root raises ProtocolError."""
    return _normalize(path)


def owner_of(path: str) -> str:
    """The datasite a normalised path belongs to: its first segment."""
    return path.split("/", 1)[0]


@dataclass
class PreloadResult:
    loaded: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ACLStore:
    def __init__(
        self,
        *,
        max_files_per_datasite: int = MAX_ACL_FILES_PER_DATASITE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.tree = ACLTree(clock=clock)
        self.max_files_per_datasite = max_files_per_datasite
        self._files: dict[str, set[str]] = {}  # datasite -> its loaded ACL file paths
        self._count = 0
        # The compiled files by the folder each governs, as the tree holds them.
        self._compiled: dict[str, CompiledACL] = {}
        self._generation = 0
        self._readers: dict[str, frozenset[str] | None] = {}
        # A digest of the text of each file loaded from a FileWrite, to know a re-upload.
        self._digests: dict[str, bytes] = {}

    def __len__(self) -> int:
        return self._count

    def epoch(self) -> tuple[int, int]:
        """Equal between two calls only if no access decision can have changed in between:
        no ACL file was loaded or removed and it is the same UTC day (templates may name
        the date). Callers keep decisions made in one epoch until the next."""
        return self._generation, int(self._clock() // DAY_SECONDS)

    def _changed(self) -> None:
        self._generation += 1
        self._readers.clear()

    def readers_of(self, path: str) -> frozenset[str] | None:
        """Every user who may read ``path``, when the rule deciding it names them all: its
        owner and the users its admin, write and read lists name. None when it cannot tell
        without asking about each user: the rule admits anyone (``*``) or a user pattern,
        or a template rule (which depends on the user) comes first.

        A user outside the set cannot read ``path``; one inside may still be refused by
        :meth:`can_access` (the set is an upper bound, callers check each member).
        """
        if path in self._readers:
            return self._readers[path]
        readers = self._find_readers(path)
        if len(self._readers) >= READERS_CACHE_SIZE:
            self._readers.clear()
        self._readers[path] = readers
        return readers

    def _find_readers(self, path: str) -> frozenset[str] | None:
        # Mirrors ACLTree.can_access for READ: the owner of the path always may; else the
        # first rule (most specific first) of the nearest ACL that matches decides, for a
        # user its admin, write or read list admits.
        if len(path) > MAX_PATH_BYTES or len(path.encode("utf-8", "replace")) > MAX_PATH_BYTES:
            return frozenset()
        try:
            norm = normalize_path(path)
            nearest = self.tree.nearest(norm)
        except ProtocolError:
            return frozenset()
        owner = {owner_of(norm)} - {""}
        if nearest is None:
            return frozenset(owner)
        compiled = self._compiled.get(nearest[0])
        if compiled is None or compiled.ruleset is not nearest[1]:
            return None  # the tree was changed behind our back: ask about everyone
        day = datetime.fromtimestamp(self._clock(), UTC).date()
        for rule in compiled.rules:
            if rule.template:
                return None
            if not rule.matches(norm, "", day):
                continue
            names = set(owner)
            for principals in (rule.admin, rule.write, rule.read):
                if principals.anyone or principals.globs:
                    return None
                names |= principals.exact
            return frozenset(names)
        return frozenset(owner)

    def can_access(self, path: str, user: str, level: Access) -> bool:
        """Whether ``user`` has ``level`` access to ``path``; a path over
        :data:`MAX_PATH_BYTES` is denied before any check (nothing is cached for it)."""
        if len(path) > MAX_PATH_BYTES or len(path.encode("utf-8", "replace")) > MAX_PATH_BYTES:
            return False
        try:
            return self.tree.can_access(path, user, level)
        except ProtocolError:
            return False

    def load(self, path: str, text: str) -> str:
        """Parse and load one ACL file here and now; returns its normalised path.

        For ``--acl-dir`` and tests: a FileWrite uses :meth:`check`, :func:`prepare_acl` on a
        worker thread and :meth:`install`. Raises ACLError.
        """
        norm = self.check(path)
        self.install(norm, prepare_acl(text, norm), text)
        return norm

    def check(self, path: str) -> str:
        """The normalised path of an ACL file that may be loaded; raises ACLError if it is not
        an ACL path or its datasite already has the most ACL files it may have."""
        try:
            norm = normalize_path(path)
        except ProtocolError as exc:
            raise ACLError(str(exc)) from None
        if not is_acl_path(norm):
            raise ACLError(f"{short_path(path)}: not an ACL file (must be named {ACL_FILE})")
        owner = owner_of(norm)
        files = self._files.get(owner, set())
        if norm not in files and len(files) >= self.max_files_per_datasite:
            raise ACLError(
                f"{short_path(norm)}: {short_path(owner, 60)} already has "
                f"{self.max_files_per_datasite} ACL files loaded"
            )
        return norm

    def holds(self, norm: str, text: str) -> bool:
        """Whether the file at ``norm`` is loaded with exactly this text."""
        digest = self._digests.get(norm)
        return digest is not None and digest == _digest(text)

    def install(self, norm: str, compiled: CompiledACL, text: str | None = None) -> None:
        """Load what :func:`prepare_acl` made of the file at ``norm`` (checked again: another
        upload may have taken the datasite's last free place meanwhile); ``text``, if
        given, is what it was made of (see :meth:`holds`)."""
        self.check(norm)
        if compiled.directory != acl_dir(norm):
            raise ValueError(f"rules compiled for {compiled.directory!r}, not for {norm!r}")
        self.tree.install(compiled)
        self._compiled[compiled.directory] = compiled
        files = self._files.setdefault(owner_of(norm), set())
        if norm not in files:
            files.add(norm)
            self._count += 1
        if text is None:
            self._digests.pop(norm, None)
        else:
            self._digests[norm] = _digest(text)
        self._changed()

    def remove(self, path: str) -> bool:
        """Forget an ACL file; False if it was not loaded."""
        try:
            norm = normalize_path(path)
        except ProtocolError:
            return False
        files = self._files.get(owner_of(norm))
        if files is None or norm not in files:
            return False
        files.discard(norm)
        self._digests.pop(norm, None)
        self._count -= 1
        if not files:
            del self._files[owner_of(norm)]
        self.tree.remove(acl_dir(norm))
        self._compiled.pop(acl_dir(norm), None)
        self._changed()
        return True

    def preload(self, root: Path) -> PreloadResult:
        """Load every ``syft.pub.yaml`` under ``root``; bad files are reported, not fatal."""
        result = PreloadResult()
        if not root.is_dir():
            result.errors.append(f"{root}: not a directory")
            return result
        # Shallow files first so a parent's rules exist before its children (order is not
        # semantically needed, but it makes the load log read top-down).
        for file in sorted(root.rglob(ACL_FILE), key=lambda p: (len(p.parts), str(p))):
            rel = file.relative_to(root).as_posix()
            if rel == ACL_FILE or not file.is_file():
                result.errors.append(f"{rel}: an ACL file must live inside a datasite folder")
                continue
            try:
                if file.stat().st_size > MAX_ACL_FILE_BYTES:
                    raise ACLError(f"{rel}: larger than {MAX_ACL_FILE_BYTES} bytes")
                text = file.read_text(encoding="utf-8")
                result.loaded.append(self.load(rel, text))
            except (ACLError, OSError, UnicodeDecodeError) as exc:
                result.errors.append(f"{rel}: {exc}" if rel not in str(exc) else str(exc))
        return result


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
