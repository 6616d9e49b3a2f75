"""The datasites walk (regular files only, never through a symlinked folder), the index the
consumers keep from it and from changed paths, and their feeds of changes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hotlink.client.edges import discovery
from hotlink.client.edges.changes import FULL, NOTHING, ChangeFeed, Changes
from hotlink.client.edges.discovery import FileIndex, find_named
from unit.client.hostile_files import fifo_guard, make_fifo

NAME = "syft.pub.yaml"


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    datasites = tmp_path / "datasites"
    own = datasites / "alice"
    for folder in ("a/b", "c", ".syftbox"):
        (own / folder).mkdir(parents=True)
        (own / folder / NAME).write_text("rules: []\n")
    (own / NAME).write_text("rules: []\n")
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / NAME).write_text("secret")
    (outside / "deep" / NAME).write_text("secret")
    return datasites, outside


def test_finds_regular_files_in_order_and_skips_the_client_state(tmp_path: Path) -> None:
    datasites, _ = _tree(tmp_path)
    assert [rel for _, rel in find_named(datasites, NAME)] == [
        f"alice/{NAME}",
        f"alice/a/b/{NAME}",
        f"alice/c/{NAME}",
    ]


def test_links_are_skipped_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datasites, outside = _tree(tmp_path)
    own = datasites / "alice"
    (own / "d").mkdir()
    (own / "d" / NAME).symlink_to(outside / NAME)  # a link to a credentials file
    (own / "e").symlink_to(outside)  # a linked folder
    (own / "f").mkdir()
    (own / "f" / NAME).symlink_to(own / NAME)  # even one that stays inside
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            found = [rel for _, rel in find_named(datasites, NAME)]
            assert found == [f"alice/{NAME}", f"alice/a/b/{NAME}", f"alice/c/{NAME}"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(f"alice/d/{NAME}" in w for w in warnings) == 1
    assert sum(f"alice/f/{NAME}" in w for w in warnings) == 1


def test_never_starts_below_a_linked_folder(tmp_path: Path) -> None:
    datasites, outside = _tree(tmp_path)
    (datasites / "alice" / "app_data").symlink_to(outside)
    assert list(find_named(datasites, NAME, under=datasites / "alice" / "app_data")) == []
    assert list(find_named(datasites, NAME, under=datasites / "alice" / "missing")) == []
    linked_user = datasites / "mallory"
    linked_user.symlink_to(outside)
    assert list(find_named(datasites, NAME, under=linked_user)) == []


def test_a_fifo_is_skipped(tmp_path: Path) -> None:
    datasites, _ = _tree(tmp_path)
    fifo = make_fifo(datasites / "alice" / "g" / NAME)
    with fifo_guard(fifo) as guard:
        found = [rel for _, rel in find_named(datasites, NAME)]
    assert f"alice/g/{NAME}" not in found and not guard.fired


# ---------------------------------------------------------------- the index


def _rels(index: FileIndex) -> list[str]:
    return [rel for _, rel in index.sorted_files()]


def test_the_index_keeps_the_walks_order(tmp_path: Path) -> None:
    datasites, _ = _tree(tmp_path)
    own = datasites / "alice"
    for folder in ("a/b.c", "a.b", "a/z", "b"):
        (own / folder).mkdir(parents=True, exist_ok=True)
        (own / folder / NAME).write_text("rules: []\n")
    index = FileIndex(datasites, NAME)
    index.rescan()
    assert _rels(index) == [rel for _, rel in find_named(datasites, NAME)]
    fresh = FileIndex(datasites, NAME)
    fresh.update([str(own)])  # a folder that "appeared": walked
    assert _rels(fresh) == _rels(index)


def test_the_index_follows_changed_paths(tmp_path: Path) -> None:
    datasites, outside = _tree(tmp_path)
    own = datasites / "alice"
    index = FileIndex(datasites, NAME)
    index.rescan()
    # A folder moved in: its files are found though no event names them.
    (outside / "deep").rename(own / "moved")
    # A file removed, a link and a FIFO planted, the client's own state touched.
    (own / "c" / NAME).unlink()
    (own / "link").mkdir()
    (own / "link" / NAME).symlink_to(outside / NAME)
    fifo = make_fifo(own / "fifo" / NAME)
    (own / ".syftbox" / NAME).write_text("still ignored")
    changed = [own / "moved", own / "c" / NAME, own / "link" / NAME, fifo, own / ".syftbox"]
    index.update(str(p) for p in changed)
    assert _rels(index) == [f"alice/{NAME}", f"alice/a/b/{NAME}", f"alice/moved/{NAME}"]
    # A folder gone: everything below it goes.
    (own / "a" / "b" / NAME).unlink()
    (own / "a" / "b").rmdir()
    (own / "a").rmdir()
    index.update([str(own / "a")])
    assert _rels(index) == [f"alice/{NAME}", f"alice/moved/{NAME}"]


def test_the_index_stays_in_its_scopes(tmp_path: Path) -> None:
    datasites, _ = _tree(tmp_path)
    own = datasites / "alice"
    index = FileIndex(datasites, NAME, [own / "a"])
    index.rescan()
    assert _rels(index) == [f"alice/a/b/{NAME}"]
    index.update([str(own / "c" / NAME), str(datasites / "bob")])  # outside the scope
    assert _rels(index) == [f"alice/a/b/{NAME}"]
    # The datasite folder replaced by a link: the scope below it is looked at again.
    own.rename(tmp_path / "old-alice")
    own.symlink_to(tmp_path / "old-alice")
    index.update([str(own)])
    assert _rels(index) == []


# ---------------------------------------------------------------- a consumer's feed


def test_a_feed_wants_its_names_in_its_scopes_and_folders_around_them(tmp_path: Path) -> None:
    scope = tmp_path / "ds" / "alice"
    feed = ChangeFeed(names={NAME}, scopes=[scope])
    watched = frozenset({NAME, "stream.tcp"})
    assert feed.wants(str(scope / "x" / NAME), watched)
    assert not feed.wants(str(tmp_path / "ds" / "bob" / NAME), watched)
    assert not feed.wants(str(scope / "x" / "stream.tcp"), watched)  # another consumer's
    assert feed.wants(str(scope / "x"), watched)  # a folder inside
    assert feed.wants(str(tmp_path / "ds"), watched)  # a folder above
    assert not feed.wants(str(tmp_path / "ds" / "bob"), watched)
    assert ChangeFeed(names={NAME}).wants(str(tmp_path / "anything"), watched)


async def test_a_feed_coalesces_and_is_bounded() -> None:
    feed = ChangeFeed(max_paths=3)
    assert await feed.next(timeout=0) == NOTHING
    feed.post(["/a", "/b"])
    feed.post(["/a"])
    assert await feed.next() == Changes(paths=frozenset({"/a", "/b"}))
    feed.post(["/a", "/b", "/c", "/d"])  # too many to keep: look at everything
    assert await feed.next() == FULL
    assert not feed.pending


async def test_a_feed_without_a_watcher_polls() -> None:
    feed = ChangeFeed(poll_interval=0.01)
    assert await feed.next() == FULL
    assert await feed.next(timeout=0) == NOTHING  # the next poll is not due yet


def test_a_rescan_lists_only_the_folders_that_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasites, _ = _tree(tmp_path)
    own = datasites / "alice"
    for n in range(20):
        (own / "data" / f"f{n}").mkdir(parents=True)
    index = FileIndex(datasites, NAME)
    # Listed "long" after every change: the listings can be trusted.
    monkeypatch.setattr(discovery, "RACY_NS", -(10**12))
    index.rescan()
    folders = index.listed
    index.rescan()
    assert index.listed == folders  # nothing opened again
    (own / "data" / "f7" / NAME).write_text("rules: []\n")
    (own / "c" / NAME).unlink()
    index.rescan()
    assert index.listed == folders + 2  # the two folders whose entries changed
    assert _rels(index) == [
        f"alice/{NAME}",
        f"alice/a/b/{NAME}",
        f"alice/data/f7/{NAME}",
    ]


def test_a_folder_changed_just_before_its_listing_is_listed_again(tmp_path: Path) -> None:
    datasites, _ = _tree(tmp_path)
    index = FileIndex(datasites, NAME)
    index.rescan()  # everything was just made: within the racy window
    folders = index.listed
    index.rescan()
    assert index.listed == 2 * folders
