"""Publishing our datasite's ACL files: every file after a connect, then each change."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest

from hotlink.client import acl_publisher
from hotlink.client.acl_publisher import (
    MAX_ACL_BYTES,
    AclPublisher,
    retry_delay,
    scan_acl_files,
)
from hotlink.client.edges.discovery import FileIndex
from hotlink.client.edges.watcher import TreeWatcher
from hotlink.protocol.messages import Ack, Error, FileWrite, Message, Nack
from unit.client.client_fakes import ALICE, until
from unit.client.hostile_files import fifo_guard, make_fifo


class Server:
    """Answers each FileWrite as told: 'ack', 'nack', 'error' or 'silent'."""

    def __init__(self) -> None:
        self.writes: list[FileWrite] = []
        self.answer = "ack"
        self.publisher: AclPublisher | None = None

    async def send(self, message: Message) -> None:
        assert isinstance(message.payload, FileWrite)
        self.writes.append(message.payload)
        assert self.publisher is not None
        reply = {
            "ack": Ack(message.id),
            "nack": Nack(message.id, "blob store down"),
            "error": Error(403, message.payload.pth, "permission denied for write operation"),
        }.get(self.answer)
        if reply is not None:
            asyncio.get_running_loop().call_soon(self.publisher.handle_reply, Message.new(reply))


def _setup(tmp_path: Path) -> tuple[Path, Server, AclPublisher]:
    datasites = tmp_path / "datasites"
    own = datasites / ALICE
    (own / "public").mkdir(parents=True)
    (own / "syft.pub.yaml").write_text("rules: []\n")
    (own / "public" / "syft.pub.yaml").write_text("rules:\n  - pattern: '**'\n")
    (own / ".syftbox").mkdir()
    (own / ".syftbox" / "syft.pub.yaml").write_text("ignored")
    (datasites / "bob@example.com").mkdir()
    (datasites / "bob@example.com" / "syft.pub.yaml").write_text("not ours")
    server = Server()
    publisher = AclPublisher(datasites, ALICE, server.send, poll_interval=0.01, ack_timeout=0.5)
    server.publisher = publisher
    return own, server, publisher


def test_scan_finds_only_our_acl_files(tmp_path: Path) -> None:
    _setup(tmp_path)
    assert sorted(scan_acl_files(tmp_path / "datasites", ALICE)) == [
        f"{ALICE}/public/syft.pub.yaml",
        f"{ALICE}/syft.pub.yaml",
    ]


async def test_publishes_all_then_changes_and_again_after_reconnect(tmp_path: Path) -> None:
    own, server, publisher = _setup(tmp_path)
    publisher.start()
    try:
        await until(lambda: len(publisher.published) == 2)
        first = {w.pth: w for w in server.writes}
        root = first[f"{ALICE}/syft.pub.yaml"]
        assert root.con == b"rules: []\n"
        assert root.etg == hashlib.md5(b"rules: []\n").hexdigest()
        assert root.len == len(root.con)

        (own / "public" / "syft.pub.yaml").write_text("rules: []\n# changed\n")
        (own / "new").mkdir()
        (own / "new" / "syft.pub.yaml").write_text("terminal: true\n")
        await until(lambda: len(publisher.published) == 3 and len(server.writes) == 4)

        # A new connection (a restarted server) gets everything again.
        publisher.start()
        await until(lambda: len(server.writes) == 7)
    finally:
        await publisher.stop()


async def test_changes_are_published_on_file_events(tmp_path: Path) -> None:
    own, server, _ = _setup(tmp_path)
    watcher = TreeWatcher(tmp_path / "datasites", rescan_interval=3600)
    publisher = AclPublisher(
        tmp_path / "datasites", ALICE, server.send, watcher=watcher, ack_timeout=0.5
    )
    server.publisher = publisher
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: watcher.mode == "events", timeout=20)
        publisher.start()
        assert await publisher.wait_published(5)
        assert len(server.writes) == 2
        (own / "new" / "deep").mkdir(parents=True)
        (own / "new" / "deep" / "syft.pub.yaml").write_text("rules: []\n")
        await until(lambda: f"{ALICE}/new/deep/syft.pub.yaml" in publisher.published, timeout=20)
        (own / "syft.pub.yaml").write_text("rules: []\n# changed\n")
        await until(lambda: len(server.writes) == 4, timeout=20)
        (tmp_path / "datasites" / "bob@example.com" / "syft.pub.yaml").write_text("# bob's")
        passes = publisher.passes
        (own / "public" / "syft.pub.yaml").write_text("rules: []\n# changed\n")
        await until(lambda: len(server.writes) == 5, timeout=20)
        assert publisher.passes - passes <= 2  # bob's file woke nobody, or once at most
        assert [w.pth for w in server.writes][2:] == [
            f"{ALICE}/new/deep/syft.pub.yaml",
            f"{ALICE}/syft.pub.yaml",
            f"{ALICE}/public/syft.pub.yaml",
        ]
        assert watcher.rescans == 1  # events, not the safety rescan
    finally:
        await publisher.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_file_without_ack_is_retried_without_any_file_event(tmp_path: Path) -> None:
    _own, server, _ = _setup(tmp_path)
    watcher = TreeWatcher(tmp_path / "datasites", events=False, fallback_interval=3600)
    publisher = AclPublisher(
        tmp_path / "datasites", ALICE, server.send, watcher=watcher, ack_timeout=0.05
    )
    server.publisher = publisher
    server.answer = "silent"
    publisher.start()
    try:
        await until(lambda: len(server.writes) == 2)
        server.answer = "ack"
        # Nothing changes on disk: the retry timer (1 s, then 2 s) wakes the publisher.
        await until(lambda: len(publisher.published) == 2, timeout=20)
    finally:
        await publisher.stop()


async def test_a_file_unreadable_for_a_moment_is_published_once_it_can_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _own, server, _ = _setup(tmp_path)
    watcher = TreeWatcher(tmp_path / "datasites", events=False, fallback_interval=3600)
    publisher = AclPublisher(
        tmp_path / "datasites", ALICE, server.send, watcher=watcher, ack_timeout=0.5
    )
    server.publisher = publisher
    real_read = acl_publisher.read_acl_file
    out_of_fds = [True]

    def read(*args: object, **kwargs: object) -> object:
        if out_of_fds[0]:
            raise OSError(24, "Too many open files")
        return real_read(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(acl_publisher, "read_acl_file", read)
    publisher.start()
    try:
        await _passes(publisher, 2)
        assert server.writes == [] and publisher.failed
        assert not any(f.refused for f in publisher.failed.values())
        out_of_fds[0] = False
        # No file event: the retry timer brings the publisher back.
        await until(lambda: len(publisher.published) == 2, timeout=20)
    finally:
        await publisher.stop()


async def _passes(publisher: AclPublisher, n: int) -> None:
    """Let the publisher poll ``n`` more times."""
    target = publisher.passes + n
    await until(lambda: publisher.passes >= target)


async def test_refused_files_are_not_sent_again_until_they_change(tmp_path: Path) -> None:
    own, server, publisher = _setup(tmp_path)
    server.answer = "nack"
    publisher.start()
    try:
        await until(lambda: len(server.writes) == 2)
        await _passes(publisher, 20)
        assert len(server.writes) == 2  # each file once, though the server said no
        assert publisher.published == {}
        assert all(f.refused for f in publisher.failed.values())

        # Touched with the same content: still refused. Changed: sent once more.
        (own / "syft.pub.yaml").write_text("rules: []\n")
        await _passes(publisher, 5)
        assert len(server.writes) == 2
        server.answer = "error"
        (own / "syft.pub.yaml").write_text("rules: []\n# fixed\n")
        await until(lambda: len(server.writes) == 3)
        await _passes(publisher, 10)
        assert len(server.writes) == 3  # an Error (403) is a refusal too
        server.answer = "ack"
        (own / "syft.pub.yaml").write_text("rules: []\n# fixed again\n")
        await until(lambda: f"{ALICE}/syft.pub.yaml" in publisher.published)

        # A new connection does not re-send a refused file either.
        publisher.start()
        await until(lambda: f"{ALICE}/syft.pub.yaml" in publisher.published)
        await _passes(publisher, 5)
        sent = [w.pth for w in server.writes]
        assert sent.count(f"{ALICE}/public/syft.pub.yaml") == 1
    finally:
        await publisher.stop()


async def test_unacknowledged_files_back_off_also_across_reconnects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acl_publisher, "RETRY_FIRST", 30.0)
    _own, server, publisher = _setup(tmp_path)
    server.answer = "silent"
    publisher.ack_timeout = 0.05
    publisher.start()
    try:
        await until(lambda: len(server.writes) == 2)
        await _passes(publisher, 20)
        assert len(server.writes) == 2  # no Ack: the next try waits 30 s, not one poll
        rel = f"{ALICE}/syft.pub.yaml"
        assert publisher.failed[rel].attempts == 1
        publisher.start()  # the connection dropped and came back
        await _passes(publisher, 10)
        assert len(server.writes) == 2
        # Time passes: the file goes again, and the wait after it doubles.
        publisher.failed[rel].retry_at = 0.0
        await until(lambda: len(server.writes) == 3)
        await until(lambda: publisher.failed[rel].attempts == 2)
        loop_now = asyncio.get_running_loop().time()
        assert publisher.failed[rel].retry_at > loop_now + 50.0
    finally:
        await publisher.stop()


def test_retry_delay_doubles_up_to_five_minutes() -> None:
    assert [retry_delay(n) for n in range(1, 5)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(9) == 256.0
    assert retry_delay(10) == retry_delay(50) == 300.0


async def test_a_write_cut_off_by_a_disconnect_backs_off(tmp_path: Path) -> None:
    _own, server, publisher = _setup(tmp_path)
    server.answer = "silent"
    publisher.ack_timeout = 30.0
    publisher.start()
    try:
        await until(lambda: len(server.writes) == 1)
        assert server.writes[0].pth == f"{ALICE}/public/syft.pub.yaml"  # sorted first
        publisher.start()  # the connection drops while the first write waits for its Ack
        await until(lambda: len(server.writes) == 2)
        # The new connection starts with the other file; the cut-off one waits for its
        # back-off instead of going again at once.
        assert server.writes[1].pth == f"{ALICE}/syft.pub.yaml"
    finally:
        await publisher.stop()


async def test_oversize_file_is_never_sent_and_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own, server, publisher = _setup(tmp_path)
    big = own / "big" / "syft.pub.yaml"
    big.parent.mkdir()
    big.write_bytes(b"# " + b"x" * MAX_ACL_BYTES)
    with caplog.at_level(logging.WARNING, logger="hotlink.acl"):
        publisher.start()
        try:
            await until(lambda: len(publisher.published) == 2)
            await _passes(publisher, 10)
        finally:
            await publisher.stop()
    assert f"{ALICE}/big/syft.pub.yaml" not in [w.pth for w in server.writes]
    assert sum("big/syft.pub.yaml" in r.getMessage() for r in caplog.records) == 1


async def test_a_symlinked_acl_file_is_never_published(tmp_path: Path) -> None:
    own, server, publisher = _setup(tmp_path)
    secret = tmp_path / "credentials"
    secret.write_text("rules: []\n# aws_secret_access_key=SECRET\n")  # valid YAML, too
    (own / "leak").mkdir()
    (own / "leak" / "syft.pub.yaml").symlink_to(secret)
    (own / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "syft.pub.yaml").write_text("# SECRET too\n")
    publisher.start()
    try:
        await until(lambda: len(publisher.published) == 2)
        await _passes(publisher, 5)
    finally:
        await publisher.stop()
    assert not any(b"SECRET" in w.con for w in server.writes)
    assert sorted(w.pth for w in server.writes) == [
        f"{ALICE}/public/syft.pub.yaml",
        f"{ALICE}/syft.pub.yaml",
    ]


async def test_a_fifo_acl_file_does_not_freeze_the_client(tmp_path: Path) -> None:
    own, server, publisher = _setup(tmp_path)
    fifo = make_fifo(own / "pipe" / "syft.pub.yaml")
    with fifo_guard(fifo) as guard:
        publisher.start()
        try:
            await until(lambda: len(publisher.published) == 2)
            await _passes(publisher, 5)
        finally:
            await publisher.stop()
    assert not guard.fired
    assert f"{ALICE}/pipe/syft.pub.yaml" not in [w.pth for w in server.writes]


async def test_a_failing_round_does_not_stop_publishing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _own, _server, publisher = _setup(tmp_path)
    real = acl_publisher.stat_files
    calls = 0

    def flaky(index: FileIndex) -> dict[str, tuple[int, int, int]]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("disk on fire")
        return real(index)

    monkeypatch.setattr(acl_publisher, "stat_files", flaky)
    publisher.start()
    try:
        await until(lambda: len(publisher.published) == 2)
        assert publisher._task is not None and not publisher._task.done()
    finally:
        await publisher.stop()


async def test_missing_ack_is_a_failure_not_a_hang(tmp_path: Path) -> None:
    _own, server, publisher = _setup(tmp_path)
    server.answer = "silent"
    publisher.ack_timeout = 0.05
    publisher.start()
    try:
        assert await publisher.wait_published(5)  # both tried; neither waits forever
        assert len(publisher.failed) == 2
        assert publisher.published == {}
    finally:
        await publisher.stop()
