"""A peer without end-to-end encryption still interoperates, in plaintext, marked as such; a
peer that has sealed before cannot be downgraded to plaintext.

The peer without it is a client run with ``SYFTBOX_HOTLINK_E2E=0`` (it sends no
``e2e_hello`` and ignores the ones it gets, as a reference client does), or a bare protocol
client on the WebSocket (:mod:`support.ws_client`) that opens a tunnel stream as a
reference client would. WebRTC is off (every frame crosses the relay) except where a test
runs on both paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest

from hotlink.client.e2e.keystore import PINS_FILE, load_identity
from hotlink.lab.processes import CHANNEL_OPEN
from hotlink.protocol.e2e.pins import PinBook
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkSignal,
    new_session_id,
)
from support.client_proc import (
    ALICE,
    BOB,
    ClientProcess,
    Tunnel,
    await_telemetry,
    dial,
    free_port,
    read_to_eof,
    start_client,
    start_tunnel,
    write_reference_tunnel,
)
from support.client_proc import reference_channel as _reference_channel
from support.server_proc import ServerProcess
from support.ws_client import connect

WS_ONLY = {"SYFTBOX_HOTLINK_WEBRTC": "0"}
PATHS = {"ws": WS_ONLY, "p2p": {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel"}}
E2E_OFF = {"SYFTBOX_HOTLINK_E2E": "0"}
KIB = 1024
# The one WARNING per peer, and the INFO line of its later sessions (client/e2e/context.py).
PLAINTEXT_WARNING = r" WARNING hotlink\.e2e: hotlink session \S+ with {peer} is NOT end-to-end"
PLAINTEXT_INFO = r" INFO hotlink\.e2e: hotlink session \S+ with {peer} is not end-to-end"


def _row(rows: list[dict[str, Any]], peer: str) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("peer") == peer), None)


def _settled(doc: dict[str, Any], table: str, peer: str) -> dict[str, Any] | None:
    """The live row of the session with ``peer`` once it knows whether it is sealed."""
    row = _row(doc["live"][table], peer)
    return row if row is not None and row["e2e_state"] != "pending" else None


async def _close(*writers: asyncio.StreamWriter) -> None:
    for w in writers:
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()


async def _read_outcome(reader: asyncio.StreamReader, within: float) -> str:
    """What an app reads next: ``data``, ``eof``, ``reset``, or ``nothing`` within ``within``
    seconds (a failure guard for the refused streams, which must deliver no byte)."""
    try:
        async with asyncio.timeout(within):
            data = await reader.read(1)
    except TimeoutError:
        return "nothing"
    except (ConnectionError, OSError):
        return "reset"
    return "data" if data else "eof"


# ---------------------------------------------------------------- E2E on meets E2E off


async def _both_ways(t: Tunnel, size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both apps send ``size`` random bytes at once; each gets the other's whole and a clean
    EOF. Returns alice's outbound and inbound rows, read while both sessions are live."""
    to_bob, to_alice = os.urandom(size), os.urandom(size)
    bob_r, bob_w = await dial(t.bob_port)
    await asyncio.sleep(0.3)  # bob's connection is there before alice's stream arrives
    alice_r, alice_w = await dial(t.alice_port)
    at_bob = asyncio.create_task(read_to_eof(bob_r))
    at_alice = asyncio.create_task(read_to_eof(alice_r))
    try:
        alice_w.write(to_bob)
        bob_w.write(to_alice)
        await asyncio.gather(alice_w.drain(), bob_w.drain())
        doc = await await_telemetry(
            t.alice,
            lambda d: (
                _settled(d, "sessions_out", BOB) is not None
                and _settled(d, "sessions_in", BOB) is not None
            ),
        )
        bob_doc = await await_telemetry(
            t.bob, lambda d: _row(d["live"]["sessions_in"], ALICE) is not None
        )
        alice_w.write_eof()
        bob_w.write_eof()
        got_bob, got_alice = await at_bob, await at_alice
    finally:
        at_bob.cancel()
        at_alice.cancel()
        await _close(alice_w, bob_w)
    assert hashlib.sha256(got_bob).digest() == hashlib.sha256(to_bob).digest()
    assert hashlib.sha256(got_alice).digest() == hashlib.sha256(to_alice).digest()
    # Bob has it off: his rows say so, and carry no key.
    bob_row = _row(bob_doc["live"]["sessions_in"], ALICE)
    assert bob_row is not None and bob_row["e2e"] is False and bob_row["e2e_state"] == "off"
    out, into = _settled(doc, "sessions_out", BOB), _settled(doc, "sessions_in", BOB)
    assert out is not None and into is not None
    return out, into


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_a_peer_with_e2e_off_interoperates_in_plaintext_marked_as_such(
    relay: ServerProcess, tmp_path: Path, path: str
) -> None:
    """Alice seals (the default), bob has it off; on the WebSocket or the P2P path."""
    t = await asyncio.to_thread(start_tunnel, relay.url, tmp_path, env=PATHS[path], bob_env=E2E_OFF)
    try:
        await _plaintext_both_ways(t)
        if path == "p2p":
            # The data channel opened between them (the P2P path was there to take).
            await t.alice.await_log(CHANNEL_OPEN)
    finally:
        await asyncio.to_thread(t.stop)


async def _plaintext_both_ways(t: Tunnel) -> None:
    for size in (512 * KIB, 300 * KIB):
        for row in await _both_ways(t, size):
            assert row["e2e"] is False, row
            assert row["e2e_state"] == "plaintext", row
            assert row["peer_key"] == "", row
    # Four plaintext sessions with bob, one WARNING about him; the others at INFO.
    log = t.alice.log_text()
    assert len(re.findall(PLAINTEXT_WARNING.format(peer=re.escape(BOB)), log)) == 1, log
    assert len(re.findall(PLAINTEXT_INFO.format(peer=re.escape(BOB)), log)) == 3, log
    for text in (log, t.bob.log_text()):
        assert "closed(e2e:" not in text and " ERROR " not in text, text
    # Nothing was pinned for a peer that never showed a key.
    assert BOB not in _pins(t.alice)


def _pins(client: ClientProcess) -> dict[str, str]:
    """The client's pinned peer keys (its known_peers.json), by email."""
    path = client.data_dir / ".hotlink" / PINS_FILE
    return PinBook.from_json(path.read_text()).pins if path.exists() else {}


# ---------------------------------------------------------------- a bare reference opener


async def test_a_bare_reference_opener_delivers_in_plaintext(
    relay: ServerProcess, tmp_path: Path
) -> None:
    """A protocol client as bob (no hotlink client of his runs): Open with ``to``, Accept,
    the e2e_hello it gets ignored, plaintext HotlinkData, Close ``eof:N``. Alice's app gets
    every byte and a clean EOF; her session is marked plaintext."""
    ports = {ALICE: free_port(), BOB: free_port()}
    write_reference_tunnel({ALICE: tmp_path / "alice"}, ports)
    key = _reference_channel(ports).canonical_key
    alice = await asyncio.to_thread(start_client, relay.url, ALICE, tmp_path / "alice", env=WS_ONLY)
    try:
        await alice.await_tunnel(key)
        alice_r, alice_w = await dial(ports[ALICE])
        receiving = asyncio.create_task(read_to_eof(alice_r))
        payload = os.urandom(400 * KIB)
        try:
            async with connect(relay.url, BOB) as bob:
                sid = new_session_id()
                await bob.send(HotlinkOpen(sid, key, to=ALICE))
                seen = [await bob.recv(timeout=10)]
                while not isinstance(seen[-1].payload, HotlinkAccept):
                    seen.append(await bob.recv(timeout=10))
                assert seen[-1].payload.sid == sid
                chunks = [payload[i : i + 60 * KIB] for i in range(0, len(payload), 60 * KIB)]
                for seq, chunk in enumerate(chunks, 1):
                    await bob.send(HotlinkData(sid, seq, key, pay=chunk))
                doc = await await_telemetry(
                    alice, lambda d: _settled(d, "sessions_in", BOB) is not None
                )
                await bob.send(HotlinkClose(sid, f"eof:{len(chunks)}"))
                got = await receiving
                seen += await bob.barrier()
        finally:
            receiving.cancel()
            await _close(alice_w)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        row = _settled(doc, "sessions_in", BOB)
        assert row is not None and row["e2e"] is False and row["e2e_state"] == "plaintext"
        # Alice offered her key exchange (which a reference client ignores) and did not end
        # the session: the stream ended with bob's eof.
        ours = [m.payload for m in seen if getattr(m.payload, "sid", None) == sid]
        assert any(isinstance(p, HotlinkSignal) and p.knd == "e2e_hello" for p in ours), ours
        assert not any(isinstance(p, HotlinkClose) for p in ours), ours
        log = alice.log_text()
        assert len(re.findall(PLAINTEXT_WARNING.format(peer=re.escape(BOB)), log)) == 1, log
    finally:
        await asyncio.to_thread(alice.stop)


# ---------------------------------------------------------------- no downgrade


async def _sealed_then_bob_without_e2e(relay: ServerProcess, tmp_path: Path) -> Tunnel:
    """A tunnel whose clients sealed one stream (each pinned the other's key), then bob
    restarted with E2E off (same data dir, same tunnel)."""
    t = await asyncio.to_thread(start_tunnel, relay.url, tmp_path, env=WS_ONLY)
    try:
        first = os.urandom(64 * KIB)
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.3)
        _alice_r, alice_w = await dial(t.alice_port)
        alice_w.write(first)
        alice_w.write_eof()
        got = await read_to_eof(bob_r)
        await _close(alice_w, bob_w)
        assert got == first
        bob_key = load_identity(t.bob.data_dir, create=False).fingerprint
        assert _pins(t.alice).get(BOB) == bob_key, "the sealed session pinned bob's key"
        await asyncio.to_thread(t.bob.stop)
        ports = {ALICE: t.alice_port, BOB: t.bob_port}
        t.bob = await asyncio.to_thread(
            start_client, relay.url, BOB, tmp_path / "bob", env={**WS_ONLY, **E2E_OFF}
        )
        await t.bob.await_tunnel(_reference_channel(ports).canonical_key)
    except BaseException:
        await asyncio.to_thread(t.stop)
        raise
    return t


async def test_a_peer_that_sealed_before_cannot_be_downgraded(
    relay: ServerProcess, tmp_path: Path
) -> None:
    """Bob sealed a stream with alice before, then comes back with E2E off: alice refuses his
    plaintext both ways, with an ``e2e:`` close, and neither app gets a byte of it."""
    t = await _sealed_then_bob_without_e2e(relay, tmp_path)
    try:
        bob_key = _pins(t.alice)[BOB]
        alice_mark = t.alice.log_mark()
        alice_rx = (t.alice.telemetry() or {})["rx_bytes"]

        # Bob → alice in plaintext: alice's acceptor refuses it at the first frame.
        alice_r, alice_w = await dial(t.alice_port)
        await asyncio.sleep(0.3)  # alice's app connection is there before bob's stream
        bob_r, bob_w = await dial(t.bob_port)
        bob_w.write(os.urandom(256 * KIB))
        await t.alice.await_log(r" in bob→alice closed\(e2e: ", since=alice_mark)
        assert await _read_outcome(bob_r, 15) == "reset"  # the sender learns it failed
        assert await _read_outcome(alice_r, 2) in ("nothing", "reset")
        await _close(alice_w, bob_w)

        # Alice → bob: alice's opener gets no key exchange from a peer it pinned, and refuses
        # to send.
        bob_mark = t.bob.log_mark()
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.3)
        alice_r, alice_w = await dial(t.alice_port)
        alice_w.write(os.urandom(256 * KIB))
        await t.alice.await_log(r" out alice→bob closed\(e2e: ", since=alice_mark)
        assert await _read_outcome(alice_r, 15) == "reset"
        await t.bob.await_log(r" in alice→bob closed\(e2e: ", since=bob_mark)
        assert await _read_outcome(bob_r, 2) in ("nothing", "reset")
        await _close(alice_w, bob_w)

        # Not one byte of either refused stream reached an app.
        assert (t.alice.telemetry() or {})["rx_bytes"] == alice_rx
        assert (t.bob.telemetry() or {})["rx_bytes"] == 0
        log = t.alice.log_text()[alice_mark:]
        assert "refusing plaintext" in log, log
        assert _pins(t.alice).get(BOB) == bob_key  # the pin stays
    finally:
        await asyncio.to_thread(t.stop)


async def test_an_empty_plaintext_stream_from_a_pinned_peer_is_refused(
    relay: ServerProcess, tmp_path: Path
) -> None:
    """A sealed empty stream ends with the sender's sealed fin; an empty stream without a
    key exchange from a peer that sealed before is a downgrade as much as one with data (a
    relay could make it up to end a half-closed app's wait with a clean, empty answer)."""
    t = await _sealed_then_bob_without_e2e(relay, tmp_path)
    try:
        alice_mark = t.alice.log_mark()
        # Alice's app sends its (empty) request and waits for bob's answer.
        alice_r, alice_w = await dial(t.alice_port)
        alice_w.write_eof()
        # Bob's app answers with nothing, in plaintext.
        _bob_r, bob_w = await dial(t.bob_port)
        await _close(bob_w)
        closed = await t.alice.await_log(r" in bob→alice closed\((\S+)", since=alice_mark)
        outcome = await _read_outcome(alice_r, 2)
        await _close(alice_w)
        assert outcome != "eof", "alice's app read a clean, empty answer"
        assert closed.group(1).startswith("e2e:"), closed.group(0)
    finally:
        await asyncio.to_thread(t.stop)
