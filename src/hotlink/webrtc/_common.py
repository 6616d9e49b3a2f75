"""Behaviour shared by both backends: callback hygiene, candidate buffering, backpressure,
transport state.

A backend subclasses :class:`PeerBase` and implements the few ``_hook`` methods; everything
the interface promises about ordering, buffering and error handling lives here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from abc import abstractmethod

from hotlink.protocol.ice import IceCandidate, remote_max_message_size

from .base import (
    DEFAULT_BACKPRESSURE_WAIT,
    DEFAULT_BUFFERED_HIGH,
    BackpressureTimeoutError,
    ChannelNotOpenError,
    MessageTooLargeError,
    Peer,
    PeerEvents,
    WebRTCError,
)

log = logging.getLogger("hotlink.webrtc")

# Candidates held back until the remote description arrives. A real peer trickles a handful
# (one per interface and server); this bound only stops a hostile peer from growing memory.
MAX_PENDING_CANDIDATES = 256
# While waiting for the send buffer to drain we re-check it this often: the libraries report
# only the crossing of the low threshold, so polling is what sees a slow drain above it (the
# progress that keeps a send waiting), and a missed event can delay a send a little but
# never stall it.
_DRAIN_POLL = 0.05

_MID_RE = re.compile(r"^a=mid:(\S+)\s*$", re.MULTILINE)


def sdp_mids(sdp: str) -> list[str]:
    """The ``a=mid`` values of an SDP, in m-line order."""
    return _MID_RE.findall(sdp.replace("\r\n", "\n"))


def require_datachannel_section(sdp: str, kind: str) -> None:
    """Refuse a remote description without a data-channel m-line before the library sees it.

    aiortc would accept it and answer with no channel at all, which only shows up much later
    as a channel that never opens.
    """
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m=application ") and "webrtc-datachannel" in line:
            return
        if line.startswith("m=application ") and "DTLS/SCTP" in line:
            return  # the legacy "DTLS/SCTP 5000" form
    raise WebRTCError(f"remote {kind} has no data-channel (m=application) section")


def resolve_mid(cand: IceCandidate, mids: list[str]) -> tuple[str | None, int]:
    """The (mid, m-line index) to hand the library for a remote candidate.

    The mid wins when the remote SDP knows it; otherwise the m-line index picks it
    (DECISIONS.md #3: the Rust client sends an empty ``sdpMid``); with neither, the first
    m-line, which is the only one a data-channel-only session has.
    """
    if cand.sdp_mid and cand.sdp_mid in mids:
        return cand.sdp_mid, mids.index(cand.sdp_mid)
    if 0 <= cand.sdp_mline_index < len(mids):
        return mids[cand.sdp_mline_index], cand.sdp_mline_index
    if mids:
        return mids[0], 0
    return (cand.sdp_mid or None), max(cand.sdp_mline_index, 0)


class PeerBase(Peer):
    """The backend-independent half of a :class:`Peer`."""

    # Names the library in error messages.
    LIBRARY = ""

    def __init__(
        self,
        events: PeerEvents,
        *,
        buffered_high: int = DEFAULT_BUFFERED_HIGH,
        backpressure_wait: float = DEFAULT_BACKPRESSURE_WAIT,
    ) -> None:
        if buffered_high <= 0:
            raise ValueError(f"buffered_high must be positive, got {buffered_high}")
        if backpressure_wait < 0:
            raise ValueError(f"backpressure_wait must be >= 0, got {backpressure_wait}")
        self._loop = asyncio.get_running_loop()
        self._events = events
        self._buffered_high = buffered_high
        self._backpressure_wait = backpressure_wait
        self._closed = False  # close() was called: no more callbacks, no more operations
        self._open_emitted = False
        self._closed_emitted = False
        # ICE and DTLS up (see Peer.transport_connected), and whether they ever were.
        self._transport_up = False
        self._transport_was_up = False
        self._remote_sdp: str | None = None
        self._remote_mids: list[str] = []
        # Parsed once per remote description: send() checks it for every message.
        self._max_message_size = remote_max_message_size("")
        self._pending: list[IceCandidate | None] = []
        self._pending_dropped = 0
        self._drained = asyncio.Event()
        self._send_lock = asyncio.Lock()
        # Senders inside the slow path (waiting for the lock or for the buffer to drain). While
        # there are none, a message that needs no waiting is handed to the library at once.
        self._queued_senders = 0

    # ------------------------------------------------------------ hooks for backends

    @abstractmethod
    async def _apply_candidate(
        self, cand: IceCandidate | None, mid: str | None, index: int
    ) -> None:
        """Give one remote candidate (or end-of-candidates) to the library."""

    @abstractmethod
    def _create_channel(self) -> None:
        """Create the ``syftbox-data`` channel (offerer); raise WebRTCError if one exists."""

    @abstractmethod
    async def _local_description(self, kind: str) -> str:
        """Create the local offer or answer, set it, and return its SDP."""

    @abstractmethod
    async def _apply_remote_description(self, sdp: str, kind: str) -> None:
        """Give the remote offer or answer to the library (raise on refusal)."""

    @abstractmethod
    def _send_now(self, data: bytes) -> None:
        """Queue one message in the library; raise on failure."""

    @abstractmethod
    def _channel_open(self) -> bool:
        """Whether the library's channel is open now."""

    @abstractmethod
    def _buffered(self) -> int:
        """The library's buffered amount."""

    # ------------------------------------------------------------ events (loop thread only)

    def _emit_candidate(self, cand: IceCandidate | None) -> None:
        if not self._closed:
            self._call("on_local_candidate", cand)

    def _emit_open(self) -> None:
        if self._closed or self._open_emitted or self._closed_emitted:
            return
        self._open_emitted = True
        self._call("on_channel_open")

    def _emit_message(self, data: bytes) -> None:
        if self._closed or self._closed_emitted:
            return
        if not self._open_emitted:
            # Promised order: open before the first message, whatever the library does.
            self._emit_open()
        self._call("on_message", data)

    def _emit_closed(self, reason: str) -> None:
        # Wake a sender parked on backpressure so it sees the closed channel at once.
        self._drained.set()
        if self._closed or self._closed_emitted:
            return
        self._closed_emitted = True
        log.debug("webrtc channel closed: %s", reason)
        self._call("on_channel_closed", reason)

    def _notify_drained(self) -> None:
        self._drained.set()

    def _set_transport_up(self, up: bool) -> None:
        """The backend saw ICE and DTLS come up (True) or go down, fail or close (False)."""
        if up and not self._transport_up:
            log.debug("webrtc transport connected (ICE and DTLS)")
        self._transport_up = up
        self._transport_was_up = self._transport_was_up or up

    def _call(self, name: str, *args: object) -> None:
        try:
            getattr(self._events, name)(*args)
        except Exception:
            # The owner's bug must not break the library's event plumbing.
            log.exception("webrtc event handler %s raised", name)

    # ------------------------------------------------------------ remote description

    def _check_not_closed(self) -> None:
        if self._closed:
            raise WebRTCError("peer connection is closed")

    async def create_offer(self) -> str:
        self._check_not_closed()
        self._create_channel()
        return await self._local_description("offer")

    async def accept_offer(self, sdp: str) -> str:
        self._check_not_closed()
        await self._set_remote(sdp, "offer")
        return await self._local_description("answer")

    async def set_answer(self, sdp: str) -> None:
        self._check_not_closed()
        await self._set_remote(sdp, "answer")

    async def _set_remote(self, sdp: str, kind: str) -> None:
        require_datachannel_section(sdp, kind)
        try:
            await self._apply_remote_description(sdp, kind)
        except Exception as exc:
            raise WebRTCError(f"{self.LIBRARY}: remote {kind} rejected: {exc}") from exc
        await self._remote_description_applied(sdp)

    async def _remote_description_applied(self, sdp: str) -> None:
        """Record the remote SDP and apply the candidates that were waiting for it."""
        self._remote_sdp = sdp
        self._remote_mids = sdp_mids(sdp)
        self._max_message_size = remote_max_message_size(sdp)
        pending, self._pending = self._pending, []
        for cand in pending:
            await self._apply_resolved(cand)

    async def add_remote_candidate(self, cand: IceCandidate | None) -> None:
        if self._closed:
            return
        if self._remote_sdp is None:
            if len(self._pending) >= MAX_PENDING_CANDIDATES:
                self._pending_dropped += 1
                if self._pending_dropped == 1:
                    log.warning(
                        "more than %d remote candidates before the remote description; "
                        "dropping the excess",
                        MAX_PENDING_CANDIDATES,
                    )
                return
            self._pending.append(cand)
            return
        await self._apply_resolved(cand)

    async def _apply_resolved(self, cand: IceCandidate | None) -> None:
        if self._closed:
            return
        if cand is None:
            mid, index = (self._remote_mids[0] if self._remote_mids else None), 0
        else:
            mid, index = resolve_mid(cand, self._remote_mids)
        try:
            await self._apply_candidate(cand, mid, index)
        except Exception as exc:
            # A bad or late candidate costs one path, never the session.
            log.info("remote ICE candidate %r not applied: %s", cand, exc)

    # ------------------------------------------------------------ sending

    @property
    def max_message_size(self) -> int:
        return self._max_message_size

    @property
    def transport_connected(self) -> bool:
        return self._transport_up and not self._closed

    @property
    def transport_was_connected(self) -> bool:
        return self._transport_was_up

    @property
    def is_open(self) -> bool:
        return not self._closed and not self._closed_emitted and self._channel_open()

    @property
    def buffered_amount(self) -> int:
        if self._closed:
            return 0
        try:
            return self._buffered()
        except Exception:
            return 0

    async def send(self, data: bytes) -> None:
        size = len(data)
        if size > self._max_message_size:
            raise MessageTooLargeError(
                f"message of {size} bytes exceeds the remote's max message size "
                f"{self._max_message_size}"
            )
        if self._queued_senders == 0:
            # Fast path, the common case: nobody is queued before us, so if no wait is needed,
            # sending now keeps call order without taking the lock (this runs once per frame).
            if not self.is_open:
                raise ChannelNotOpenError("data channel is not open")
            if self._buffered() <= self._buffered_high:
                self._send_now_or_close(data)
                return
        self._queued_senders += 1
        try:
            async with self._send_lock:
                if not self.is_open:
                    raise ChannelNotOpenError("data channel is not open")
                if self._buffered() > self._buffered_high:
                    await self._wait_drained()
                self._send_now_or_close(data)
        finally:
            self._queued_senders -= 1

    def _send_now_or_close(self, data: bytes) -> None:
        try:
            self._send_now(data)
        except Exception as exc:
            # If later messages got through after a refused one, the stream would have a
            # hole: a refusal ends the channel for good (libdatachannel refuses while its
            # SCTP association is going down, before it reports the channel closed).
            self._emit_closed(f"send failed: {exc}")
            raise ChannelNotOpenError(f"data channel unusable, send failed: {exc}") from exc

    async def _wait_drained(self) -> None:
        """Wait until the buffer is at or below the watermark, however long that takes, as
        long as it keeps draining: only ``backpressure_wait`` seconds without any decrease
        (a stalled path, not a slow one) raise :class:`BackpressureTimeoutError`."""
        wait = self._backpressure_wait
        last = self._buffered()
        deadline = self._loop.time() + wait
        while True:
            # Clear, then re-check: a drain that happened before the clear shows in the
            # amount; one after it sets the event.
            self._drained.clear()
            if not self.is_open:
                raise ChannelNotOpenError("data channel closed while waiting to send")
            amount = self._buffered()
            if amount <= self._buffered_high:
                return
            now = self._loop.time()
            if amount < last:
                # Progress, however little: the stall clock starts again. (Nothing else adds
                # to the buffer meanwhile: later senders queue behind this one.)
                deadline = now + wait
            last = amount
            remaining = deadline - now
            if remaining <= 0:
                raise BackpressureTimeoutError(
                    f"send buffer stayed above {self._buffered_high} bytes and did not drain "
                    f"for {wait:.2f}s ({amount} buffered): the path is stalled"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), min(remaining, _DRAIN_POLL))
