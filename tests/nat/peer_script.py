"""One WebRTC peer for the raw NAT tests, run inside alice's or bob's namespace.

It signals through ``signal_relay.py`` (line JSON over TCP), opens the ordered ``syftbox-data``
channel (the offerer creates it, DECISIONS.md #1-#2), trickles candidates both ways, and prints
one JSON object per line on stdout:

    {"ev": "offer_sent" | "offer_received", "wall": ...}
    {"ev": "open", "open_s": <seconds since offer sent/received>, "wall": ..., "pair": {...}}
    {"ev": "sent", "bytes": N, "sha256": ..., "peer_sha256": ..., "peer_bytes": N}
    {"ev": "received", "bytes": N, "sha256": ...}
    {"ev": "message", "data": "hello from <other>"}   (without --transfer)
    {"ev": "timeout", "after_s": ...}        (channel not open within --open-timeout; exit 3)

Backends (``--backend``): ``libdatachannel`` or ``aiortc`` go through the project's interface
(``hotlink.webrtc.load_backend``); ``ldc`` drives aiolibdatachannel directly, to tell library
behaviour from ours. With libdatachannel the whole selected pair is reported (its C API's
``rtcGetSelectedCandidatePair``), with aiortc only the local candidate type. libdatachannel's
own log goes to stderr with ``--rtc-log info|debug|verbose``; so does a line per candidate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

CHUNK = 60 * 1024  # DECISIONS.md #6: every message fits a 64 KiB max-message-size
HIGH_WATER = 4 * 1024 * 1024
T_START = time.monotonic()


def emit(ev: str, **fields: Any) -> None:
    print(json.dumps({"ev": ev, "wall": time.time(), **fields}), flush=True)


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T_START:8.3f}] {msg}", file=sys.stderr, flush=True)


def candidate_type(candidate: str) -> str:
    parts = candidate.split()
    return parts[parts.index("typ") + 1] if "typ" in parts else "?"


# ---- signaling ------------------------------------------------------------------------------


class Signal:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, addr: str, room: str, name: str) -> Signal:
        host, _, port = addr.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        sig = cls(reader, writer)
        await sig.send({"room": room, "name": name})
        return sig

    async def send(self, obj: dict[str, Any]) -> None:
        self.writer.write(json.dumps(obj).encode() + b"\n")
        await self.writer.drain()

    async def recv(self) -> dict[str, Any] | None:
        line = await self.reader.readline()
        return json.loads(line) if line else None


# ---- libdatachannel peer --------------------------------------------------------------------


class LdcPeer:
    """A peer connection through aiolibdatachannel, without the hotlink backend layer."""

    def __init__(self, ice_servers: list[str], policy: str) -> None:
        import aiolibdatachannel as ldc

        self.ldc = ldc
        cfg = ldc.RTCConfiguration(
            ice_servers=ice_servers,
            ice_transport_policy=(
                ldc.TransportPolicy.RELAY if policy == "relay" else ldc.TransportPolicy.ALL
            ),
        )
        self.pc = ldc.PeerConnection(cfg)
        self.dc: Any = None
        self.local_types: list[str] = []

    async def make_offer(self) -> str:
        self.dc = await self.pc.create_data_channel("syftbox-data")
        desc = await self.pc.set_local_description("offer")
        return str(desc.sdp)

    async def accept_offer(self, sdp: str) -> str:
        await self.pc.set_remote_description(sdp, "offer")
        desc = await self.pc.set_local_description("answer")
        return str(desc.sdp)

    async def set_answer(self, sdp: str) -> None:
        await self.pc.set_remote_description(sdp, "answer")

    async def add_candidate(self, cand: str, mid: str) -> None:
        await self.pc.add_remote_candidate(cand, mid)

    async def pump_candidates(self, send: Callable[[str, str], Any]) -> None:
        async for c in self.pc.ice_candidates():
            self.local_types.append(candidate_type(c.candidate))
            await send(c.candidate, c.mid)

    async def wait_open(self) -> Any:
        if self.dc is None:
            self.dc = await self.pc.accept_data_channel()
        await self.dc.wait_open()
        return self.dc

    def selected_pair(self) -> dict[str, str]:
        return ldc_selected_pair(self.pc._native.handle)

    async def send(self, data: bytes | str) -> None:
        # Own high-water mark: a plain send() blocks on every message once anything is
        # buffered, which caps throughput at one message per round trip.
        while self.dc.buffered_amount > HIGH_WATER:  # noqa: ASYNC110 (no public low event)
            await asyncio.sleep(0.002)
        await self.dc.send(data, wait_for_drain=False)

    async def recv(self) -> bytes | str:
        return await self.dc.recv()

    async def close(self) -> None:
        await self.pc.aclose()


class HotlinkPeer:
    """A peer through the project's backend interface (``hotlink.webrtc``)."""

    def __init__(
        self, backend: str, ice_servers: list[Any], policy: str, backpressure_wait: float
    ) -> None:
        from hotlink.webrtc import load_backend

        self.open_event = asyncio.Event()
        self.closed_reason: str | None = None
        # Bounded on purpose: a transfer that outruns the reader fails loudly, never silently.
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8192)
        self.cands: asyncio.Queue[Any] = asyncio.Queue()
        self.local_types: list[str] = []
        self.backend = load_backend(backend)
        self.peer = self.backend.create_peer(
            ice_servers,
            self,
            relay_only=(policy == "relay"),
            backpressure_wait=backpressure_wait,
        )

    # PeerEvents
    def on_local_candidate(self, cand: Any) -> None:
        self.cands.put_nowait(cand)

    def on_channel_open(self) -> None:
        self.open_event.set()

    def on_message(self, data: bytes) -> None:
        self.inbox.put_nowait(data)

    def on_channel_closed(self, reason: str) -> None:
        self.closed_reason = reason
        with contextlib.suppress(asyncio.QueueFull):
            self.inbox.put_nowait(None)

    async def make_offer(self) -> str:
        return str(await self.peer.create_offer())

    async def accept_offer(self, sdp: str) -> str:
        return str(await self.peer.accept_offer(sdp))

    async def set_answer(self, sdp: str) -> None:
        await self.peer.set_answer(sdp)

    async def add_candidate(self, cand: str, mid: str) -> None:
        from hotlink.protocol.ice import IceCandidate, strip_candidate_prefix

        await self.peer.add_remote_candidate(IceCandidate(strip_candidate_prefix(cand), mid, 0))

    async def pump_candidates(self, send: Callable[[str, str], Any]) -> None:
        while (c := await self.cands.get()) is not None:
            self.local_types.append(candidate_type(c.candidate))
            await send("candidate:" + c.candidate, c.sdp_mid)

    async def wait_open(self) -> Any:
        await self.open_event.wait()

    def selected_pair(self) -> dict[str, str]:
        pair: dict[str, str] = {"local_type": self.peer.selected_candidate_type() or "?"}
        handle = getattr(getattr(self.peer, "_pc", None), "handle", None)
        if isinstance(handle, int):  # libdatachannel: the whole pair, for the report
            pair.update(ldc_selected_pair(handle))
        return pair

    async def send(self, data: bytes | str) -> None:
        await self.peer.send(data.encode() if isinstance(data, str) else data)

    async def recv(self) -> bytes | str:
        data = await self.inbox.get()
        if data is None:
            raise ConnectionError(f"channel closed: {self.closed_reason}")
        return data

    async def close(self) -> None:
        await self.peer.close()


def ldc_selected_pair(handle: int) -> dict[str, str]:
    """libdatachannel's selected pair (``rtcGetSelectedCandidatePair``; not in the binding)."""
    from aiolibdatachannel import _core

    fn = ctypes.CDLL(_core._native.__file__).rtcGetSelectedCandidatePair
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    local = ctypes.create_string_buffer(512)
    remote = ctypes.create_string_buffer(512)
    if fn(handle, local, 512, remote, 512) < 0:
        return {}
    lo, re_ = local.value.decode(), remote.value.decode()
    return {"local": lo, "remote": re_, "local_type": candidate_type(lo),
            "remote_type": candidate_type(re_)}  # fmt: skip


AnyPeer = LdcPeer | HotlinkPeer


def make_peer(args: argparse.Namespace, policy: str) -> AnyPeer:
    if args.backend == "ldc":
        urls = [inline_credentials(u, args.turn_user, args.turn_pass) for u in args.ice]
        return LdcPeer(urls, policy)
    if args.backend in ("libdatachannel", "aiortc", "auto"):
        from hotlink.protocol.ice import parse_ice_servers

        servers = parse_ice_servers(",".join(args.ice) or "none", args.turn_user, args.turn_pass)
        return HotlinkPeer(args.backend, servers, policy, args.backpressure_wait)
    raise SystemExit(f"unknown backend {args.backend!r}")


def inline_credentials(url: str, user: str, password: str) -> str:
    """libdatachannel's TURN URL form, ``turn:user:pass@host:port``."""
    if not url.startswith("turn") or not user:
        return url
    scheme, _, rest = url.partition(":")
    return f"{scheme}:{user}:{password}@{rest}"


# ---- the session ----------------------------------------------------------------------------


class Session:
    """Signaling for one peer connection: offer/answer and trickled candidates."""

    def __init__(self, args: argparse.Namespace, sig: Signal) -> None:
        self.args = args
        self.sig = sig
        self.peer: AnyPeer | None = None
        self.opened = asyncio.Event()
        self.t0: float | None = None  # offer sent (offerer) or received (answerer)
        self.tasks: list[asyncio.Task[Any]] = []

    def start_peer(self) -> AnyPeer:
        peer = make_peer(self.args, self.args.policy)
        self.peer = peer

        async def send_cand(cand: str, mid: str) -> None:
            log(f"local candidate ({candidate_type(cand)}): {cand}")
            await self.sig.send({"t": "cand", "cand": cand, "mid": mid})

        async def watch_open() -> None:
            with contextlib.suppress(Exception):
                await peer.wait_open()
                self.opened.set()

        self.tasks.append(asyncio.create_task(peer.pump_candidates(send_cand)))
        self.tasks.append(asyncio.create_task(watch_open()))
        return peer

    async def offer(self) -> None:
        sdp = await self.start_peer().make_offer()
        await self.sig.send({"t": "offer", "sdp": sdp})
        self.t0 = time.monotonic()
        emit("offer_sent")

    async def handle(self, msg: dict[str, Any]) -> None:
        t = msg.get("t")
        if t == "offer" and self.peer is None:
            self.t0 = time.monotonic()
            emit("offer_received")
            answer = await self.start_peer().accept_offer(msg["sdp"])
            await self.sig.send({"t": "answer", "sdp": answer})
        elif t == "answer" and self.peer is not None:
            await self.peer.set_answer(msg["sdp"])
        elif t == "cand" and self.peer is not None:
            log(f"remote candidate ({candidate_type(msg['cand'])}): {msg['cand']}")
            try:
                await self.peer.add_candidate(msg["cand"], msg.get("mid", ""))
            except Exception as exc:  # a bad candidate must not end the session
                log(f"add candidate failed: {exc!r}")

    async def signal_loop(self) -> None:
        while (msg := await self.sig.recv()) is not None:
            await self.handle(msg)

    async def wait_open(self) -> bool:
        remaining = T_START + self.args.open_timeout - time.monotonic()
        try:
            await asyncio.wait_for(self.opened.wait(), timeout=max(0.0, remaining))
        except TimeoutError:
            return False
        return True


def as_text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data


async def transfer_send(peer: AnyPeer, nbytes: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    h = hashlib.sha256()
    sent = 0
    while sent < nbytes:
        chunk = rng.randbytes(min(CHUNK, nbytes - sent))
        h.update(chunk)
        await peer.send(chunk)
        sent += len(chunk)
    peer_bytes, peer_sha = as_text(await peer.recv()).split()
    return {"bytes": sent, "sha256": h.hexdigest(), "peer_sha256": peer_sha,
            "peer_bytes": int(peer_bytes)}  # fmt: skip


async def transfer_recv(peer: AnyPeer, nbytes: int) -> dict[str, Any]:
    h = hashlib.sha256()
    got = 0
    while got < nbytes:
        data = await peer.recv()
        assert isinstance(data, bytes)
        h.update(data)
        got += len(data)
    await peer.send(f"{got} {h.hexdigest()}")
    return {"bytes": got, "sha256": h.hexdigest()}


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--role", choices=["offer", "answer"], required=True)
    ap.add_argument("--signal", required=True, help="relay HOST:PORT")
    ap.add_argument("--room", default="nat")
    ap.add_argument("--ice", action="append", default=[], help="ICE server URL (repeatable)")
    ap.add_argument("--turn-user", default="")
    ap.add_argument("--turn-pass", default="")
    ap.add_argument("--policy", choices=["all", "relay"], default="all")
    ap.add_argument(
        "--backend",
        default="libdatachannel",
        help="libdatachannel|aiortc (hotlink.webrtc backends) or ldc (raw)",
    )
    ap.add_argument("--open-timeout", type=float, default=30.0)
    # Lossy links drain slowly; by default the script waits rather than failing a transfer.
    ap.add_argument("--backpressure-wait", type=float, default=120.0)
    ap.add_argument("--transfer", type=int, default=0, help="bytes the offerer sends")
    ap.add_argument("--hold", type=float, default=0.0, help="stay connected this long after")
    ap.add_argument("--rtc-log", default="")
    args = ap.parse_args()

    if args.rtc_log and args.backend in ("ldc", "libdatachannel", "auto"):
        import aiolibdatachannel as ldc

        level = {"info": ldc.LogLevel.INFO, "debug": ldc.LogLevel.DEBUG,
                 "verbose": ldc.LogLevel.VERBOSE}[args.rtc_log]  # fmt: skip
        ldc.init_logger(level, lambda _lvl, m: log("rtc " + m.rstrip()))

    sig = await Signal.connect(args.signal, args.room, args.name)
    session = Session(args, sig)
    sig_task = asyncio.create_task(session.signal_loop())
    if args.role == "offer":
        await session.offer()

    ok = await session.wait_open()
    assert session.t0 is not None or not ok
    if not ok:
        emit("timeout", after_s=time.monotonic() - (session.t0 or T_START))
        sig_task.cancel()
        if session.peer is not None:
            await session.peer.close()
        return 3

    peer = session.peer
    assert peer is not None and session.t0 is not None
    emit("open", open_s=round(time.monotonic() - session.t0, 3),
         pair=peer.selected_pair(), local_types=sorted(set(peer.local_types)))  # fmt: skip

    if args.transfer:
        if args.role == "offer":
            emit("sent", **await transfer_send(peer, args.transfer, seed=7))
        else:
            emit("received", **await transfer_recv(peer, args.transfer))
    else:
        # A short exchange both ways proves the channel carries data on both sides.
        await peer.send(f"hello from {args.name}")
        emit("message", data=as_text(await peer.recv()))
    if args.hold:
        await asyncio.sleep(args.hold)
    # Closing right away could cut off our last message on a lossy link: say bye and wait
    # (bounded) for the peer's bye, which comes after everything it sent.
    await peer.send("bye")
    with contextlib.suppress(Exception):  # timeout, closed channel: we are done either way
        async with asyncio.timeout(5):
            while as_text(await peer.recv()) != "bye":
                pass
    sig_task.cancel()
    await peer.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
