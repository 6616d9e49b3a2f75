"""The server's ACL store: the loaded ``syft.pub.yaml`` files and the access decisions.

Fed by clients' FileWrites of their own ACL files and by ``--acl-dir`` at start-up (a folder
holding datasite-relative trees: ``DIR/<email>/.../syft.pub.yaml``). The router and the file
handler only ask ``can_access``; a path that cannot be normalised is simply denied.

A FileWrite is loaded in three steps so that the costly middle one can run on a worker
thread: :meth:`ACLStore.check` (path and count, on the event loop), :func:`prepare_acl`
(parse and compile, pure, bounded by the ``MAX_ACL_*`` limits), :meth:`ACLStore.install`
(on the event loop, cheap).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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
    def __init__(self, *, max_files_per_datasite: int = MAX_ACL_FILES_PER_DATASITE) -> None:
        self.tree = ACLTree()
        self.max_files_per_datasite = max_files_per_datasite
        self._files: dict[str, set[str]] = {}  # datasite -> its loaded ACL file paths

    def __len__(self) -> int:
        return sum(len(files) for files in self._files.values())

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
        self.install(norm, prepare_acl(text, norm))
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

    def install(self, norm: str, compiled: CompiledACL) -> None:
        """Load what :func:`prepare_acl` made of the file at ``norm`` (checked again: another
        upload may have taken the datasite's last free place meanwhile)."""
        self.check(norm)
        if compiled.directory != acl_dir(norm):
            raise ValueError(f"rules compiled for {compiled.directory!r}, not for {norm!r}")
        self.tree.install(compiled)
        self._files.setdefault(owner_of(norm), set()).add(norm)

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
        if not files:
            del self._files[owner_of(norm)]
        self.tree.remove(acl_dir(norm))
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
