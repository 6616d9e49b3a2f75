"""Faster datagram reception for aiortc's ICE sockets (aioice host sockets on asyncio's
selector loop).

asyncio's datagram transport reads one datagram per readiness event: every 1.2 KB SCTP packet
costs a trip through ``epoll``, a loop iteration and a task wake-up before aiortc sees it, and
the next packet waits for the next iteration. :class:`BatchedReader` replaces the socket's
reader callback with one that reads up to ``limit`` datagrams per event. They land in aioice's
receive queue together, aiortc's DTLS task then handles them in one go (``Queue.get`` does
not suspend while items are waiting), and the SCTP layer can see that more packets are queued
(see :mod:`.aiortc_sctp`).

DTLS records (first byte 20-63, the RFC 7983 demultiplexing rule aiortc itself applies) go
straight to aioice's connection: aioice would first try to parse each one as STUN and only
pass it on once that failed. Everything else (STUN checks, consent, anything unknown) still
goes through aioice's ``datagram_received``.

The receive buffer is raised as well: a sender with a full congestion window can put several
hundred packets on loopback in a burst, more than aioice's 256 KiB takes, and each one dropped
there costs a retransmission and halves the sender's window.

The reader relies on private attributes of asyncio's selector datagram transport; where they
are missing (another event loop such as uvloop, which reads in batches itself, or another
Python version), the socket keeps its stock reader.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

log = logging.getLogger("hotlink.webrtc.aiortc")

# RFC 7983 section 7: a first byte in 20..63 is DTLS.
_DTLS_FIRST = 20
_DTLS_LAST = 63
_READ_ERROR = "Fatal read error on datagram transport"


class BatchedReader:
    """Reader callback of one UDP socket: up to ``limit`` datagrams per readiness event,
    with the same error handling as asyncio's own ``_read_ready``."""

    __slots__ = ("_component", "_connection", "_limit", "_protocol", "_sock", "_transport")

    def __init__(self, transport: Any, protocol: Any, limit: int) -> None:
        self._transport = transport
        self._protocol = protocol
        self._sock: socket.socket = transport._sock
        self._connection = protocol.receiver
        self._component: int = protocol.local_candidate.component
        self._limit = limit

    def __call__(self) -> None:
        transport = self._transport
        recvfrom = self._sock.recvfrom
        size = transport.max_size
        for _ in range(self._limit):
            if transport._conn_lost:
                return
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                transport._fatal_error(exc, _READ_ERROR)
                return
            if data and _DTLS_FIRST <= data[0] <= _DTLS_LAST:
                self._connection.data_received(data, self._component)
            else:
                self._protocol.datagram_received(data, addr)


class DtlsShortcut:
    """``datagram_received`` of one aioice protocol, set on the instance where the loop's
    own transport stays (uvloop reads in batches already): DTLS records go straight to the
    connection's queue, everything else to aioice's method."""

    __slots__ = ("_component", "_connection", "_stock")

    def __init__(self, protocol: Any) -> None:
        self._connection = protocol.receiver
        self._component: int = protocol.local_candidate.component
        self._stock = protocol.datagram_received

    def __call__(self, data: bytes, addr: Any) -> None:
        if data and _DTLS_FIRST <= data[0] <= _DTLS_LAST:
            self._connection.data_received(data, self._component)
        else:
            self._stock(data, addr)


def _selector_datagram_transport(transport: Any) -> bool:
    return (
        type(transport).__name__ == "_SelectorDatagramTransport"
        and isinstance(getattr(transport, "_sock", None), socket.socket)
        and hasattr(transport, "_sock_fd")
        and hasattr(transport, "_conn_lost")
        and hasattr(transport, "max_size")
        and hasattr(transport, "_fatal_error")
    )


_small_buffer_logged = False


def raise_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for an SO_RCVBUF of ``size`` bytes, halving on refusal (macOS refuses more than
    ``kern.ipc.maxsockbuf``; Linux silently caps at ``net.core.rmem_max``). Never lowers it.
    Returns the size now in effect (Linux reports twice the request: its bookkeeping)."""
    global _small_buffer_logged
    try:
        current = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        request = size
        while request > current:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, request)
                break
            except OSError:
                request //= 2
        now = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as exc:
        log.debug("aiortc: cannot read or set the UDP receive buffer: %s", exc)
        return 0
    if now < size and not _small_buffer_logged:
        _small_buffer_logged = True
        log.info(
            "aiortc: UDP receive buffer is %d bytes, asked for %d; bursts may overflow it "
            "(raise net.core.rmem_max on Linux, kern.ipc.maxsockbuf on macOS)",
            now,
            size,
        )
    return now


def tune_socket(protocol: Any, *, batch: int, recv_buffer: int) -> str:
    """Raise the receive buffer of one aioice protocol's socket and install a
    :class:`BatchedReader` (``batch`` > 1), or where the loop's transport is not asyncio's
    selector transport, a :class:`DtlsShortcut`. Returns what was installed: ``"batched"``,
    ``"shortcut"`` or ``""``."""
    transport = getattr(protocol, "transport", None)
    if transport is None or transport.is_closing():
        return ""
    sock = transport.get_extra_info("socket")
    if recv_buffer > 0 and sock is not None:
        raise_receive_buffer(sock, recv_buffer)
    if batch <= 1:
        return ""
    loop = asyncio.get_running_loop()
    add_reader = getattr(loop, "_add_reader", None)
    try:
        if (
            _selector_datagram_transport(transport)
            and add_reader is not None
            and getattr(transport, "_loop", None) is loop
        ):
            # Replaces the transport's own registration for this fd; the transport's
            # close() removes it as before.
            add_reader(transport._sock_fd, BatchedReader(transport, protocol, batch))
            return "batched"
        if "datagram_received" not in vars(protocol):
            protocol.datagram_received = DtlsShortcut(protocol)
            return "shortcut"
    except AttributeError:
        pass  # not the aioice protocol we know: leave it as it is
    return ""
