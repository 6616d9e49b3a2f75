"""What the relay sees: capture its TCP traffic on loopback with tcpdump, and read it back.

    reason = capture_unavailable()          # None, or why tcpdump cannot run here (skip)
    with capturing(relay.port, tmp_path / "relay.pcap") as cap:
        ...                                 # clients connect and stream
    traffic = cap.traffic                   # after the block: tcpdump stopped, pcap parsed
    traffic.places(canary)                  # where those bytes appear (empty: nowhere)
    traffic.data_frames(to="bob@example.com")   # HotlinkData the relay sent to bob

tcpdump (``-i lo -U -w FILE 'tcp port N'``) runs as our child process; ``capturing``
returns once it prints "listening on" and stops it by its pid (SIGINT, so it flushes the
file) at the end of the block. Start the capture before the clients connect: the WebSocket
streams are read from their HTTP upgrade on.

The pcap is read here, minimally and without other libraries: Ethernet (or Linux cooked)
frames, IPv4/IPv6, TCP segments reassembled per direction by sequence number. Each TCP
connection to the relay is split into its HTTP upgrade and WebSocket frames; frames from a
client are unmasked (RFC 6455 masks every client frame, so the raw bytes of that direction
never show a payload as is). A hole in a reassembled stream, a packet the kernel dropped, or
a compressed frame raises :class:`CaptureError`: a capture that could miss the bytes must
not let a test conclude they were absent.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from hotlink.lab.processes import send_signal, spawn, stop_process
from hotlink.protocol.codec import decode
from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.messages import HotlinkData, Message

LISTENING = "listening on"
# Kernel buffer for tcpdump, in KiB: a loopback stream of a few MB must not overflow it.
BUFFER_KIB = 65536


class CaptureError(Exception):
    """The capture cannot be trusted to hold everything the relay sent and received."""


def capture_unavailable() -> str | None:
    """Why tcpdump cannot capture on loopback here (a reason to skip), or None."""
    if shutil.which("tcpdump") is None:
        return "tcpdump is not installed (scripts/install-system-deps.sh installs it as root)"
    if os.geteuid() != 0:
        return "capturing on loopback with tcpdump needs root"
    return None


# ---------------------------------------------------------------- running tcpdump


class Capture:
    """One tcpdump child writing the traffic of one TCP port on an interface to a pcap."""

    def __init__(self, port: int, pcap: Path, interface: str = "lo", expression: str = "") -> None:
        self.port = port
        self.pcap = pcap
        self.interface = interface
        self.expression = expression or f"tcp port {port}"
        self.log_path = pcap.with_suffix(".tcpdump.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.dropped: int | None = None
        self._traffic: RelayTraffic | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start tcpdump and return once it captures. Raises CaptureError."""
        argv = [
            "tcpdump", "-i", self.interface, "-n", "-U", "-s", "0", "-B", str(BUFFER_KIB),
            # tcpdump would drop to its own user after opening the device; that user may
            # not write into the test's directory.
            "-Z", "root",
            "-w", str(self.pcap), self.expression,
        ]  # fmt: skip
        # The thread that starts it lives as long as the test: it dies with the test run.
        self.proc = spawn(argv, env=dict(os.environ), log_path=self.log_path)
        deadline = time.monotonic() + timeout
        while LISTENING not in self._log():
            if self.proc.poll() is not None:
                raise CaptureError(f"tcpdump exited ({self.proc.returncode}): {self._log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise CaptureError(f"tcpdump did not start capturing within {timeout:g} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop tcpdump (SIGINT: it flushes the file and reports its counts)."""
        proc = self.proc
        if proc is None:
            return
        send_signal(proc, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc)
        match = re.search(r"(\d+) packets? dropped by kernel", self._log())
        self.dropped = int(match.group(1)) if match else None

    @property
    def traffic(self) -> RelayTraffic:
        """The relay's traffic, from the pcap (after :meth:`stop`). Raises CaptureError."""
        if self._traffic is None:
            if self.proc is None or self.proc.poll() is None:
                raise CaptureError("the capture is still running")
            if self.dropped:
                raise CaptureError(f"the kernel dropped {self.dropped} packets of the capture")
            self._traffic = RelayTraffic.parse(read_pcap(self.pcap), self.port)
        return self._traffic

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def capturing(
    port: int, pcap: Path, interface: str = "lo", expression: str = ""
) -> Iterator[Capture]:
    """``expression``: a tcpdump filter other than the port's TCP traffic (the relay's)."""
    capture = Capture(port, pcap, interface, expression)
    capture.start()
    try:
        yield capture
    finally:
        capture.stop()


# ---------------------------------------------------------------- pcap and TCP

_LINK_ETHERNET = 1
_LINK_NULL = 0
_LINK_RAW = (12, 101)
_LINK_SLL = 113
_LINK_SLL2 = 276
_IPV4, _IPV6 = 0x0800, 0x86DD
_UDP = 17


@dataclass(frozen=True, slots=True)
class Segment:
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    syn: bool
    data: bytes


def read_pcap(path: Path) -> list[Segment]:
    """The TCP segments of a classic pcap file (what ``tcpdump -w`` writes)."""
    segments = []
    for linktype, frame in _frames(path):
        segment = _segment(linktype, frame)
        if segment is not None:
            segments.append(segment)
    return segments


def udp_payload_sizes(path: Path) -> list[int]:
    """The payload size of every IPv4/IPv6 UDP datagram in a classic pcap file."""
    sizes = []
    for linktype, frame in _frames(path):
        network = _network(linktype, frame)
        if network is None:
            continue
        ethertype, packet = network
        if ethertype == _IPV4 and len(packet) >= 28 and packet[9] == _UDP:
            udp = packet[(packet[0] & 0x0F) * 4 :]
        elif ethertype == _IPV6 and len(packet) >= 48 and packet[6] == _UDP:
            udp = packet[40:]
        else:
            continue
        sizes.append(struct.unpack_from(">H", udp, 4)[0] - 8)
    return sizes


def _frames(path: Path) -> Iterator[tuple[int, bytes]]:
    """(link type, frame) of each packet of a classic pcap file, whole (CaptureError if the
    snap length cut one)."""
    blob = path.read_bytes()
    if len(blob) < 24:
        raise CaptureError(f"{path} is not a pcap file ({len(blob)} bytes)")
    magic = blob[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise CaptureError(f"{path} is not a classic pcap file (magic {magic.hex()})")
    (linktype,) = struct.unpack_from(order + "I", blob, 20)
    record = struct.Struct(order + "IIII")
    pos = 24
    while pos + record.size <= len(blob):
        _sec, _frac, caplen, origlen = record.unpack_from(blob, pos)
        pos += record.size
        frame = blob[pos : pos + caplen]
        pos += caplen
        if caplen < origlen:
            raise CaptureError(f"a packet was cut to {caplen} of {origlen} bytes (snap length)")
        yield linktype, frame


def _network(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """(ethertype, IP packet) of a link-layer frame."""
    if linktype == _LINK_ETHERNET:
        return struct.unpack_from(">H", frame, 12)[0], frame[14:]
    if linktype == _LINK_SLL:
        return struct.unpack_from(">H", frame, 14)[0], frame[16:]
    if linktype == _LINK_SLL2:
        return struct.unpack_from(">H", frame, 0)[0], frame[20:]
    if linktype in _LINK_RAW or linktype == _LINK_NULL:
        packet = frame[4:] if linktype == _LINK_NULL else frame
        if not packet:
            return None
        return (_IPV4 if packet[0] >> 4 == 4 else _IPV6), packet
    raise CaptureError(f"link type {linktype} is not one this reader knows")


def _segment(linktype: int, frame: bytes) -> Segment | None:
    network = _network(linktype, frame)
    if network is None:
        return None
    ethertype, packet = network
    if ethertype == _IPV4:
        if len(packet) < 20 or packet[9] != 6:
            return None
        ihl = (packet[0] & 0x0F) * 4
        (total,) = struct.unpack_from(">H", packet, 2)
        src = ".".join(str(b) for b in packet[12:16])
        dst = ".".join(str(b) for b in packet[16:20])
        tcp = packet[ihl:total]
    elif ethertype == _IPV6:
        if len(packet) < 40 or packet[6] != 6:
            return None
        (length,) = struct.unpack_from(">H", packet, 4)
        src, dst = packet[8:24].hex(), packet[24:40].hex()
        tcp = packet[40 : 40 + length]
    else:
        return None
    sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
    offset = (tcp[12] >> 4) * 4
    syn = bool(tcp[13] & 0x02)
    return Segment((src, sport), (dst, dport), seq, syn, bytes(tcp[offset:]))


def reassemble(segments: list[Segment]) -> dict[tuple[tuple[str, int], tuple[str, int]], bytes]:
    """The byte stream of each direction (``(src, dst)``), in sequence order.

    A segment seen twice (a retransmission) counts once; a hole raises CaptureError."""
    by_flow: dict[tuple[tuple[str, int], tuple[str, int]], list[Segment]] = {}
    for s in segments:
        by_flow.setdefault((s.src, s.dst), []).append(s)
    streams = {}
    for flow, segs in by_flow.items():
        syn = next((s for s in segs if s.syn), None)
        if syn is None:
            raise CaptureError(f"no SYN for {flow}: the connection began before the capture")
        start = (syn.seq + 1) & 0xFFFFFFFF
        # Offsets from the first data byte; seq wraps at 2**32.
        placed = sorted(((s.seq - start) & 0xFFFFFFFF, s.data) for s in segs if s.data)
        out = bytearray()
        for offset, data in placed:
            if offset > len(out):
                raise CaptureError(
                    f"{flow}: bytes {len(out)}..{offset} are missing from the capture"
                )
            out += data[len(out) - offset :]
        streams[flow] = bytes(out)
    return streams


# ---------------------------------------------------------------- WebSocket

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0, 1, 2


@dataclass(frozen=True, slots=True)
class WsMessage:
    text: bool
    data: bytes  # unmasked, fragments joined


def _unmask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


def split_upgrade(stream: bytes) -> tuple[bytes, bytes]:
    """(HTTP head, what follows it) of one direction of a WebSocket connection."""
    head, sep, rest = stream.partition(b"\r\n\r\n")
    if not sep:
        raise CaptureError("no complete HTTP upgrade at the start of the stream")
    return head, rest


def websocket_messages(data: bytes) -> list[WsMessage]:
    """The data messages of one direction's WebSocket frames (control frames skipped). A
    frame cut off at the end (the capture stopped mid-frame) is left out."""
    messages = []
    parts: list[bytes] = []
    text = False
    pos = 0
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        fin, rsv1, opcode = b0 & 0x80, b0 & 0x40, b0 & 0x0F
        masked, length = b1 & 0x80, b1 & 0x7F
        head = 2
        if length == 126:
            if pos + 4 > len(data):
                break
            (length,) = struct.unpack_from(">H", data, pos + 2)
            head = 4
        elif length == 127:
            if pos + 10 > len(data):
                break
            (length,) = struct.unpack_from(">Q", data, pos + 2)
            head = 10
        key = b""
        if masked:
            key = data[pos + head : pos + head + 4]
            head += 4
        end = pos + head + length
        if end > len(data):
            break
        if rsv1:
            raise CaptureError("a compressed WebSocket frame (permessage-deflate): unreadable")
        payload = data[pos + head : end]
        if masked:
            payload = _unmask(payload, key)
        pos = end
        if opcode in (_OP_TEXT, _OP_BINARY):
            text, parts = opcode == _OP_TEXT, [payload]
        elif opcode == _OP_CONTINUATION:
            parts.append(payload)
        else:
            continue  # close, ping, pong
        if fin:
            messages.append(WsMessage(text, b"".join(parts)))
            parts = []
    return messages


# ---------------------------------------------------------------- the relay's connections


@dataclass
class Direction:
    """One direction of one client's WebSocket connection to the relay."""

    raw: bytes  # the TCP stream as it crossed loopback (masked, for a client's direction)
    messages: list[WsMessage]
    decoded: list[Message] = field(default_factory=list)
    undecodable: int = 0

    @classmethod
    def parse(cls, stream: bytes) -> Direction:
        _head, frames = split_upgrade(stream)
        messages = websocket_messages(frames)
        direction = cls(stream, messages)
        for m in messages:
            try:
                direction.decoded.append(decode(m.data.decode() if m.text else m.data))
            except (ProtocolError, UnicodeDecodeError):
                direction.undecodable += 1
        return direction


@dataclass
class WsConnection:
    """One client's WebSocket connection to the relay, both directions."""

    user: str  # the ?user= of its upgrade request
    client_port: int
    to_relay: Direction
    from_relay: Direction


@dataclass
class RelayTraffic:
    connections: list[WsConnection]

    @classmethod
    def parse(cls, segments: list[Segment], relay_port: int) -> RelayTraffic:
        streams = reassemble(segments)
        connections = []
        for (src, dst), up in streams.items():
            if dst[1] != relay_port:
                continue
            down = streams.get((dst, src), b"")
            head, _ = split_upgrade(up)
            request = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            query = parse_qs(urlsplit(request[1]).query) if len(request) > 1 else {}
            connections.append(
                WsConnection(
                    query.get("user", [""])[0],
                    src[1],
                    Direction.parse(up),
                    Direction.parse(down),
                )
            )
        return cls(connections)

    def of(self, user: str) -> list[WsConnection]:
        return [c for c in self.connections if c.user == user]

    def places(self, needle: bytes) -> list[str]:
        """Where ``needle`` appears: in a raw TCP stream, in an (unmasked) WebSocket message,
        or in a decoded HotlinkData payload (JSON carries payloads in base64)."""
        found = []
        for c in self.connections:
            for name, d in (("to relay", c.to_relay), ("from relay", c.from_relay)):
                where = f"{c.user}:{c.client_port} {name}"
                if needle in d.raw:
                    found.append(f"{where}: raw TCP stream")
                if any(needle in m.data for m in d.messages):
                    found.append(f"{where}: WebSocket message")
                if any(needle in p.pay for p in _data(d.decoded)):
                    found.append(f"{where}: HotlinkData payload")
        return found

    def data_frames(self, *, to: str = "", sender: str = "") -> list[HotlinkData]:
        """HotlinkData the relay sent to ``to``, or received from ``sender``."""
        frames: list[HotlinkData] = []
        for c in self.of(to or sender):
            frames += _data((c.from_relay if to else c.to_relay).decoded)
        return frames


def _data(messages: list[Message]) -> list[HotlinkData]:
    return [m.payload for m in messages if isinstance(m.payload, HotlinkData)]
