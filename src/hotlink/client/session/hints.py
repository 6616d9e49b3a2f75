"""Warnings that name the likely cause where the user looks (the client's log), once in a while.

A stream that cannot start or that waits says why in protocol terms ("accept timeout",
"rejected: permission denied", a sender out of credit). These turn them into what to check:
the peer's side of the tunnel, the ACL, the receiving app. The same hint for the same folder
is said at most once per :data:`HINT_INTERVAL`, so a retrying app does not flood the log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from ...protocol.acl import short_path
from ...protocol.markers import is_tcp_proxy_path, path_owner

log = logging.getLogger("hotlink.session")

HINT_INTERVAL = 300.0
# How long a sender may wait for credit before the receiver is said to be falling behind.
BEHIND_AFTER = 30.0
_REMEMBERED = 1024


class Hints:
    """Rate-limited WARNINGs keyed by (what, where)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._said: OrderedDict[tuple[str, str], float] = OrderedDict()

    def say(self, what: str, where: str, text: str, level: int = logging.WARNING) -> bool:
        now = self._clock()
        last = self._said.get((what, where))
        if last is not None and now - last < HINT_INTERVAL:
            return False
        self._said[(what, where)] = now
        self._said.move_to_end((what, where))
        while len(self._said) > _REMEMBERED:
            self._said.popitem(last=False)
        log.log(level, "%s", text)
        return True

    def ignored_open(self, peer: str, sid: str, path: str, why: str) -> bool:
        """An Open we leave unanswered (``why``: for what). Said once per peer in a while:
        anyone the relay lets write a path may send Opens, as many as it likes."""
        return self.say(
            "ignored-open",
            peer,
            f"ignoring hotlink open {sid} from {peer}: {why} {short_path(path)} "
            f"(said once per {HINT_INTERVAL:g} s per peer)",
            logging.INFO,
        )

    def not_accepted(self, path: str, me: str, peer: str, waited: float) -> bool:
        folder = path.rsplit("/", 1)[0]
        if is_tcp_proxy_path(path):
            who = peer or "the peer"
            cause = (
                f"is {who}'s client running and connected, with this tunnel open on its side "
                f"(hotlink tunnel open --peer {me} ...; the marker in the same _mpc folder)?"
            )
        else:
            cause = (
                f"is a receiving app there: {path_owner(path) or 'the owner'}'s client accepts "
                "once the app has written stream.accept in the folder"
            )
        return self.say(
            "no-accept",
            folder,
            f"nobody accepted the stream to {folder} within {waited:g} s: {cause}",
        )

    def refused(self, path: str, reason: str, me: str, peer: str) -> bool:
        folder = path.rsplit("/", 1)[0]
        if reason == "permission denied":
            owner = path_owner(path) or "the owner"
            cause = (
                f"the relay checks the ACL (syft.pub.yaml) of {owner}'s folder: it must let "
                f"{me} write" + (f" and {peer} read" if peer else "") + " (hotlink tunnel open "
                "writes it); an ACL just written may not be published yet"
            )
        else:
            cause = "see the peer's log"
        return self.say(
            "refused", folder, f"the stream to {folder} was refused ({reason}): {cause}"
        )

    def receiver_behind(self, path: str, peer: str, waited: float) -> bool:
        folder = path.rsplit("/", 1)[0]
        return self.say(
            "behind",
            folder,
            f"{peer or 'the receiver'}'s app has taken nothing on {folder} for {waited:.0f} s: "
            "the stream waits for it (nothing is lost; the sending app is slowed down)",
        )


HINTS = Hints()
