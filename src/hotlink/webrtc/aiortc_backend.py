"""aiortc backend: pure Python, runs everywhere, slower than libdatachannel.

Everything runs on the event loop (aiortc has no threads), so its callbacks reach the owner
directly. What aiortc does differently, and how we bridge it:

* It gathers all local candidates inside ``setLocalDescription`` and puts them in the SDP; it
  cannot trickle its own. We report only end-of-candidates through ``on_local_candidate``.
* Gathering waits up to 5 s for each STUN/TURN server (aioice's fixed default); we cut that
  to ``gather_timeout`` so an unreachable server cannot hold up the offer or answer.
* It drops remote candidates added before the remote description on the answer side (no
  transport exists yet); :class:`~._common.PeerBase` buffers them until then.
* It uses only the first ``stun:`` and the first ``turn:``/``turns:`` server of the list and
  ignores the rest; ``stuns:`` is not supported.
* It knows the selected candidate pair only through aioice's private state, read defensively.
* aioice gives up on a TURN server that answers Allocate with 437 (Allocation Mismatch); we
  retry from a new socket, as RFC 8656 section 7.4 suggests (see :func:`_retry_on_mismatch`).
* Its bulk throughput is bound by Python work per 1.2 KB packet; :mod:`.aiortc_tuning` cuts
  that per peer (batched socket reads, fewer SACKs), on the aiortc releases it knows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aioice import stun as aioice_stun
from aioice import turn as aioice_turn
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcicetransport import parse_stun_turn_uri
from aiortc.sdp import candidate_from_sdp

from hotlink.protocol.ice import IceCandidate, IceServer, strip_candidate_prefix

from ._common import PeerBase
from .aiortc_tuning import DEFAULT_TUNING, AiortcTuning, tune_ice_sockets, tune_sctp
from .base import (
    CHANNEL_LABEL,
    DEFAULT_BACKPRESSURE_WAIT,
    DEFAULT_BUFFERED_HIGH,
    DEFAULT_GATHER_TIMEOUT,
    Backend,
    PeerEvents,
    WebRTCError,
)

log = logging.getLogger("hotlink.webrtc.aiortc")

# Allocate attempts per TURN server when it answers 437 (each from a new client port).
_ALLOCATE_ATTEMPTS = 3
_ALLOCATION_MISMATCH = 437


def _retry_on_mismatch(create: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap aioice's ``create_turn_endpoint`` to retry an Allocate that got a 437.

    A 437 means the server still holds an allocation for our 5-tuple: one that was never
    deleted (libdatachannel never deletes its own) and whose client port the kernel has
    handed out again. aioice gives up, which leaves a relay-only peer without any candidate,
    so the channel never opens. A new socket gets a new port, hence a new 5-tuple. The
    failed attempt's socket is closed by ``create_turn_endpoint`` itself.
    """

    @functools.wraps(create)
    async def create_turn_endpoint(*args: Any, **kwargs: Any) -> Any:
        attempt = 1
        while True:
            try:
                return await create(*args, **kwargs)
            except aioice_stun.TransactionFailed as exc:
                mismatch = exc.response.error_code == _ALLOCATION_MISMATCH
                if not mismatch or attempt >= _ALLOCATE_ATTEMPTS:
                    raise
            attempt += 1
            log.info("aiortc: TURN allocation mismatch (437), retrying from a new port")

    create_turn_endpoint._hotlink_retry = True  # type: ignore[attr-defined]
    return create_turn_endpoint


# aioice's gathering calls turn.create_turn_endpoint through the module, so wrapping the
# module attribute covers every peer; the flag keeps a re-import from wrapping twice.
_create = aioice_turn.create_turn_endpoint
if not getattr(_create, "_hotlink_retry", False):
    aioice_turn.create_turn_endpoint = _retry_on_mismatch(_create)  # type: ignore[assignment]


def aiortc_ice_servers(servers: list[IceServer]) -> list[RTCIceServer]:
    """The servers aiortc will use: one STUN and one TURN at most, each parseable.

    Always a list, never None: aiortc replaces None with Google's public STUN server.
    """
    result: list[RTCIceServer] = []
    have_stun = have_turn = False
    for server in servers:
        try:
            parsed = parse_stun_turn_uri(server.url)
        except ValueError as exc:
            log.warning("aiortc: ICE server %r ignored: %s", server.url, exc)
            continue
        scheme = parsed["scheme"]
        if scheme == "stun" and not have_stun:
            have_stun = True
        elif scheme in ("turn", "turns") and not have_turn:
            have_turn = True
        else:
            log.info("aiortc: ICE server %r ignored (one STUN and one TURN only)", server.url)
            continue
        result.append(
            RTCIceServer(
                urls=server.url,
                username=server.username or None,
                credential=server.credential or None,
            )
        )
    return result


class AiortcPeer(PeerBase):
    LIBRARY = "aiortc"

    def __init__(
        self,
        ice_servers: list[IceServer],
        events: PeerEvents,
        *,
        relay_only: bool = False,
        buffered_high: int = DEFAULT_BUFFERED_HIGH,
        backpressure_wait: float = DEFAULT_BACKPRESSURE_WAIT,
        gather_timeout: float = DEFAULT_GATHER_TIMEOUT,
        tuning: AiortcTuning = DEFAULT_TUNING,
    ) -> None:
        super().__init__(events, buffered_high=buffered_high, backpressure_wait=backpressure_wait)
        self._gather_timeout = gather_timeout
        self._tuning = tuning
        policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
        self._pc = RTCPeerConnection(
            RTCConfiguration(iceServers=aiortc_ice_servers(ice_servers), iceTransportPolicy=policy)
        )
        self._channel: Any = None
        self._teardown: asyncio.Future[None] | None = None
        self._pc.on("datachannel", self._on_datachannel)
        self._pc.on("connectionstatechange", self._on_connection_state)

    # ------------------------------------------------------------ library events

    def _on_datachannel(self, channel: Any) -> None:
        if self._channel is not None:
            log.info("aiortc: ignoring extra data channel %r", channel.label)
            channel.close()
            return
        self._attach(channel)

    def _attach(self, channel: Any) -> None:
        self._channel = channel
        channel.bufferedAmountLowThreshold = self._buffered_high
        channel.on("open", self._emit_open)
        channel.on("close", lambda: self._emit_closed("data channel closed"))
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self._notify_drained)
        if channel.readyState == "open":
            # An incoming channel is announced already open.
            self._emit_open()

    def _on_message(self, data: bytes | str) -> None:
        self._emit_message(data if isinstance(data, bytes) else data.encode("utf-8"))

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        # aiortc's connection state follows ICE and DTLS only (SCTP plays no part in it), which
        # is exactly what transport_connected means.
        self._set_transport_up(state == "connected")
        if state == "failed":
            self._emit_closed("peer connection failed")
        elif state == "closed":
            self._emit_closed("peer connection closed")

    # ------------------------------------------------------------ signaling

    def _bound_gathering(self) -> None:
        """Cap aioice's per-server gathering wait (5 s, not configurable) at gather_timeout."""
        sctp = self._pc.sctp
        if sctp is None:
            return
        try:
            conn: Any = sctp.transport.transport.iceGatherer._connection
            if not getattr(conn, "_hotlink_bounded", False):
                conn.get_component_candidates = functools.partial(
                    conn.get_component_candidates, timeout=self._gather_timeout
                )
                conn._hotlink_bounded = True
        except AttributeError as exc:  # aiortc internals moved: gathering is merely slower
            log.warning("aiortc: cannot bound ICE gathering: %s", exc)

    async def _local_description(self, kind: str) -> str:
        self._bound_gathering()
        try:
            desc = await (self._pc.createOffer() if kind == "offer" else self._pc.createAnswer())
            await self._pc.setLocalDescription(desc)
        except Exception as exc:
            raise WebRTCError(f"aiortc: cannot create {kind}: {exc}") from exc
        # The association exists by now (channel created, or remote offer applied) but has not
        # started (that waits for ICE and DTLS), and gathering has made the sockets.
        tune_sctp(self._pc, self._tuning)
        tune_ice_sockets(self._pc, self._tuning)
        # The candidates are all in the SDP; only end-of-candidates remains to report.
        self._loop.call_soon(self._emit_candidate, None)
        return str(self._pc.localDescription.sdp)

    def _create_channel(self) -> None:
        if self._channel is not None:
            raise WebRTCError("create_offer() called twice")
        self._attach(self._pc.createDataChannel(CHANNEL_LABEL, ordered=True))

    async def _apply_remote_description(self, sdp: str, kind: str) -> None:
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))

    async def _apply_candidate(
        self, cand: IceCandidate | None, mid: str | None, index: int
    ) -> None:
        if cand is None:
            await self._pc.addIceCandidate(None)
            return
        parsed = candidate_from_sdp(strip_candidate_prefix(cand.candidate))
        parsed.sdpMid = mid
        parsed.sdpMLineIndex = index
        await self._pc.addIceCandidate(parsed)

    # ------------------------------------------------------------ channel

    def _channel_open(self) -> bool:
        return self._channel is not None and self._channel.readyState == "open"

    def _buffered(self) -> int:
        return int(self._channel.bufferedAmount) if self._channel is not None else 0

    def _send_now(self, data: bytes) -> None:
        self._channel.send(bytes(data))

    def selected_candidate_type(self) -> str | None:
        if self._closed or not self._open_emitted:
            return None
        sctp = self._pc.sctp
        if sctp is None:
            return None
        try:
            conn: Any = sctp.transport.transport._connection
            pair = conn._nominated.get(1)
            return str(pair.local_candidate.type) if pair is not None else None
        except AttributeError:
            return None

    def selected_candidate_types(self) -> tuple[str | None, str | None]:
        if self._closed or not self._open_emitted or self._pc.sctp is None:
            return None, None
        try:
            conn: Any = self._pc.sctp.transport.transport._connection
            pair = conn._nominated.get(1)
            if pair is None:
                return None, None
            return str(pair.local_candidate.type), str(pair.remote_candidate.type)
        except AttributeError:
            return self.selected_candidate_type(), None

    def round_trip_time(self) -> float | None:
        # RTCSctpTransport's smoothed RTT (RFC 4960 6.3.1, seconds): aiortc's getStats()
        # reports RTP streams only, so this private field is the one real measure it has.
        if self._closed or self._pc.sctp is None:
            return None
        srtt = getattr(self._pc.sctp, "_srtt", None)
        return float(srtt) if isinstance(srtt, int | float) and srtt > 0 else None

    # ------------------------------------------------------------ teardown

    async def close(self) -> None:
        if self._teardown is None:
            self._closed = True
            self._drained.set()
            self._teardown = asyncio.ensure_future(self._pc.close())
        # shield: a cancelled close() must not cancel the teardown others wait for.
        try:
            await asyncio.shield(self._teardown)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("aiortc teardown failed: %s", exc)


class AiortcBackend(Backend):
    name = "aiortc"

    def __init__(
        self,
        *,
        gather_timeout: float = DEFAULT_GATHER_TIMEOUT,
        tuning: AiortcTuning = DEFAULT_TUNING,
    ) -> None:
        self._gather_timeout = gather_timeout
        self._tuning = tuning

    def create_peer(
        self,
        ice_servers: list[IceServer],
        events: PeerEvents,
        *,
        relay_only: bool = False,
        buffered_high: int = DEFAULT_BUFFERED_HIGH,
        backpressure_wait: float = DEFAULT_BACKPRESSURE_WAIT,
        mtu: int = 0,  # aiortc's SCTP packet size is fixed (same_host_mtu is 0)
    ) -> AiortcPeer:
        return AiortcPeer(
            ice_servers,
            events,
            relay_only=relay_only,
            buffered_high=buffered_high,
            backpressure_wait=backpressure_wait,
            gather_timeout=self._gather_timeout,
            tuning=self._tuning,
        )
