"""Throughput tuning of aiortc peers: what is changed, on which versions, applied per peer.

Where aiortc's time goes on a bulk send (loopback, two processes, aiortc 1.16 / aioice 0.13):
each 1160-byte SCTP DATA packet is one DTLS record and one UDP datagram, and stock aiortc
answers each with a SACK. About 150-180 ms of CPU per MiB on each side went to: the event loop
(one ``epoll`` round and one task wake-up per datagram), SACK traffic (a third of the
receiver's time building and sending SACKs, a third of the sender's handling them), a scan of
the whole sent queue on every SACK, aioice's attempt to parse every DTLS datagram as STUN,
and loss recovery after the 256 KiB UDP receive buffer overflowed. DTLS encryption itself
(OpenSSL) is a few percent. With the changes below it is 45-75 ms per MiB (asyncio's loop
or uvloop): what remains is mostly fixed cost per packet (the ``sendto`` system call, the
pyOpenSSL calls, building and parsing SCTP packets), which only larger packets would cut.
The changes, each in its own module:

* :mod:`.aiortc_udp`: read up to ``batch_reads`` datagrams per readiness event (uvloop does
  so itself), hand DTLS records straight to aioice's queue, and a ``recv_buffer``-byte
  socket receive buffer;
* :mod:`.aiortc_sctp`: SACK every second packet while more are queued, a transmit path
  without the sent-queue scan that respects the peer's window, linear-time reassembly.

Nothing here changes what goes on the wire beyond SACK timing within RFC 9260 limits and
a sender that now honours the peer's receive window (the packet size, the advertised window
and the SDP are aiortc's), so an aiortc peer still talks to
libdatachannel and to browsers. Everything is applied per peer connection, never to aiortc's
classes, and only on versions it was checked against (:data:`TESTED_AIORTC`,
:data:`TESTED_AIOICE`): elsewhere the peer runs stock aiortc and one log line says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aioice
import aiortc
from aioice.ice import StunProtocol
from aioice.turn import TurnTransport
from aiortc.rtcsctptransport import RTCSctpTransport

from .aiortc_sctp import TunedSctpTransport
from .aiortc_udp import tune_socket

log = logging.getLogger("hotlink.webrtc.aiortc")

# (major, minor) releases whose private SCTP / ICE internals these tunings were checked on.
TESTED_AIORTC = ((1, 16),)
TESTED_AIOICE = ((0, 13),)


@dataclass(frozen=True)
class AiortcTuning:
    """What to tune on each aiortc peer (the defaults are what the backend uses)."""

    # Datagrams read per readiness event (0 or 1: asyncio's own one-at-a-time reader).
    batch_reads: int = 32
    # Requested SO_RCVBUF of the ICE sockets, bytes (0: leave aioice's 256 KiB). The kernel
    # caps it (Linux: net.core.rmem_max).
    recv_buffer: int = 4 * 1024 * 1024
    # TunedSctpTransport: SACK every second packet while more are queued, O(1) transmit.
    sctp: bool = True

    @classmethod
    def stock(cls) -> AiortcTuning:
        """aiortc exactly as shipped."""
        return cls(batch_reads=0, recv_buffer=0, sctp=False)


DEFAULT_TUNING = AiortcTuning()

_support: bool | None = None


def _release(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def tuning_supported() -> bool:
    """Whether the installed aiortc and aioice are releases the tunings were checked on
    (decided once; logs once when they are not)."""
    global _support
    if _support is None:
        versions = (
            ("aiortc", str(getattr(aiortc, "__version__", "")), TESTED_AIORTC),
            ("aioice", str(getattr(aioice, "__version__", "")), TESTED_AIOICE),
        )
        unknown = [f"{name} {ver or '?'}" for name, ver, ok in versions if _release(ver) not in ok]
        _support = not unknown
        if unknown:
            log.info("aiortc: throughput tuning off for untested %s", ", ".join(unknown))
    return _support


def tune_sctp(pc: Any, tuning: AiortcTuning = DEFAULT_TUNING) -> bool:
    """Switch the peer connection's SCTP association to :class:`TunedSctpTransport`.

    Call once the association exists (after ``createDataChannel`` or the remote offer) and
    before it starts; idempotent. True when the association is (now) tuned.
    """
    sctp = getattr(pc, "sctp", None)
    if sctp is None or not tuning.sctp or not tuning_supported():
        return False
    if type(sctp) is TunedSctpTransport:
        return True
    if type(sctp) is not RTCSctpTransport:
        return False  # someone else's subclass: leave it alone
    sctp.__class__ = TunedSctpTransport
    return True


def tune_ice_sockets(pc: Any, tuning: AiortcTuning = DEFAULT_TUNING) -> int:
    """Tune the UDP sockets aioice gathered for this peer connection (call after
    ``setLocalDescription``, which gathers). Returns how many got a faster reader."""
    if (tuning.batch_reads <= 1 and tuning.recv_buffer <= 0) or not tuning_supported():
        return 0
    sctp: Any = getattr(pc, "sctp", None)
    try:
        protocols = list(sctp.transport.transport._connection._protocols)
    except AttributeError:
        return 0
    tuned = 0
    for protocol in protocols:
        # Host sockets only: a relayed candidate's protocol sits on aioice's TurnTransport,
        # which carries data inside TURN messages through aioice's own client socket.
        if type(protocol) is not StunProtocol or isinstance(
            getattr(protocol, "transport", None), TurnTransport
        ):
            continue
        try:
            if tune_socket(protocol, batch=tuning.batch_reads, recv_buffer=tuning.recv_buffer):
                tuned += 1
        except Exception:  # a tuning must never cost the connection
            log.warning("aiortc: socket tuning failed, this socket stays stock", exc_info=True)
    return tuned
