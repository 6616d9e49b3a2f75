"""The WebRTC backend interface (layer 4): one peer connection carrying one data channel.

Everything above this layer talks to WebRTC through the three types here:

* :class:`PeerEvents`, the callbacks the owner (the hotlink manager) provides;
* :class:`Peer`, one peer connection with its single ordered, reliable data channel;
* :class:`Backend`, which makes peers (``load_backend()`` in :mod:`.factory` picks one).

A typical exchange, with signaling carried by ``HotlinkSignal`` through the relay server::

    backend = load_backend("auto")
    peer = backend.create_peer(ice_servers, events)      # events: your PeerEvents
    # acceptor / offerer                      # opener / answerer
    offer = await peer.create_offer()         answer = await peer.accept_offer(offer)
    await peer.set_answer(answer)
    # both sides: every events.on_local_candidate(c) goes to the other side's
    # peer.add_remote_candidate(c), in any order and at any time (buffered as needed);
    # events.on_channel_open() fires once on each side, then peer.send(frame) and
    # events.on_message(frame) carry whole messages, in order.
    await peer.close()                        # always, exactly one owner closes

Contract common to both backends:

* Callbacks run on the asyncio event-loop thread that created the peer, never on a library
  thread, and never after :meth:`Peer.close` has been called. They must not block; an
  exception raised by a callback is logged and swallowed (it cannot break the backend).
* ``on_channel_open`` fires at most once, before any ``on_message``. ``on_channel_closed``
  fires at most once, when the channel closes, the remote closes, or ICE/DTLS fails for good;
  it is not fired by a local :meth:`Peer.close`. A peer whose channel closed stays closed:
  the owner makes a new peer (and the session falls back to WebSocket meanwhile).
* There is no receive-side flow control: ``on_message`` is called as messages arrive, so the
  owner must hand each message off quickly (e.g. to its reorder buffer). Send-side
  backpressure is :meth:`Peer.send`'s watermark: a send waits as long as the buffer drains,
  however slowly, and fails only when it stops draining (a stalled path).
* :attr:`Peer.transport_connected` tells "ICE and DTLS are up" apart from "the channel is
  open": when the channel never opens although the transport connected, the SCTP layer is to
  blame (e.g. a peer that rejects the SCTP INIT), not the network path.
* Neither backend gives up on its own while ICE is still waiting for candidates (aiortc waits
  for an end-of-candidates that the reference clients never send). The owner applies its own
  deadline for the channel to open and closes the peer when it passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from hotlink.protocol.ice import IceCandidate, IceServer

# DECISIONS.md #2: the offerer creates this channel, ordered and reliable; answerers accept any.
CHANNEL_LABEL = "syftbox-data"
# PROTOCOL.md §6.6 defaults (SYFTBOX_HOTLINK_WEBRTC_BUFFERED_HIGH, ..._BACKPRESSURE_WAIT_MS).
# The wait is how long the buffer may go without draining at all, not a cap on the whole wait:
# a slow but moving path (the other core busy, a thin uplink) must not cost the channel.
DEFAULT_BUFFERED_HIGH = 1024 * 1024
DEFAULT_BACKPRESSURE_WAIT = 1.5
# Longest that create_offer()/accept_offer() may wait for STUN/TURN during gathering: an
# unreachable ICE server must not hold up the session (issue 5); host candidates suffice on
# a LAN and the WebSocket path carries data meanwhile.
DEFAULT_GATHER_TIMEOUT = 2.0


class WebRTCError(Exception):
    """A WebRTC operation failed (bad SDP, closed peer, library error)."""


class BackendUnavailableError(WebRTCError):
    """The requested backend's library is not installed or does not load here."""


class ChannelNotOpenError(WebRTCError):
    """``send()`` on a channel that is not (or no longer) open."""


class BackpressureTimeoutError(WebRTCError):
    """The send buffer stayed above the high watermark and did not drain at all for the wait
    limit: the path is stalled (a slow path that keeps draining never raises this)."""


class MessageTooLargeError(WebRTCError, ValueError):
    """A message larger than the remote's ``max-message-size`` (DECISIONS.md #6)."""


class PeerEvents(Protocol):
    """What a peer tells its owner. Always called on the event-loop thread (see module doc)."""

    def on_local_candidate(self, cand: IceCandidate | None) -> None:
        """A local ICE candidate to trickle to the remote (``ice_candidate`` signal).

        ``None`` means gathering is complete (end-of-candidates). A backend may also embed its
        candidates in the SDP it returns (aiortc does) and then only report ``None``. Never
        called before ``create_offer()``/``accept_offer()`` has returned its SDP to the caller,
        so an owner that queues the SDP for sending right away sends it first.
        """

    def on_channel_open(self) -> None:
        """The data channel is open: :meth:`Peer.send` works from now on."""

    def on_message(self, data: bytes) -> None:
        """One whole message from the remote, in order."""

    def on_channel_closed(self, reason: str) -> None:
        """The channel is gone for good: closed by the remote, or ICE/DTLS/SCTP failed."""


class Peer(ABC):
    """One peer connection and its single data channel. Made by :meth:`Backend.create_peer`.

    Exactly one of the two roles is used: the offerer calls :meth:`create_offer` then
    :meth:`set_answer`; the answerer calls :meth:`accept_offer`. Both call
    :meth:`add_remote_candidate` for every trickled remote candidate and :meth:`close` at the
    end. Methods raise :class:`WebRTCError` on failure.
    """

    @abstractmethod
    async def create_offer(self) -> str:
        """Offerer: create the ordered, reliable ``syftbox-data`` channel; return the offer SDP.

        Returns after at most about ``DEFAULT_GATHER_TIMEOUT`` even when STUN/TURN servers are
        unreachable.
        """

    @abstractmethod
    async def accept_offer(self, sdp: str) -> str:
        """Answerer: apply the remote offer, return the answer SDP. Any channel label is taken."""

    @abstractmethod
    async def set_answer(self, sdp: str) -> None:
        """Offerer: apply the remote answer."""

    @abstractmethod
    async def add_remote_candidate(self, cand: IceCandidate | None) -> None:
        """Apply a remote candidate (``None``: the remote's end-of-candidates).

        May be called before the remote description is known: the candidate is buffered and
        applied right after it (DECISIONS.md #4). ``sdp_mid`` is matched against the remote
        SDP's mids, falling back to ``sdp_mline_index`` when the mid is unknown or empty
        (DECISIONS.md #3). Malformed candidates are logged and dropped; never raises for them.
        """

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Send one message on the channel.

        Waits while :attr:`buffered_amount` is above the high watermark, for as long as the
        channel is open and the buffer keeps draining, however slowly. Only when the amount
        has not decreased at all for the wait limit (``backpressure_wait``: a stalled path)
        does it raise :class:`BackpressureTimeoutError` (the channel stays usable). The
        owner can still cancel a long wait.
        Raises :class:`MessageTooLargeError` above :attr:`max_message_size`, and
        :class:`ChannelNotOpenError` if the channel is not open, closes while waiting, or the
        library refuses the message; a refusal also ends the channel (``on_channel_closed``
        fires and every later send fails), so no later message can overtake a lost one.
        Concurrent callers are served in call order.
        """

    @property
    @abstractmethod
    def is_open(self) -> bool:
        """Whether the data channel is open now."""

    @property
    @abstractmethod
    def transport_connected(self) -> bool:
        """Whether ICE and DTLS are up now for this peer connection (the channel may not be).

        False before they connect, and again once the connection goes down, fails or is
        closed. True with the channel still not open means the network path and DTLS work
        and the SCTP association is what fails (for example pion releases before 2024 reject
        libdatachannel's SCTP INIT). aiortc reports its connection state (ICE and DTLS).
        libdatachannel's API exposes no DTLS state, so there it means "ICE connected and the
        connection has not failed": a DTLS handshake that fails turns the connection to
        failed (after about 30 s at worst), but until then this reads True.
        """

    @property
    def transport_was_connected(self) -> bool:
        """Whether :attr:`transport_connected` has ever been True for this peer.

        Stays True after the transport goes down, so an owner told ``on_channel_closed``
        can still say whether ICE and DTLS had worked: libdatachannel fails the whole
        connection at once when the remote aborts the SCTP association, so by then
        :attr:`transport_connected` is already False. Backends that cannot remember report
        the current state.
        """
        return self.transport_connected

    @property
    @abstractmethod
    def buffered_amount(self) -> int:
        """Bytes queued for sending and not yet handed to the network."""

    @property
    @abstractmethod
    def max_message_size(self) -> int:
        """The largest message the remote accepts: its SDP ``max-message-size``, else 65536."""

    @abstractmethod
    def selected_candidate_type(self) -> str | None:
        """``host``/``srflx``/``prflx``/``relay`` of the selected local candidate, or None.

        None until ICE has selected a pair (or when the library cannot tell). Telemetry maps it
        to ``p2p-host``/``p2p-srflx``/``p2p-relay``.
        """

    def selected_candidate_types(self) -> tuple[str | None, str | None]:
        """``(local, remote)`` candidate types of the selected pair; each None when unknown.

        The remote end matters for telemetry: a pair whose local end is ``prflx`` may still
        run through the remote's TURN relay. Backends that can read the remote end override
        this; the default knows only the local one.
        """
        return self.selected_candidate_type(), None

    def round_trip_time(self) -> float | None:
        """The path's round trip in seconds as the library measured it, or None.

        Only a measured value, never a guess: aiortc's SCTP keeps a smoothed RTT from its
        DATA/SACK exchanges (so only a side that sends data has one); libdatachannel's C API
        has no RTT getter (only its C++ ``PeerConnection::rtt()`` does), so it reports None.
        Neither exposes the WebRTC stats' candidate-pair ``currentRoundTripTime``.
        """
        return None

    @abstractmethod
    async def close(self) -> None:
        """Close the channel and the peer connection and release ICE/DTLS/SCTP, threads, fds.

        Idempotent and safe to call at any point (concurrent calls wait for the same
        teardown). No callback fires after it has been called.
        """


class Backend(ABC):
    """A WebRTC implementation. Get one with :func:`hotlink.webrtc.load_backend`."""

    #: ``"libdatachannel"`` or ``"aiortc"``.
    name: str
    #: The SCTP MTU this backend's peers use, and take, between two ends on one network
    #: stack (:mod:`hotlink.protocol.locality`); 0: they keep their default everywhere.
    same_host_mtu: int = 0

    @abstractmethod
    def create_peer(
        self,
        ice_servers: list[IceServer],
        events: PeerEvents,
        *,
        relay_only: bool = False,
        buffered_high: int = DEFAULT_BUFFERED_HIGH,
        backpressure_wait: float = DEFAULT_BACKPRESSURE_WAIT,
        mtu: int = 0,
    ) -> Peer:
        """A new peer connection. Must be called on the running event loop that will own it.

        ``ice_servers`` may be empty (host candidates only, DECISIONS.md #24). With
        ``relay_only`` only TURN relay candidates are gathered and used. ``buffered_high`` and
        ``backpressure_wait`` (seconds without any drain before a send gives up) configure
        :meth:`Peer.send`. ``mtu``: this connection's SCTP MTU, up to :attr:`same_host_mtu`
        (0: the backend's own setting; backends without a choice ignore it).
        """
