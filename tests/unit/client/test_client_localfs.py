"""Safe local-file primitives: no symlinks below the root, regular files only, size caps."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from hotlink.client.localfs import (
    FileTooLarge,
    NotRegularFile,
    UnsafePath,
    ensure_private_dir,
    is_regular_file,
    make_folder_within,
    read_regular_file,
    remove_empty_folders_within,
    remove_file_within,
    write_file_within,
)
from unit.client.hostile_files import fifo_guard, make_fifo


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """``(root, outside)``: a datasites folder and a folder next to it with a secret."""
    root = tmp_path / "datasites"
    (root / "alice" / "public").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"password=hunter2")
    return root, outside


def test_reads_a_regular_file_within_its_cap(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    path = root / "alice" / "public" / "syft.pub.yaml"
    path.write_bytes(b"rules: []\n")
    assert read_regular_file(path, 100, root=root) == b"rules: []\n"
    assert read_regular_file(path, 10, root=root) == b"rules: []\n"  # exactly the cap
    with pytest.raises(FileTooLarge):
        read_regular_file(path, 9, root=root)


def test_never_reads_through_a_link(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    link = root / "alice" / "public" / "syft.pub.yaml"
    link.symlink_to(outside / "secret")
    with pytest.raises(UnsafePath):
        read_regular_file(link, 1024, root=root)
    with pytest.raises(UnsafePath):
        read_regular_file(link, 1024)  # without a root: the last segment is still checked
    # A link to a folder on the way is refused too, wherever it points.
    (root / "alice" / "linked").symlink_to(outside)
    with pytest.raises(UnsafePath):
        read_regular_file(root / "alice" / "linked" / "secret", 1024, root=root)
    with pytest.raises(UnsafePath):
        read_regular_file(outside / "secret", 1024, root=root)  # not below the root


def test_a_fifo_or_a_socket_is_refused_without_blocking(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    fifo = make_fifo(root / "alice" / "stream.tcp")
    with fifo_guard(fifo) as guard:
        with pytest.raises(NotRegularFile):
            read_regular_file(fifo, 1024, root=root)
    assert not guard.fired
    sock_path = root / "alice" / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(NotRegularFile):
            read_regular_file(sock_path, 1024, root=root)
    with pytest.raises(NotRegularFile):
        read_regular_file(root / "alice", 1024, root=root)  # a folder


def test_make_folder_within_refuses_a_symlinked_segment(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    created: list[Path] = []
    folder = make_folder_within(root, ["bob", "app_data", "rpc"], created)
    assert folder == root / "bob" / "app_data" / "rpc" and folder.is_dir()
    assert created == [root / "bob", root / "bob" / "app_data", folder]
    assert make_folder_within(root, ["bob", "app_data", "rpc"]) == folder  # exists: fine
    (root / "carol").symlink_to(outside)
    with pytest.raises(UnsafePath):
        make_folder_within(root, ["carol", "app_data", "rpc"])
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]  # nothing made outside
    (root / "dave").write_text("a file")
    with pytest.raises(UnsafePath):
        make_folder_within(root, ["dave", "x"])
    for bad in (["..", "x"], ["a", ""], ["a/b"], []):
        with pytest.raises(UnsafePath):
            make_folder_within(root, bad)


def test_writes_replace_a_planted_link_instead_of_writing_through(
    tree: tuple[Path, Path],
) -> None:
    root, outside = tree
    marker = root / "alice" / "public" / "stream.sock"
    marker.symlink_to(outside / "secret")
    write_file_within(root, marker, b"/tmp/x.sock")
    assert (outside / "secret").read_bytes() == b"password=hunter2"
    assert is_regular_file(marker) and marker.read_bytes() == b"/tmp/x.sock"
    assert sorted(p.name for p in marker.parent.iterdir()) == ["stream.sock"]  # no temp left
    (root / "alice" / "linked").symlink_to(outside)
    with pytest.raises(UnsafePath):
        write_file_within(root, root / "alice" / "linked" / "stream.sock", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_remove_file_only_while_it_holds_what_we_wrote(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    marker = root / "alice" / "stream.sock"
    marker.write_bytes(b"ours")
    assert not remove_file_within(root, marker, if_content=b"theirs")
    assert marker.exists()
    assert remove_file_within(root, marker, if_content=b"ours")
    assert not marker.exists()
    link = root / "alice" / "link"
    link.symlink_to(outside / "secret")
    assert remove_file_within(root, link)  # the link goes, its target stays
    assert (outside / "secret").exists()


def test_remove_empty_folders_stops_at_a_non_empty_one(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    created: list[Path] = []
    make_folder_within(root, ["bob", "a", "b"], created)
    (root / "bob" / "a" / "keep").write_text("x")
    remove_empty_folders_within(root, created)
    assert not (root / "bob" / "a" / "b").exists()
    assert (root / "bob" / "a" / "keep").exists()


def test_private_dir_must_be_ours_and_closed(tmp_path: Path) -> None:
    private = tmp_path / "sockets"
    ensure_private_dir(private)
    assert stat.S_IMODE(os.lstat(private).st_mode) == 0o700
    ensure_private_dir(private)  # again: fine
    os.chmod(private, 0o777)  # ours, but open to all: closed again
    ensure_private_dir(private)
    assert stat.S_IMODE(os.lstat(private).st_mode) == 0o700
    if os.geteuid() == 0:  # only root can give it away
        os.chown(private, 65534, -1)
        with pytest.raises(UnsafePath):
            ensure_private_dir(private)
    link = tmp_path / "link"
    link.symlink_to(private)
    with pytest.raises(UnsafePath):
        ensure_private_dir(link)
