"""Whether the two ends of a data channel share one network stack, and the SCTP MTU to use.

The data channel's cost is per SCTP packet (see ``webrtc/libdatachannel_backend.py``), so
larger packets are the one big lever on one host: 4096-byte packets carry a loopback tunnel
2-3x faster than the library's 1280. Larger packets are safe only where the path takes them
whole, and the MTU is fixed when the peer connection is made, before ICE has picked a path.
Two processes in the same network namespace of the same running kernel reach each other's
addresses over the loopback device whatever candidates they pair, so that is the test.

Wire form, one more HotlinkSignal kind, sent by the offerer (the receiving side) right before
its offer and read by the answerer (the sender) when the offer makes its peer connection:

    HotlinkSignal{sid, knd: "p2p_host", tok: '{"v":1,"host":"<32 hex>","mtu":<M>}'}

- ``host``: HMAC-SHA256 of the session id under the offerer's network-stack id (the kernel's
  boot id and the namespace), cut to 128 bits. Equal tags mean the same stack; the relay and
  anyone else learn nothing they could match across sessions or against a guess.
- ``mtu``: the largest SCTP packet the offerer's WebRTC stack takes.

Only the sender's MTU matters (the receiver only acknowledges), and only our own peers send
the hint: a reference peer ignores the kind, and without a hint nothing changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hmac

from .errors import ProtocolError
from .tokens import json_object

P2P_HOST = "p2p_host"
# A token is about 70 characters; anything much longer is not one of ours.
MAX_HOST_TOKEN = 256
_TAG_HEX = 32
# libdatachannel's default, and what every WebRTC stack takes.
DEFAULT_MTU = 1280


@dataclass(frozen=True, slots=True)
class HostHint:
    """What the offerer says of itself: its stack's tag for this session, and the largest
    SCTP packet it takes."""

    host: str
    mtu: int


def host_tag(stack_id: bytes, sid: str) -> str:
    """The tag of a network stack for one session (32 hex digits)."""
    mac = hmac.HMAC(stack_id, hashes.SHA256())
    mac.update(sid.encode("utf-8"))
    return mac.finalize().hex()[:_TAG_HEX]


def encode_hint(hint: HostHint) -> str:
    return json.dumps({"v": 1, "host": hint.host, "mtu": hint.mtu}, separators=(",", ":"))


def parse_hint(tok: str) -> HostHint:
    """A hint from its ``tok``; ProtocolError for anything else. Unknown keys are ignored."""
    obj = json_object(tok, "p2p_host token", MAX_HOST_TOKEN)
    host, mtu = obj.get("host"), obj.get("mtu")
    if not isinstance(host, str) or len(host) != _TAG_HEX or not _is_hex(host):
        raise ProtocolError(f"p2p_host token has no valid 'host': {host!r}")
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 0 <= mtu <= 65535:
        raise ProtocolError(f"p2p_host token has no valid 'mtu': {mtu!r}")
    return HostHint(host, mtu)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True, slots=True)
class MtuPolicy:
    """What one client may do with large packets.

    ``configured``: the MTU the user pinned (0: choose). ``same_host``: the MTU this side's
    stack uses and takes between peers on one stack (0: it keeps its default). ``stack_id``:
    this side's network stack (None: unknown, so never "the same"). ``relay_only``: every path
    goes through a TURN server, which is never on our loopback as far as we can know.
    """

    configured: int = 0
    same_host: int = 0
    stack_id: bytes | None = None
    relay_only: bool = False

    @property
    def _enabled(self) -> bool:
        return self.same_host > 0 and self.stack_id is not None and not self.relay_only

    def hint(self, sid: str) -> HostHint | None:
        """What the offerer sends for session ``sid`` (None: nothing to offer)."""
        if not self._enabled or self.stack_id is None:
            return None
        return HostHint(host_tag(self.stack_id, sid), self.same_host)

    def sender_mtu(self, sid: str, theirs: HostHint | None) -> int:
        """The MTU of the answerer's (sender's) peer connection for session ``sid`` given the
        offerer's hint: the pinned one, else larger packets between peers on one stack, else
        0 (the library's default)."""
        if self.configured:
            return self.configured
        if theirs is None or not self._enabled or self.stack_id is None:
            return 0
        if theirs.host != host_tag(self.stack_id, sid):
            return 0
        mtu = min(self.same_host, theirs.mtu)
        # Up to the default there is nothing to gain: leave the choice to the library.
        return mtu if mtu > DEFAULT_MTU else 0
