"""HLNK frames (PROTOCOL.md §5): app <-> client IPC streams and WebRTC data-channel messages.

A 21-byte big-endian header (magic ``HLNK``, version 1, path/etag/payload lengths, seq) and
then the path, etag and payload bytes. :func:`decode_frame` reads one data-channel message;
:class:`FrameDecoder` reads a byte stream, resyncing on the magic after garbage or a bad
header, with bounded lengths so a corrupt header cannot make it buffer gigabytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import ProtocolError

MAGIC = b"HLNK"
VERSION = 1
HEADER_SIZE = 21
# After the magic: version u8, path_len u16, etag_len u16, payload_len u32, seq u64.
_HEADER = struct.Struct(">BHHIQ")
_FULL_HEADER = struct.Struct(">4sBHHIQ")

MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF
MAX_U64 = (1 << 64) - 1

# Stream bounds of the Go test decoder: a header claiming more is garbage, not a frame.
DEFAULT_MAX_PATH = 4096
DEFAULT_MAX_ETAG = 128
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Frame:
    path: str
    etag: str
    seq: int
    payload: bytes


def frame_overhead(path: str, etag: str) -> int:
    """Bytes a frame needs besides its payload: fit ``payload <= max_message - overhead``."""
    return HEADER_SIZE + len(path.encode("utf-8")) + len(etag.encode("utf-8"))


def encode_frame(frame: Frame) -> bytes:
    path = frame.path.encode("utf-8")
    etag = frame.etag.encode("utf-8")
    if len(path) > MAX_U16:
        raise ProtocolError(f"HLNK path is {len(path)} bytes; the limit is {MAX_U16}")
    if len(etag) > MAX_U16:
        raise ProtocolError(f"HLNK etag is {len(etag)} bytes; the limit is {MAX_U16}")
    if len(frame.payload) > MAX_U32:
        raise ProtocolError(f"HLNK payload is {len(frame.payload)} bytes; the limit is {MAX_U32}")
    if not 0 <= frame.seq <= MAX_U64:
        raise ProtocolError(f"HLNK seq {frame.seq} does not fit in uint64")
    header = _FULL_HEADER.pack(MAGIC, VERSION, len(path), len(etag), len(frame.payload), frame.seq)
    return b"".join((header, path, etag, frame.payload))


def _text(raw: bytes | memoryview, what: str) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"HLNK {what} is not valid UTF-8") from exc


def decode_frame(data: bytes | bytearray | memoryview) -> Frame:
    """One frame from one WebRTC message. Trailing bytes are ignored, as in the reference."""
    if len(data) < HEADER_SIZE:
        raise ProtocolError(f"HLNK message is {len(data)} bytes, shorter than the header")
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise ProtocolError("HLNK message has the wrong magic")
    version, path_len, etag_len, payload_len, seq = _HEADER.unpack_from(view, 4)
    if version != VERSION:
        raise ProtocolError(f"HLNK version {version} is not supported")
    end = HEADER_SIZE + path_len + etag_len + payload_len
    if len(data) < end:
        raise ProtocolError(f"HLNK message is truncated: {len(data)} of {end} bytes")
    p_end = HEADER_SIZE + path_len
    e_end = p_end + etag_len
    return Frame(
        _text(view[HEADER_SIZE:p_end], "path"),
        _text(view[p_end:e_end], "etag"),
        seq,
        bytes(view[e_end:end]),
    )


class FrameDecoder:
    """Incremental decoder for a byte stream of HLNK frames (IPC sockets).

    Bytes before a magic, headers with another version or out-of-bounds lengths, and frames
    whose path or etag is not UTF-8 are skipped and counted in ``skipped_bytes``; decoding
    resumes at the next magic (Go's behaviour). The buffer holds at most one frame plus
    three bytes of a possible partial magic.
    """

    def __init__(
        self,
        max_path: int = DEFAULT_MAX_PATH,
        max_etag: int = DEFAULT_MAX_ETAG,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.max_path = max_path
        self.max_etag = max_etag
        self.max_payload = max_payload
        self.skipped_bytes = 0
        self.bad_headers = 0
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (non-zero at EOF means a truncated frame)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        n = len(buf)
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # Keep a tail that may be the start of a magic split across reads.
                keep_from = max(pos, n - (len(MAGIC) - 1))
                self.skipped_bytes += keep_from - pos
                pos = keep_from
                break
            self.skipped_bytes += start - pos
            pos = start
            if n - pos < HEADER_SIZE:
                break
            version, path_len, etag_len, payload_len, seq = _HEADER.unpack_from(buf, pos + 4)
            if (
                version != VERSION
                or path_len > self.max_path
                or etag_len > self.max_etag
                or payload_len > self.max_payload
            ):
                # Not a frame we accept: drop the magic and look for the next one.
                self.bad_headers += 1
                self.skipped_bytes += len(MAGIC)
                pos += len(MAGIC)
                continue
            end = pos + HEADER_SIZE + path_len + etag_len + payload_len
            if n < end:
                break
            p_end = pos + HEADER_SIZE + path_len
            e_end = p_end + etag_len
            with memoryview(buf) as view:
                try:
                    path = _text(view[pos + HEADER_SIZE : p_end], "path")
                    etag = _text(view[p_end:e_end], "etag")
                except ProtocolError:
                    # The lengths were plausible, so skip the whole delimited frame.
                    self.bad_headers += 1
                    self.skipped_bytes += end - pos
                    pos = end
                    continue
                payload = bytes(view[e_end:end])
            frames.append(Frame(path, etag, seq, payload))
            pos = end
        if pos:
            # CPython deletes from the front of a bytearray without moving the rest.
            del buf[:pos]
        return frames
