"""Start the real client daemon (``python -m hotlink client``) as a subprocess.

A thin layer over :mod:`hotlink.lab` (:mod:`~hotlink.lab.processes` starts, waits on and
stops the process, :mod:`~hotlink.lab.trees` writes the trees); this module keeps the tests'
names and the tests' environment.

    with running_client(srv.url, "alice@example.com", tmp_path / "alice") as alice:
        alice.wait_for_log(r"tcp proxy: starting")        # sync
        await alice.await_log(r"acls published", since=mark)   # async tests
        alice.telemetry()                                 # the parsed telemetry JSON

``start_client`` returns once the client is connected and finished its first ACL publish
round, so the server already has every ACL file that was in the datasite when the client
started; ``client.wait_tunnel(key)`` (``await_tunnel``) once the proxy of a tunnel listens.
Both ask the daemon's status endpoint (``client.status()``, the control socket), and read
the log only while that does not answer. Log lines worth waiting on:

* ``hotlink enabled: ...``                    (start-up, with SYFTBOX_HOTLINK=1)
* ``connected to <server> as <email>``        (each (re)connect)
* ``acls published: N of M files``            (after each connect's first publish round)
* ``acl published <datasite-relative path>``  (each ACL file the server acknowledged)
* ``tcp proxy: starting <ip>:<port> channel=<canonical key> peer=<email>``
* ``hotlink session <sid8>… in|out <from>→<to> open|accepted|closed(<reason>)``
* ``ipc: listening for <folder> at <address>``

The environment is the test's own plus ``SYFTBOX_HOTLINK=1``, ``SYFTBOX_HOTLINK_ICE_SERVERS=
none`` (never a public STUN server), debounce/staging knobs at 0, and ``env`` on top; pass
``hotlink=False`` to leave SYFTBOX_HOTLINK unset. The log (stdout + stderr) goes to
``<data_dir>/client.log``. ``stop()`` sends SIGTERM to the pid and SIGKILL after a timeout.

Helpers for test trees: :func:`write_acl`, :func:`acl_text`, :func:`write_default_acls`,
:func:`write_tcp_channel`, :func:`write_reference_tunnel` (the §9.1 layout), :func:`free_port`.

The reference tunnel in one call (markers + ACLs in both trees, both clients started, both
proxies listening)::

    tunnel = start_tunnel(srv.url, tmp_path, env={"SYFTBOX_HOTLINK_DEBUG": "1"})
    bob_r, bob_w = await dial(tunnel.bob_port)        # retries every 250 ms, like §9.1
    alice_r, alice_w = await dial(tunnel.alice_port)
    alice_w.write(reference_chunk(0)); check_reference_chunks(await read_exactly(bob_r, 4096), 1)
    doc = await await_telemetry(tunnel.alice, lambda d: d["tx_bytes"] > 0)
    tunnel.stop()

``script=`` starts the client through another Python file that takes the same arguments as
``hotlink client``, e.g. :data:`SCTP_REFUSING_CLIENT` (an aiortc client whose SCTP refuses
every association, see ``support/sctp_refusing_client.py``).

A newer app connection to a proxy port supersedes (closes) older ones, and an app that
closes its socket ends its stream with a clean EOF at the peer's app.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotlink.lab.processes import (
    ACLS_PUBLISHED,
    CONNECTED,
    PROXY_STARTING,
    ClientProc,
    child_env,
    client_settings,
    launch_client,
    spawn,
)
from hotlink.lab.trees import (
    Channel,
    acl_text,
    free_port,
    write_acl,
    write_channel_tree,
    write_default_acls,
    write_tcp_channel,
)

__all__ = [
    "ACLS_PUBLISHED",
    "ALICE",
    "BOB",
    "CONNECTED",
    "REFERENCE_CHUNK",
    "SCTP_REFUSING_CLIENT",
    "ClientProcess",
    "Tunnel",
    "acl_text",
    "await_telemetry",
    "check_reference_chunks",
    "client_env",
    "dial",
    "free_port",
    "read_exactly",
    "read_to_eof",
    "reference_chunk",
    "running_client",
    "running_client_async",
    "spawn_client",
    "start_client",
    "start_tunnel",
    "write_acl",
    "write_default_acls",
    "write_reference_tunnel",
    "write_tcp_channel",
]

ClientProcess = ClientProc

# The client on aiortc with SCTP refused (``script=`` of spawn_client/start_client).
SCTP_REFUSING_CLIENT = Path(__file__).with_name("sctp_refusing_client.py")


def client_env(
    env: Mapping[str, str | None] | None = None, *, hotlink: bool = True
) -> dict[str, str]:
    """The test's environment, ICE ``none`` (never a public STUN server), the local client
    settings (:func:`hotlink.lab.processes.client_settings`), then ``env`` (None unsets)."""
    return child_env({"SYFTBOX_HOTLINK_ICE_SERVERS": "none"}, client_settings(hotlink), env)


def spawn_client(
    server_url: str,
    email: str,
    data_dir: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    args: Sequence[str] = (),
    hotlink: bool = True,
    script: Path | None = None,
) -> ClientProcess:
    """Start the process without waiting for anything. ``script``: run ``python <script>``
    with the ``hotlink client`` arguments instead of ``python -m hotlink client``."""
    if script is not None:
        return _launch_script(
            script, email, server_url, data_dir, client_env(env, hotlink=hotlink), args
        )
    return launch_client(
        email,
        server_url,
        data_dir,
        env=client_env(env, hotlink=hotlink),
        args=args,
        # Async tests start clients in asyncio.to_thread: a pool thread that may end first.
        parent_death=False,
    )


def start_client(
    server_url: str,
    email: str,
    data_dir: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    args: Sequence[str] = (),
    hotlink: bool = True,
    timeout: float = 30.0,
    script: Path | None = None,
) -> ClientProcess:
    """Start a client and wait until it is connected and its ACLs are published."""
    client = spawn_client(
        server_url, email, data_dir, env=env, args=args, hotlink=hotlink, script=script
    )
    try:
        return client.wait_ready(timeout)
    except BaseException:
        client.stop()
        raise


def _launch_script(
    script: Path,
    email: str,
    server_url: str,
    data_dir: Path,
    env: Mapping[str, str],
    args: Sequence[str],
) -> ClientProcess:
    """:func:`hotlink.lab.processes.launch_client` with ``python <script>`` as the program."""
    (data_dir / "datasites" / email).mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, str(script),
        "--server", server_url, "--email", email, "--data-dir", str(data_dir), *args,
    ]  # fmt: skip
    log_path = data_dir / "client.log"
    # As spawn_client: async tests start clients from a pool thread that may end first.
    proc = spawn(argv, env=env, log_path=log_path, parent_death=False)
    return ClientProc(
        email, argv, log_path, proc, email=email, data_dir=data_dir, server_url=server_url
    )


@contextlib.contextmanager
def running_client(
    server_url: str, email: str, data_dir: Path, **kwargs: Any
) -> Iterator[ClientProcess]:
    client = start_client(server_url, email, data_dir, **kwargs)
    try:
        yield client
    finally:
        client.stop()


@contextlib.asynccontextmanager
async def running_client_async(
    server_url: str, email: str, data_dir: Path, **kwargs: Any
) -> AsyncIterator[ClientProcess]:
    client = await asyncio.to_thread(start_client, server_url, email, data_dir, **kwargs)
    try:
        yield client
    finally:
        await asyncio.to_thread(client.stop)


# ---------------------------------------------------------------- the reference tunnel test

ALICE = "alice@example.com"
BOB = "bob@example.com"
# The §9.1 channel is <flow>/run1/_mpc/0_to_1, alice party 0 and bob party 1.
TUNNEL_FLOW = "shared/flows/tcp-test"
# Each client's proxy for the tunnel listens (the canonical key is in alice's datasite).
TUNNEL_PROXY_STARTING = PROXY_STARTING + re.escape(ALICE)
REFERENCE_CHUNK = 4096
# The reference test writes 20 chunks (81,920 bytes) each way.
REFERENCE_CHUNKS = 20
REFERENCE_TOTAL = REFERENCE_CHUNKS * REFERENCE_CHUNK


def reference_channel(ports: Mapping[str, int]) -> Channel:
    """The §9.1 channel between alice (party 0) and bob (party 1)."""
    return Channel(ALICE, BOB, 0, 1, dict(ports), flow=TUNNEL_FLOW)


def write_reference_tunnel(data_dirs: Mapping[str, Path], ports: Mapping[str, int]) -> None:
    """PROTOCOL.md §9.1: for each client (``email -> data dir``), default ACLs for its own
    datasite, and the channel folder (marker + ACLs) under both parties' datasite folders."""
    channel = reference_channel(ports)
    for email, data_dir in data_dirs.items():
        datasites = data_dir / "datasites"
        write_default_acls(datasites / email)
        write_channel_tree(datasites, channel)


def reference_chunk(i: int) -> bytes:
    """Chunk ``i`` of the reference test: ``i`` as big-endian u32, then ``i & 0xFF`` fill."""
    return i.to_bytes(4, "big") + bytes([i & 0xFF]) * (REFERENCE_CHUNK - 4)


async def send_reference_chunks(
    writer: asyncio.StreamWriter, count: int = REFERENCE_CHUNKS
) -> None:
    """Write chunks 0..count-1 of the reference test, draining after each (§9.1)."""
    for i in range(count):
        writer.write(reference_chunk(i))
        await writer.drain()


def check_reference_chunks(data: bytes, count: int) -> None:
    """Assert ``data`` is exactly chunks 0..count-1, in order, byte for byte."""
    size = REFERENCE_CHUNK
    assert len(data) == count * size, f"expected {count * size} bytes, got {len(data)}"
    for pos in range(count):
        block = data[pos * size : (pos + 1) * size]
        index = int.from_bytes(block[:4], "big")
        assert index == pos, f"expected index {pos}, got {index} (out of order)"
        assert block[4:] == bytes([pos & 0xFF]) * (size - 4), f"chunk {pos} fill is corrupt"


async def dial(
    port: int, timeout: float = 30.0, host: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a proxy port, retrying every 250 ms with a 1 s dial timeout (§9.1)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            async with asyncio.timeout(1.0):
                return await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.25)


async def read_exactly(reader: asyncio.StreamReader, n: int, timeout: float = 60.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.readexactly(n)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 60.0) -> bytes:
    """Everything until the peer's EOF (raises TimeoutError as a failure guard)."""
    async with asyncio.timeout(timeout):
        return await reader.read()


async def await_telemetry(
    client: ClientProcess, ok: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    """The first telemetry document for which ``ok(doc)`` holds (written at least every 3 s)."""
    return await client.await_telemetry(ok, timeout)


@dataclass
class Tunnel:
    """Two clients joined by the reference tunnel; apps dial ``alice_port`` / ``bob_port``."""

    alice: ClientProcess
    bob: ClientProcess
    alice_port: int
    bob_port: int

    @property
    def clients(self) -> tuple[ClientProcess, ClientProcess]:
        return (self.alice, self.bob)

    def stop(self) -> None:
        for client in self.clients:
            client.stop()


def start_tunnel(
    server_url: str,
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    alice_env: Mapping[str, str] | None = None,
    bob_env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    alice_script: Path | None = None,
    bob_script: Path | None = None,
    bob_url: str | None = None,
) -> Tunnel:
    """Write the §9.1 trees under ``tmp_path/{alice,bob}``, start both clients, and wait
    until both proxies listen. ``env`` goes to both clients, ``alice_env``/``bob_env`` on top;
    ``alice_script``/``bob_script``: that client's ``script`` (see :func:`spawn_client`);
    ``bob_url``: bob's relay, when it is not alice's (another replica of a cluster)."""
    alice_port = free_port()
    while (bob_port := free_port()) == alice_port:
        pass  # the kernel may offer the probed port again; two proxies cannot share it
    ports = {ALICE: alice_port, BOB: bob_port}
    dirs = {ALICE: tmp_path / "alice", BOB: tmp_path / "bob"}
    write_reference_tunnel(dirs, ports)
    alice = start_client(
        server_url,
        ALICE,
        dirs[ALICE],
        env={**(env or {}), **(alice_env or {})},
        timeout=timeout,
        script=alice_script,
    )
    try:
        bob = start_client(
            bob_url or server_url,
            BOB,
            dirs[BOB],
            env={**(env or {}), **(bob_env or {})},
            timeout=timeout,
            script=bob_script,
        )
    except BaseException:
        alice.stop()
        raise
    tunnel = Tunnel(alice, bob, ports[ALICE], ports[BOB])
    key = reference_channel(ports).canonical_key
    try:
        for client in (alice, bob):
            client.wait_tunnel(key, timeout)
    except BaseException:
        tunnel.stop()
        raise
    return tunnel
