"""Broadcasts under pressure, with the real relay.

A broadcast (here a third user's ACL FileWrites) to a receiver whose queue is full is
dropped; it never disconnects the receiver, whose stream goes on intact. A large
broadcast to many JSON readers that read nothing costs the relay one encoded frame, not
one copy per reader.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re

import aiohttp
import pytest

from hotlink.protocol.messages import (
    Ack,
    FileWrite,
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    new_session_id,
)
from support.fixtures import unique_email
from support.raw_http import RawConnection, raw_upgrade
from support.server_proc import ServerProcess, running_server
from support.ws_client import ConnectionClosed, WSClient, acl_yaml, open_client

GUARD = 30.0
QUEUE_MESSAGES = 16  # bob's relay queue, in messages
FRAME = 512 * 1024  # alice's Data frames: a few fill the socket buffers, then the queue
BURST = 50  # ACL FileWrites carol sends once bob's queue is full


async def metrics_text(srv: ServerProcess) -> str:
    async with aiohttp.ClientSession() as session, session.get(srv.url + "/metrics") as r:
        return await r.text()


async def metric(srv: ServerProcess, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", await metrics_text(srv), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def publish_acl(client: WSClient, folder: str) -> None:
    """A FileWrite of ``folder/syft.pub.yaml``; the relay broadcasts it to everyone else."""
    content = acl_yaml(read=["*"])
    sent = await client.send(
        FileWrite(pth=f"{folder}/syft.pub.yaml", con=content, len=len(content))
    )
    ack = await client.expect(Ack, GUARD)
    assert ack.oid == sent.id


@pytest.mark.slow
async def test_broadcasts_to_a_full_receiver_are_dropped_and_its_stream_completes(tmp_path):
    async with running_server(tmp_path, args=["--queue-size", str(QUEUE_MESSAGES)]) as srv:
        alice, bob, carol = unique_email("alice"), unique_email("bob"), unique_email("carol")
        a = await open_client(srv.url, alice)
        await a.publish_acl(f"{alice}/app", read=[bob])
        b = await open_client(srv.url, bob)
        c = await open_client(srv.url, carol)
        try:
            sid = new_session_id()
            path = f"{alice}/app/stream.request"
            await a.send(HotlinkOpen(sid=sid, pth=path, to=bob))
            assert (await b.expect(HotlinkOpen, GUARD)).sid == sid
            await b.send(HotlinkAccept(sid=sid))
            await a.expect(HotlinkAccept, GUARD)

            sent = hashlib.sha256()
            seq = 0

            async def send_data() -> None:
                nonlocal seq
                seq += 1
                chunk = os.urandom(FRAME)
                sent.update(chunk)
                await a.send(HotlinkData(sid=sid, seq=seq, pth=path, pay=chunk))

            # bob stops reading mid-stream. alice sends one frame at a time and carol
            # publishes an ACL file after each, until the relay drops the first broadcast
            # for bob: his queue is then exactly full of his own stream.
            while await metric(srv, "hotlink_queue_drops_total") == 0:
                assert seq < 200, "bob's queue never filled"
                await send_data()
                await a.barrier(GUARD)  # the relay has queued it for bob
                await publish_acl(c, f"{carol}/pub{seq}")
            # Now a burst of broadcasts while bob is still full.
            for i in range(BURST):
                await publish_acl(c, f"{carol}/burst{i}")

            # bob reads again: his stream is all there, in order, and he is still connected.
            got = hashlib.sha256()
            received = 0

            async def read_until(last: int) -> None:
                nonlocal received
                while received < last:
                    message = await b.recv(GUARD)
                    p = message.payload
                    if isinstance(p, FileWrite):
                        continue  # broadcasts queued before bob's queue was full
                    assert isinstance(p, HotlinkData), p
                    assert (p.sid, p.seq) == (sid, received + 1)
                    got.update(p.pay)
                    received += 1

            try:
                await read_until(seq)
                for _ in range(20):  # and the stream goes on
                    await send_data()
                    await read_until(seq)
                await a.send(HotlinkClose(sid=sid, rsn=f"eof:{seq}"))
                assert await b.expect(HotlinkClose, GUARD) == HotlinkClose(
                    sid=sid, rsn=f"eof:{seq}"
                )
            except ConnectionClosed as exc:
                pytest.fail(f"bob was disconnected mid-stream: {exc}")
            assert got.hexdigest() == sent.hexdigest()
            assert await b.barrier(GUARD) == []
        finally:
            for client in (a, b, c):
                await client.close()
        assert await metric(srv, "hotlink_slow_reader_disconnects_total") == 0
        assert await metric(srv, "hotlink_broadcast_drops_total") >= BURST
    log = srv.log_text()
    assert "Traceback" not in log
    assert f"{bob}) disconnected (send queue full" not in log


# ---------------------------------------------------------------- memory per broadcast

READERS = 100
BIG = 7 * 1024 * 1024  # a FileWrite this big is about 9.3 MB as JSON text
BROADCASTS = 3


def vm_kib(srv: ServerProcess, field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (the peak) of the relay, from /proc."""
    with open(f"/proc/{srv.pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {srv.pid}")


@pytest.mark.slow
async def test_a_large_broadcast_to_idle_json_readers_costs_one_frame_not_one_per_reader(
    tmp_path,
):
    async with running_server(tmp_path) as srv:
        alice = unique_email("alice")
        a = await open_client(srv.url, alice)
        readers: list[RawConnection] = []
        try:
            await a.publish_acl(f"{alice}/pub", read=["*"])
            # JSON readers that never read a byte after the upgrade.
            readers = await asyncio.gather(
                *(
                    raw_upgrade(
                        srv.host, srv.port, unique_email(f"r{i}"), encoding="json", rcvbuf=4096
                    )
                    for i in range(READERS)
                )
            )
            assert all(r.status == 101 for r in readers)
            await a.barrier(GUARD)
            before = vm_kib(srv, "VmRSS")

            content = os.urandom(BIG)
            for i in range(BROADCASTS):
                sent = await a.send(
                    FileWrite(pth=f"{alice}/pub/big{i}.bin", con=content, len=len(content))
                )
                assert (await a.expect(Ack, GUARD)).oid == sent.id
            # Every reader's writer has taken its frames by the time alice's own queue,
            # written after theirs, has been read twice over.
            await a.barrier(GUARD)
            await a.barrier(GUARD)
            relayed = await metric(srv, 'hotlink_relayed_messages_total{type="FILE_WRITE"}')
            assert relayed == READERS * BROADCASTS
            grown = vm_kib(srv, "VmHWM") - before
            # One JSON frame per broadcast, shared: tens of MB. A copy per reader would be
            # about 100 x 9.3 MB.
            assert grown < 250 * 1024, f"the relay grew by {grown // 1024} MiB"
            assert all(r.status == 101 for r in readers)
            assert await metric(srv, "hotlink_connections") == READERS + 1
        finally:
            for reader in readers:
                reader.close()
            await a.close()
    assert "Traceback" not in srv.log_text()
