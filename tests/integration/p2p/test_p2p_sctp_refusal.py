"""A peer whose ICE and DTLS connect but whose SCTP refuses the association (as pion releases
before 2024 do with libdatachannel): one WARNING says what failed and what to try, instead of
only "p2p not ready", and the stream still arrives whole over the WebSocket."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from support.client_proc import (
    SCTP_REFUSING_CLIENT,
    ClientProcess,
    dial,
    read_exactly,
    read_to_eof,
)
from support.server_proc import ServerProcess

from .conftest import close_writer, require_backend, tunnel_between

pytestmark = pytest.mark.slow

WARNING = r"WARNING hotlink\.webrtc: hotlink webrtc: session=\S+ ICE and DTLS connected with "
ADVICE = "SYFTBOX_HOTLINK_WEBRTC_BACKEND=aiortc"


@pytest.mark.parametrize("mode", ["abort", "drop"])
async def test_sctp_refusal_is_named_once_and_the_stream_goes_over_the_websocket(
    relay: ServerProcess, tmp_path: Path, mode: str
) -> None:
    require_backend("libdatachannel")
    require_backend("aiortc")
    payload = bytes(range(256)) * 4096  # 1 MiB
    async with tunnel_between(
        relay.url,
        tmp_path,
        env={"SYFTBOX_HOTLINK_WEBRTC_OPEN_TIMEOUT_MS": "4000"},
        alice_env={"SYFTBOX_HOTLINK_WEBRTC_BACKEND": "libdatachannel"},
        bob_env={"HOTLINK_TEST_SCTP_REFUSAL": mode},
        bob_script=SCTP_REFUSING_CLIENT,
    ) as t:
        bob_r, bob_w = await dial(t.bob_port)
        await asyncio.sleep(0.3)
        _, alice_w = await dial(t.alice_port)
        try:
            # The stream stays open past the channel's deadline (4 s), so it is the
            # negotiation that gives up, not the end of the stream.
            alice_w.write(payload)
            await alice_w.drain()
            assert await read_exactly(bob_r, len(payload), timeout=60) == payload
            warned = await first_warning(t.clients)
            alice_w.write_eof()
            assert await read_to_eof(bob_r, timeout=60) == b""
        finally:
            await close_writer(alice_w)
            await close_writer(bob_w)
        await asyncio.sleep(1.0)
        assert ADVICE in warned.log_text()
        for client in t.clients:
            # Once per session, never repeated.
            ids = re.findall(
                r"hotlink webrtc: session=(\S+) ICE and DTLS connected", client.log_text()
            )
            assert len(ids) == len(set(ids))


async def first_warning(clients: tuple[ClientProcess, ...]) -> ClientProcess:
    """The client that logged the SCTP warning first (failure guard: 30 s)."""
    waits = {asyncio.create_task(c.await_log(WARNING, timeout=30)): c for c in clients}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is None:
            return waits[task]
    raise next(iter(done)).exception()  # type: ignore[misc]
