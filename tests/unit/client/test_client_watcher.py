"""The file watcher: real inotify events on a temporary tree, the safety rescan, the walks
when events cannot be had, and no events through symlinked folders."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hotlink.client.edges import watcher as watcher_module
from hotlink.client.edges.discovery import FileIndex
from hotlink.client.edges.watcher import TreeWatcher
from unit.client.client_fakes import until

MARKER = "stream.tcp"
CHANNEL = "alice@example.com/shared/flows/f/run1/_mpc/0_to_1"
GUARD = 20.0  # failure guard for anything the kernel and a worker thread must do


class Consumer:
    """A file index kept current from a feed, as the TCP proxy keeps its markers."""

    def __init__(self, watcher: TreeWatcher, datasites: Path, name: str = MARKER) -> None:
        self.feed = watcher.feed(names={name})
        self.index = FileIndex(datasites, name)
        self.index.rescan()
        self.posted: list[str] = []  # every changed path the feed handed over

    async def settle(self) -> None:
        """Take the full rescan the watcher asks for once its watches are in place, so that
        what the consumer finds next came by events (or by a later rescan)."""
        async with asyncio.timeout(GUARD):
            assert (await self.feed.next()).full
        self.index.rescan()

    async def wait_for(self, predicate: Callable[[dict[str, str]], bool]) -> None:
        async with asyncio.timeout(GUARD):
            while not predicate(self.index.files):
                changes = await self.feed.next()
                self.posted.extend(changes.paths)
                if changes.full:
                    self.index.rescan()
                else:
                    self.index.update(changes.paths)


@contextlib.asynccontextmanager
async def running(watcher: TreeWatcher, mode: str = "events") -> AsyncIterator[None]:
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: watcher.mode == mode, timeout=GUARD)
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _write_marker(datasites: Path, channel: str = CHANNEL) -> Path:
    folder = datasites / channel
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    marker.write_text('{"from": "a", "to": "b"}')
    return marker


def _event_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hotlink-file-events"]


@pytest.fixture
def datasites(tmp_path: Path) -> Path:
    path = tmp_path / "datasites"
    path.mkdir()
    return path


async def test_a_new_marker_and_its_removal_arrive_as_events(datasites: Path) -> None:
    watcher = TreeWatcher(datasites, rescan_interval=3600)
    consumer = Consumer(watcher, datasites)
    rel = f"{CHANNEL}/{MARKER}"
    async with running(watcher):
        await consumer.settle()
        marker = _write_marker(datasites)
        await consumer.wait_for(lambda files: rel in files)
        marker.unlink()
        await consumer.wait_for(lambda files: rel not in files)
        # Events did it: the only full rescan was the one when the watches were in place.
        assert watcher.rescans == 1
    assert _event_threads() == []  # stopping joined the event thread


async def test_a_folder_moved_in_brings_its_markers(datasites: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    _write_marker(staging, "flow/run1/_mpc/0_to_1")
    _write_marker(staging, "flow/run2/_mpc/0_to_1")
    watcher = TreeWatcher(datasites, rescan_interval=3600)
    consumer = Consumer(watcher, datasites)
    async with running(watcher):
        await consumer.settle()
        (datasites / "alice@example.com").mkdir()
        (staging / "flow").rename(datasites / "alice@example.com" / "flow")
        await consumer.wait_for(lambda files: len(files) == 2)  # no event names the markers
        (datasites / "alice@example.com" / "flow").rename(staging / "back")
        await consumer.wait_for(lambda files: not files)
        assert watcher.rescans == 1


async def test_the_safety_rescan_finds_what_events_missed(
    datasites: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every event lost, as after a queue overflow.
    monkeypatch.setattr(watcher_module._EventThread, "relevant", lambda self, raw: set())
    watcher = TreeWatcher(datasites, rescan_interval=0.2)
    consumer = Consumer(watcher, datasites)
    async with running(watcher):
        await consumer.settle()
        _write_marker(datasites)
        await consumer.wait_for(lambda files: len(files) == 1)
    assert consumer.posted == []  # no event got through: the rescan found it
    assert watcher.rescans >= 2


async def test_nothing_is_reported_through_a_symlinked_folder(
    datasites: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (datasites / "mallory@example.com").symlink_to(outside)  # notify watches what it points at
    watcher = TreeWatcher(datasites, rescan_interval=3600)
    consumer = Consumer(watcher, datasites)
    async with running(watcher):
        await consumer.settle()
        _write_marker(outside, "shared/flows/f/run1/_mpc/0_to_1")
        # Events arrive in order: once this one is in, the one above was dropped or not.
        _write_marker(datasites)
        await consumer.wait_for(lambda files: f"{CHANNEL}/{MARKER}" in files)
    assert list(consumer.index.files) == [f"{CHANNEL}/{MARKER}"]
    assert not any("mallory" in path for path in consumer.posted)


async def test_client_state_and_other_files_wake_nobody(datasites: Path) -> None:
    own = datasites / "alice@example.com"
    (own / ".syftbox").mkdir(parents=True)
    (own / "data").mkdir()
    watcher = TreeWatcher(datasites, rescan_interval=3600)
    consumer = Consumer(watcher, datasites)
    async with running(watcher):
        await consumer.settle()
        for i in range(5):  # the telemetry file, synced data
            (own / ".syftbox" / "hotlink_telemetry.json").write_text(f"{i}")
            (own / ".syftbox" / MARKER).write_text("{}")
            (own / "data" / f"file{i}.bin").write_bytes(b"x" * i)
        marker = _write_marker(datasites)
        await consumer.wait_for(lambda files: len(files) == 1)
    assert set(consumer.posted) <= {
        str(marker),
        *(str(p) for p in marker.parents if p != datasites and datasites in p.parents),
    }


async def test_without_events_it_walks_warns_once_and_tries_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "not-yet"  # the kernel cannot watch what is not there
    watcher = TreeWatcher(missing, fallback_interval=0.02, retry_interval=0.1)
    feed = watcher.feed(names={MARKER})
    with caplog.at_level(logging.DEBUG, logger="hotlink.watcher"):
        async with running(watcher, mode="polling"):
            await until(lambda: watcher.rescans >= 20, timeout=GUARD)  # several retries
            assert (await feed.next()).full
            missing.mkdir()
            await until(lambda: watcher.mode == "events", timeout=GUARD)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "full walk every" in warnings[0].getMessage()
    assert any("work again" in r.getMessage() for r in caplog.records)


async def test_events_off_means_walks_only(datasites: Path) -> None:
    watcher = TreeWatcher(datasites, events=False, fallback_interval=0.02)
    consumer = Consumer(watcher, datasites)
    async with running(watcher, mode="polling"):
        _write_marker(datasites)
        await consumer.wait_for(lambda files: len(files) == 1)
        assert _event_threads() == []
    assert consumer.posted == []
