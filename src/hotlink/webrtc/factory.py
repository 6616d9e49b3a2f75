"""Pick a WebRTC backend by name (``SYFTBOX_HOTLINK_WEBRTC_BACKEND=auto|libdatachannel|aiortc``).

The libraries are imported here, lazily, so that importing :mod:`hotlink.webrtc` costs nothing
and a machine without libdatachannel wheels still runs on aiortc.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .base import Backend, BackendUnavailableError

if TYPE_CHECKING:
    from .sctp_settings import SctpSettings

log = logging.getLogger("hotlink.webrtc")

BACKEND_NAMES = ("auto", "libdatachannel", "aiortc")


def load_backend(
    name: str = "auto", *, mtu: int = 0, sctp: SctpSettings | None = None, tuned: bool = True
) -> Backend:
    """The backend called ``name``.

    ``auto`` is libdatachannel where it imports, else aiortc. Raises :class:`ValueError` for an
    unknown name or a bad ``mtu`` and :class:`BackendUnavailableError` when the named library
    cannot load. ``mtu`` (0: the library's default) and ``sctp`` (None: its defaults) apply
    to libdatachannel only: aiortc's packet size is fixed (see
    ``hotlink.webrtc.libdatachannel_backend.MAX_MTU``). ``tuned=False`` runs aiortc as
    shipped, without :mod:`.aiortc_tuning`.
    """
    key = (name or "auto").strip().lower()
    if key == "auto":
        try:
            return _libdatachannel(mtu, sctp)
        except BackendUnavailableError as exc:
            log.info("libdatachannel unavailable, using aiortc: %s", exc)
            return _aiortc(tuned)
    if key == "libdatachannel":
        return _libdatachannel(mtu, sctp)
    if key == "aiortc":
        return _aiortc(tuned)
    raise ValueError(f"unknown WebRTC backend {name!r}: expected one of {', '.join(BACKEND_NAMES)}")


def _libdatachannel(mtu: int = 0, sctp: SctpSettings | None = None) -> Backend:
    try:
        from .libdatachannel_backend import LibdatachannelBackend
    except ImportError as exc:  # no wheel for this platform, or its native library fails
        raise BackendUnavailableError(f"libdatachannel backend cannot load: {exc}") from exc
    return LibdatachannelBackend(mtu=mtu, sctp_settings=sctp)


def _aiortc(tuned: bool = True) -> Backend:
    try:
        from .aiortc_backend import AiortcBackend
        from .aiortc_tuning import DEFAULT_TUNING, AiortcTuning
    except ImportError as exc:
        raise BackendUnavailableError(f"aiortc backend cannot load: {exc}") from exc
    return AiortcBackend(tuning=DEFAULT_TUNING if tuned else AiortcTuning.stock())
