"""Make this process's aiortc peers refuse every SCTP association (ICE and DTLS still connect).

A real peer that fails where some deployed peers fail: pion releases before 2024 answer
libdatachannel's SCTP INIT with an ABORT, so ICE and DTLS connect but the data channel never
opens. Tests use it to show what hotlink does then, without a pion build at hand.

Only aiortc's Python classes in the current process are patched; libdatachannel peers in the
same process are untouched (their SCTP is native code), so one process can pair a normal
libdatachannel peer with a refusing aiortc peer.

The patch replaces two private methods of ``aiortc.rtcsctptransport.RTCSctpTransport``
(aiortc 1.x):

* ``_handle_data(data)``: the DTLS transport hands it every decrypted SCTP packet (see
  ``RTCDtlsTransport._recv_next``). Ours drops them all, so the remote's INIT (and anything
  after it) is never answered; in ``"abort"`` mode an INIT is answered with an ABORT, as
  pion does.
* ``_init()``: ``start()`` calls it once DTLS is up, to send our INIT. Ours sends nothing, so
  the remote never sees an association attempt and our side never times out on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

from aiortc.rtcsctptransport import (
    AbortChunk,
    InitChunk,
    RTCSctpTransport,
    parse_packet,
    serialize_packet,
)

RefusalMode = Literal["drop", "abort"]

_ORIGINALS = ("_handle_data", "_init")


async def _drop_everything(self: Any, data: bytes) -> None:
    """Ignore every SCTP packet: the association never gets past the remote's INIT."""


async def _abort_inits(self: Any, data: bytes) -> None:
    """Answer an INIT with an ABORT (as pion does); ignore everything else."""
    try:
        _, _, _, chunks = parse_packet(data)
    except ValueError:
        return
    for chunk in chunks:
        if isinstance(chunk, InitChunk):
            # An ABORT answering an INIT carries the INIT's initiate tag (RFC 9260 8.4), else
            # the remote discards it as out of the blue. ``_send_data`` is the DTLS
            # transport's private send, the same one ``_send_chunk`` uses.
            packet = serialize_packet(
                self._local_port, self._remote_port, chunk.initiate_tag, AbortChunk()
            )
            with contextlib.suppress(ConnectionError):
                await self.transport._send_data(packet)
            return


async def _no_init(self: Any) -> None:
    """Send no INIT: this side never tries to form an association."""


def refuse_sctp(mode: RefusalMode = "drop") -> Callable[[], None]:
    """Patch aiortc in this process; returns the function that restores it.

    ``drop``: every incoming SCTP packet is ignored (a silent peer: the remote retransmits its
    INIT until it gives up). ``abort``: an incoming INIT gets an ABORT (the remote fails its
    association at once). In both modes no INIT is sent. Affects peers that start their
    SCTP transport while the patch is in place, and those already waiting for packets.
    """
    if mode not in ("drop", "abort"):
        raise ValueError(f"unknown SCTP refusal mode {mode!r}")
    saved = {name: RTCSctpTransport.__dict__[name] for name in _ORIGINALS}
    handler = _drop_everything if mode == "drop" else _abort_inits
    RTCSctpTransport._handle_data = handler  # type: ignore[method-assign]
    RTCSctpTransport._init = _no_init  # type: ignore[method-assign]

    def restore() -> None:
        for name, original in saved.items():
            setattr(RTCSctpTransport, name, original)

    return restore


@contextlib.contextmanager
def sctp_refused(mode: RefusalMode = "drop") -> Iterator[None]:
    """``refuse_sctp(mode)`` for the duration of a ``with`` block."""
    restore = refuse_sctp(mode)
    try:
        yield
    finally:
        restore()
