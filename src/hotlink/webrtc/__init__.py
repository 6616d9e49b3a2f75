"""WebRTC backends (layer 4): the only code that imports aiolibdatachannel or aiortc.

Use :func:`load_backend` to get a :class:`Backend`, then :meth:`Backend.create_peer`; see
:mod:`hotlink.webrtc.base` for the contract. Importing this package loads neither library.
"""

from .base import (
    CHANNEL_LABEL,
    DEFAULT_BACKPRESSURE_WAIT,
    DEFAULT_BUFFERED_HIGH,
    DEFAULT_GATHER_TIMEOUT,
    Backend,
    BackendUnavailableError,
    BackpressureTimeoutError,
    ChannelNotOpenError,
    MessageTooLargeError,
    Peer,
    PeerEvents,
    WebRTCError,
)
from .factory import BACKEND_NAMES, load_backend

__all__ = [
    "BACKEND_NAMES",
    "CHANNEL_LABEL",
    "DEFAULT_BACKPRESSURE_WAIT",
    "DEFAULT_BUFFERED_HIGH",
    "DEFAULT_GATHER_TIMEOUT",
    "Backend",
    "BackendUnavailableError",
    "BackpressureTimeoutError",
    "ChannelNotOpenError",
    "MessageTooLargeError",
    "Peer",
    "PeerEvents",
    "WebRTCError",
    "load_backend",
]
