"""Naming a TURN problem where the user looks, before a session trips over it.

After each connect to the relay the WebRTC transport knows its ICE servers (its own, or the
relay's advertised ones with fresh TURN REST credentials). Each TURN server is asked for one
allocation (:func:`hotlink.webrtc.turn_check.check_turn`); a refusal or silence becomes one
WARNING naming the server and what to check. With relay-only candidates and no working TURN
server, P2P cannot open at all, which deserves its own WARNING. Each distinct problem is said
once per process, so a flapping connection does not repeat it.
"""

from __future__ import annotations

import asyncio
import logging

from ...protocol.ice import IceServer
from ...webrtc.turn_check import TurnCheck, check_turn

log = logging.getLogger("hotlink.webrtc")


class TurnDiagnosis:
    def __init__(self, *, relay_only: bool) -> None:
        self.relay_only = relay_only
        self._checked: tuple[tuple[str, str, str], ...] | None = None
        self._said: set[tuple[str, str]] = set()
        self.results: list[TurnCheck] = []

    async def check(self, servers: list[IceServer]) -> list[TurnCheck]:
        """Check the TURN servers among ``servers`` (once per set of URLs and credentials)."""
        turns = [s for s in servers if s.is_turn]
        if self.relay_only and not turns:
            self._warn(
                ("relay-only", "none"),
                "SYFTBOX_HOTLINK_RELAY_ONLY=1 but no TURN server is configured: no data "
                "channel can open; every session uses the websocket",
            )
            return []
        key = tuple((s.url, s.username, s.credential) for s in turns)
        if key == self._checked:
            return self.results
        self._checked = key
        self.results = list(await asyncio.gather(*(check_turn(s) for s in turns)))
        for result in self.results:
            if not result.ok:
                self._warn(
                    (result.url, result.problem),
                    f"TURN server {result.url}: {result.problem}. "
                    + _advice(result.problem)
                    + " Peers behind NATs that need a relay cannot connect peer to peer.",
                )
        if self.relay_only and self.results and not any(r.ok for r in self.results):
            self._warn(
                ("relay-only", "unreachable"),
                "SYFTBOX_HOTLINK_RELAY_ONLY=1 and no TURN server granted an allocation: no "
                "data channel can open; every session uses the websocket",
            )
        return self.results

    def _warn(self, key: tuple[str, str], text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("%s", text)


def _advice(problem: str) -> str:
    if problem.startswith("authentication failed"):
        return (
            "Check SYFTBOX_HOTLINK_TURN_USER and SYFTBOX_HOTLINK_TURN_PASS, or that the relay's "
            "--turn-secret matches the TURN server's static-auth-secret."
        )
    if problem.startswith(("no answer", "unreachable")):
        return "Check the host, port and transport, and that a firewall lets it through."
    return "See the TURN server's log."
