"""UDP reachability and NAT-mapping probe, run inside the topology's namespaces.

``serve ADDR:PORT...`` answers every datagram with the address it came from (``ip:port``),
which is the NAT mapping when the sender sits behind a router. It prints ``ready`` once bound.

``probe ADDR:PORT...`` sends from ONE local socket to each target in turn and prints a JSON
object ``{"target": "mapped ip:port" or null}``. With an endpoint-independent mapping every
target sees the same ``ip:port``; with a symmetric NAT each target sees a different port.

``rtt ADDR:PORT`` prints the seconds one echo round trip took.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def serve(targets: list[str]) -> None:
    socks = []
    for t in targets:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(_addr(t))
        socks.append(s)
    print("ready", flush=True)
    import selectors

    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            data, peer = sock.recvfrom(2048)
            if data.startswith(b"probe"):
                sock.sendto(f"{peer[0]}:{peer[1]}".encode(), peer)


def probe(targets: list[str], timeout: float = 0.5, tries: int = 2) -> dict[str, str | None]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    result: dict[str, str | None] = {}
    for t in targets:
        result[t] = None
        for _ in range(tries):
            sock.sendto(b"probe", _addr(t))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, peer = sock.recvfrom(2048)
                except TimeoutError:
                    break
                if peer == _addr(t):
                    result[t] = data.decode()
                    break
            if result[t] is not None:
                break
    return result


def rtt(target: str, timeout: float = 5.0) -> float:
    """Seconds for one echo round trip."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    start = time.monotonic()
    sock.sendto(b"probe", _addr(target))
    sock.recvfrom(2048)
    return time.monotonic() - start


def main() -> None:
    mode, *targets = sys.argv[1:]
    if mode == "serve":
        serve(targets)
    elif mode == "probe":
        print(json.dumps(probe(targets)), flush=True)
    elif mode == "rtt":
        print(rtt(targets[0]), flush=True)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
