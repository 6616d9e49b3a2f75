"""Asking a TURN server for an allocation before a session needs one, to name what is wrong.

A TURN server that refuses our credentials, or does not answer at all, shows in WebRTC only
as a data channel that never opens through a NAT that needs a relay, 15 s later, with no
reason. One Allocate with our credentials, released at once, tells the two apart: the user
reads "authentication failed" or "no answer" with the server's URL, where they look, right
after the client starts.

The check uses aioice's TURN client (aiortc's ICE stack, a dependency already); it works for
either WebRTC backend, since it is only a TURN client talking to the server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aioice import stun, turn

from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.ice import IceServer, parse_ice_url

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class TurnCheck:
    """The outcome for one TURN server: ``problem`` is empty when it granted an allocation."""

    url: str
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


class _Quiet(asyncio.DatagramProtocol):
    """The relayed transport's protocol: the check sends nothing through it."""


async def check_turn(server: IceServer, timeout: float = DEFAULT_TIMEOUT) -> TurnCheck:
    """Allocate on ``server`` with its credentials and release the allocation at once."""
    try:
        url = parse_ice_url(server.url)
    except ProtocolError as exc:
        return TurnCheck(server.url, str(exc))
    if not url.scheme.startswith("turn"):
        return TurnCheck(server.url)  # STUN needs no credentials: nothing to check
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await turn.create_turn_endpoint(
                _Quiet,
                (url.host, url.port),
                server.username or None,
                server.credential or None,
                ssl=url.secure,
                transport=url.transport,
            )
    except stun.TransactionFailed as exc:
        code, reason = _error(exc)
        if code in (401, 403):
            return TurnCheck(server.url, f"authentication failed ({code} {reason})")
        return TurnCheck(server.url, f"allocation refused ({code} {reason})")
    except (TimeoutError, stun.TransactionTimeout):
        return TurnCheck(server.url, f"no answer within {timeout:g} s")
    except OSError as exc:
        return TurnCheck(server.url, f"unreachable ({exc.strerror or exc})")
    except Exception as exc:  # a library error must cost the check, never the client
        return TurnCheck(server.url, f"check failed ({type(exc).__name__}: {exc})")
    transport.close()  # deletes the allocation (a Refresh with lifetime 0)
    return TurnCheck(server.url)


def _error(exc: stun.TransactionFailed) -> tuple[int, str]:
    """The STUN ERROR-CODE of a failed transaction: (code, reason phrase)."""
    value = exc.response.attributes.get("ERROR-CODE")
    if isinstance(value, tuple) and len(value) == 2:
        return int(value[0]), str(value[1])
    return 0, "unknown error"
