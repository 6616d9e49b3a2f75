"""The client's end-to-end key files, in ``<data dir>/.hotlink/`` (never in the datasites,
which are synced to the relay):

* ``identity.pem``: this client's Ed25519 identity key, made on first start (mode 0600);
* ``known_peers.json``: the peers' pinned key fingerprints (:class:`~.pins.PinBook`).

The daemon and ``hotlink e2e trust`` both write the pin file, each by replacing it whole; the
daemon reads it again when it changed, so a key the user accepts counts from the next
session on without a restart.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ...protocol.e2e.identity import Identity
from ...protocol.e2e.pins import PinBook

log = logging.getLogger("hotlink.e2e")

KEY_DIR = ".hotlink"
IDENTITY_FILE = "identity.pem"
PINS_FILE = "known_peers.json"


class KeyFileError(Exception):
    """A key file that cannot be used: the message says which and why."""


def key_dir(data_dir: Path) -> Path:
    return data_dir / KEY_DIR


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600), atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_identity(data_dir: Path, *, create: bool = True) -> Identity:
    """This client's identity key, made (and saved) on first use. Raises KeyFileError."""
    path = key_dir(data_dir) / IDENTITY_FILE
    try:
        st = path.lstat()
    except FileNotFoundError:
        if not create:
            raise KeyFileError(
                f"no identity key at {path} (the client makes it on first start)"
            ) from None
        identity = Identity.generate()
        try:
            _write_private(path, identity.to_pem())
        except OSError as exc:
            raise KeyFileError(f"cannot save the identity key at {path}: {exc}") from None
        log.info("made an end-to-end identity key: %s (fingerprint %s)", path, identity.fingerprint)
        return identity
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}): "
            f"chmod 600 it, or remove it to make a new key"
        )
    try:
        return Identity.from_pem(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the identity key {path}: {exc}") from None


class PinFile:
    """The pin book on disk, read again when the file changed."""

    def __init__(self, data_dir: Path, expected: dict[str, frozenset[str]] | None = None) -> None:
        self.path = key_dir(data_dir) / PINS_FILE
        self.expected = expected or {}
        self._stamp: tuple[int, int, int] | None = None
        self._book = PinBook(expected=self.expected)
        self.book()  # a broken file is an error at start, not at the first session

    def _current_stamp(self) -> tuple[int, int, int] | None:
        # Writers replace the file (a new inode), so a change shows even within one tick.
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def book(self) -> PinBook:
        """The pins as the file has them now. Raises KeyFileError for a broken file."""
        stamp = self._current_stamp()
        if stamp != self._stamp:
            if stamp is None:
                self._book = PinBook(expected=self.expected)
            else:
                try:
                    self._book = PinBook.from_json(self.path.read_text(), self.expected)
                except (OSError, ValueError) as exc:
                    raise KeyFileError(
                        f"cannot read the pinned peer keys {self.path}: {exc} (fix or remove it; "
                        "removing forgets every pin)"
                    ) from None
            self._stamp = stamp
        return self._book

    def save(self) -> None:
        """Write the book if it changed (new pins); a failure is logged, pins stay in memory."""
        book = self._book
        if not book.dirty:
            return
        try:
            _write_private(self.path, book.to_json().encode())
        except OSError as exc:
            log.warning("cannot save pinned peer keys to %s: %s", self.path, exc)
            return
        book.dirty = False
        self._stamp = self._current_stamp()
