"""A tiny signaling relay for the raw WebRTC NAT tests (the hotlink server replaces it later).

TCP, one JSON object per line. A peer's first line is ``{"room": ..., "name": ...}``; every
later line is forwarded verbatim to the other members of the room. Lines for members that have
not connected yet are kept (bounded) and delivered when they join, so peers may start in any
order. Prints ``ready`` once listening.

Usage: ``signal_relay.py HOST PORT``
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict

MAX_PENDING = 1000  # lines kept per room for members not yet connected

rooms: dict[str, dict[str, asyncio.StreamWriter]] = defaultdict(dict)
pending: dict[str, list[tuple[str, bytes]]] = defaultdict(list)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        hello = json.loads(await reader.readline())
        room, name = str(hello["room"]), str(hello["name"])
    except (ValueError, KeyError, TypeError):
        writer.close()
        return
    members = rooms[room]
    members[name] = writer
    # Deliver what others said before this member arrived.
    for sender, line in pending[room]:
        if sender != name:
            writer.write(line)
    pending[room] = [(s, ln) for s, ln in pending[room] if s == name]
    await writer.drain()
    try:
        while line := await reader.readline():
            others = [w for n, w in members.items() if n != name]
            if not others and len(pending[room]) < MAX_PENDING:
                pending[room].append((name, line))
            for w in others:
                w.write(line)
                await w.drain()
    except ConnectionError:
        pass
    finally:
        if members.get(name) is writer:
            del members[name]
        writer.close()


async def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    server = await asyncio.start_server(handle, host, port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
