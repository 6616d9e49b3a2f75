"""libdatachannel backend, through the flat binding of ``aiolibdatachannel``.

We drive ``aiolibdatachannel._core`` (a thin object layer over the C API) rather than the
package's asyncio wrapper, because the wrapper's receive queue drops the oldest message when
1024 are waiting (a hole in a reliable stream), keeps unbounded per-connection event queues,
and has no way to ask for the selected candidate pair. The C API is small and stable, so the
bridge below is short.

Threading: libdatachannel calls back on its own worker threads (holding the GIL only for the
Python call). Every callback here just appends ``(kind, payload)`` to one locked inbox and,
if no drain is pending, schedules one with ``loop.call_soon_threadsafe``; the drain runs on
the event loop and is the only place that touches peer state or calls the owner. One inbox
per peer keeps the library's event order (open, messages, close) exactly, and batching keeps
the per-message cost low at high message rates.

Thread states: the binding enters Python from a library thread with ``PyGILState_Ensure`` and
leaves with ``PyGILState_Release``, which builds and frees a whole Python thread state (and
its 16 KiB frame stack, an ``mmap``/``munmap`` pair) around every single callback, and lets
the loop thread, woken by that callback, queue up behind the teardown for the GIL. The first
callback on each library thread therefore takes one extra, never released ``Ensure``
(:func:`_keep_thread_state`): that thread's state then lives as long as the thread, and each
callback only takes and drops the GIL. Measured: about 25 us less per message each way
(loopback round trip of two processes, p50, 350 -> 300 us).

SCTP: libdatachannel's SCTP settings (buffers, congestion control, SACK and RTO timers) are
process-wide; the backend hands its :class:`~.sctp_settings.SctpSettings` to the library
before each new peer connection (:mod:`.sctp_settings`, a no-op while they stay the same).

Where the time goes (loopback, two processes, 60 KiB messages): per SCTP packet, not per
message. Each packet is one DTLS record, one ``sendto`` (which runs the receiver's whole
loopback path in the sender's softirq and wakes its poll thread) and one hand-off between
the library's threads, and every second one comes back as a SACK: the kernel's UDP path and
the wake-ups are about half the CPU, copies and malloc a seventh, AES-GCM an eighth,
usrsctp a tenth; Python callbacks are a few per cent. Hence the MTU below matters far more
than anything else (1280 -> 4096: 2-3x), while larger SCTP buffers, the thread-pool size,
message sizes up to 256 KiB and the other congestion-control modules change nothing there.

Blocking: the binding releases the GIL in every call that can block. The only slow one is the
teardown (``rtcDelete*`` joins the transports), which runs in the default executor so the
event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from aiolibdatachannel import _core

from hotlink.protocol.ice import IceCandidate, IceServer, candidate_type, strip_candidate_prefix

from ._common import PeerBase, sdp_mids
from .base import (
    CHANNEL_LABEL,
    DEFAULT_BACKPRESSURE_WAIT,
    DEFAULT_BUFFERED_HIGH,
    Backend,
    PeerEvents,
    WebRTCError,
)
from .sctp_settings import DEFAULT_SCTP_SETTINGS, SctpSettings, apply_sctp_settings

log = logging.getLogger("hotlink.webrtc.libdatachannel")

# rtcState / rtcIceState / rtcGatheringState values of <rtc/rtc.h>.
_STATE_NEW = 0
_STATE_CONNECTED = 2
_STATE_DISCONNECTED = 3
_STATE_FAILED = 4
_STATE_CLOSED = 5
_ICE_NEW = 0
_ICE_CONNECTED = 2
_ICE_COMPLETED = 3
_GATHERING_COMPLETE = 2
_POLICY_ALL = 0
_POLICY_RELAY = 1

# The largest MTU we let libdatachannel use, and the one it uses between two of our peers on
# one network stack (protocol/locality.py). Its default (0: 1280) suits every path; larger
# values cut the per-packet work (loopback, 2 cores, raw channel between two processes: 1280
# -> 4096 is 26-39 -> 62-108 MiB/s; a hotlink tunnel 18-25 -> 47-66 MB/s) but
# are safe only where both ends are ours and the path carries such datagrams unfragmented (one
# host, jumbo-frame LANs): libjuice reads datagrams into a 4096-byte buffer and drops larger
# ones, so anything above this stalls the association. A receiver at 1280 takes them.
MAX_MTU = 4096
MIN_MTU = 576

# libdatachannel reports "disconnected" when consent checks start failing; it can still come
# back. Only when it stays so this long do we call the channel dead (the WS path takes over).
DISCONNECT_GRACE = 5.0
# Guards the wait for the local description, which libdatachannel produces synchronously.
_DESCRIPTION_TIMEOUT = 5.0

_CB_CANDIDATE = "candidate"
_CB_GATHERED = "gathered"
_CB_STATE = "state"
_CB_ICE_STATE = "ice_state"
_CB_DESCRIPTION = "description"
_CB_INCOMING = "incoming"
_CB_OPEN = "open"
_CB_DC_CLOSED = "dc_closed"
_CB_DC_ERROR = "dc_error"
_CB_MESSAGE = "message"
_CB_LOW = "low"


def ice_server_url(server: IceServer) -> str:
    """The URL libdatachannel parses: credentials inline, percent-encoded.

    TURN REST usernames contain ``:`` (``<expiry>:<user>``), so encoding is required; the
    library decodes them again.
    """
    if not server.username and not server.credential:
        return server.url
    scheme, sep, rest = server.url.partition(":")
    if not sep:
        raise WebRTCError(f"ICE server URL has no scheme: {server.url!r}")
    user = quote(server.username, safe="")
    cred = quote(server.credential, safe="")
    return f"{scheme}:{user}:{cred}@{rest}"


_thread_pins = threading.local()


def _keep_thread_state() -> None:
    """On a library thread: keep its Python thread state from now on (see module doc).

    Safe because the library's threads live until ``rtcCleanup`` (at interpreter exit, from
    the binding's atexit hook): a kept state is freed by the interpreter's own teardown.
    """
    if getattr(_thread_pins, "kept", False):
        return
    _thread_pins.kept = True
    try:
        ctypes.pythonapi.PyGILState_Ensure()
    except (AttributeError, OSError) as exc:  # not CPython's C API: merely slower
        log.debug("cannot keep the callback thread's state: %s", exc)


class _SelectedPair:
    """``rtcGetSelectedCandidatePair`` via ctypes: the binding does not expose it."""

    _fn: Any = None
    _loaded = False
    _lock = threading.Lock()

    @classmethod
    def local_candidate(cls, pc_handle: int) -> str | None:
        return cls.candidates(pc_handle)[0]

    @classmethod
    def candidates(cls, pc_handle: int) -> tuple[str | None, str | None]:
        """The selected pair's (local, remote) candidate lines, None where unknown."""
        fn = cls._function()
        if fn is None:
            return None, None
        local = ctypes.create_string_buffer(512)
        remote = ctypes.create_string_buffer(512)
        if fn(pc_handle, local, len(local), remote, len(remote)) < 0:
            return None, None
        return (
            local.value.decode("utf-8", "replace") or None,
            remote.value.decode("utf-8", "replace") or None,
        )

    @classmethod
    def _function(cls) -> Any:
        with cls._lock:
            if not cls._loaded:
                cls._loaded = True
                try:
                    # Same path as the loaded extension: dlopen hands back that very library.
                    lib = ctypes.CDLL(_core._native.__file__)
                    fn = lib.rtcGetSelectedCandidatePair
                    fn.argtypes = [
                        ctypes.c_int,
                        ctypes.c_char_p,
                        ctypes.c_int,
                        ctypes.c_char_p,
                        ctypes.c_int,
                    ]
                    fn.restype = ctypes.c_int
                    cls._fn = fn
                except (OSError, AttributeError) as exc:
                    log.info("selected candidate pair not available: %s", exc)
            return cls._fn


class LibdatachannelPeer(PeerBase):
    LIBRARY = "libdatachannel"

    def __init__(
        self,
        ice_servers: list[IceServer],
        events: PeerEvents,
        *,
        relay_only: bool = False,
        buffered_high: int = DEFAULT_BUFFERED_HIGH,
        backpressure_wait: float = DEFAULT_BACKPRESSURE_WAIT,
        mtu: int = 0,
    ) -> None:
        super().__init__(events, buffered_high=buffered_high, backpressure_wait=backpressure_wait)
        self._relay_only = relay_only
        self._loop_thread = threading.get_ident()
        self._inbox: list[tuple[str, Any]] = []
        self._inbox_lock = threading.Lock()
        self._drain_scheduled = False
        self._dc: Any = None  # _core.DataChannel once created or received
        self._local_mids: list[str] = []
        self._description_waiter: asyncio.Future[str] | None = None
        # Local candidates wait while a local description is being made, so the owner gets
        # the SDP (and can send it) before the first candidate.
        self._holding_candidates = False
        self._held_candidates: list[IceCandidate | None] = []
        self._disconnect_timer: asyncio.TimerHandle | None = None
        # For transport_connected (see _update_transport).
        self._pc_state = _STATE_NEW
        self._ice_state = _ICE_NEW
        self._teardown: asyncio.Future[None] | None = None
        try:
            self._pc: Any = _core.PeerConnection(
                ice_servers=[ice_server_url(s) for s in ice_servers],
                disable_auto_negotiation=True,
                ice_transport_policy=_POLICY_RELAY if relay_only else _POLICY_ALL,
                mtu=mtu,
            )
        except Exception as exc:
            raise WebRTCError(f"libdatachannel: cannot create peer connection: {exc}") from exc
        pc = self._pc
        pc.set_on_local_description(lambda sdp, kind: self._post(_CB_DESCRIPTION, sdp))
        pc.set_on_local_candidate(lambda cand, mid: self._post(_CB_CANDIDATE, (cand, mid)))
        pc.set_on_state_change(lambda state: self._post(_CB_STATE, state))
        pc.set_on_ice_state_change(lambda state: self._post(_CB_ICE_STATE, state))
        pc.set_on_gathering_state_change(
            lambda state: self._post(_CB_GATHERED, None) if state == _GATHERING_COMPLETE else None
        )
        pc.set_on_data_channel(lambda handle: self._post(_CB_INCOMING, handle))

    # ------------------------------------------------------------ thread bridge

    def _post(self, kind: str, payload: Any) -> None:
        """Any thread: queue one library event for the loop."""
        if threading.get_ident() != self._loop_thread:
            _keep_thread_state()
        with self._inbox_lock:
            self._inbox.append((kind, payload))
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        with contextlib.suppress(RuntimeError):  # loop already closed (interpreter exit)
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._inbox_lock:
            batch, self._inbox = self._inbox, []
            self._drain_scheduled = False
        for kind, payload in batch:
            if not self._closed:
                self._handle(kind, payload)
            elif kind == _CB_INCOMING:
                # Arrived while closing: nobody will own it, so free it now.
                with contextlib.suppress(Exception):
                    _core._native.delete_data_channel(int(payload))

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == _CB_MESSAGE:
            data = payload if isinstance(payload, bytes) else str(payload).encode("utf-8")
            self._emit_message(data)
        elif kind == _CB_LOW:
            self._notify_drained()
        elif kind == _CB_CANDIDATE:
            cand, mid = payload
            index = self._local_mids.index(mid) if mid in self._local_mids else 0
            self._local_candidate(IceCandidate(strip_candidate_prefix(cand), mid or "0", index))
        elif kind == _CB_GATHERED:
            self._local_candidate(None)
        elif kind == _CB_OPEN:
            self._emit_open()
        elif kind == _CB_DC_CLOSED:
            self._emit_closed("data channel closed")
        elif kind == _CB_DC_ERROR:
            log.info("libdatachannel data channel error: %s", payload)
        elif kind == _CB_STATE:
            self._on_state(int(payload))
        elif kind == _CB_ICE_STATE:
            self._ice_state = int(payload)
            self._update_transport()
        elif kind == _CB_DESCRIPTION:
            waiter = self._description_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(str(payload))
        elif kind == _CB_INCOMING:
            self._on_incoming_channel(int(payload))

    def _local_candidate(self, cand: IceCandidate | None) -> None:
        if self._holding_candidates:
            self._held_candidates.append(cand)
        else:
            self._emit_candidate(cand)

    def _release_candidates(self) -> None:
        self._holding_candidates = False
        held, self._held_candidates = self._held_candidates, []
        for cand in held:
            self._emit_candidate(cand)

    def _update_transport(self) -> None:
        """ICE and DTLS up, as far as the C API lets us see.

        libdatachannel's connection state turns "connected" only once SCTP is up too, and
        its API has no DTLS state. ICE connected stands in for the transport: DTLS starts
        right after it, and a DTLS handshake that fails (or times out, after about 30 s)
        turns the connection state to failed, which clears it again.
        """
        if self._pc_state == _STATE_CONNECTED:
            up = True
        elif self._pc_state in (_STATE_DISCONNECTED, _STATE_FAILED, _STATE_CLOSED):
            up = False
        else:
            up = self._ice_state in (_ICE_CONNECTED, _ICE_COMPLETED)
        self._set_transport_up(up)

    def _on_state(self, state: int) -> None:
        self._pc_state = state
        self._update_transport()
        if state == _STATE_DISCONNECTED:
            if self._disconnect_timer is None:
                self._disconnect_timer = self._loop.call_later(
                    DISCONNECT_GRACE, self._emit_closed, "ice disconnected"
                )
            return
        if self._disconnect_timer is not None:
            self._disconnect_timer.cancel()
            self._disconnect_timer = None
        if state == _STATE_FAILED:
            self._emit_closed("peer connection failed")
        elif state == _STATE_CLOSED:
            self._emit_closed("peer connection closed")

    def _on_incoming_channel(self, handle: int) -> None:
        dc = _core.DataChannel(handle)
        if self._dc is not None:
            # One channel per session (migration guide pitfall 2): refuse extras.
            log.info("libdatachannel: ignoring extra data channel %r", dc.label())
            with contextlib.suppress(Exception):
                dc.destroy()
            return
        self._attach(dc)

    def _attach(self, dc: Any) -> None:
        """Register the channel callbacks. Open first: on an already-open channel the library
        fires it during registration, and it must reach the inbox before any message."""
        self._dc = dc
        dc.set_on_open(lambda: self._post(_CB_OPEN, None))
        dc.set_on_closed(lambda: self._post(_CB_DC_CLOSED, None))
        dc.set_on_error(lambda err: self._post(_CB_DC_ERROR, err))
        dc.set_buffered_amount_low_threshold(self._buffered_high)
        dc.set_on_buffered_amount_low(lambda: self._post(_CB_LOW, None))
        dc.set_on_message(lambda data: self._post(_CB_MESSAGE, data))

    # ------------------------------------------------------------ signaling

    async def _local_description(self, kind: str) -> str:
        self._description_waiter = self._loop.create_future()
        self._holding_candidates = True
        try:
            self._pc.set_local_description(kind)
            sdp = await asyncio.wait_for(self._description_waiter, _DESCRIPTION_TIMEOUT)
        except TimeoutError as exc:
            raise WebRTCError(f"libdatachannel: no local {kind} produced") from exc
        except Exception as exc:
            raise WebRTCError(f"libdatachannel: cannot create {kind}: {exc}") from exc
        finally:
            self._description_waiter = None
            # Runs after the caller's code that follows ``await create_offer()`` (up to its
            # next await): the caller has the SDP before it hears of any candidate.
            self._loop.call_soon(self._release_candidates)
        self._local_mids = sdp_mids(sdp)
        return sdp

    def _create_channel(self) -> None:
        if self._dc is not None:
            raise WebRTCError("create_offer() called twice")
        try:
            handle = self._pc.create_data_channel(CHANNEL_LABEL)  # ordered, reliable
        except Exception as exc:
            raise WebRTCError(f"libdatachannel: cannot create data channel: {exc}") from exc
        self._attach(_core.DataChannel(handle))

    async def _apply_remote_description(self, sdp: str, kind: str) -> None:
        self._pc.set_remote_description(sdp, kind)

    async def _apply_candidate(
        self, cand: IceCandidate | None, mid: str | None, index: int
    ) -> None:
        if cand is None:
            # libdatachannel needs no end-of-candidates: it keeps checking what it has.
            return
        self._pc.add_remote_candidate("candidate:" + strip_candidate_prefix(cand.candidate), mid)

    # ------------------------------------------------------------ channel

    def _channel_open(self) -> bool:
        return self._dc is not None and bool(self._dc.is_open())

    def _buffered(self) -> int:
        return int(self._dc.buffered_amount()) if self._dc is not None else 0

    def _send_now(self, data: bytes) -> None:
        self._dc.send_bytes(bytes(data))

    def selected_candidate_type(self) -> str | None:
        if self._closed or not self._open_emitted:
            return None
        local = _SelectedPair.local_candidate(self._pc.handle)
        if local is None:
            return "relay" if self._relay_only else None
        return candidate_type(local)

    def round_trip_time(self) -> float | None:
        # The C API (rtc.h) has no RTT getter; PeerConnection::rtt() is C++ only and needs the
        # C++ object, which the handle does not give us.
        return None

    def selected_candidate_types(self) -> tuple[str | None, str | None]:
        if self._closed or not self._open_emitted:
            return None, None
        local, remote = _SelectedPair.candidates(self._pc.handle)
        local_type = candidate_type(local) if local else ("relay" if self._relay_only else None)
        return local_type, (candidate_type(remote) if remote else None)

    # ------------------------------------------------------------ teardown

    async def close(self) -> None:
        if self._teardown is None:
            self._closed = True
            self._drained.set()
            if self._disconnect_timer is not None:
                self._disconnect_timer.cancel()
                self._disconnect_timer = None
            waiter = self._description_waiter
            if waiter is not None and not waiter.done():
                waiter.cancel()
            self._teardown = self._loop.run_in_executor(None, self._destroy_native)
        # shield: a cancelled close() must not cancel the teardown others wait for.
        await asyncio.shield(self._teardown)

    def _destroy_native(self) -> None:
        """Executor thread: close gracefully (the remote sees its channel close), then free."""
        dc, pc = self._dc, self._pc
        steps: list[Callable[[], None]] = []
        if dc is not None:
            steps += [dc.close, dc.destroy]
        steps += [pc.close, pc.destroy]
        for step in steps:
            try:
                step()
            except Exception as exc:
                log.debug("libdatachannel teardown step failed: %s", exc)
        with self._inbox_lock:
            leftovers, self._inbox = self._inbox, []
        for kind, payload in leftovers:
            if kind == _CB_INCOMING:
                # A channel that arrived during teardown: nobody will own it, so free it.
                with contextlib.suppress(Exception):
                    _core._native.delete_data_channel(int(payload))


class LibdatachannelBackend(Backend):
    """``mtu``: 0 for libdatachannel's default (1280), else ``MIN_MTU``..``MAX_MTU`` bytes
    (see :data:`MAX_MTU` for when more than the default is safe).

    ``sctp_settings`` go to the library before each new peer connection (a no-op while they
    stay the same; see :mod:`.sctp_settings`): they are process-wide, so every backend of a
    process should carry the same ones.
    """

    name = "libdatachannel"
    same_host_mtu = MAX_MTU

    def __init__(self, *, mtu: int = 0, sctp_settings: SctpSettings | None = None) -> None:
        if mtu and not MIN_MTU <= mtu <= MAX_MTU:
            raise ValueError(f"libdatachannel MTU must be 0 or {MIN_MTU}..{MAX_MTU}, got {mtu}")
        self.mtu = mtu
        self.sctp_settings = sctp_settings or DEFAULT_SCTP_SETTINGS

    def create_peer(
        self,
        ice_servers: list[IceServer],
        events: PeerEvents,
        *,
        relay_only: bool = False,
        buffered_high: int = DEFAULT_BUFFERED_HIGH,
        backpressure_wait: float = DEFAULT_BACKPRESSURE_WAIT,
        mtu: int = 0,
    ) -> LibdatachannelPeer:
        apply_sctp_settings(self.sctp_settings)
        return LibdatachannelPeer(
            ice_servers,
            events,
            relay_only=relay_only,
            buffered_high=buffered_high,
            backpressure_wait=backpressure_wait,
            mtu=mtu or self.mtu,
        )
