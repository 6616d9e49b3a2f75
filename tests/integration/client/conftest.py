"""Real relay + real client processes on loopback, wired as the reference TCP-proxy test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.client_proc import Tunnel, start_tunnel
from support.server_proc import ServerProcess, running_server_sync

# Debug logs carry the "hotlink recv data" lines some tests wait on.
DEBUG_ENV = {"SYFTBOX_HOTLINK_DEBUG": "1"}


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server_sync(tmp_path) as server:
        yield server


@pytest.fixture
def fresh_tunnel(relay: ServerProcess, tmp_path: Path) -> Iterator[Tunnel]:
    """A new relay and two new clients joined by the §9.1 tunnel."""
    tunnel = start_tunnel(relay.url, tmp_path, env=DEBUG_ENV)
    try:
        yield tunnel
    finally:
        tunnel.stop()


@pytest.fixture
def ws_tunnel(relay: ServerProcess, tmp_path: Path) -> Iterator[Tunnel]:
    """Like ``fresh_tunnel`` with P2P off: every frame takes the WebSocket path."""
    tunnel = start_tunnel(relay.url, tmp_path, env={**DEBUG_ENV, "SYFTBOX_HOTLINK_WEBRTC": "0"})
    try:
        yield tunnel
    finally:
        tunnel.stop()


@pytest.fixture(scope="module")
def shared_tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnel]:
    """One relay and tunnel for a whole module (each test uses new app connections)."""
    tmp_path = tmp_path_factory.mktemp("tunnel")
    with running_server_sync(tmp_path) as server:
        tunnel = start_tunnel(server.url, tmp_path, env=DEBUG_ENV)
        try:
            yield tunnel
        finally:
            tunnel.stop()
