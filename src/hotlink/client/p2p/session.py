"""One hotlink session's WebRTC peer connection: negotiate, carry frames, fail over to WS.

Roles (DECISIONS.md #1): on an **inbound** session we accepted, we offer right away; on an
**outbound** session we opened, we answer the peer's offer. Frames flow from the opener to the
acceptor, so the outbound side sends on the channel and the inbound side receives.

States::

    new ──(offer made / offer received)──> negotiating ──(channel open)──> open
      │                                        │                             │
      └────────────(deadline, error, webrtc_error, channel closed)──────────┴──> failed
    any ──(session ended)──> closed

``failed`` is final for the session: the WebSocket carries the rest (no renegotiation).

When the channel fails after frames went over it, those still in the replay window are sent
again over the WebSocket (see :class:`~.signaling.ReplayWindow`): the receiver drops the
seqs it has, and nothing the channel swallowed is lost. At the stream's end that resend must
come before the Close ``eof`` (the server forgets the session at it), so the sender calls
:meth:`P2PSession.drain` first.

On an end-to-end sealed session (:mod:`hotlink.protocol.e2e`) each side binds the DTLS
fingerprints of its own SDP to the key exchange and sends them sealed (``e2e_dtls``); the peer
checks them against the fingerprints in the SDP it received. The sender's channel is
``open`` only once the acceptor's binding checked out (until then it is "up" but still
``negotiating``, and frames take the WebSocket), so no frame goes over a data channel a
middleman could hold (frames are sealed either way; this keeps the P2P path to the same
standard), and a binding that does not check out closes the hotlink session loudly. The keys
can come after our SDP (the acceptor offers right after its Accept, before the opener's
hello), so the binding is retried whenever something new arrives: a signal, the channel
opening, or the sender's next frame.

One task (``_run``) owns negotiation and applies signals in arrival order. Received frames go
straight from the library's callback into the session's receive path, which never waits:
flow control (:mod:`hotlink.protocol.flow`) keeps the sender within what the receiver may
hold, so a slow app never makes the channel fail. Every task is created through the owner
and cancelled by :meth:`P2PSession.close`; the owner (the transport) closes each session
exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ...protocol.e2e.errors import E2EError
from ...protocol.e2e.session import E2E_DTLS, E2ESession
from ...protocol.errors import ProtocolError
from ...protocol.frames import Frame, decode_frame, encode_frame
from ...protocol.ice import (
    IceCandidate,
    candidate_token,
    dtls_fingerprints,
    parse_candidate_token,
    parse_sdp_token,
    sdp_token,
)
from ...protocol.locality import P2P_HOST, HostHint, MtuPolicy, encode_hint, parse_hint
from ...protocol.messages import HotlinkData, HotlinkSignal, Payload
from ...webrtc import (
    BackpressureTimeoutError,
    MessageTooLargeError,
    Peer,
    WebRTCError,
)
from ...webrtc.sctp_settings import DEFAULT_SCTP_SETTINGS, SctpSettings
from ..telemetry import Telemetry
from .signaling import (
    ICE_CANDIDATE,
    SDP_ANSWER,
    SDP_OFFER,
    SESSION_SIGNAL_BYTES,
    WEBRTC_ERROR,
    ReplayWindow,
    SignalQuota,
    signal_size,
    transport_kind,
)
from .transport import PeerSendError, Role, SessionInfo

log = logging.getLogger("hotlink.webrtc")

KIB = 1024
MIB = 1024 * 1024

# PROTOCOL.md §6.6: the first frames wait for the channel (the rest never do).
GRACE_SEQS = 3
# PROTOCOL.md §6.7: in P2P-only mode every send waits this long for the channel.
P2P_ONLY_READY_WAIT = 10.0
# Signals queued for one session's negotiation task (a real peer sends a handful); in bytes
# they are bounded by SESSION_SIGNAL_BYTES, and with every other session's by the owner's
# SignalQuota.
SIGNAL_QUEUE = 256
# Candidates an answerer holds before the offer that makes its peer connection arrives.
EARLY_CANDIDATES = 64
# Frames kept for a resend over WS after a channel failure, beyond the send buffer itself:
# what is in flight plus what the remote library took but its owner had not yet read. With
# SCTP's buffers larger than libdatachannel's 1 MiB default, replay_window() adds the excess.
REPLAY_EXTRA = 4 * MIB
_LIBRARY_SCTP_BUFFER = MIB
# After the session ends, the sender keeps its peer until the receiver closes its end (it has
# everything) or the send buffer has been empty this long, at most LINGER_MAX.
LINGER_DRAINED = 2.0
LINGER_MAX = 30.0
_LINGER_POLL = 0.1
# Before the Close eof the sender waits this long at most for its send buffer to empty; a
# channel that cannot drain in time is given up and its replay window resent over WS.
DRAIN_WAIT = 10.0
_DRAIN_POLL = 0.005

State = Literal["new", "negotiating", "open", "failed", "closed"]


@dataclass(frozen=True, slots=True)
class P2PPathInfo:
    """What the status document shows of one session's peer connection."""

    state: State
    # The path now (``ws`` unless the channel is open), and the path the stream last used:
    # a channel that opened and was not lost mid-stream carried it to the end.
    transport: str
    carried: str
    # Why P2P was given up for this session ("" when it was not, or ended with the stream).
    error: str
    # The library's measured round trip in seconds, when it has one.
    rtt: float | None
    # The SCTP MTU our end of the peer connection was made with (0: the library's default).
    mtu: int = 0


@dataclass(frozen=True)
class WebRTCConfig:
    """The transport's knobs (built from ClientSettings by the transport)."""

    backend: str = "auto"
    relay_only: bool = False
    buffered_high: int = MIB
    # libdatachannel only: SCTP MTU (0: the library's 1280, or larger packets between peers on
    # one network stack) and process-wide SCTP settings.
    mtu: int = 0
    # This process's network stack (client/p2p/stack_id.py; None: never "the same host").
    stack_id: bytes | None = None
    sctp: SctpSettings = DEFAULT_SCTP_SETTINGS
    tuned: bool = True  # aiortc with hotlink's tuning (False: as shipped)
    backpressure_wait: float = 1.5
    grace: float = 1.5
    open_timeout: float = 15.0
    p2p_only: bool = False
    p2p_only_wait: float = P2P_ONLY_READY_WAIT
    strict: bool = False
    kill_after: int = 0
    max_peers: int = 64
    replay_window: int = MIB + REPLAY_EXTRA
    linger_drained: float = LINGER_DRAINED
    linger_max: float = LINGER_MAX
    drain_wait: float = DRAIN_WAIT


def replay_window(buffered_high: int, sctp: SctpSettings) -> int:
    """Bytes of frames to keep for a resend: everything the channel may hold that the remote
    owner has not read, i.e. our send buffer (``buffered_high``), SCTP's send buffer and the
    peer's SCTP receive buffer (assumed the same size as ours), plus REPLAY_EXTRA's margin."""
    excess = sum(
        max(0, (size or _LIBRARY_SCTP_BUFFER) - _LIBRARY_SCTP_BUFFER)
        for size in (sctp.send_buffer_size, sctp.recv_buffer_size)
    )
    return max(MIB, buffered_high) + REPLAY_EXTRA + excess


class SessionOwner(Protocol):
    """What a session needs from the transport that owns it."""

    config: WebRTCConfig
    # Bytes of signals queued in all sessions together.
    signal_quota: SignalQuota

    @property
    def telemetry(self) -> Telemetry: ...

    @property
    def mtu_policy(self) -> MtuPolicy:
        """When a peer connection may use large SCTP packets (protocol/locality.py)."""

    def new_peer(self, session: P2PSession, *, mtu: int = 0) -> Peer:
        """A peer connection whose events go to ``session`` (``mtu``: 0 for the backend's
        own); raises WebRTCError."""

    def peer_closed(self, session: P2PSession) -> None:
        """``session`` closed the peer it got from :meth:`new_peer`."""

    def queue_signal(self, signal: HotlinkSignal) -> None:
        """Send a signal to the peer, after every signal queued before it."""

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task the owner tracks (and cancels on shutdown)."""

    def deliver_frame(self, sid: str, frame: Frame) -> None:
        """A frame received on the channel, into the session's receive path (never waits)."""

    async def send_in_order(self, payload: Payload) -> None:
        """Queue a message behind the WebSocket data already queued (for resends)."""

    def e2e_session(self, sid: str) -> E2ESession | None:
        """The end-to-end state of the hotlink session (None: not sealed, or gone)."""

    def e2e_failed(self, sid: str, reason: str) -> None:
        """The DTLS binding failed: close the hotlink session loudly (returns at once)."""


def _short(sid: str) -> str:
    return f"{sid[:8]}…" if len(sid) > 8 else sid


class P2PSession:
    """The peer connection of one hotlink session; also its :class:`~hotlink.webrtc.PeerEvents`."""

    def __init__(self, owner: SessionOwner, info: SessionInfo) -> None:
        self.owner = owner
        self.config = owner.config
        self.sid = info.sid
        self.path = info.path
        self.role: Role = info.role
        self.peer_email = info.peer_email
        self.state: State = "new"
        self.fail_reason = ""
        self.peer: Peer | None = None
        self.kind = "ws"  # what transport_kind reports once the channel is open
        self._kind_known = False
        self._loop = asyncio.get_running_loop()
        self.created = self._loop.time()
        self.opened_at: float | None = None
        self._signals: asyncio.Queue[HotlinkSignal] = asyncio.Queue(SIGNAL_QUEUE)
        self._signal_bytes = 0  # what the queue holds, taken from the owner's quota
        self._signals_dropped = 0
        self._early: list[IceCandidate | None] = []
        self._answered = False
        self._settled = asyncio.Event()  # open, failed or closed: senders stop waiting
        self._channel_gone = asyncio.Event()  # the channel closed (either side)
        self._send_lock = asyncio.Lock()
        self._grace_deadline: float | None = None
        self.fallback_counted = False
        self.window = ReplayWindow(self.config.replay_window)
        self._replay_pending = False
        # Frames the channel may have lost could not be resent (P2P-only, or WS send failed).
        self._resend_incomplete = False
        self.tx_frames = 0
        self.rx_frames = 0
        # The stream is ending cleanly (eof sent or received): the channel closing is normal.
        self._ending = False
        # A failure that was reported (not the channel closing with the stream's end), and
        # whether it moved an open channel's stream to the WebSocket.
        self.last_error = ""
        self.fell_back = False
        self._sctp_warned = False
        self._bad_messages = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._peer_released = False
        # The library reported the channel open; on a sealed session the sender's state
        # stays "negotiating" until the peer's DTLS binding checked out.
        self._channel_up = False
        self._binding_error = ""  # why the DTLS binding failed (the session is closing)
        self._binding_logged = False
        # The offerer's p2p_host hint (answerer only), and the MTU our peer was made with.
        self._peer_hint: HostHint | None = None
        self.mtu = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin: the offerer makes its offer now; the answerer waits for the peer's offer."""
        self._run_task = self._spawn(self._run(), "run")
        self._deadline = self._loop.call_later(self.config.open_timeout, self._on_deadline)

    def start_failed(self, reason: str) -> None:
        """A session that never gets a peer (no backend, too many peers): WS from the start."""
        self.state = "failed"
        self.fail_reason = reason
        self._settled.set()

    async def close(self, *, linger: bool) -> None:
        """The session ended: stop everything and close the peer.

        With ``linger``, a sender whose channel is still open first gives the frames it queued
        time to leave (the session's last frames are usually still in the send buffer).
        """
        previous = self.state
        self.state = "closed"
        self._settled.set()
        self._cancel_deadline()
        if linger and previous == "open" and self.role == "outbound" and self.tx_frames:
            await self._linger()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._drop_queued_signals()
        await self._release_peer()

    def _drop_queued_signals(self) -> None:
        while not self._signals.empty():
            self._signals.get_nowait()
        self.owner.signal_quota.give(self._signal_bytes)
        self._signal_bytes = 0

    async def _linger(self) -> None:
        if self.peer is not None:
            await self._buffer_empty(
                self.peer,
                self.config.linger_max,
                quiet=self.config.linger_drained,
                poll=_LINGER_POLL,
            )

    async def _buffer_empty(self, peer: Peer, within: float, *, quiet: float, poll: float) -> bool:
        """Wait until the send buffer has stayed empty for ``quiet`` s (True); False when the
        channel closes or P2P fails first, or after ``within`` s."""
        deadline = self._loop.time() + within
        empty_since: float | None = None
        while not self._channel_gone.is_set() and peer.is_open and self.state != "failed":
            now = self._loop.time()
            if peer.buffered_amount == 0:
                empty_since = now if empty_since is None else empty_since
                if now - empty_since >= quiet:
                    return True
            else:
                empty_since = None
            if now >= deadline:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._channel_gone.wait(), poll)
        return False

    async def drain(self) -> None:
        """Before the sender's Close eof: every frame that went over the channel is either
        with SCTP on a channel that is still open, or queued again on the WebSocket.

        The server forgets the session at that Close, so a resend after it is refused. An
        empty send buffer on an open channel means SCTP has every frame, and an association
        that stays up delivers what it took (reliable, ordered). A channel that closed, or
        whose buffer did not empty in time, may have lost anything in the replay window:
        that goes over the WebSocket now, ahead of the Close. What this cannot see is a
        channel that dies after its buffer emptied, before the peer read the frames: the
        receiver then misses seqs before the eof and closes the stream loudly.

        Raises PeerSendError when frames the channel may have lost cannot be resent.
        """
        async with self._send_lock:
            peer = self.peer
            if self.state == "open" and peer is not None and self.tx_frames:
                drained = await self._buffer_empty(
                    peer, self.config.drain_wait, quiet=0.0, poll=_DRAIN_POLL
                )
                if not drained and self.state == "open":
                    # Closed before the library told us, or stalled: either way, resend.
                    self._fail(
                        "the channel closed at the end of the stream"
                        if not peer.is_open
                        else f"the send buffer did not empty within {self.config.drain_wait:g} s"
                    )
            await self._replay_if_pending()
            if self._resend_incomplete:
                raise PeerSendError(
                    "hotlink p2p channel failed before the end of the stream and its last "
                    "frames could not be resent over the websocket"
                )
            self._ending = True

    async def _release_peer(self) -> None:
        peer = self.peer
        if peer is None:
            return
        if not self._peer_released:
            self._peer_released = True
            self.owner.peer_closed(self)
        # Idempotent: a second caller waits for the same teardown to finish.
        await peer.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = self.owner.spawn(coro, f"hotlink-p2p-{what}-{self.sid[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.state not in ("new", "negotiating"):
            return
        within = f"within {self.config.open_timeout:.0f} s"
        if self._channel_up:
            self._fail(
                "the peer did not bind the data channel's DTLS fingerprint to the end-to-end "
                f"key exchange {within}",
                notify_peer=True,
            )
        elif self.peer is None:
            self._fail(f"no offer arrived {within}", notify_peer=True)
        elif self.peer.transport_connected:
            # ICE and DTLS work, so the path is fine: the two SCTP stacks did not agree.
            self._warn_sctp(f"the data channel did not open {within}")
            self._fail(f"the data channel did not open {within} (SCTP)", notify_peer=True)
        else:
            self._fail(f"the data channel did not open {within}", notify_peer=True)

    def _warn_sctp(self, what: str) -> None:
        """The one WARNING for a channel whose ICE and DTLS connected but whose SCTP did not."""
        if self._sctp_warned:
            return
        self._sctp_warned = True
        log.warning(
            "hotlink webrtc: session=%s: ICE and DTLS connected with %s but %s: the two "
            "SCTP stacks did not complete an association (pion releases before 2024 reject "
            "libdatachannel's SCTP INIT). Try SYFTBOX_HOTLINK_WEBRTC_BACKEND=aiortc on this "
            "side, or update the peer's WebRTC stack; this session uses the websocket",
            _short(self.sid),
            self.peer_email or "the peer",
            what,
        )

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    @property
    def finished(self) -> bool:
        return self.state in ("failed", "closed")

    def transport_kind(self) -> str:
        if self.state != "open":
            return "ws"
        if not self._kind_known:
            self._update_kind()
        return self.kind

    def _update_kind(self) -> None:
        peer = self.peer
        if peer is None:
            return
        try:
            local, remote = peer.selected_candidate_types()
        except Exception:
            local = remote = None
        self.kind = transport_kind(local, remote)
        self._kind_known = local is not None or remote is not None

    def path_info(self) -> P2PPathInfo:
        rtt: float | None = None
        if self.state == "open" and self.peer is not None:
            try:
                rtt = self.peer.round_trip_time()
            except Exception:
                rtt = None
        opened = self.opened_at is not None and not self.fell_back
        return P2PPathInfo(
            state=self.state,
            transport=self.transport_kind(),
            carried=self.kind if opened else "ws",
            error=self.last_error,
            rtt=rtt,
            mtu=self.mtu,
        )

    # ------------------------------------------------------------ failure

    def stream_ending(self) -> None:
        """The stream ends cleanly from now on (see :attr:`_ending`)."""
        self._ending = True

    def _fail(self, reason: str, *, notify_peer: bool = False) -> None:
        """Give up P2P for this session (WS from now on); safe from any loop context."""
        if self.finished:
            return
        previous = self.state
        self.state = "failed"
        self.fail_reason = reason
        self._settled.set()
        self._cancel_deadline()
        if self._ending:
            # Every frame is with the receiver (or the eof promised none we cannot resend):
            # a channel that closes now, usually by the peer that finished, is no failure.
            log.debug("hotlink session %s: channel ended with the stream (%s)", self.sid, reason)
        else:
            self._report_failure(previous, reason, notify_peer)
        self._spawn(self._after_fail(), "teardown")

    def _report_failure(self, previous: State, reason: str, notify_peer: bool) -> None:
        self.last_error = reason
        self.fell_back = previous == "open"
        telemetry = self.owner.telemetry
        telemetry.incr("p2p_failed")
        telemetry.changed()
        level = logging.WARNING if previous == "open" else logging.INFO
        log.log(
            level,
            "hotlink webrtc failed: session=%s %s: %s; using the websocket",
            _short(self.sid),
            "after the channel was open" if previous == "open" else "while negotiating",
            reason,
        )
        if notify_peer:
            self.owner.queue_signal(HotlinkSignal(sid=self.sid, knd=WEBRTC_ERROR, err=reason))
        if previous == "open" and self.role == "outbound" and len(self.window):
            self._replay_pending = True

    async def _after_fail(self) -> None:
        # Resend first, while the session may still be sending (drain() waits for this).
        if self._replay_pending:
            async with self._send_lock:
                await self._replay_if_pending()
        run = self._run_task
        if run is not None and run is not asyncio.current_task() and not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        await self._release_peer()

    async def _replay_if_pending(self) -> None:
        """Resend the replay window over WS (call with the send lock held)."""
        if not self._replay_pending:
            return
        self._replay_pending = False
        frames = self.window.take_all()
        if not frames:
            return
        if self.config.p2p_only or self.config.strict:
            self._resend_incomplete = True  # no WebSocket in these modes
            return
        sent = 0
        try:
            for f in frames:
                await self.owner.send_in_order(
                    HotlinkData(self.sid, f.seq, f.path, f.etag, f.payload)
                )
                sent += 1
        except Exception as exc:
            self._resend_incomplete = True
            log.warning(
                "hotlink session %s: resend over websocket stopped after %d of %d frames: %s",
                _short(self.sid),
                sent,
                len(frames),
                exc,
            )
        self.owner.telemetry.incr("p2p_resent_frames", sent)
        log.info(
            "hotlink session %s: resent the last %d p2p frames (seq %d-%d) over the websocket",
            _short(self.sid),
            sent,
            frames[0].seq,
            frames[-1].seq,
        )

    # ------------------------------------------------------------ signals

    def push_signal(self, signal: HotlinkSignal) -> None:
        """A signal for this session, applied in arrival order by the session's task."""
        if signal.knd == WEBRTC_ERROR:
            self._on_remote_error(signal.err)
            return
        if signal.knd == E2E_DTLS:
            # Checked at once, also after P2P failed: a binding that does not match is a
            # middleman whichever path the stream takes now. The e2e state waits for the
            # SDP it belongs to when that has not been applied yet.
            if self.state != "closed":
                token = signal.tok
                self._binding_step(lambda e2e: e2e.on_binding(token))
            return
        if self.finished:
            log.debug("signal %s for finished p2p session %s ignored", signal.knd, _short(self.sid))
            return
        size = signal_size(signal)
        if (
            self._signals.full()
            or self._signal_bytes + size > SESSION_SIGNAL_BYTES
            or not self.owner.signal_quota.take(size)
        ):
            self._signals_dropped += 1
            if self._signals_dropped == 1 or self._signals_dropped % 100 == 0:
                log.warning(
                    "hotlink session %s: webrtc signals waiting reached a bound (%d signals or "
                    "%d bytes here, %d bytes in all sessions); dropping %s (%d dropped so far)",
                    _short(self.sid),
                    SIGNAL_QUEUE,
                    SESSION_SIGNAL_BYTES,
                    self.owner.signal_quota.max_bytes,
                    signal.knd,
                    self._signals_dropped,
                )
            return
        self._signal_bytes += size
        self._signals.put_nowait(signal)

    def _on_remote_error(self, err: str) -> None:
        log.info("hotlink webrtc error: session=%s error=%s", _short(self.sid), err or "-")
        if self.state == "negotiating" and "(SCTP)" in err:
            self._warn_sctp(f"the peer reports: {err}")
        if self.state in ("new", "negotiating"):
            self._fail(f"peer reported: {err or 'webrtc error'}")
        # An open channel carries on: errors about signaling (e.g. the server's "unknown
        # session" for a late candidate after the session closed there) do not touch it, and
        # a peer that really gave up closes its end, which we see.

    async def _run(self) -> None:
        try:
            if self.role == "inbound":
                await self._offer()
            while True:
                signal = await self._signals.get()
                size = signal_size(signal)
                self._signal_bytes -= size
                self.owner.signal_quota.give(size)
                await self._apply(signal)
                # The keys may have come meanwhile (the opener's hello precedes its answer).
                self._binding_step()
        except WebRTCError as exc:
            self._fail(str(exc), notify_peer=True)
        except Exception as exc:
            log.exception("hotlink session %s: webrtc negotiation crashed", _short(self.sid))
            self._fail(f"internal error: {exc}", notify_peer=True)

    async def _offer(self) -> None:
        self.peer = self.owner.new_peer(self)
        self.state = "negotiating"
        hint = self.owner.mtu_policy.hint(self.sid)
        if hint is not None:
            # Ahead of the offer: the answerer sizes its peer connection when the offer comes.
            self.owner.queue_signal(
                HotlinkSignal(sid=self.sid, knd=P2P_HOST, tok=encode_hint(hint))
            )
        sdp = await self.peer.create_offer()
        # Queued before any candidate: the backend reports none until we have the SDP.
        self.owner.queue_signal(
            HotlinkSignal(sid=self.sid, knd=SDP_OFFER, tok=sdp_token("offer", sdp))
        )
        self.owner.telemetry.incr("p2p_offers")
        log.info("hotlink webrtc offer sent: session=%s", _short(self.sid))
        ours = dtls_fingerprints(sdp)
        self._binding_step(lambda e2e: e2e.bind_local(ours))

    async def _apply(self, signal: HotlinkSignal) -> None:
        try:
            if signal.knd == SDP_OFFER:
                await self._on_offer(parse_sdp_token(signal.tok))
            elif signal.knd == SDP_ANSWER:
                await self._on_answer(parse_sdp_token(signal.tok))
            elif signal.knd == ICE_CANDIDATE:
                await self._on_candidate(parse_candidate_token(signal.tok))
            elif signal.knd == P2P_HOST:
                self._on_host_hint(parse_hint(signal.tok))
        except ProtocolError as exc:
            # A malformed token costs that one signal (an SDP one fails the negotiation).
            if signal.knd in (SDP_OFFER, SDP_ANSWER):
                raise WebRTCError(f"bad {signal.knd}: {exc}") from exc
            log.info("hotlink session %s: bad %s ignored: %s", _short(self.sid), signal.knd, exc)

    async def _on_offer(self, sdp: str) -> None:
        if self.role != "outbound":
            log.info("hotlink session %s: ignoring an offer (we offer here)", _short(self.sid))
            return
        if self.peer is not None:
            log.info("hotlink session %s: ignoring a repeated offer", _short(self.sid))
            return
        theirs = dtls_fingerprints(sdp)
        if not self._binding_step(lambda e2e: e2e.bind_remote(theirs)):
            return
        self.mtu = self.owner.mtu_policy.sender_mtu(self.sid, self._peer_hint)
        self.peer = self.owner.new_peer(self, mtu=self.mtu)
        self.state = "negotiating"
        answer = await self.peer.accept_offer(sdp)
        self.owner.queue_signal(
            HotlinkSignal(sid=self.sid, knd=SDP_ANSWER, tok=sdp_token("answer", answer))
        )
        self.owner.telemetry.incr("p2p_answers_ok")
        log.info("hotlink webrtc answer sent: session=%s", _short(self.sid))
        # Right behind the answer: the acceptor checks it against the answer's fingerprint.
        ours = dtls_fingerprints(answer)
        if not self._binding_step(lambda e2e: e2e.bind_local(ours)):
            return
        early, self._early = self._early, []
        for cand in early:
            await self.peer.add_remote_candidate(cand)

    def _on_host_hint(self, hint: HostHint) -> None:
        if self.role != "outbound" or self.peer is not None:
            # Only the sender's packet size matters, and only before its peer exists (the
            # hint leaves ahead of the offer; one that lost the race changes nothing).
            log.debug("hotlink session %s: p2p_host hint not used", _short(self.sid))
            return
        self._peer_hint = hint

    async def _on_answer(self, sdp: str) -> None:
        if self.role != "inbound" or self.peer is None:
            log.info("hotlink session %s: ignoring an unexpected answer", _short(self.sid))
            return
        if self._answered:
            log.info("hotlink session %s: ignoring a repeated answer", _short(self.sid))
            return
        self._answered = True
        theirs = dtls_fingerprints(sdp)
        if self._binding_step(lambda e2e: e2e.bind_remote(theirs)):
            await self.peer.set_answer(sdp)

    async def _on_candidate(self, cand: IceCandidate | None) -> None:
        if self.peer is not None:
            # Before the remote description the backend holds it (DECISIONS.md #4).
            await self.peer.add_remote_candidate(cand)
            return
        if len(self._early) >= EARLY_CANDIDATES:
            log.warning(
                "hotlink session %s: more than %d candidates before the offer; dropping one",
                _short(self.sid),
                EARLY_CANDIDATES,
            )
            return
        self._early.append(cand)

    # ------------------------------------------------------------ PeerEvents

    def on_local_candidate(self, cand: IceCandidate | None) -> None:
        # End-of-candidates is not signalled, as in the reference (§6.4).
        if cand is None or self.finished:
            return
        self.owner.queue_signal(
            HotlinkSignal(sid=self.sid, knd=ICE_CANDIDATE, tok=candidate_token(cand))
        )

    def on_channel_open(self) -> None:
        if self.state != "negotiating" or self._channel_up:
            return
        self._channel_up = True
        self._binding_step()  # opens the channel unless a binding is still owed
        if self.state == "negotiating":
            log.info(
                "hotlink webrtc data channel up: session=%s; waiting for the peer's DTLS "
                "binding before sending on it",
                _short(self.sid),
            )

    def _opened(self) -> None:
        """The channel is open and, on a sealed session's sending side, bound: carry frames."""
        self.state = "open"
        self.opened_at = self._loop.time()
        self._cancel_deadline()
        self._settled.set()
        self._update_kind()
        telemetry = self.owner.telemetry
        telemetry.incr("p2p_answers_ok")  # the reference counts channel opens here too (§7)
        telemetry.changed()
        log.info(
            "hotlink webrtc data channel open (%s): session=%s transport=%s after %.0f ms%s",
            "offerer" if self.role == "inbound" else "answerer",
            _short(self.sid),
            self.kind,
            (self.opened_at - self.created) * 1000.0,
            f" mtu={self.mtu}" if self.mtu else "",
        )

    def on_message(self, data: bytes) -> None:
        if self.state == "closed":
            return
        try:
            frame = decode_frame(data)
        except ProtocolError as exc:
            self._bad_messages += 1
            if self._bad_messages == 1 or self._bad_messages % 1000 == 0:
                log.warning(
                    "hotlink session %s: undecodable p2p message dropped (%d so far): %s",
                    _short(self.sid),
                    self._bad_messages,
                    exc,
                )
            return
        self.rx_frames += 1
        try:
            self.owner.deliver_frame(self.sid, frame)
        except Exception:
            log.exception("hotlink session %s: p2p frame delivery failed", _short(self.sid))
        if self.config.kill_after and self.rx_frames == self.config.kill_after:
            self._fail(f"debug: closing the peer after {self.rx_frames} received frames")

    def on_channel_closed(self, reason: str) -> None:
        self._channel_gone.set()
        if self.state == "negotiating" and self.peer is not None and not self._channel_up:
            if self.peer.transport_was_connected:
                # libdatachannel fails the whole connection at once when the remote aborts
                # the SCTP association: the path worked, SCTP did not.
                self._warn_sctp("the peer closed the connection before the data channel opened")
                self._fail(f"channel closed before it opened (SCTP): {reason}", notify_peer=True)
                return
        if self.state != "closed":
            self._fail(f"channel closed: {reason}")

    # ------------------------------------------------------------ the DTLS binding

    def _binding_step(self, step: Callable[[E2ESession], None] | None = None) -> bool:
        """Give the session's e2e state one input (``step``), send our ``e2e_dtls`` once it
        can be made, and open the channel once nothing is owed. False: the binding failed
        (the hotlink session is being closed)."""
        if self._binding_error:
            return False
        e2e = self.owner.e2e_session(self.sid)
        if e2e is not None:
            try:
                if step is not None:
                    step(e2e)
                token = e2e.take_binding()
            except E2EError as exc:
                self._binding_failed(exc.reason)
                return False
            if token is not None and self.state != "closed":
                self.owner.queue_signal(HotlinkSignal(sid=self.sid, knd=E2E_DTLS, tok=token))
            if e2e.dtls_verified and not self._binding_logged:
                self._binding_logged = True
                log.info(
                    "hotlink session %s: the peer's DTLS fingerprint is bound to the "
                    "end-to-end key exchange",
                    _short(self.sid),
                )
        if self.state == "negotiating" and self._channel_up and not self._owes_binding(e2e):
            self._opened()
        return True

    def _owes_binding(self, e2e: E2ESession | None) -> bool:
        """Whether the sender must wait for the peer's binding before using the channel.

        Only the sender, whose frames would go over it (what arrives on the channel is
        opened by the e2e layer, so a middleman's frames fail there), and only until the
        exchange is known to be plaintext: a reference peer never seals, nor sends a binding.
        """
        return (
            self.role == "outbound"
            and e2e is not None
            and e2e.state != "plaintext"
            and not e2e.dtls_verified
        )

    def _binding_failed(self, reason: str) -> None:
        self._binding_error = reason
        self._fail(f"e2e: {reason}", notify_peer=True)
        self.owner.e2e_failed(self.sid, reason)

    # ------------------------------------------------------------ sending

    async def try_send(self, frame: Frame) -> bool:
        """Send one frame over the channel; False: the WebSocket must carry it."""
        async with self._send_lock:
            await self._replay_if_pending()
            if self.state != "open":
                # The exchange is settled before the first frame: our binding may be due now.
                self._binding_step()
            if not self.finished and not self.is_open:
                await self._wait_open(frame.seq)
            peer = self.peer
            if not self.is_open or peer is None:
                return self._fallback("not ready" if not self.finished else self.fail_reason)
            data = encode_frame(frame)
            if len(data) > peer.max_message_size:
                return self._fallback(
                    f"a {len(data)}-byte frame exceeds the peer's max message size "
                    f"{peer.max_message_size}"
                )
            try:
                await peer.send(data)
            except MessageTooLargeError as exc:
                return self._fallback(str(exc))
            except BackpressureTimeoutError as exc:
                # The path is stalled (or its far end gone silent): waiting again for every
                # frame would crawl, so the WebSocket takes over for good.
                self._fail(f"send stalled: {exc}")
                await self._replay_if_pending()
                return self._fallback(self.fail_reason)
            except WebRTCError as exc:
                # Refused or closed: this frame may or may not have left, so it goes over WS
                # too (a duplicate is dropped by the receiver; a loss would be final).
                self._fail(f"send failed: {exc}")
                await self._replay_if_pending()
                return self._fallback(self.fail_reason)
            self.window.add(frame)
            self.tx_frames += 1
            if self.config.kill_after and self.tx_frames == self.config.kill_after:
                self._fail(f"debug: closing the peer after {self.tx_frames} sent frames")
            return True

    async def _wait_open(self, seq: int) -> None:
        now = self._loop.time()
        if self.config.p2p_only:
            deadline = now + self.config.p2p_only_wait
        elif seq <= GRACE_SEQS:
            # One grace per session, from its first frame: not 1.5 s for each of the three.
            if self._grace_deadline is None:
                self._grace_deadline = now + self.config.grace
            deadline = self._grace_deadline
        else:
            return
        if deadline > now:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), deadline - now)

    def _fallback(self, why: str) -> bool:
        if self.config.p2p_only or self.config.strict:
            if self.config.strict:
                self.owner.telemetry.incr("strict_violations")
            raise PeerSendError(f"hotlink p2p_only send failed: webrtc not ready ({why})")
        if not self.fallback_counted:
            self.fallback_counted = True
            self.owner.telemetry.incr("ws_fallbacks")
            log.info(
                "hotlink p2p not ready, using ws fallback: session=%s path=%s (%s)",
                _short(self.sid),
                self.path,
                why,
            )
        return False
