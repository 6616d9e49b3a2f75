"""Real relay + real client processes with WebRTC on: the P2P path of the hotlink tunnel.

Every client gets ``SYFTBOX_HOTLINK_ICE_SERVERS`` explicitly (``none``: host candidates only,
enough on loopback; or a local coturn), never a public STUN server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotlink.webrtc import BackendUnavailableError, load_backend
from support.client_proc import ClientProcess, Tunnel, start_tunnel
from support.server_proc import ServerProcess, running_server_sync

# Debug logs carry the per-frame send/receive lines; host candidates only on loopback.
P2P_ENV = {"SYFTBOX_HOTLINK_DEBUG": "1", "SYFTBOX_HOTLINK_ICE_SERVERS": "none"}
# For tests that look at the data channel: a stream's first frames wait for it only up to the
# grace (1.5 s by default). On a loaded machine (the whole suite on 2 cores) opening it may
# take longer, and then a stream of a few MiB goes over the WebSocket entirely. Not in
# P2P_ENV: tests of the fallback itself would wait this long for a channel that never opens.
WAIT_FOR_CHANNEL = {"SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS": "10000"}
CHANNEL_OPEN = (
    r"hotlink webrtc data channel open \((offerer|answerer)\): session=\S+ transport=(\S+)"
)


def backend_env(name: str) -> dict[str, str]:
    return {"SYFTBOX_HOTLINK_WEBRTC_BACKEND": name}


def require_backend(name: str) -> None:
    try:
        load_backend(name)
    except BackendUnavailableError as exc:
        pytest.skip(f"{name} backend not available here: {exc}")


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server_sync(tmp_path) as server:
        yield server


@contextlib.asynccontextmanager
async def tunnel_between(
    server_url: str,
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    alice_env: Mapping[str, str] | None = None,
    bob_env: Mapping[str, str] | None = None,
    alice_script: Path | None = None,
    bob_script: Path | None = None,
) -> AsyncIterator[Tunnel]:
    """The §9.1 tunnel with WebRTC on (``env`` on top of :data:`P2P_ENV`); a ``*_script``
    runs that client through another program (see ``support.client_proc.spawn_client``)."""
    tunnel = await asyncio.to_thread(
        start_tunnel,
        server_url,
        tmp_path,
        env={**P2P_ENV, **(env or {})},
        alice_env=alice_env,
        bob_env=bob_env,
        alice_script=alice_script,
        bob_script=bob_script,
    )
    try:
        yield tunnel
    finally:
        await asyncio.to_thread(tunnel.stop)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@dataclass
class Transfer:
    size: int
    digest_sent: str
    digest_got: str
    received: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.size / (1024 * 1024) / max(self.seconds, 1e-9)


async def stream_through(
    sender: asyncio.StreamWriter,
    receiver: asyncio.StreamReader,
    size: int,
    *,
    block: int = 1024 * 1024,
    timeout: float = 120.0,
    on_progress: Any = None,
    eof: bool = True,
    read_delay: float = 0.0,
) -> Transfer:
    """Send ``size`` pseudo-random bytes (every block differs) and hash what arrives.

    With ``eof`` the sender half-closes and the receiver reads to EOF (so a surplus byte
    would show); without, the receiver reads exactly ``size`` bytes and both stay open (a
    two-way test then ends each direction's stream when it closes the connections). The
    receiving app starts reading only after ``read_delay`` seconds.
    """
    base = os.urandom(block)
    sent = hashlib.sha256()
    started = time.monotonic()

    async def send() -> None:
        for i in range(size // block):
            data = i.to_bytes(4, "big") + base[4:]
            sent.update(data)
            sender.write(data)
            await sender.drain()
        if eof:
            sender.write_eof()

    async def receive() -> tuple[int, str]:
        got = hashlib.sha256()
        total = 0
        await asyncio.sleep(read_delay)
        async with asyncio.timeout(timeout):
            while eof or total < size:
                data = await receiver.read(1024 * 1024 if eof else min(1024 * 1024, size - total))
                if not data:
                    break
                got.update(data)
                total += len(data)
                if on_progress is not None:
                    await on_progress(total)
        return total, got.hexdigest()

    _, (total, digest) = await asyncio.gather(send(), receive())
    return Transfer(size, sent.hexdigest(), digest, total, time.monotonic() - started)


def channel_opens(client: ClientProcess, since: int = 0) -> list[tuple[str, str]]:
    """(role, transport) of every data channel that opened in ``client``'s log."""
    import re

    return re.findall(CHANNEL_OPEN, client.log_text()[since:])


def negotiation_ms(client: ClientProcess) -> list[float]:
    """Accept (offerer) or offer received (answerer) to channel open, from the log."""
    import re

    return [float(m) for m in re.findall(r"data channel open .* after (\d+) ms", client.log_text())]
