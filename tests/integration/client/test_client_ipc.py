"""The reference hotlink-protocol flow over IPC (PROTOCOL.md §9.2), in UNIX and TCP IPC modes.

Apps talk HLNK frames to their own client: alice's app dials the marker it dropped in its
own datasite, bob's app dials the marker bob's client writes when alice's session opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hotlink.protocol.frames import Frame, FrameDecoder, encode_frame
from support.client_proc import ALICE, BOB, ClientProcess, acl_text, start_client
from support.server_proc import ServerProcess, running_server_sync

CAROL = "carol@example.com"
RPC = f"{ALICE}/app_data/latency/rpc"
ENDPOINTS = ("hotlink-protocol", "hotlink-delayed", "hotlink-noaccept", "hotlink-private")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_ipc_trees(dirs: dict[str, Path], marker: str) -> None:
    alice_ds = dirs[ALICE] / "datasites"
    # §9.2 ACLs: the app's rpc ACL lets everyone read ACL files; endpoints are open to all,
    # except hotlink-private, which only bob may read.
    _write(alice_ds / RPC / "syft.pub.yaml", acl_text([("**/syft.pub.yaml", ["*"], [])]))
    for endpoint in ENDPOINTS:
        readers = [BOB] if endpoint == "hotlink-private" else ["*"]
        rules = [("**.request", readers, readers), ("**.response", readers, readers)]
        _write(alice_ds / RPC / endpoint / "syft.pub.yaml", acl_text(rules))
        # Alice's app asks for a sender socket with an empty marker.
        _write(alice_ds / RPC / endpoint / marker, "")
    # Bob accepts hotlink-protocol; carol, who must get nothing, accepts only hotlink-private
    # (a second acceptor of hotlink-protocol would race bob for the first frames).
    for email in [e for e in dirs if e != ALICE]:
        receiver = dirs[email] / "datasites" / RPC
        if email == BOB:
            _write(receiver / "hotlink-protocol" / "stream.accept", "1")
        _write(receiver / "hotlink-private" / "stream.accept", "1")


@dataclass
class IpcSetup:
    alice: ClientProcess
    bob: ClientProcess
    carol: ClientProcess | None
    marker: str

    def sender_marker(self, endpoint: str) -> Path:
        return self.alice.datasites / RPC / endpoint / self.marker

    def receiver_marker(self, endpoint: str, client: ClientProcess | None = None) -> Path:
        return (client or self.bob).datasites / RPC / endpoint / self.marker


@contextlib.contextmanager
def ipc_clients(
    server: ServerProcess, tmp_path: Path, mode: str, with_carol: bool
) -> Iterator[IpcSetup]:
    marker = "stream.tcp" if mode == "tcp" else "stream.sock"
    emails = [ALICE, BOB] + ([CAROL] if with_carol else [])
    dirs = {email: tmp_path / mode / email.split("@")[0] for email in emails}
    write_ipc_trees(dirs, marker)
    env = {"SYFTBOX_HOTLINK_DEBUG": "1", "SYFTBOX_HOTLINK_IPC": mode}
    if mode == "tcp":
        env["SYFTBOX_HOTLINK_TCP_ADDR"] = "127.0.0.1:0"
    started: list[ClientProcess] = []
    try:
        for email in emails:
            started.append(start_client(server.url, email, dirs[email], env=env))
        yield IpcSetup(started[0], started[1], started[2] if with_carol else None, marker)
    finally:
        for client in started:
            client.stop()


@pytest.fixture(scope="module")
def relay_for_ipc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server_sync(tmp_path_factory.mktemp("ipc-relay")) as server:
        yield server


# ---------------------------------------------------------------- the app side


class IpcApp:
    """An app's end of an IPC socket: write frames, read frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    @classmethod
    async def dial(cls, marker: Path, timeout: float = 10.0) -> IpcApp:
        """§4.8: poll the marker every 50 ms until it names an address, then dial it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with contextlib.suppress(OSError):
                address = marker.read_text().strip().removeprefix("tcp://")  # noqa: ASYNC240
                if address:
                    try:
                        if ":" in address and not address.startswith("/"):
                            host, _, port = address.rpartition(":")
                            r, w = await asyncio.open_connection(host, int(port))
                        else:
                            r, w = await asyncio.open_unix_connection(address)
                        return cls(r, w)
                    except OSError:
                        pass
            if loop.time() > deadline:
                raise TimeoutError(f"could not dial {marker} within {timeout}s")
            await asyncio.sleep(0.05)

    async def send(self, path: str, payload: bytes) -> None:
        self.writer.write(encode_frame(Frame(path, "", 0, payload)))
        await self.writer.drain()

    async def receive(self, path: str, size: int, timeout: float = 10.0) -> Frame:
        """The first frame with this path and payload size (others are kept in ``frames``)."""
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.frames:
                    if frame.path == path and len(frame.payload) == size:
                        self.frames.remove(frame)
                        return frame
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("ipc connection closed")
                self.frames.extend(self.decoder.feed(data))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def _payload(size: int) -> bytes:
    # Like the reference: a Unix-ns timestamp in bytes 0-7, random bytes after.
    return time.time_ns().to_bytes(8, "little") + os.urandom(size - 8)


async def _round(sender: IpcApp, receiver: IpcApp, path: str, size: int) -> None:
    payload = _payload(size)
    await sender.send(path, payload)
    frame = await receiver.receive(path, size)
    assert frame.payload == payload, f"{path}: payload corrupted"
    assert frame.seq > 0


# ---------------------------------------------------------------- tests


async def test_hotlink_protocol_flow_unix(relay_for_ipc: ServerProcess, tmp_path: Path) -> None:
    with ipc_clients(relay_for_ipc, tmp_path, "unix", with_carol=True) as s:
        d = f"{RPC}/hotlink-protocol"
        sender = await IpcApp.dial(s.sender_marker("hotlink-protocol"))
        await sender.send(f"{d}/warmup.request", _payload(64))
        receiver = await IpcApp.dial(s.receiver_marker("hotlink-protocol"))
        await receiver.receive(f"{d}/warmup.request", 64)
        try:
            for case, size, count in (("1kb", 1024, 10), ("10kb", 10240, 10), ("100kb", 102400, 5)):
                for n in range(count):
                    await _round(sender, receiver, f"{d}/proto-{case}-{n:02d}.request", size)

            # Sender reconnect: a new connection to the same sender socket still sends.
            await sender.close()
            sender = await IpcApp.dial(s.sender_marker("hotlink-protocol"))
            await _round(sender, receiver, f"{d}/reconnect.request", 256)
        finally:
            await sender.close()
            await receiver.close()

        # Only bob may read hotlink-private: carol, though willing to accept, gets nothing.
        assert s.carol is not None
        private = f"{RPC}/hotlink-private"
        sender = await IpcApp.dial(s.sender_marker("hotlink-private"))
        await sender.send(f"{private}/only-bob.request", _payload(512))
        receiver = await IpcApp.dial(s.receiver_marker("hotlink-private"))
        try:
            await receiver.receive(f"{private}/only-bob.request", 512)
        finally:
            await sender.close()
            await receiver.close()
        assert not s.receiver_marker("hotlink-private", s.carol).exists()
        assert "hotlink-private" not in s.carol.log_text()


async def test_delayed_accept_arrives_and_no_accept_delivers_nothing(
    relay_for_ipc: ServerProcess, tmp_path: Path
) -> None:
    with ipc_clients(relay_for_ipc, tmp_path, "unix", with_carol=False) as s:
        delayed = f"{RPC}/hotlink-delayed"
        sender = await IpcApp.dial(s.sender_marker("hotlink-delayed"))
        payload = _payload(512)
        await sender.send(f"{delayed}/delayed.request", payload)
        await asyncio.sleep(0.2)
        (s.bob.datasites / delayed / "stream.accept").write_text("1")
        receiver = await IpcApp.dial(s.receiver_marker("hotlink-delayed"), timeout=10)
        try:
            frame = await receiver.receive(f"{delayed}/delayed.request", 512, timeout=10)
            assert frame.payload == payload
        finally:
            await sender.close()
            await receiver.close()

        mark = s.alice.log_mark()
        noaccept = f"{RPC}/hotlink-noaccept"
        sender = await IpcApp.dial(s.sender_marker("hotlink-noaccept"))
        await sender.send(f"{noaccept}/noaccept.request", _payload(512))
        try:
            receiver = await IpcApp.dial(s.receiver_marker("hotlink-noaccept"), timeout=1.0)
        except TimeoutError:
            receiver = None  # no receiver socket at all: nothing can arrive
        try:
            if receiver is not None:
                with pytest.raises(TimeoutError):
                    await receiver.receive(f"{noaccept}/noaccept.request", 512, timeout=1.0)
            # The sender gave up loudly instead of "sending anyway".
            await s.alice.await_log(r"closed\(accept timeout\)", since=mark)
        finally:
            await sender.close()
            if receiver is not None:
                await receiver.close()


async def test_hotlink_protocol_flow_tcp_ipc_mode(
    relay_for_ipc: ServerProcess, tmp_path: Path
) -> None:
    with ipc_clients(relay_for_ipc, tmp_path, "tcp", with_carol=False) as s:
        d = f"{RPC}/hotlink-protocol"
        sender = await IpcApp.dial(s.sender_marker("hotlink-protocol"))
        await sender.send(f"{d}/warmup.request", _payload(64))
        receiver = await IpcApp.dial(s.receiver_marker("hotlink-protocol"))
        try:
            await receiver.receive(f"{d}/warmup.request", 64)
            for n in range(5):
                await _round(sender, receiver, f"{d}/proto-10kb-{n:02d}.request", 10240)
        finally:
            await sender.close()
            await receiver.close()
        # The TCP-mode marker shares its name with tunnel markers; the proxy must ignore it.
        assert "tcp proxy: starting" not in s.alice.log_text()
        assert "tcp proxy: starting" not in s.bob.log_text()
