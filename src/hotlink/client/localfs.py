"""Safe access to files in the local datasites tree, where other parties put files too.

The sync client writes other users' files below ``datasites/``, and local apps drop markers
there; none of them is trusted to point anywhere else. A symlinked ``syft.pub.yaml`` would
publish whatever it points at, a symlinked folder would let an Open create folders and
sockets outside the data dir, and a FIFO named like a marker would block a plain ``open()``
forever. So everything the client reads or writes below the tree goes through here:

- every folder on the way is opened one segment at a time with ``O_NOFOLLOW``: a symlink
  anywhere below ``root`` is refused (:class:`UnsafePath`), and the check holds for the file
  access itself (no gap between a check and the open);
- files are opened ``O_NOFOLLOW | O_NONBLOCK`` and must be regular files
  (:class:`NotRegularFile`) no larger than the caller's cap (:class:`FileTooLarge`);
- writes go to a fresh temporary file (``O_EXCL``) renamed over the target, so a planted
  link or FIFO at the target is replaced, never written through.

``root`` itself (the data dir's ``datasites`` folder) is the user's configuration and may be
a symlink. Every error is an :class:`OSError`, so callers that already handle I/O errors
handle these too. Linux and macOS only (``dir_fd`` support).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

# Markers (stream.tcp, stream.sock, stream.accept) hold a line of JSON or an address.
MARKER_MAX_BYTES = 64 * 1024
# Read errors that say nothing about the file (out of file descriptors or memory): try again
# later rather than treat the file as bad.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR})

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path that leaves ``root``, passes through a symlink, or names something odd."""


class NotRegularFile(OSError):
    """A FIFO, socket, device or directory where a regular file was expected."""


class FileTooLarge(OSError):
    """A file larger than the caller's cap (nothing of it is returned)."""


def check_segment(segment: str) -> None:
    if segment in ("", ".", "..") or "/" in segment or "\x00" in segment:
        raise UnsafePath(errno.EINVAL, f"unsafe path segment {segment[:80]!r}")


def rel_segments(root: Path, path: Path) -> list[str]:
    """The segments of ``path`` below ``root``, compared lexically (nothing is resolved)."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise UnsafePath(errno.EXDEV, f"{path} is not inside {root}") from None
    segments = list(rel.parts)
    for segment in segments:
        check_segment(segment)
    return segments


def _open_dir_chain(root: Path, segments: Sequence[str], created: list[Path] | None) -> int:
    """An fd of ``root/segments...``; each segment must be a real directory (``created``:
    make missing ones and record them)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    here = Path(root)
    try:
        for segment in segments:
            check_segment(segment)
            here = here / segment
            if created is not None:
                try:
                    os.mkdir(segment, 0o777, dir_fd=fd)
                    created.append(here)
                except FileExistsError:
                    pass  # an existing link or file is refused by the open below
            try:
                next_fd = os.open(segment, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(exc.errno, f"{here} is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _split(root: Path | None, path: Path) -> tuple[Path, list[str], str]:
    """``(folder to start from, folder segments below it, file name)``."""
    if root is None:
        return path.parent, [], path.name
    segments = rel_segments(root, path)
    if not segments:
        raise UnsafePath(errno.EINVAL, f"{path} is the root itself")
    return root, segments[:-1], segments[-1]


def _read_at(dir_fd: int, name: str, where: Path, max_bytes: int) -> bytes:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(exc.errno, f"{where} is a symlink") from None
        if exc.errno == errno.ENXIO:  # a UNIX socket
            raise NotRegularFile(exc.errno, f"{where} is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, f"{where} is not a regular file")
        if st.st_size > max_bytes:
            raise FileTooLarge(
                errno.EFBIG, f"{where} is {st.st_size} bytes; the limit is {max_bytes}"
            )
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew since fstat
            raise FileTooLarge(errno.EFBIG, f"{where} is over the limit of {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular_file(path: Path, max_bytes: int, *, root: Path | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; never blocks on a FIFO and never
    follows a symlink (with ``root``: in any segment below root, else in the last one).

    Raises :class:`UnsafePath`, :class:`NotRegularFile`, :class:`FileTooLarge` or the
    OSError of the open (e.g. FileNotFoundError)."""
    start, folders, name = _split(root, path)
    dir_fd = _open_dir_chain(start, folders, None)
    try:
        return _read_at(dir_fd, name, path, max_bytes)
    finally:
        os.close(dir_fd)


def make_folder_within(root: Path, rel: Sequence[str], created: list[Path] | None = None) -> Path:
    """``root/rel...``, made one segment at a time; an existing segment that is a symlink or
    not a directory is refused (:class:`UnsafePath`), so the folder is under ``root``.

    ``created`` collects the folders this call made (outermost first)."""
    if not rel:
        raise UnsafePath(errno.EINVAL, "an empty folder path")
    os.close(_open_dir_chain(root, rel, created if created is not None else []))
    return root.joinpath(*rel)


def write_file_within(root: Path, path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` (below ``root``) atomically with ``data``: written to a new temporary
    file and renamed over it, so readers see the old or the new content, and a link or FIFO
    at ``path`` is replaced rather than written through."""
    _, folders, name = _split(root, path)
    dir_fd = _open_dir_chain(root, folders, None)
    try:
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, _CREATE_FLAGS, mode, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def remove_file_within(root: Path, path: Path, *, if_content: bytes | None = None) -> bool:
    """Remove ``path`` (below ``root``; a link is removed, not followed); with ``if_content``
    only while it still holds exactly that. True when it was removed."""
    _, folders, name = _split(root, path)
    try:
        dir_fd = _open_dir_chain(root, folders, None)
    except OSError:
        return False
    try:
        if if_content is not None:
            try:
                if _read_at(dir_fd, name, path, len(if_content)) != if_content:
                    return False
            except OSError:
                return False
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            return False
        return True
    finally:
        os.close(dir_fd)


def remove_empty_folders_within(root: Path, folders: Sequence[Path]) -> list[Path]:
    """Remove each of ``folders`` (below ``root``, outermost first in the list) while it is
    empty, innermost first; stops at the first that is not empty or not there. Returns the
    folders removed."""
    removed: list[Path] = []
    for folder in reversed(folders):
        try:
            _, parents, name = _split(root, folder)
            dir_fd = _open_dir_chain(root, parents, None)
        except OSError:
            break
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            break
        finally:
            os.close(dir_fd)
        removed.append(folder)
    return removed


def is_regular_file(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (a symlink to one is not)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def ensure_private_dir(path: Path) -> None:
    """Make ``path`` (mode 0700), or check that it is a directory of ours: a socket in a
    folder another local user can write to may be replaced under us. One of ours that others
    may write to is closed (0700); one of someone else's, or a link, is refused."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(errno.ENOTDIR, f"{path} is a symlink or not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafePath(errno.EPERM, f"{path} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & 0o022:
        os.chmod(path, 0o700)
