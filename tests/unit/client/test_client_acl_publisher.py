"""Publishing our datasite's ACL files: every file after a connect, then each change."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from hotlink.client.acl_publisher import AclPublisher, scan_acl_files
from hotlink.protocol.messages import Ack, Error, FileWrite, Message, Nack
from unit.client.client_fakes import ALICE, until


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


async def test_refused_writes_are_retried(tmp_path: Path) -> None:
    _own, server, publisher = _setup(tmp_path)
    server.answer = "nack"
    publisher.start()
    try:
        await until(lambda: len(server.writes) >= 4)  # both files, at least twice
        assert publisher.published == {}
        server.answer = "error"
        await until(lambda: len(server.writes) >= 6)
        assert publisher.published == {}
        server.answer = "ack"
        await until(lambda: len(publisher.published) == 2)
    finally:
        await publisher.stop()


async def test_missing_ack_is_a_failure_not_a_hang(tmp_path: Path) -> None:
    _own, server, publisher = _setup(tmp_path)
    server.answer = "silent"
    publisher.ack_timeout = 0.05
    publisher.start()
    try:
        await until(lambda: len(server.writes) >= 4)
        assert publisher.published == {}
    finally:
        await publisher.stop()
