"""The datasites walk: regular files only, never through a symlinked folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hotlink.client.edges.discovery import find_named
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
