"""Bookkeeping for the WebRTC transport that needs no sockets and no clock of its own.

* :func:`oversized` says which signals are too large to be real (an SDP is a few KiB, a
  candidate about 200 bytes), so a peer cannot make us hold megabytes per signal.
* :class:`PendingSignals` holds signals for session ids we do not know yet (DECISIONS.md #4:
  a candidate or offer may overtake the messages that create its session; buffer it, bounded,
  for 30 s, never drop it silently).
* :class:`SignalQuota` bounds the bytes of signals waiting in all sessions' queues together.
* :class:`RecentSids` remembers sessions that ended, so their late signals (and the server's
  ``webrtc_error "unknown session"`` replies to ours) are ignored instead of buffered.
* :class:`ReplayWindow` keeps the frames most recently handed to a data channel. A channel
  that dies may have lost any of them (queued in the library, in flight, or not yet taken by
  the remote), and there is no acknowledgement to tell which; resending them all over the
  WebSocket is safe because the receiver's reorder buffer drops seqs it already has.
* :func:`transport_kind` names the path of a session for telemetry.

Time is always passed in (monotonic seconds).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass

from ...protocol.e2e.seal import MAX_BINDING_TOKEN
from ...protocol.e2e.session import E2E_DTLS
from ...protocol.frames import Frame
from ...protocol.locality import MAX_HOST_TOKEN, P2P_HOST
from ...protocol.messages import HotlinkSignal

log = logging.getLogger("hotlink.webrtc")

# HotlinkSignal kinds (PROTOCOL.md §6.4).
SDP_OFFER = "sdp_offer"
SDP_ANSWER = "sdp_answer"
ICE_CANDIDATE = "ice_candidate"
WEBRTC_ERROR = "webrtc_error"
WEBRTC_KINDS = frozenset({SDP_OFFER, SDP_ANSWER, ICE_CANDIDATE, WEBRTC_ERROR})
# What the peer transport takes: the WebRTC kinds, the end-to-end DTLS binding, which
# belongs to the session's peer connection (protocol/e2e/session.py), and the offerer's
# network-stack hint that sizes it (protocol/locality.py).
P2P_KINDS = WEBRTC_KINDS | {E2E_DTLS, P2P_HOST}

KIB = 1024
MIB = 1024 * KIB

# The largest signal we take, in characters of its token (or error text): an SDP is a few
# KiB (each candidate line in it ~100 bytes), a trickled candidate about 200 bytes. Larger
# ones are not a real peer's and are dropped at the door.
MAX_SDP_TOKEN = 64 * KIB
MAX_CANDIDATE_TOKEN = 2 * KIB
MAX_ERROR_TEXT = 2 * KIB
# Session ids are 32 hex digits in the reference; anything this long is not one.
MAX_SID = 256
_MAX_TOKEN = {
    SDP_OFFER: MAX_SDP_TOKEN,
    SDP_ANSWER: MAX_SDP_TOKEN,
    ICE_CANDIDATE: MAX_CANDIDATE_TOKEN,
    E2E_DTLS: MAX_BINDING_TOKEN,
    P2P_HOST: MAX_HOST_TOKEN,
}

# DECISIONS.md #4: how long a signal for an unknown session is kept.
PENDING_EXPIRY = 30.0
# A real peer sends one offer or answer and a handful of candidates per session.
PENDING_PER_SID = 64
# ... which is a few KiB; an offer at the size cap plus many candidates still fit.
PENDING_PER_SID_BYTES = 256 * KIB
# Sessions with buffered signals at once; beyond this the oldest session's are given up.
PENDING_SIDS = 256
# Bytes of early signals for all unknown sessions together.
PENDING_BYTES = 4 * MIB
# Bytes of signals waiting in one session's queue for its negotiation task, and in all.
SESSION_SIGNAL_BYTES = 256 * KIB
SIGNAL_QUEUES_BYTES = 8 * MIB


def signal_size(signal: HotlinkSignal) -> int:
    """What holding ``signal`` costs, roughly (characters of its strings)."""
    return len(signal.sid) + len(signal.knd) + len(signal.tok) + len(signal.err)


def oversized(signal: HotlinkSignal) -> str:
    """Why ``signal`` is too large to be a real peer's, or '' when it is not."""
    if len(signal.sid) > MAX_SID:
        return f"a {len(signal.sid)}-character session id"
    if len(signal.knd) > 64:
        return f"a {len(signal.knd)}-character kind"
    limit = _MAX_TOKEN.get(signal.knd, MAX_SDP_TOKEN)
    if len(signal.tok) > limit:
        return f"a {len(signal.tok)}-character token (at most {limit})"
    if len(signal.err) > MAX_ERROR_TEXT:
        return f"a {len(signal.err)}-character error (at most {MAX_ERROR_TEXT})"
    return ""


def is_legacy_kind(kind: str) -> bool:
    """The QUIC revision's kinds, which WebRTC clients ignore (PROTOCOL.md §6.10)."""
    return kind.startswith("quic_")


@dataclass(slots=True)
class _Held:
    since: float
    signals: list[HotlinkSignal]
    nbytes: int = 0


class PendingSignals:
    """Signals per unknown session id, in arrival order, bounded and expiring."""

    def __init__(
        self,
        *,
        expiry: float = PENDING_EXPIRY,
        per_sid: int = PENDING_PER_SID,
        max_sids: int = PENDING_SIDS,
        per_sid_bytes: int = PENDING_PER_SID_BYTES,
        max_bytes: int = PENDING_BYTES,
    ) -> None:
        self.expiry = expiry
        self.per_sid = per_sid
        self.max_sids = max_sids
        self.per_sid_bytes = per_sid_bytes
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._bytes = 0
        self.expired = 0  # signals given up because their session never appeared
        self.overflowed = 0  # signals refused because a bound was reached

    def __len__(self) -> int:
        return sum(len(h.signals) for h in self._held.values())

    @property
    def nbytes(self) -> int:
        """What the held signals cost (:func:`signal_size`)."""
        return self._bytes

    def __contains__(self, sid: object) -> bool:
        return sid in self._held

    def add(self, signal: HotlinkSignal, now: float) -> bool:
        """Hold ``signal`` until its session appears; False if a bound refused it."""
        self.expire(now)
        size = signal_size(signal)
        held = self._held.get(signal.sid)
        count, nbytes = (len(held.signals), held.nbytes) if held is not None else (0, 0)
        if count >= self.per_sid or nbytes + size > self.per_sid_bytes:
            return self._refuse(
                f"more than {self.per_sid} early webrtc signals or {self.per_sid_bytes} bytes "
                f"of them for session {signal.sid[:8]}; refusing the excess"
            )
        if self._bytes + size > self.max_bytes:
            # Refused rather than pushing out older sessions' signals: those are as likely
            # to be real, and expire on their own.
            return self._refuse(
                f"early webrtc signals hold {self._bytes} bytes (at most {self.max_bytes}); "
                f"refusing one for session {signal.sid[:8]}"
            )
        if held is None:
            if len(self._held) >= self.max_sids:
                sid, oldest = self._held.popitem(last=False)
                self._bytes -= oldest.nbytes
                self.overflowed += len(oldest.signals)
                log.warning(
                    "too many sessions with early webrtc signals; giving up %d for %s",
                    len(oldest.signals),
                    sid[:8],
                )
            held = self._held[signal.sid] = _Held(now, [])
        held.signals.append(signal)
        held.nbytes += size
        self._bytes += size
        return True

    def _refuse(self, why: str) -> bool:
        self.overflowed += 1
        if self.overflowed == 1 or self.overflowed % 100 == 0:
            log.warning("%s (%d refused so far)", why, self.overflowed)
        return False

    def take(self, sid: str, now: float) -> list[HotlinkSignal]:
        """Everything held for ``sid`` (oldest first), now that its session exists."""
        self.expire(now)
        held = self._held.pop(sid, None)
        if held is None:
            return []
        self._bytes -= held.nbytes
        return held.signals

    def discard(self, sid: str) -> None:
        held = self._held.pop(sid, None)
        if held is not None:
            self._bytes -= held.nbytes

    def expire(self, now: float) -> None:
        """Drop sessions whose first held signal is older than the expiry."""
        while self._held:
            sid, held = next(iter(self._held.items()))
            if now - held.since < self.expiry:
                return
            del self._held[sid]
            self._bytes -= held.nbytes
            self.expired += len(held.signals)
            log.info(
                "webrtc signals for unknown session %s expired after %.0f s (%d signals)",
                sid[:8],
                self.expiry,
                len(held.signals),
            )


class SignalQuota:
    """Bytes of signals waiting in every session's queue together, at most ``max_bytes``."""

    def __init__(self, max_bytes: int = SIGNAL_QUEUES_BYTES) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes``; False (nothing reserved) if that goes past the bound."""
        if self.used + nbytes > self.max_bytes:
            return False
        self.used += nbytes
        return True

    def give(self, nbytes: int) -> None:
        self.used = max(0, self.used - nbytes)


class RecentSids:
    """The last ``size`` session ids that ended (least recently added forgotten first)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._sids: OrderedDict[str, None] = OrderedDict()

    def add(self, sid: str) -> None:
        self._sids[sid] = None
        self._sids.move_to_end(sid)
        while len(self._sids) > self.size:
            self._sids.popitem(last=False)

    def __contains__(self, sid: object) -> bool:
        return sid in self._sids


class ReplayWindow:
    """The most recent frames sent over P2P, at most ``max_bytes`` of payload (FIFO)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: deque[Frame] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, frame: Frame) -> None:
        self._frames.append(frame)
        self._bytes += len(frame.payload)
        # Keep at least the newest frame even if it alone exceeds the bound.
        while self._bytes > self.max_bytes and len(self._frames) > 1:
            old = self._frames.popleft()
            self._bytes -= len(old.payload)

    def take_all(self) -> list[Frame]:
        """Every frame held, oldest first; the window is empty afterwards."""
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        return frames

    def clear(self) -> None:
        self._frames.clear()
        self._bytes = 0


def transport_kind(local: str | None, remote: str | None) -> str:
    """``p2p-host``/``p2p-srflx``/``p2p-relay`` for the selected pair's candidate types.

    The path goes through a TURN server when *either* end is a relay candidate: libdatachannel
    may call its own end ``prflx`` while the packets travel through the peer's allocation.
    A ``srflx`` end means a NAT mapping found by STUN. A ``prflx`` end alone says only that a
    connectivity check arrived before the candidate it came from was trickled (common on a
    LAN or loopback), so it counts as host, like an unknown pair.
    """
    kinds = {local, remote}
    if "relay" in kinds:
        return "p2p-relay"
    if "srflx" in kinds:
        return "p2p-srflx"
    return "p2p-host"
