"""libdatachannel's SCTP (usrsctp) settings, applied once per process through its C API.

The binding (``aiolibdatachannel``) has no call for them, but its extension module links
libdatachannel statically and exports the C function ``rtcSetSctpSettings(const
rtcSctpSettings *)``; ctypes reaches it through the already loaded module (``dlopen`` of the
same path returns that very library). The struct is twelve ``int`` fields; the bundled
version reads exactly these, in this order (checked against its machine code: it reads the
offsets 0x00..0x2c, one ``int`` each):

    recvBufferSize, sendBufferSize, maxChunksOnQueue, initialCongestionWindow, maxBurst,
    congestionControlModule, delayedSackTimeoutMs, minRetransmitTimeoutMs,
    maxRetransmitTimeoutMs, initialRetransmitTimeoutMs, maxRetransmitAttempts,
    heartbeatIntervalMs

``0`` keeps libdatachannel's own default for every field (1 MiB buffers, 10 K chunks, a
10-MTU initial window and burst, RFC 2581 congestion control, 20 ms delayed SACK, RTO
200 ms..10 s starting at 1 s, 5 retransmissions, 10 s heartbeats); ``maxBurst`` and
``delayedSackTimeoutMs`` take ``-1`` for "disabled". The library turns them into usrsctp
sysctls, which every SCTP socket created *afterwards* starts from: applying before the
first peer connection covers all of them, and an association that exists keeps what it
got.

Why the buffers matter: SCTP's send and receive buffers bound the bytes in flight, so one
association carries at most ``buffer / RTT`` (1 MiB at 40 ms = 210 Mbit/s). They are limits,
not allocations: memory is used only while data is unacknowledged (send side) or unread
(receive side), and hotlink reads every message as it arrives, so on a fast path what is
held is about one bandwidth-delay product per busy connection.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import astuple, dataclass, fields
from typing import Any

log = logging.getLogger("hotlink.webrtc.libdatachannel")

KIB = 1024
MIB = 1024 * 1024

# The SCTP buffer a bandwidth-delay product may ask for at most: one association's share of a
# client's memory (see sctp_buffer_for). 16 MiB carries 1 Gbit/s at 130 ms.
MAX_SCTP_BUFFER = 16 * MIB
# Never below libdatachannel's own default: smaller only costs throughput.
MIN_SCTP_BUFFER = 1 * MIB

# Zero ints after the known fields (see SctpSettings.as_struct).
STRUCT_PADDING = 20

# rtcSctpSettings.congestionControlModule values (usrsctp's SCTP_CC_*).
CC_RFC2581 = 0
CC_HSTCP = 1
CC_HTCP = 2
CC_RTCC = 3
# The names settings use for them.
CONGESTION_CONTROL = {"rfc2581": CC_RFC2581, "hstcp": CC_HSTCP, "htcp": CC_HTCP, "rtcc": CC_RTCC}


@dataclass(frozen=True, slots=True)
class SctpSettings:
    """One ``rtcSctpSettings``; 0 leaves a field at libdatachannel's default.

    Field order is the C struct's: do not reorder.
    """

    recv_buffer_size: int = 0  # bytes: the receive window advertised to the peer
    send_buffer_size: int = 0  # bytes: unacknowledged plus queued data in usrsctp
    max_chunks_on_queue: int = 0
    initial_congestion_window: int = 0  # MTUs
    max_burst: int = 0  # MTUs; -1: no limit
    congestion_control_module: int = 0  # CC_* (0 is also the default: RFC 2581)
    delayed_sack_timeout_ms: int = 0  # -1: no delayed SACK
    min_retransmit_timeout_ms: int = 0
    max_retransmit_timeout_ms: int = 0
    initial_retransmit_timeout_ms: int = 0
    max_retransmit_attempts: int = 0
    heartbeat_interval_ms: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or not -1 <= value <= 0x7FFFFFFF:
                raise ValueError(f"SCTP setting {f.name} must be an int >= -1, got {value!r}")
        if not 0 <= self.congestion_control_module <= CC_RTCC:
            raise ValueError(
                f"congestion_control_module must be 0..{CC_RTCC}, "
                f"got {self.congestion_control_module}"
            )
        for name in ("recv_buffer_size", "send_buffer_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: the library's default)")

    def as_struct(self) -> ctypes.Array[ctypes.c_int]:
        """The C struct, zero-padded: should a later library read more fields than these
        twelve, it reads 0 ("the library's default") instead of memory past our array."""
        values = astuple(self)
        return (ctypes.c_int * (len(values) + STRUCT_PADDING))(*values)


def sctp_buffer_for(bandwidth_bps: int, rtt_ms: int, *, budget: int = MAX_SCTP_BUFFER) -> int:
    """The SCTP buffer that keeps a path of ``bandwidth_bps`` and ``rtt_ms`` full: its
    bandwidth-delay product, at least :data:`MIN_SCTP_BUFFER`, at most ``budget``.

    1 Gbit/s x 100 ms = 12.5 MB; 100 Mbit/s x 40 ms = 500 kB (so the 1 MiB floor).
    """
    if bandwidth_bps < 0 or rtt_ms < 0:
        raise ValueError("bandwidth and RTT must be >= 0")
    bdp = bandwidth_bps * rtt_ms // (8 * 1000)
    return max(MIN_SCTP_BUFFER, min(budget, bdp))


# Our defaults are libdatachannel's own (1 MiB buffers and the rest), on purpose, except the
# congestion control. Measured here: on loopback 1, 4 and 16 MiB carry the same (the bound
# there is per-packet CPU); between namespaces 40 ms apart (a user-space delay link), 4 MiB
# carried up to 2.5x what 1 MiB did when no packet was lost, but about the same, or less, in
# most runs; and an aiortc sender facing a 4 MiB receive window stalled for over 1.5 s in 2 of
# ~17 runs of the varied-size pair test (0 of 8 with 1 MiB): more in flight, more loss, and
# aiortc recovers by a 1 s retransmission timeout. A larger buffer is for long fat paths
# between our own peers (see sctp_buffer_for: 1 MiB caps a 40 ms path at 26 MB/s). Its cost:
# a sender's peak RSS grows by ~7 MiB per busy association at 4 MiB (~18 MiB at 16 MiB: its
# send buffer fills whenever the path is slower than the app), a receiver's not at all
# (hotlink reads every message as it arrives); a larger burst or other SACK timers changed
# nothing on loopback.
#
# HighSpeed TCP (RFC 3649) rather than the library's Reno: below a 38-packet window it is
# Reno, above it grows faster and backs off less after a loss, which is what a long fat path
# needs (Reno regains half of a 1,000-packet window at one packet per round trip). In paired
# runs on the WAN matrix it carried more in 13 of 16 (20 to 80 ms at 300 Mbit/s: +25 to
# +50 %), the same in 2, less in 1 (DECISIONS-LOCAL). H-TCP measured 20-30 % slower on
# loopback and lost up to 3x on the long and lossy cells.
DEFAULT_SCTP_SETTINGS = SctpSettings(congestion_control_module=CC_HSTCP)


class _Applier:
    """Process-wide state of what was applied (the library's settings are process-wide)."""

    lock = threading.Lock()
    applied: SctpSettings | None = None
    unavailable: str = ""  # why the C function cannot be used; logged once


def _library_function(library_path: str) -> Any:
    lib = ctypes.CDLL(library_path)
    fn = lib.rtcSetSctpSettings
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def _native_path() -> str:
    from aiolibdatachannel import _core

    return str(_core._native.__file__)


def apply_sctp_settings(settings: SctpSettings, *, library_path: str | None = None) -> bool:
    """Give ``settings`` to libdatachannel for every SCTP association created from now on.

    Idempotent: the same settings again cost nothing. Call it before the first peer
    connection (associations that exist keep what they had). Returns False, after one log
    line, when the library offers no ``rtcSetSctpSettings``: the library's defaults then
    stay in force, which work, only with a smaller window on long paths.
    """
    with _Applier.lock:
        if _Applier.applied == settings:
            return True
        if _Applier.unavailable:
            return False
        try:
            fn = _library_function(library_path or _native_path())
        except (OSError, AttributeError, ImportError) as exc:
            _Applier.unavailable = str(exc)
            log.warning(
                "libdatachannel SCTP settings cannot be applied (%s): using the library's "
                "defaults (1 MiB SCTP buffers)",
                exc,
            )
            return False
        struct = settings.as_struct()
        code = int(fn(ctypes.byref(struct)))
        if code != 0:
            # rtcSetSctpSettings only fails on a null pointer or a C++ exception.
            log.warning("libdatachannel refused the SCTP settings %s (error %d)", settings, code)
            return False
        if _Applier.applied is not None:
            log.info("libdatachannel SCTP settings changed: new associations use %s", settings)
        else:
            log.debug("libdatachannel SCTP settings: %s", settings)
        _Applier.applied = settings
        return True


def applied_sctp_settings() -> SctpSettings | None:
    """The settings in force for new associations (None: the library's defaults)."""
    return _Applier.applied


def _reset_for_tests() -> None:
    with _Applier.lock:
        _Applier.applied = None
        _Applier.unavailable = ""
