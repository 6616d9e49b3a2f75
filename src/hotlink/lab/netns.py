"""Sockets inside network namespaces, for apps that dial a client started in one.

A client started with ``netns=...`` listens on that namespace's loopback; the NAT lab and
the WAN benchmark reach it through a socket made inside the namespace.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading


def socket_in_netns(ns: str) -> socket.socket:
    """A TCP socket created inside network namespace ``ns`` (``/run/netns/<ns>``).

    setns() changes only the calling thread's namespace, so a short-lived thread enters
    ``ns`` and makes the socket; the socket keeps that namespace wherever it is used.
    """
    box: dict[str, socket.socket | BaseException] = {}

    def work() -> None:
        try:
            with open(f"/run/netns/{ns}", "rb") as nsfile:
                os.setns(nsfile.fileno(), os.CLONE_NEWNET)
            box["sock"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"setns-{ns}", daemon=True)
    thread.start()
    thread.join()
    result = box.get("sock", box.get("error"))
    if not isinstance(result, socket.socket):
        raise result if isinstance(result, BaseException) else OSError(f"no socket in {ns}")
    return result


async def open_connection_in_netns(
    ns: str, host: str, port: int, *, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` from inside network namespace ``ns``: how an app there
    dials a client started with ``netns=ns`` (its proxy listens on that namespace's
    loopback)."""
    sock = socket_in_netns(ns)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=limit)
