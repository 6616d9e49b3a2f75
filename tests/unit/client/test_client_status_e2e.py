"""End-to-end encryption in the status document and its human view: our mode and key at the
top, and per session (live and ended) whether it is sealed and which key the peer proved."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from hotlink.client.e2e.context import E2EContext
from hotlink.client.e2e.keystore import PinFile
from hotlink.client.manager import HotlinkManager
from hotlink.client.status import StatusBuilder
from hotlink.client.status_commands import render
from hotlink.protocol.e2e.handshake import E2E_HELLO
from hotlink.protocol.e2e.identity import Identity
from hotlink.protocol.e2e.session import E2ESession
from hotlink.protocol.frames import Frame
from hotlink.protocol.messages import (
    HotlinkAccept,
    HotlinkClose,
    HotlinkData,
    HotlinkOpen,
    HotlinkSignal,
    Message,
)
from hotlink.settings import ClientSettings
from unit.client.client_fakes import (
    ALICE,
    BOB,
    FakeWire,
    FakeWriter,
    fake_manager,
    until,
)
from unit.client.test_client_status import TUNNEL, FakeChannel, FakeConnection, FakeProxy

SID = "e2e0e2e0e2e0e2e0e2e0"


def msg(payload: object) -> Message:
    return Message.new(payload)  # type: ignore[arg-type]


def context(data_dir: Path) -> E2EContext:
    return E2EContext(mode="on", identity=Identity.generate(), pins=PinFile(data_dir))


def bob_with(
    tmp_path: Path, e2e: E2EContext | None
) -> tuple[StatusBuilder, HotlinkManager, FakeWire]:
    """Bob's manager (the acceptor of alice's tunnel stream) and his status builder."""
    manager, wire = fake_manager(tmp_path, BOB, e2e=e2e)
    proxy = FakeProxy({TUNNEL: FakeChannel(FakeWriter())})
    manager.tunnels = proxy
    builder = StatusBuilder(
        settings=ClientSettings(
            email=BOB, data_dir=str(tmp_path), server_url="http://relay", hotlink=True
        ),
        connection=FakeConnection(),
        telemetry=manager.telemetry,
        manager=manager,
        transport=manager.transport,
        proxy=proxy,
    )
    return builder, manager, wire


def text_of(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(render(doc))
    return out.getvalue()


async def test_a_sealed_session_shows_the_peers_key_live_and_after_it_ended(
    tmp_path: Path,
) -> None:
    bob_e2e = context(tmp_path / "bob")
    alice_e2e = context(tmp_path / "alice")
    builder, manager, wire = bob_with(tmp_path, bob_e2e)
    alice = alice_e2e.outbound(SID, TUNNEL, ALICE, BOB)
    assert isinstance(alice, E2ESession)

    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE, to=BOB)))
    await until(lambda: wire.payloads(HotlinkSignal))
    doc = builder.build()
    assert doc["e2e"] == {"mode": "on", "fingerprint": bob_e2e.identity.fingerprint}
    (pending,) = doc["sessions"]
    # Accepted, but alice's key exchange has not come: nothing is proven yet.
    assert (pending["e2e"], pending["e2e_state"], pending["peer_key"]) == (False, "pending", "")

    # The exchange: bob's hello (sent behind his Accept) to alice, alice's to bob.
    assert wire.payloads(HotlinkAccept)
    (hello,) = [s for s in wire.payloads(HotlinkSignal) if s.knd == E2E_HELLO]
    assert alice.on_hello(hello.tok)
    await manager.handle_message(msg(HotlinkSignal(SID, E2E_HELLO, tok=alice.hello_token())))
    sealed = alice.seal(Frame(TUNNEL, "", 1, b"secret shares" * 10))
    await manager.handle_message(msg(HotlinkData(SID, 1, TUNNEL, sealed.etag, sealed.payload)))
    await until(lambda: builder.build()["sessions"][0]["rx_bytes"] == 130)

    doc = builder.build()
    json.dumps(doc)  # as it is served
    (live,) = doc["sessions"]
    assert (live["e2e"], live["e2e_state"]) == (True, "sealed")
    assert live["peer_key"] == alice_e2e.identity.fingerprint
    human = text_of(doc)
    assert f"e2e on, identity key {bob_e2e.identity.fingerprint}" in human
    assert "sealed" in human and alice_e2e.identity.fingerprint in human
    assert "Peer keys" in human

    await manager.handle_message(msg(HotlinkClose(SID, "error")))
    await until(lambda: SID not in manager.inbound)
    doc = builder.build()
    assert doc["sessions"] == []
    (ended,) = doc["recent"]
    assert (ended["e2e"], ended["e2e_state"], ended["rx_bytes"]) == (True, "sealed", 130)
    assert ended["peer_key"] == alice_e2e.identity.fingerprint
    # The ended session alone still lists the peer's key for comparison.
    assert alice_e2e.identity.fingerprint in text_of(doc)
    await manager.close()


async def test_a_plaintext_session_is_marked_as_such(tmp_path: Path) -> None:
    builder, manager, wire = bob_with(tmp_path, context(tmp_path / "bob"))
    # An Open to whoever may read (no named peer): the opener cannot seal it.
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE)))
    await until(lambda: wire.payloads(HotlinkAccept))
    await manager.handle_message(msg(HotlinkData(SID, 1, TUNNEL, "", b"readable" * 4)))
    await until(lambda: builder.build()["sessions"][0]["rx_bytes"] == 32)
    (session,) = builder.build()["sessions"]
    assert (session["e2e"], session["e2e_state"], session["peer_key"]) == (False, "plaintext", "")
    human = text_of(builder.build())
    assert "plaintext" in human and "Peer keys" not in human
    await manager.close()


def test_a_session_that_e2e_closed_reads_as_failed() -> None:
    ended = {
        "sid": SID,
        "direction": "out",
        "peer": BOB,
        "e2e": False,
        "e2e_state": "pending",
        "peer_key": "",
        "reason": f"e2e: {BOB} presented key 1111 but 2222 is pinned for it",
    }
    doc = {"email": ALICE, "connection": {}, "e2e": {"mode": "on"}, "recent": [ended]}
    row = next(line for line in text_of(doc).splitlines() if BOB in line)
    assert "failed" in row and "pending" not in row


async def test_with_e2e_off_the_document_says_off_and_names_no_key(tmp_path: Path) -> None:
    builder, manager, wire = bob_with(tmp_path, None)
    await manager.handle_message(msg(HotlinkOpen(SID, TUNNEL, frm=ALICE, to=BOB)))
    await until(lambda: wire.payloads(HotlinkAccept))
    doc = builder.build()
    assert doc["e2e"] == {"mode": "off", "fingerprint": None}
    (session,) = doc["sessions"]
    assert (session["e2e"], session["e2e_state"], session["peer_key"]) == (False, "off", "")
    assert "e2e off: the relay can read every stream" in text_of(doc)
    await manager.close()


def test_an_older_clients_document_still_renders() -> None:
    doc = {
        "email": BOB,
        "hotlink": True,
        "connection": {"state": "connected"},
        "sessions": [{"sid": SID, "direction": "in", "peer": ALICE, "transport": "ws"}],
        "recent": [],
    }
    human = text_of(doc)
    assert "e2e unknown" in human and ALICE in human
