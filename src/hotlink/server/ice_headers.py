"""ICE advertisement headers on the upgrade response (PROTOCOL.md §1.4, DECISIONS.md #23).

Sent only when the server is configured with real ICE servers. ``none`` (DECISIONS.md #24)
is not advertised: a reference Rust client would adopt it as a URL and fail. TURN
credentials are only ever the short-lived REST kind minted from the shared secret for the
connecting user; a static ``SYFTBOX_HOTLINK_TURN_PASS`` is never handed to clients.
"""

from __future__ import annotations

from ..protocol.ice import ice_advertisement
from ..settings import ServerSettings


def advertised_ice_servers(settings: ServerSettings) -> str | None:
    raw = settings.advertised_ice_servers()
    if raw is None or not raw.strip() or raw.strip().lower() == "none":
        return None
    return raw.strip()


def ice_headers(settings: ServerSettings, user: str, now: float) -> dict[str, str]:
    """The headers for ``user``'s 101 response; empty when nothing is configured."""
    return ice_advertisement(
        advertised_ice_servers(settings),
        turn_secret=settings.turn_secret,
        user=user,
        now=now,
        ttl=settings.turn_ttl,
    )


def static_turn_password_ignored(settings: ServerSettings) -> bool:
    """True when a static TURN password is configured; the app warns once that it is unused."""
    return bool(settings.turn_pass or settings.turn_user) and not settings.turn_secret
