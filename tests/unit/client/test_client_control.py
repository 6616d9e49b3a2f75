"""The control socket: where it is, who may use it, what it serves, and what it leaves alone."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from hotlink.client.control import ControlServer
from hotlink.client.control_client import (
    MAX_SOCKET_PATH,
    ControlUnavailable,
    control_socket_path,
    fetch_metrics,
    fetch_status,
    fetch_status_async,
    is_ready,
    pointer_path,
    primary_socket_path,
    wait_for_status,
    wait_for_status_async,
)
from hotlink.client.status import StatusBuilder
from hotlink.client.telemetry import Telemetry
from hotlink.settings import ClientSettings

EMAIL = "carol@example.com"


@dataclass
class FakeConnection:
    connected: bool = False
    connects: int = 0
    encoding: str = "json"


def server_for(data_dir: Path, email: str = EMAIL) -> ControlServer:
    builder = StatusBuilder(
        settings=ClientSettings(email=email, data_dir=str(data_dir), server_url="http://relay"),
        connection=FakeConnection(),
        telemetry=Telemetry(None),
    )
    path = control_socket_path(data_dir, email)
    pointer = (
        pointer_path(data_dir, email) if path != primary_socket_path(data_dir, email) else None
    )
    return ControlServer(builder, path, pointer)


async def test_serves_status_and_metrics_to_its_owner_only(tmp_path: Path) -> None:
    server = server_for(tmp_path)
    assert server.path == tmp_path / ".hotlink" / f"{EMAIL}.sock"
    assert await server.start()
    try:
        st = os.lstat(server.path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.lstat(server.path.parent).st_mode) == 0o700
        doc = await fetch_status_async(server.path)
        assert doc["email"] == EMAIL and doc["connection"]["state"] == "disconnected"
        assert not is_ready(doc)
        doc = await asyncio.to_thread(fetch_status, server.path)
        assert doc["pid"] == os.getpid()
        text = await asyncio.to_thread(fetch_metrics, server.path)
        assert "hotlink_client_connected 0.0" in text
    finally:
        await server.close()
    assert not server.path.exists()
    with pytest.raises(ControlUnavailable, match="no hotlink client is running"):
        await fetch_status_async(server.path)
    with pytest.raises(ControlUnavailable, match="no hotlink client is running"):
        fetch_status(server.path)


async def test_an_open_folder_is_made_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / ".hotlink"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    server = server_for(tmp_path)
    assert await server.start()
    await server.close()
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = control_socket_path(tmp_path, EMAIL)
    path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a daemon that was killed
    server = server_for(tmp_path)
    assert await server.start()
    try:
        assert (await fetch_status_async(path))["email"] == EMAIL
    finally:
        await server.close()


async def test_a_live_socket_or_a_file_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = server_for(tmp_path)
    assert await first.start()
    try:
        second = server_for(tmp_path)
        assert not await second.start()
        await second.close()
        assert "another client already serves" in caplog.text
        assert (await fetch_status_async(first.path))["email"] == EMAIL  # still the first's
    finally:
        await first.close()
    first.path.write_text("not a socket")
    third = server_for(tmp_path)
    assert not await third.start()
    await third.close()
    assert first.path.read_text() == "not a socket"
    assert "is not a socket" in caplog.text


async def test_a_path_too_long_for_a_socket_falls_back_to_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(primary_socket_path(deep, EMAIL))) > MAX_SOCKET_PATH
    path = control_socket_path(deep, EMAIL)
    assert len(os.fsencode(str(path))) <= MAX_SOCKET_PATH
    assert path.parent.name == f"syftbox-hotlink-{os.getuid()}"
    assert control_socket_path(deep, "dave@example.com") != path  # one per email
    server = server_for(deep)
    assert server.path == path
    assert await server.start()
    try:
        pointer = pointer_path(deep, EMAIL)
        assert pointer.read_text().strip() == str(path)
        assert stat.S_IMODE(os.lstat(path.parent).st_mode) == 0o700
        assert (await fetch_status_async(path))["email"] == EMAIL
    finally:
        await server.close()
    assert not path.exists() and not pointer_path(deep, EMAIL).exists()


async def test_waiting_for_a_condition(tmp_path: Path) -> None:
    server = server_for(tmp_path)
    path = server.path

    async def start_later() -> None:
        await asyncio.sleep(0.2)
        await server.start()

    starter = asyncio.create_task(start_later())
    try:
        # The socket does not exist yet: waiting covers that.
        doc = await wait_for_status_async(path, lambda d: d["email"] == EMAIL, 10)
        assert doc["schema"] == 1
        with pytest.raises(TimeoutError, match="condition not met"):
            await wait_for_status_async(path, is_ready, 0.3)
        with pytest.raises(ControlUnavailable, match="exited"):
            await asyncio.to_thread(wait_for_status, path, is_ready, 10, alive=lambda: False)
    finally:
        await starter
        await server.close()
