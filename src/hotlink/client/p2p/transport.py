"""The seam between the hotlink manager and a peer-to-peer transport (WebRTC, issue 5).

The manager owns sessions, seq numbers and the WebSocket path. For every frame it first asks
the :class:`PeerTransport` to carry it (``try_send``); ``False`` means "not open / not
available", and the manager then sends the same frame, with the same seq, as ``HotlinkData``
over the WebSocket. The receiver's reorder buffer (one per session) merges both paths.

Frames a peer transport receives go back into the manager through
:meth:`TransportHost.deliver_frame`, the same receive path WebSocket ``HotlinkData`` takes.

Rules for implementations:

- Hooks are called from the manager's tasks and must return quickly: anything slow (ICE
  gathering, SDP) runs in tasks the transport owns and cancels in ``on_session_closed`` or
  ``close``.
- ``try_send`` may wait (a grace period for a channel still opening, backpressure on the
  buffered amount) but never longer than its configured bounds, and never raises for
  transport failures: it returns ``False`` so the WebSocket carries the frame. Once it has
  returned ``False`` for a seq it must not also send that seq (a duplicate is harmless to the
  receiver, which drops seqs it has seen, but it wastes bandwidth).
- A frame too large for the peer's max message size must return ``False``.
- In P2P-only or strict modes, where the WebSocket must not carry data, ``try_send`` raises
  :class:`PeerSendError` instead of returning ``False``: the manager then closes the session
  loudly (Close ``error``) rather than falling back.
- ``drain`` is awaited before an outbound session's Close ``eof``. The server forgets the
  session at that Close, so a frame the transport carried but may have lost can only be
  resent (``TransportHost.send_in_order``) before it: ``drain`` returns once every such
  frame is either in the hands of a path that still works or queued on the WebSocket, and
  raises :class:`PeerSendError` if neither can be had (the session then ends with ``error``,
  never with an ``eof`` that promises seqs the receiver will not get).
- On an end-to-end sealed session (``TransportHost.e2e_session``) the transport binds the
  DTLS fingerprints of both SDPs to the key exchange (``e2e_dtls`` signals) and carries no
  frame before the peer's binding checked out; a binding that fails goes to
  ``TransportHost.e2e_failed``.
- ``transport_kind`` names the path a session currently uses, for telemetry and logs:
  ``"ws"``, ``"p2p-host"``, ``"p2p-srflx"`` or ``"p2p-relay"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from ...protocol.e2e.session import E2ESession
from ...protocol.frames import Frame
from ...protocol.messages import HotlinkSignal, Payload
from ..telemetry import Telemetry

Role = Literal["inbound", "outbound"]


class PeerSendError(Exception):
    """The frame cannot go P2P and must not go over the WebSocket either (P2P-only, strict)."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a transport needs to know about a session (immutable snapshot)."""

    sid: str
    # The session's path (the Open ``pth``): for TCP tunnels the canonical key.
    path: str
    # inbound: we accepted the peer's Open (we offer); outbound: we opened (we answer).
    role: Role
    local_email: str
    # The other party: the Open's ``frm`` for inbound, the ``to`` target (may be "") for outbound.
    peer_email: str


class TransportHost(Protocol):
    """What the manager offers a transport."""

    telemetry: Telemetry

    async def send_signal(self, signal: HotlinkSignal) -> None:
        """Send a HotlinkSignal to the peer through the server (never blocks on data)."""

    def deliver_frame(self, sid: str, frame: Frame) -> None:
        """Hand a frame received over P2P to the receive path (reorder, then the app).

        Never waits: what the app has not taken yet is held by the session, whose flow
        control bounds it."""

    async def send_in_order(self, payload: Payload) -> None:
        """Queue a message on the WebSocket behind the data already queued there (resends of
        frames a failed channel may have lost); waits for room; raises NotConnected."""

    def session_info(self, sid: str) -> SessionInfo | None:
        """The live session with this id, inbound or outbound, or None."""

    def e2e_session(self, sid: str) -> E2ESession | None:
        """The end-to-end state of live session ``sid`` (None: not sealed, or gone), for the
        DTLS fingerprint binding of its data channel."""

    async def e2e_failed(self, sid: str, reason: str) -> None:
        """The data channel's DTLS binding failed (a middleman on the peer-to-peer path, or
        a forged binding): close the session loudly, the app sees a reset."""


class PeerTransport(Protocol):
    """A direct path between two clients, tried before the WebSocket for every frame."""

    def bind(self, host: TransportHost) -> None:
        """Called once, before any other hook, with the manager that owns this transport."""

    def on_server_connected(self, headers: Mapping[str, str]) -> None:
        """After each WebSocket (re)connect, with the upgrade response headers (ICE hints)."""

    async def try_send(self, sid: str, frame: Frame) -> bool:
        """Send ``frame`` for outbound session ``sid`` over P2P; False: use the WebSocket."""

    async def drain(self, sid: str) -> None:
        """Outbound ``sid`` is about to send Close eof: settle every frame sent P2P (see above)."""

    async def on_inbound_accepted(self, session: SessionInfo) -> None:
        """We sent HotlinkAccept for an inbound session (the acceptor offers here)."""

    async def on_outbound_accepted(self, session: SessionInfo) -> None:
        """Our outbound session was accepted by the peer (the opener answers offers)."""

    async def on_signal(self, signal: HotlinkSignal) -> None:
        """A HotlinkSignal arrived (any kind; the session may not be known yet)."""

    def stream_ending(self, sid: str) -> None:
        """The stream of ``sid`` is ending cleanly (the receiver got its Close eof): the
        channel closing from now on is the normal end, not a P2P failure."""

    async def on_session_closed(self, sid: str) -> None:
        """The session ended: close its peer connection and forget it."""

    def transport_kind(self, sid: str) -> str:
        """``ws`` or ``p2p-host`` / ``p2p-srflx`` / ``p2p-relay`` for this session."""

    async def close(self) -> None:
        """Shut down: close every peer connection and task."""


class NullPeerTransport:
    """No P2P at all: every frame goes over the WebSocket."""

    def bind(self, host: TransportHost) -> None:
        self.host = host

    def on_server_connected(self, headers: Mapping[str, str]) -> None:
        pass

    async def try_send(self, sid: str, frame: Frame) -> bool:
        return False

    async def drain(self, sid: str) -> None:
        pass

    async def on_inbound_accepted(self, session: SessionInfo) -> None:
        pass

    async def on_outbound_accepted(self, session: SessionInfo) -> None:
        pass

    async def on_signal(self, signal: HotlinkSignal) -> None:
        pass

    def stream_ending(self, sid: str) -> None:
        pass

    async def on_session_closed(self, sid: str) -> None:
        pass

    def transport_kind(self, sid: str) -> str:
        return "ws"

    async def close(self) -> None:
        pass
