"""Stream through a hotlink tunnel from outside and check every byte (the compose demo's job).

    python check_tunnel.py ALICE_HOST:PORT BOB_HOST:PORT [--size BYTES]

Connects an app to each end of the tunnel (bob's first, as the reference test does), sends
``--size`` random bytes each way at once, half-closes, and reads each side to its EOF. Exits
0 when both directions arrived whole and in order (same length and SHA-256), 1 otherwise.
Standard library only: it runs in the hotlink image as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time

CHUNK = 64 * 1024


async def dial(addr: str, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, retrying while the tunnel's proxy is not listening yet."""
    host, _, port = addr.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.open_connection(host, int(port))
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def send(writer: asyncio.StreamWriter, size: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    sent = 0
    while sent < size:
        block = os.urandom(min(CHUNK, size - sent))
        writer.write(block)
        await writer.drain()
        digest.update(block)
        sent += len(block)
    writer.write_eof()
    await writer.drain()
    return sent, digest.hexdigest()


async def receive(reader: asyncio.StreamReader) -> tuple[int, str]:
    digest = hashlib.sha256()
    got = 0
    while block := await reader.read(CHUNK):
        digest.update(block)
        got += len(block)
    return got, digest.hexdigest()


async def check(alice: str, bob: str, size: int, timeout: float) -> bool:
    bob_r, bob_w = await dial(bob, timeout)
    await asyncio.sleep(0.5)
    alice_r, alice_w = await dial(alice, timeout)
    try:
        async with asyncio.timeout(timeout):
            there, back, at_bob, at_alice = await asyncio.gather(
                send(alice_w, size), send(bob_w, size), receive(bob_r), receive(alice_r)
            )
    finally:
        alice_w.close()
        bob_w.close()
    ok = True
    for name, sent, got in (("alice -> bob", there, at_bob), ("bob -> alice", back, at_alice)):
        whole = sent == got
        ok = ok and whole
        print(f"{name}: sent {sent[0]} bytes, received {got[0]}: {'ok' if whole else 'MISMATCH'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("alice", help="host:port of alice's end of the tunnel")
    parser.add_argument("bob", help="host:port of bob's end of the tunnel")
    parser.add_argument("--size", type=int, default=16 * 1024 * 1024, help="bytes each way")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds, a failure guard")
    args = parser.parse_args()
    try:
        ok = asyncio.run(check(args.alice, args.bob, args.size, args.timeout))
    except (OSError, TimeoutError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
