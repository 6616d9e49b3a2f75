"""A faster SCTP association for aiortc: fewer SACKs, no per-SACK scan of the sent queue,
linear-time reassembly.

aiortc sends every DATA chunk in its own packet (at most 1160 bytes of payload), so a 60 KiB
frame is 53 packets, and by default answers every packet with a SACK: the receiver builds,
encrypts and sends one datagram per datagram received, and the sender receives, decrypts and
processes as many. The changes, all invisible on the wire to a conforming peer except for
SACK timing within what the RFC allows:

* **SACK every second packet while more are waiting** (RFC 9260 section 6.2: a receiver
  SHOULD acknowledge at least every second packet, within 200 ms). A packet that arrives while
  further datagrams are already queued for this association may wait for the next one; any
  packet that finds the queue empty is acknowledged at once, as is anything out of order,
  duplicated or FORWARD-TSN related. So nothing waits for a timer: at worst the acknowledgement
  goes out once the current batch of datagrams has been handled (a ``call_soon`` fallback
  covers a batch that ends in a datagram that is not SCTP).
* **Send without scanning the sent queue when nothing awaits retransmission**, and never
  more in flight than the peer's advertised receive window. aiortc's ``_transmit`` walks every
  outstanding chunk on every call (once per SACK) looking for chunks marked for
  retransmission. Chunks are only ever marked after a SACK with gap reports or a T3 timeout,
  so until one of those happens we take the short path, which is the tail of aiortc's own
  ``_transmit``; afterwards aiortc's own method runs until no mark is left.
* **Reassemble in linear time**: look for complete messages only when a chunk can complete
  one (it is a last fragment, or it fills a hole), not after every chunk; and record an
  in-order TSN without aiortc's sort-and-filter of its out-of-order bookkeeping.

The class is installed per association (``transport.__class__ = TunedSctpTransport``, see
:mod:`.aiortc_tuning`), so it never touches other users of aiortc in the process; it relies on
aiortc's private attributes and is only used on aiortc versions listed there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiortc.rtcsctptransport import (
    SCTP_DATA_LAST_FRAG,
    USERDATA_MAX_LENGTH,
    DataChunk,
    ForwardTsnChunk,
    RTCSctpTransport,
    SackChunk,
    tsn_plus_one,
)
from aiortc.utils import uint32_gt

log = logging.getLogger("hotlink.webrtc.aiortc")

# aiortc's burst limit (SCTP_MAX_BURST = 4 packets beyond the flight size).
_BURST = 4 * USERDATA_MAX_LENGTH


class TunedSctpTransport(RTCSctpTransport):
    """:class:`RTCSctpTransport` with delayed SACKs and an O(1) transmit path.

    Never constructed directly: an existing association's class is switched to this one
    before it starts (its ``__init__`` has run), so all added state has class defaults.
    """

    # Packets with DATA received since our last SACK.
    _hl_unacked = 0
    # Inside _handle_data: a SACK asked for here may be delayed.
    _hl_in_packet = False
    # This packet must be acknowledged at once (it carried a FORWARD TSN).
    _hl_sack_now = False
    # A fallback SACK is scheduled for the end of the current batch.
    _hl_flush_pending = False
    # Some sent chunk may be marked for retransmission: aiortc's full _transmit must run.
    # True until proven otherwise, so a switch mid-association starts on the safe path.
    _hl_retransmit_possible = True
    # The delayed SACKs being sent (each a short task); cancelled by stop(), their owner.
    _hl_sack_tasks: set[asyncio.Task[None]] | None = None
    # The peer's receive window from its latest SACK (None until the first one).
    _hl_peer_rwnd: int | None = None

    # ------------------------------------------------------------ receiving

    async def _handle_data(self, data: bytes) -> None:
        self._hl_in_packet = True
        try:
            await super()._handle_data(data)
        finally:
            self._hl_in_packet = False
            self._hl_sack_now = False

    def _mark_received(self, tsn: int) -> bool:
        # The next TSN in order with nothing out of order or duplicated pending: aiortc's
        # method would add it to a set, sort that set and filter two collections to end up
        # exactly here.
        if (
            not self._sack_misordered
            and not self._sack_duplicates
            and self._last_received_tsn is not None
            and tsn == tsn_plus_one(self._last_received_tsn)
        ):
            self._last_received_tsn = tsn
            return False
        return super()._mark_received(tsn)

    async def _receive_data_chunk(self, chunk: DataChunk) -> None:
        """aiortc's own, except that it looks for complete messages only when this chunk can
        complete one: aiortc rescans the stream's whole reassembly buffer after every chunk,
        53 rescans of a growing list for one 60 KiB message."""
        self._sack_needed = True
        if self._mark_received(chunk.tsn):
            return
        stream = self._get_inbound_stream(chunk.stream_id)
        buffered = stream.reassembly
        # add_chunk appends a chunk that is newer than everything buffered; a chunk put
        # before others may fill a hole that held back a complete message.
        appended = not buffered or uint32_gt(chunk.tsn, buffered[-1].tsn)
        stream.add_chunk(chunk)
        self._advertised_rwnd -= len(chunk.user_data)
        if not appended or chunk.flags & SCTP_DATA_LAST_FRAG:
            for message in stream.pop_messages():
                self._advertised_rwnd += len(message[2])
                await self._receive(*message)
        await self._reset_deferred_streams()

    async def _receive_forward_tsn_chunk(self, chunk: ForwardTsnChunk) -> None:
        self._hl_sack_now = True
        await super()._receive_forward_tsn_chunk(chunk)

    def _hl_may_delay_sack(self) -> bool:
        if (
            not self._hl_in_packet
            or self._hl_sack_now
            or self._hl_unacked >= 1
            or self._sack_misordered
            or self._sack_duplicates
            or self._association_state != self.State.ESTABLISHED
        ):
            return False
        # Only while more datagrams are already waiting: they arrive in this same batch.
        try:
            return bool(self.transport.transport._connection._queue.qsize())
        except AttributeError:
            return False

    async def _send_sack(self) -> None:
        if self._hl_may_delay_sack():
            self._hl_unacked += 1
            if not self._hl_flush_pending:
                self._hl_flush_pending = True
                asyncio.get_running_loop().call_soon(self._hl_flush_sack)
            return
        self._hl_unacked = 0
        await super()._send_sack()

    def _hl_flush_sack(self) -> None:
        """End of batch: acknowledge what the batch left unacknowledged."""
        self._hl_flush_pending = False
        if self._sack_needed and self._hl_unacked:
            if self._hl_sack_tasks is None:
                self._hl_sack_tasks = set()
            task = asyncio.ensure_future(self._hl_send_pending_sack())
            self._hl_sack_tasks.add(task)
            task.add_done_callback(self._hl_sack_tasks.discard)

    async def _hl_send_pending_sack(self) -> None:
        if not (self._sack_needed and self._hl_unacked):
            return  # a later packet's SACK covered it
        try:
            await self._send_sack()
        except ConnectionError:
            pass  # DTLS went down meanwhile; nothing left to acknowledge to
        except Exception:
            log.exception("aiortc: delayed SACK failed")

    async def stop(self) -> None:
        for task in list(self._hl_sack_tasks or ()):
            task.cancel()
        await asyncio.gather(*(self._hl_sack_tasks or ()), return_exceptions=True)
        await super().stop()

    # ------------------------------------------------------------ sending

    async def _receive_sack_chunk(self, chunk: SackChunk) -> None:
        if not uint32_gt(self._last_sacked_tsn, chunk.cumulative_tsn):  # else aiortc drops it
            self._hl_peer_rwnd = chunk.advertised_rwnd
        if chunk.gaps:
            # Gap reports strike missing chunks, three strikes mark them for retransmission.
            self._hl_retransmit_possible = True
        await super()._receive_sack_chunk(chunk)

    def _t3_expired(self) -> None:
        self._hl_retransmit_possible = True
        super()._t3_expired()

    async def _transmit(self) -> None:
        if (
            self._hl_retransmit_possible
            or self._forward_tsn_chunk is not None
            or self._fast_recovery_exit is not None
        ):
            await super()._transmit()
            self._hl_retransmit_possible = any(c._retransmit for c in self._sent_queue)
            return
        # Nothing to retransmit and no FORWARD TSN: the tail of aiortc's _transmit, plus the
        # peer's receive window, which aiortc does not consult (RFC 9260 section 6.1 rule A;
        # with nothing in flight one chunk may still go, as a window probe). Without it the
        # window only stops growing at a loss, and on a fast path the excess waits in the
        # peer's socket buffer, delaying everything behind it.
        cwnd = min(self._flight_size + _BURST, self._cwnd)
        rwnd = self._hl_peer_rwnd
        if rwnd is not None:
            cwnd = min(cwnd, max(rwnd, 1))
        outbound = self._outbound_queue
        sent = self._sent_queue
        while outbound and self._flight_size < cwnd:
            chunk: Any = outbound.popleft()
            sent.append(chunk)
            self._flight_size_increase(chunk)
            chunk._sent_count += 1
            chunk._sent_time = time.time()
            await self._send_chunk(chunk)
            if not self._t3_handle:
                self._t3_start()
