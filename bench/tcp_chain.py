"""The floor for a path through two Python daemons: app -> forwarder -> forwarder -> app over
loopback TCP, each forwarder its own process on asyncio, and no WebRTC, relay or framing.

hotlink's P2P path has the same shape (the app's TCP connection to its client, the clients
to each other, the other client to its app), so this row says what the two extra processes
cost a round trip before any protocol work: the part of the P2P round trip no transport
tuning can take away.

    python -m bench.tcp_chain --to 127.0.0.1:PORT --port-file FILE   # one forwarder
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from hotlink.demo.measure import Link
from hotlink.lab.processes import die_with_parent

from .paths import BenchConfig, PathResult, guarded, measure_accepted

READ = 256 * 1024
START_TIMEOUT = 10.0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def _forward(host: str, port: int, port_file: Path) -> None:
    """Accept connections; pipe each to ``host:port`` both ways, as a client daemon would."""

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(host, port, limit=READ * 4)
        await asyncio.gather(_pump(r, uw), _pump(ur, w))
        w.close()
        uw.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0, limit=READ * 4)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(server.sockets[0].getsockname()[1]))
    tmp.rename(port_file)  # whole, or not yet there
    async with server:
        await server.serve_forever()


async def _start_forwarder(
    target: int, folder: Path, name: str
) -> tuple[asyncio.subprocess.Process, int]:
    port_file = folder / f"{name}.port"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.tcp_chain", "--to", f"127.0.0.1:{target}",
        "--port-file", str(port_file), preexec_fn=die_with_parent,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while not port_file.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"forwarder {name} did not start")
        await asyncio.sleep(0.02)
    return proc, int(port_file.read_text())


async def tcp_chain(cfg: BenchConfig) -> PathResult:
    """Throughput and round trips through two forwarder processes (see the module doc)."""
    result = PathResult(
        "TCP through two Python forwarders", "loopback", "tcp", transport={"both": "tcp"}
    )
    result.variant = "two-process chain"

    async def body() -> None:
        accepted: asyncio.Queue[Link] = asyncio.Queue(1)

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await accepted.put((r, w))

        app_b = await asyncio.start_server(on_conn, "127.0.0.1", 0, limit=1 << 20)
        procs: list[asyncio.subprocess.Process] = []
        try:
            with tempfile.TemporaryDirectory(prefix="hotlink-chain-") as tmp:
                second, port2 = await _start_forwarder(
                    app_b.sockets[0].getsockname()[1], Path(tmp), "bob"
                )
                procs.append(second)
                first, port1 = await _start_forwarder(port2, Path(tmp), "alice")
                procs.append(first)
            await measure_accepted(result, cfg, port1, accepted, START_TIMEOUT)
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            app_b.close()
            await app_b.wait_closed()

    return await guarded(result, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--port-file", required=True, type=Path)
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_forward(host, int(port), args.port_file))


if __name__ == "__main__":
    main()
