"""An active relay against sealed streams, with real processes: a man-in-the-middle in front
of the real relay (support/tamper_relay.py) flips bits, swaps the key exchange, drops it,
or cuts a stream's end, and the apps at both ends of the tunnel see only genuine bytes
followed by a reset, never forged bytes or a short clean EOF; the session closes loudly
with an ``e2e:`` reason. WebRTC is off, so every frame takes the relay.

The known limit is shown too: on first contact, with nothing pinned and no key listed, a
middleman goes unnoticed (trust on first use); only the peer key fingerprint each side shows
differs from the real one, which is what comparing fingerprints out of band catches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotlink.client.e2e.keystore import PINS_FILE, key_dir, load_identity
from hotlink.protocol.e2e.seal import SEAL_OVERHEAD, SEALED_ETAG
from support.client_proc import (
    ALICE,
    BOB,
    ClientProcess,
    Tunnel,
    dial,
    read_exactly,
    start_tunnel,
)
from support.server_proc import running_server_sync
from support.tamper_relay import (
    DropHellos,
    EraseStream,
    FlipBit,
    Middleman,
    Relayed,
    SessionRecord,
    SwapEphemeral,
    TamperRelay,
    TruncateTail,
    sealed_frames,
    tamper_relay_thread,
)

WS_ONLY = {"SYFTBOX_HOTLINK_WEBRTC": "0"}
# What sealing adds to a tunnel frame's payload (its etag is empty): the sealed header and
# the AEAD tag (SEAL_OVERHEAD also counts the wire etag).
FRAME_OVERHEAD = SEAL_OVERHEAD - len(SEALED_ETAG)
CANARY = b"secret-share-canary-7f3a91"
GUARD = 30.0  # failure guard for every wait


# ---------------------------------------------------------------- the rigs


@dataclass
class Rig:
    relay: TamperRelay
    tunnel: Tunnel


@contextlib.contextmanager
def rig_at(
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    alice_env: Mapping[str, str] | None = None,
    bob_env: Mapping[str, str] | None = None,
) -> Iterator[Rig]:
    """Real relay, the tamper relay in front of it, and the §9.1 tunnel through the tamper
    relay; WebSocket only, ``env`` for both clients, ``alice_env``/``bob_env`` on top."""
    with running_server_sync(tmp_path) as server, tamper_relay_thread(server.url) as relay:
        tunnel = start_tunnel(
            relay.url,
            tmp_path,
            env={**WS_ONLY, **(env or {})},
            alice_env=alice_env,
            bob_env=bob_env,
        )
        try:
            yield Rig(relay, tunnel)
        finally:
            tunnel.stop()


@pytest.fixture(scope="module")
def shared_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One rig for the tests that do not need first contact (each uses new connections)."""
    with rig_at(tmp_path_factory.mktemp("tamper")) as rig:
        yield rig


@pytest.fixture
def rig(shared_rig: Rig) -> Iterator[Rig]:
    shared_rig.relay.tamper = None
    yield shared_rig
    shared_rig.relay.tamper = None


@pytest.fixture
def fresh_rig(tmp_path: Path) -> Iterator[Rig]:
    """First contact: new identities, nothing pinned, nothing listed."""
    with rig_at(tmp_path) as rig:
        yield rig


@pytest.fixture
def plain_rig(tmp_path: Path) -> Iterator[Rig]:
    """Sealing off on both sides (SYFTBOX_HOTLINK_E2E=0): the comparison."""
    with rig_at(tmp_path, env={"SYFTBOX_HOTLINK_E2E": "0"}) as rig:
        yield rig


@pytest.fixture
def listed_rig(tmp_path: Path) -> Iterator[Rig]:
    """First contact, each side listing the other's real key (SYFTBOX_HOTLINK_E2E_PEERS),
    read from the identity key files made before the clients start."""
    alice = load_identity(tmp_path / "alice").fingerprint
    bob = load_identity(tmp_path / "bob").fingerprint
    with rig_at(
        tmp_path,
        alice_env={"SYFTBOX_HOTLINK_E2E_PEERS": f"{BOB}={bob}"},
        bob_env={"SYFTBOX_HOTLINK_E2E_PEERS": f"{ALICE}={alice}"},
    ) as rig:
        yield rig


@pytest.fixture
def required_rig(tmp_path: Path) -> Iterator[Rig]:
    """First contact, sealing required on both sides."""
    with rig_at(tmp_path, env={"SYFTBOX_HOTLINK_E2E": "required"}) as rig:
        yield rig


# ---------------------------------------------------------------- helpers


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def read_until_end(reader: asyncio.StreamReader, guard: float = GUARD) -> tuple[bytes, str]:
    """Everything the app reads, and how its connection ended: "eof" or "reset"."""
    data = bytearray()
    try:
        async with asyncio.timeout(guard):
            while chunk := await reader.read(64 * 1024):
                data += chunk
    except TimeoutError:
        raise  # a failure guard, not an end (TimeoutError is an OSError)
    except (ConnectionError, OSError):
        return bytes(data), "reset"
    return bytes(data), "eof"


async def close_app(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def dial_bob(t: Tunnel) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Bob's app connection, the proxy's newest (the writer of alice's next stream)."""
    conn = await dial(t.bob_port)
    await asyncio.sleep(0.3)  # the proxy adopts it before alice's first frame arrives
    return conn


async def write(writer: asyncio.StreamWriter, data: bytes, *, eof: bool = False) -> None:
    """Write as an app does; a reset meanwhile is the stream's end, asserted by the caller."""
    with contextlib.suppress(ConnectionError):
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()


async def poll[T](probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD
    while (found := await probe()) is None:
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return found


async def alice_session(relay: TamperRelay, since: int) -> SessionRecord:
    """The first session alice opened after record ``since``."""

    async def probe() -> SessionRecord | None:
        return next((s for s in relay.session_records(since) if s.opener == ALICE), None)

    return await poll(probe, "alice's session to go through the relay")


async def ended(client: ClientProcess, sid: str) -> str:
    """The close reason of session ``sid`` at ``client`` (its status document)."""

    async def probe() -> str | None:
        doc = await asyncio.to_thread(client.status)
        for entry in (doc or {}).get("recent", []):
            if entry.get("sid") == sid:
                return str(entry["reason"])
        return None

    return await poll(probe, f"session {sid[:8]} to end at {client.email}")


def assert_e2e_reason(reason: str, *words: str) -> None:
    """A loud end-to-end close: ``e2e: ...`` at the side that found it, ``closed by peer:
    e2e: ...`` at the side it told."""
    assert reason.startswith(("e2e:", "closed by peer: e2e:")), reason
    for word in words:
        assert word in reason, reason


def assert_canary_never_in_clear(relay: TamperRelay) -> None:
    """No frame any client sent through this relay so far carried the canary readable."""
    assert not any(CANARY in d.payload for d in relay.client_data())
    assert sealed_frames(relay.client_data())


def plaintext_bytes(frames: list[Relayed]) -> int:
    """What the app sent in these sealed tunnel frames (a sealed end carries nothing)."""
    assert sealed_frames(frames)
    return sum(len(f.payload) - FRAME_OVERHEAD for f in frames)


def real_fingerprint(client: ClientProcess) -> str:
    return load_identity(client.data_dir, create=False).fingerprint


def pinned(client: ClientProcess, peer: str) -> str | None:
    path = key_dir(client.data_dir) / PINS_FILE
    if not path.exists():
        return None
    peers: dict[str, str] = json.loads(path.read_text())["peers"]
    return peers.get(peer)


async def clean_stream(rig: Rig, bob: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """A stream alice→bob with nothing tampered (the relay's tamper is cleared) arrives
    whole with a clean EOF, sealed, on bob's connection ``bob``: so nothing else was ever
    written into that connection."""
    t, relay = rig.tunnel, rig.relay
    relay.tamper = None
    payload = os.urandom(100_000) + CANARY
    since = relay.session_count()
    _alice_r, alice_w = await dial(t.alice_port)
    try:
        await write(alice_w, payload, eof=True)
        got, end = await read_until_end(bob[0])
        assert (end, len(got), sha(got)) == ("eof", len(payload), sha(payload))
        session = await alice_session(relay, since)
        assert sealed_frames(relay.client_data(session.sid))
    finally:
        await close_app(alice_w)


async def pin_each_other(rig: Rig) -> None:
    """A clean session: each side has the other's real key pinned afterwards."""
    t = rig.tunnel
    bob = await dial_bob(t)
    try:
        await clean_stream(rig, bob)
    finally:
        await close_app(bob[1])
    assert pinned(t.alice, BOB) == real_fingerprint(t.bob)
    assert pinned(t.bob, ALICE) == real_fingerprint(t.alice)


async def refused_before_any_frame(rig: Rig, *words: str) -> SessionRecord:
    """Alice's app sends a canary stream under the rig's tamper: the session closes loudly
    at both ends before a single frame leaves alice, her app is reset, and bob's app
    connection then carries the next (clean) stream and nothing else."""
    t, relay = rig.tunnel, rig.relay
    tamper = relay.tamper
    since = relay.session_count()
    bob = await dial_bob(t)
    alice_r, alice_w = await dial(t.alice_port)
    try:
        await write(alice_w, CANARY * 1000)
        session = await alice_session(relay, since)
        for client in t.clients:
            assert_e2e_reason(await ended(client, session.sid), *words)
        _, end = await read_until_end(alice_r)
        assert end == "reset", "alice's app must hear that its stream was refused"
        # No HotlinkData of the session left alice, so none reached the relay or bob.
        assert relay.client_data(session.sid) == []
        assert session.arrived == session.forwarded == []
        assert_canary_never_in_clear(relay)
        # Bob's app got nothing of it: the next stream is all its connection ever carries.
        relay.tamper = None
        await clean_stream(rig, bob)
        relay.tamper = tamper
        return session
    finally:
        await close_app(alice_w)
        await close_app(bob[1])


# ---------------------------------------------------------------- 1. a flipped bit


async def test_flipped_bit_resets_the_receiver_after_genuine_bytes_and_tells_the_sender(
    rig: Rig,
) -> None:
    t, relay = rig.tunnel, rig.relay
    part1, part2 = os.urandom(200_000), os.urandom(400_000)
    since = relay.session_count()
    bob_r, bob_w = await dial_bob(t)
    alice_r, alice_w = await dial(t.alice_port)
    try:
        # A first part arrives untouched (bob's app is now the stream's writer) ...
        await write(alice_w, part1)
        assert await read_exactly(bob_r, len(part1), GUARD) == part1
        session = await alice_session(relay, since)
        before = len(session.arrived)
        assert plaintext_bytes(session.arrived) == len(part1)
        # ... then the relay flips a bit in the second frame of the second part.
        flip = FlipBit(session.sid, nth=before + 2)
        relay.tamper = flip
        await write(alice_w, part2)  # no EOF: alice's session is open when bob rejects
        got, end = await read_until_end(bob_r)

        assert [f.seq for f in flip.flipped] == [session.arrived[before + 1].seq]
        genuine = plaintext_bytes(session.arrived[before : before + 1])
        assert end == "reset", f"bob's app saw a clean EOF after {len(got)} bytes"
        # Only genuine bytes before the forged frame: nothing of it, nothing after it.
        assert len(got) <= genuine
        assert sha(got) == sha(part2[: len(got)])

        bob_reason = await ended(t.bob, session.sid)
        assert_e2e_reason(bob_reason, "failed authentication")
        assert bob_reason.startswith("e2e:")
        # The sender is told: its session closes, its app is reset.
        assert_e2e_reason(await ended(t.alice, session.sid), "failed authentication")
        _, alice_end = await read_until_end(alice_r)
        assert alice_end == "reset"
    finally:
        await close_app(alice_w)
        await close_app(bob_w)


async def test_without_e2e_the_same_flip_reaches_the_app(plain_rig: Rig) -> None:
    """The attack is real: with sealing off, the flipped bit is in the app's bytes and the
    stream ends with a clean EOF, as if nothing happened."""
    t, relay = plain_rig.tunnel, plain_rig.relay
    part1, part2 = os.urandom(200_000), os.urandom(400_000)
    since = relay.session_count()
    bob_r, bob_w = await dial_bob(t)
    _alice_r, alice_w = await dial(t.alice_port)
    try:
        await write(alice_w, part1)
        assert await read_exactly(bob_r, len(part1), GUARD) == part1
        session = await alice_session(relay, since)
        before = len(session.arrived)
        flip = FlipBit(session.sid, nth=before + 2)
        relay.tamper = flip
        await write(alice_w, part2, eof=True)
        got, end = await read_until_end(bob_r)
        assert len(flip.flipped) == 1
        assert end == "eof" and len(got) == len(part2)
        differ = [i for i, (a, b) in enumerate(zip(got, part2, strict=True)) if a != b]
        assert len(differ) == 1, "exactly the flipped byte differs"
        assert not sealed_frames(relay.client_data(session.sid))
    finally:
        await close_app(alice_w)
        await close_app(bob_w)


# ---------------------------------------------------------------- 2. a middleman


async def test_middleman_is_refused_once_the_keys_are_pinned(rig: Rig) -> None:
    await pin_each_other(rig)
    middleman = Middleman(opener=ALICE)
    rig.relay.tamper = middleman
    session = await refused_before_any_frame(rig, "pinned")
    assert middleman.replaced >= 1
    assert any(h.endswith("replaced") for h in session.hellos)
    # The refusal changed no pin.
    assert pinned(rig.tunnel.alice, BOB) == real_fingerprint(rig.tunnel.bob)
    assert pinned(rig.tunnel.bob, ALICE) == real_fingerprint(rig.tunnel.alice)


async def test_middleman_is_refused_on_first_contact_when_the_keys_are_listed(
    listed_rig: Rig,
) -> None:
    middleman = Middleman(opener=ALICE)
    listed_rig.relay.tamper = middleman
    # The follow-up stream in refused_before_any_frame is sealed with the listed keys.
    await refused_before_any_frame(listed_rig, "e2e_peers")
    assert middleman.replaced >= 1


async def test_ephemeral_key_swapped_without_a_signature_is_refused(rig: Rig) -> None:
    swap = SwapEphemeral(opener=ALICE)
    rig.relay.tamper = swap
    await refused_before_any_frame(rig, "signature does not verify")
    assert swap.swapped >= 1


async def test_first_contact_middleman_goes_unnoticed_but_shows_its_own_fingerprint(
    fresh_rig: Rig,
) -> None:
    """The known limit of trust on first use: a relay in the middle from the very first
    session, with no key listed, reads the stream and neither side notices. What betrays
    it is the peer key fingerprint each side shows (telemetry, pins): the relay's, not the
    peer's, so comparing fingerprints out of band (or listing them) catches it."""
    t, relay = fresh_rig.tunnel, fresh_rig.relay
    middleman = Middleman(opener=ALICE)
    relay.tamper = middleman
    real_alice, real_bob = real_fingerprint(t.alice), real_fingerprint(t.bob)
    shown_alice = middleman.identity_for(ALICE).fingerprint
    shown_bob = middleman.identity_for(BOB).fingerprint
    payload = os.urandom(150_000) + CANARY + os.urandom(150_000)
    since = relay.session_count()
    bob_r, bob_w = await dial_bob(t)
    _alice_r, alice_w = await dial(t.alice_port)
    try:
        await write(alice_w, payload[:1000])
        assert await read_exactly(bob_r, 1000, GUARD) == payload[:1000]
        session = await alice_session(relay, since)
        sid8 = session.sid[:8]

        def row(doc: dict[str, Any], side: str) -> dict[str, Any] | None:
            return next((r for r in doc["live"][side] if r["sid"] == sid8), None)

        at_bob = await t.bob.await_telemetry(
            lambda d: bool((row(d, "sessions_in") or {}).get("e2e"))
        )
        at_alice = await t.alice.await_telemetry(
            lambda d: bool((row(d, "sessions_out") or {}).get("e2e"))
        )
        # Both sides say "sealed", each with the relay's key for its peer.
        bob_row, alice_row = row(at_bob, "sessions_in"), row(at_alice, "sessions_out")
        assert bob_row is not None and alice_row is not None
        assert bob_row["peer_key"] == shown_alice != real_alice
        assert alice_row["peer_key"] == shown_bob != real_bob

        await write(alice_w, payload[1000:], eof=True)
        got, end = await read_until_end(bob_r)
        assert (end, sha(payload[:1000] + got)) == ("eof", sha(payload))
        # The relay read every byte, canary included, though every hop was sealed.
        assert bytes(middleman.read[session.sid]) == payload
        assert_canary_never_in_clear(relay)
        assert sealed_frames(session.forwarded)
        # And it is the relay's keys that are pinned now.
        assert pinned(t.bob, ALICE) == shown_alice
        assert pinned(t.alice, BOB) == shown_bob
        assert await ended(t.bob, session.sid) == "eof"
    finally:
        await close_app(alice_w)
        await close_app(bob_w)


# ---------------------------------------------------------------- 3. a downgrade


async def test_dropped_key_exchange_between_pinned_peers_is_refused(rig: Rig) -> None:
    await pin_each_other(rig)
    drop = DropHellos(opener=ALICE)
    rig.relay.tamper = drop
    session = await refused_before_any_frame(rig, "sealed before")
    assert drop.dropped >= 1
    assert all(h.endswith("dropped") for h in session.hellos)


async def test_dropped_key_exchange_is_refused_on_first_contact_when_required(
    required_rig: Rig,
) -> None:
    drop = DropHellos(opener=ALICE)
    required_rig.relay.tamper = drop
    await refused_before_any_frame(required_rig, "required")
    assert drop.dropped >= 1


# ---------------------------------------------------------------- 4. a cut stream


@pytest.mark.parametrize("drop", [1, 4], ids=["sealed-end", "tail-and-sealed-end"])
async def test_forged_early_eof_resets_the_receiver(rig: Rig, drop: int) -> None:
    """The relay keeps the stream's last ``drop`` frames (the last is the sealed end) and
    forwards Close ``eof:K`` for the last frame it passed: the app gets genuine bytes, then
    a reset. Even when only the sealed end is missing and every data byte arrived."""
    t, relay = rig.tunnel, rig.relay
    cut = TruncateTail(drop, opener=ALICE)
    relay.tamper = cut
    payload = os.urandom(600_000)
    since = relay.session_count()
    bob_r, bob_w = await dial_bob(t)
    _alice_r, alice_w = await dial(t.alice_port)
    try:
        await write(alice_w, payload, eof=True)
        got, end = await read_until_end(bob_r)
        session = await alice_session(relay, since)
        assert end == "reset", f"bob's app saw a clean EOF after {len(got)} of {len(payload)}"
        assert sha(got) == sha(payload[: len(got)])
        dropped = cut.dropped[session.sid]
        assert len(dropped) == drop and len(dropped[-1].payload) == FRAME_OVERHEAD  # the end
        assert cut.forged[session.sid] == f"eof:{session.forwarded[-1].seq}"
        assert len(got) <= plaintext_bytes(session.forwarded)
        bob_reason = await ended(t.bob, session.sid)
        assert bob_reason.startswith("e2e:")
        assert "not the sender's sealed end" in bob_reason
    finally:
        await close_app(alice_w)
        await close_app(bob_w)


async def test_answer_cut_to_nothing_between_pinned_peers_resets_the_receiver(rig: Rig) -> None:
    """Bob's app sends a request and half-closes; alice's answer is sealed, but the relay
    keeps alice's key exchange from bob, drops every frame and forwards Close ``eof:0``.
    Bob has alice pinned, so a stream from her that ends without a key exchange is a
    downgrade: his app must be reset, not told the answer was empty."""
    await pin_each_other(rig)
    t, relay = rig.tunnel, rig.relay
    erase = EraseStream(opener=ALICE)
    relay.tamper = erase
    request, answer = os.urandom(10_000), os.urandom(300_000) + CANARY
    since = relay.session_count()
    bob_r, bob_w = await dial_bob(t)
    alice_r, alice_w = await dial(t.alice_port)
    try:
        await write(bob_w, request, eof=True)
        got_request, request_end = await read_until_end(alice_r)
        assert (request_end, sha(got_request)) == ("eof", sha(request))
        await write(alice_w, answer, eof=True)
        session = await alice_session(relay, since)
        assert_e2e_reason(await ended(t.bob, session.sid), "without a key exchange")
        assert erase.forged.get(session.sid) == "eof:0"
        assert sealed_frames(erase.dropped[session.sid])  # alice did seal her answer
        # The session has ended at bob: whatever his app is told was said before that, so
        # the guard here is short (a failure guard: a reset needs no waiting).
        got, end = await read_until_end(bob_r, guard=5.0)
        assert (end, len(got)) == ("reset", 0), f"bob's app saw {end} after {len(got)} bytes"
    finally:
        await close_app(alice_w)
        await close_app(bob_w)
