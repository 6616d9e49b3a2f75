"""STUN and TURN through a real coturn on loopback (skipped when turnserver is missing).

coturn relays from 127.0.0.2 while listening on 127.0.0.1 (and on the 127.0.3.x aliases
that ``support.coturn`` hands out in turn): with one address for both, a relay-only
libdatachannel peer can reach the other side's relay straight from its TURN socket (every
permission is for 127.0.0.1), so the pair would not be a pure relay path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from aioice.stun import TransactionFailed
from aioice.turn import TurnClientUdpProtocol

from hotlink.protocol.ice import candidate_type
from hotlink.webrtc import Backend
from hotlink.webrtc.pair import PairEndpoint, connect_pair
from support.coturn import CoturnServer, coturn, require_turnserver


@pytest.fixture(scope="module")
def turn_static() -> Iterator[CoturnServer]:
    require_turnserver()
    with coturn(relay_ip="127.0.0.2") as server:
        yield server


@pytest.fixture(scope="module")
def turn_rest() -> Iterator[CoturnServer]:
    require_turnserver()
    with coturn(relay_ip="127.0.0.2", user=None, secret="hotlink-test-secret") as server:
        yield server


async def test_stun_through_coturn_yields_a_server_reflexive_candidate(
    backend: Backend, turn_static: CoturnServer
) -> None:
    events = PairEndpoint("gatherer")
    peer = backend.create_peer(turn_static.ice_servers("stun"), events)
    try:
        sdp = await peer.create_offer()
        await asyncio.wait_for(events.gathering_done.wait(), 10)
        trickled = [c.candidate for c in events.local_candidates if c is not None]
        in_sdp = [line for line in sdp.splitlines() if line.startswith("a=candidate:")]
        kinds = {candidate_type(c) for c in trickled + in_sdp}
        assert "srflx" in kinds, f"no srflx among {trickled + in_sdp}"
        assert "host" in kinds
    finally:
        await peer.close()


async def test_relay_only_peers_connect_through_turn(
    backends: tuple[Backend, Backend], turn_static: CoturnServer
) -> None:
    async with await connect_pair(
        *backends, ice_servers=turn_static.ice_servers("turn"), relay_only=True, open_timeout=20
    ) as pair:
        assert pair.offerer.selected_candidate_type() == "relay"
        assert pair.answerer.selected_candidate_type() == "relay"
        # Only relay candidates were offered to the other side.
        offered = [c.candidate for c in pair.offer_events.local_candidates if c is not None]
        offered += [line for line in pair.offer_sdp.splitlines() if "a=candidate:" in line]
        assert offered and {candidate_type(c) for c in offered} == {"relay"}
        payload = bytes(range(256)) * 200
        await pair.offerer.send(payload)
        assert await pair.answer_events.next_message() == payload
        await pair.answerer.send(b"back through the relay")
        assert await pair.offer_events.next_message() == b"back through the relay"


async def test_turn_rest_credentials_work(backend: Backend, turn_rest: CoturnServer) -> None:
    # The TURN REST username is "<expiry>:<user>": the colon must survive each library's
    # URL or config handling.
    async with await connect_pair(
        backend,
        backend,
        ice_servers=turn_rest.ice_servers("turn", name="alice@example.com"),
        relay_only=True,
        open_timeout=20,
    ) as pair:
        assert pair.offerer.selected_candidate_type() == "relay"
        await pair.offerer.send(b"rest")
        assert await pair.answer_events.next_message() == b"rest"


class _TurnClient(TurnClientUdpProtocol):
    """aioice's TURN client protocol, telling when its socket is gone."""

    def __init__(self, turn: CoturnServer) -> None:
        user, password = turn.credentials()
        super().__init__((turn.host, turn.port), user, password, 600, 500)
        self.lost = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.lost.set()


async def _allocate_from(
    port: int, turn: CoturnServer
) -> tuple[asyncio.BaseTransport, _TurnClient]:
    """A TURN allocation from 127.0.0.1:``port`` (0: any port)."""
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _TurnClient(turn),
        local_addr=("127.0.0.1", port),
        remote_addr=(turn.host, turn.port),
    )
    try:
        await protocol.connect()
    except Exception:
        transport.close()
        await asyncio.wait_for(protocol.lost.wait(), 5)  # free the port for the next try
        raise
    return transport, protocol


async def test_aiortc_allocates_again_when_coturn_holds_a_stale_allocation_for_its_port(
    turn_static: CoturnServer,
) -> None:
    # libdatachannel never deletes its allocations; when the kernel gives a later socket the
    # same port, coturn answers that socket's Allocate with 437. aiortc must move on.
    from hotlink.webrtc.aiortc_backend import _retry_on_mismatch

    stale, protocol = await _allocate_from(0, turn_static)
    port = stale.get_extra_info("sockname")[1]
    assert protocol.refresh_task is not None
    protocol.refresh_task.cancel()
    stale.close()  # gone without a Refresh(lifetime=0), as libdatachannel leaves it
    await asyncio.wait_for(protocol.lost.wait(), 5)  # the port is free again
    attempts: list[int] = []
    endpoints = []

    async def create(*args: object, **kwargs: object) -> object:
        # The first attempt lands on the stale port, as a reused ephemeral port would.
        attempts.append(port if not attempts else 0)
        endpoint = await _allocate_from(attempts[-1], turn_static)
        endpoints.append(endpoint)
        return endpoint

    with pytest.raises(TransactionFailed, match="437"):
        await _allocate_from(port, turn_static)
    try:
        _, protocol = await _retry_on_mismatch(create)()
        assert attempts == [port, 0]
        assert protocol.relayed_address is not None
        assert protocol.relayed_address[0] == "127.0.0.2"
    finally:
        for _, endpoint in endpoints:
            await endpoint.delete()


@pytest.mark.slow
async def test_relay_pairs_leak_no_fds_or_tasks(
    backend: Backend, turn_static: CoturnServer
) -> None:
    # TURN allocations own sockets and refresh timers; all must go with the peer.
    async def one() -> None:
        async with await connect_pair(
            backend,
            backend,
            ice_servers=turn_static.ice_servers("turn"),
            relay_only=True,
            open_timeout=20,
        ) as pair:
            await pair.offerer.send(b"x")
            assert await pair.answer_events.next_message() == b"x"

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    current = asyncio.current_task()
    await one()
    baseline_fds = fds()
    baseline_tasks = {t for t in asyncio.all_tasks() if t is not current}
    for _ in range(20):
        await one()
    for _ in range(200):  # teardown may finish just after close() returns
        tasks = {t for t in asyncio.all_tasks() if t is not current}
        if fds() <= baseline_fds and tasks <= baseline_tasks:
            break
        await asyncio.sleep(0.025)
    assert fds() <= baseline_fds
    assert {t for t in asyncio.all_tasks() if t is not current} <= baseline_tasks
