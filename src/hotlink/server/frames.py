"""WebSocket frames as the relay queues and writes them.

A frame is the bytes of one message as a receiver gets it: a binary frame (msgpack
envelope) or a :class:`TextFrame` (JSON as UTF-8), encoded once and shared by every
receiver of that encoding. :func:`frame_header` is what goes before it on the wire when the
relay writes frames itself (RFC 6455 §5.2: final, unmasked as from a server).
"""

from __future__ import annotations

import struct

from ..protocol.codec import Encoding, encode
from ..protocol.messages import Message


class TextFrame(bytes):
    """The UTF-8 bytes of a text (JSON) frame, encoded once for every receiver."""

    __slots__ = ()


Frame = bytes  # a binary frame, or a TextFrame

# Frames up to this size are copied into one buffer with their neighbours and written with
# one send; larger ones go to the transport as they are (it keeps a reference, not a copy),
# so a broadcast held by many sockets stays one object (as aiohttp does above 16 KiB).
COALESCE_MAX_FRAME = 16 * 1024
_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
_LEN16 = struct.Struct(">BBH").pack
_LEN64 = struct.Struct(">BBQ").pack


# Headers of binary frames by size: a stream's frames mostly have one size or a few.
_BINARY_HEADERS: dict[int, bytes] = {}
_BINARY_HEADERS_KEPT = 4096


def frame_header(frame: Frame) -> bytes:
    """The WebSocket header of an unmasked, final text or binary frame (RFC 6455 §5.2)."""
    size = len(frame)
    if type(frame) is bytes:
        header = _BINARY_HEADERS.get(size)
        if header is None:
            header = _make_header(_FIN_BINARY, size)
            if len(_BINARY_HEADERS) < _BINARY_HEADERS_KEPT:
                _BINARY_HEADERS[size] = header
        return header
    return _make_header(_FIN_TEXT if isinstance(frame, TextFrame) else _FIN_BINARY, size)


def _make_header(first: int, size: int) -> bytes:
    if size < 126:
        return bytes((first, size))
    if size < 65536:
        return _LEN16(first, 126, size)
    return _LEN64(first, 127, size)


def encode_frame(message: Message, encoding: Encoding) -> Frame:
    """``message`` as the frame a receiver of ``encoding`` gets (text frames as TextFrame)."""
    wire = encode(message, encoding)
    return TextFrame(wire, "utf-8") if isinstance(wire, str) else wire
