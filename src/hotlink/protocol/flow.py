"""Per-session flow control between hotlink peers: credit granted by the receiving app's pace.

A stream must run at the pace of its slowest party, like one TCP connection: the receiver
grants credit, in payload bytes, and grants more only as its local app consumes what it was
given; the sender stops reading its own app's socket when it has no credit left, so TCP
backpressure reaches the sending app. The same credit covers both paths (data channel and
WebSocket), so neither a paused app nor a slow one ever makes a buffer overflow, a channel
fail or a shared connection wait.

This is our extension (docs/DECISIONS-LOCAL.md, "Flow control"). On the wire it is one more
HotlinkSignal kind, relayed by the server like every signal::

    HotlinkSignal{sid, knd: "flow_credit", tok: '{"v":1,"limit":L,"window":W}'}

sent by the receiver (the acceptor) to the sender (the opener). ``limit`` is an absolute
count of payload bytes since the start of the stream: the sender may start a frame while the
payload bytes it has sent so far are below ``limit``. Absolute limits make repeats and
reordering harmless (the largest one counts). ``window`` is informational.

Compatibility: reference clients ignore signal kinds they do not know, so they never hear of
credit and send as before; a sender that has heard no credit from its receiver sends without
limit (today's behaviour), and switches to credit as soon as the first grant arrives. The
receiver bounds what it holds either way (:attr:`ReceiveCredit.hard_limit`): that bound is
never reached by a sender that follows the grants, and a sender that does not is stopped
loudly rather than allowed to grow memory.

Pure state, no I/O and no clock: the client's sessions move the bytes and the signals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import ProtocolError
from .tokens import json_object

FLOW_KIND = "flow_credit"
FLOW_VERSION = 1

KIB = 1024
MIB = 1024 * KIB

DEFAULT_WINDOW = 8 * MIB
MIN_WINDOW = 64 * KIB
# The largest frame a sender may start just below its limit: a WebSocket message carries at
# most 8 MiB (PROTOCOL.md §1.10), a data-channel message far less.
MAX_FRAME = 8 * MIB
# Tokens are a few dozen bytes; anything much larger is not ours.
_MAX_TOKEN = 256


@dataclass(frozen=True, slots=True)
class Credit:
    """One grant: the sender may send payload bytes up to ``limit`` (absolute)."""

    limit: int
    window: int


def credit_token(credit: Credit) -> str:
    """The ``tok`` of a ``flow_credit`` signal."""
    return json.dumps(
        {"v": FLOW_VERSION, "limit": credit.limit, "window": credit.window},
        separators=(",", ":"),
    )


def parse_credit_token(tok: str) -> Credit:
    """A grant from its ``tok``; ProtocolError for anything else.

    A newer version's token is read as long as it carries ``limit``: the meaning of the
    limit is the contract, the rest may grow.
    """
    obj = json_object(tok, "flow credit token", _MAX_TOKEN)
    limit = obj.get("limit")
    window = obj.get("window", 0)
    if not _is_count(limit):
        raise ProtocolError(f"flow credit token has no valid 'limit': {limit!r}")
    if not _is_count(window):
        raise ProtocolError(f"flow credit token has an invalid 'window': {window!r}")
    assert isinstance(limit, int) and isinstance(window, int)
    return Credit(limit, window)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


class SendCredit:
    """The sender's side: how far it may send.

    Until the first grant arrives the peer may be a reference client that never grants, so
    sending is unlimited (:attr:`controlled` is False); from the first grant on, a frame may
    start only while :attr:`sent` is below :attr:`limit`.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.limit: int | None = None
        self.window = 0
        self.grants = 0

    @property
    def controlled(self) -> bool:
        """Whether the receiver grants credit (it has sent at least one grant)."""
        return self.limit is not None

    def can_send(self) -> bool:
        return self.limit is None or self.sent < self.limit

    @property
    def available(self) -> int | None:
        """Bytes left before the limit (None: no limit)."""
        return None if self.limit is None else max(0, self.limit - self.sent)

    def on_sent(self, nbytes: int) -> None:
        self.sent += nbytes

    def on_credit(self, credit: Credit) -> bool:
        """Apply a grant; True when it let the sender go on (it was blocked before)."""
        blocked = not self.can_send()
        self.grants += 1
        self.window = credit.window or self.window
        if self.limit is None or credit.limit > self.limit:
            self.limit = credit.limit
        return blocked and self.can_send()


class ReceiveCredit:
    """The receiver's side: what it holds for its app and what it has granted.

    ``received`` counts payload bytes of frames taken in (each seq once), ``consumed`` the
    bytes the local app has taken (written into its socket). Everything in between is held
    by the receiver and bounded: a sender that follows the grants holds at most ``window``
    plus one frame there; :attr:`hard_limit` leaves room for what a sender may send before
    it heard the first grant, and past it the stream is refused.
    """

    def __init__(self, window: int = DEFAULT_WINDOW, *, hard_limit: int | None = None) -> None:
        if window < MIN_WINDOW:
            raise ValueError(f"flow window must be at least {MIN_WINDOW} bytes, got {window}")
        self.window = window
        # Grant again once this much more room has opened: fewer signals, and still at
        # least three quarters of a window in flight.
        self.threshold = max(1, window // 4)
        self.hard_limit = hard_limit if hard_limit is not None else 2 * window + MAX_FRAME
        self.received = 0
        self.consumed = 0
        self.granted = 0

    @property
    def buffered(self) -> int:
        return self.received - self.consumed

    def initial(self) -> Credit:
        """The first grant, sent right after the Accept."""
        self.granted = self.consumed + self.window
        return Credit(self.granted, self.window)

    def admits(self, nbytes: int) -> bool:
        """Whether a frame of ``nbytes`` fits what the receiver may hold."""
        return self.buffered + nbytes <= self.hard_limit

    def on_received(self, nbytes: int) -> None:
        self.received += nbytes

    def on_consumed(self, nbytes: int) -> Credit | None:
        """The app took ``nbytes``; a new grant when enough room has opened, else None."""
        self.consumed += nbytes
        limit = self.consumed + self.window
        if limit - self.granted >= self.threshold:
            self.granted = limit
            return Credit(limit, self.window)
        return None
