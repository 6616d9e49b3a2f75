"""ICE configuration and the signal-token JSON (PROTOCOL.md §6.2, §6.4; DECISIONS.md #3, #23, #24).

Pure text in, typed values out: the ICE-server list from the env-var syntax, the candidate and
SDP tokens carried in ``HotlinkSignal.tok``, the remote's SCTP message limit and the DTLS
certificate fingerprints from an SDP, and the TURN REST credentials the server hands out.
Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ProtocolError

DEFAULT_ICE_SERVERS = "stun:stun.l.google.com:19302"
ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
TURN_SCHEMES = ("turn:", "turns:")
CANDIDATE_TYPES = frozenset({"host", "srflx", "prflx", "relay"})

# SCTP default when the remote SDP carries no a=max-message-size (RFC 8841 §6).
DEFAULT_MAX_MESSAGE_SIZE = 65536
# What we use when the remote says 0 ("no limit"). Larger messages buy nothing once the chunk
# is well above the per-message overhead, and 256 KiB is libdatachannel's own default, so a
# peer that claims "unlimited" is never asked to take more than the common stacks accept.
UNLIMITED_MAX_MESSAGE_SIZE = 256 * 1024


# ---------------------------------------------------------------- ICE servers


@dataclass(frozen=True)
class IceServer:
    url: str
    username: str = ""
    credential: str = ""

    @property
    def is_turn(self) -> bool:
        return self.url.lower().startswith(TURN_SCHEMES)


def parse_ice_servers(raw: str | None, username: str = "", credential: str = "") -> list[IceServer]:
    """The ICE servers of a ``SYFTBOX_HOTLINK_ICE_SERVERS`` value.

    ``None`` or blank means the default STUN server; ``none`` (any case) means no STUN or TURN
    at all, so only host candidates are gathered (DECISIONS.md #24). Credentials go only to
    ``turn:``/``turns:`` URLs, as in the reference.
    """
    if raw is None or not raw.strip():
        raw = DEFAULT_ICE_SERVERS
    if raw.strip().lower() == "none":
        return []
    servers: list[IceServer] = []
    for entry in raw.split(","):
        url = entry.strip()
        if not url:
            continue
        lower = url.lower()
        if lower == "none":
            raise ProtocolError("ICE server list: 'none' cannot be combined with other URLs")
        if not lower.startswith(ICE_SCHEMES) or not url.split(":", 1)[1].strip():
            raise ProtocolError(
                f"ICE server {url!r} must start with stun:, stuns:, turn: or turns: "
                "followed by a host"
            )
        if lower.startswith(TURN_SCHEMES):
            servers.append(IceServer(url, username, credential))
        else:
            servers.append(IceServer(url))
    return servers


@dataclass(frozen=True)
class IceUrl:
    """The parts of a ``stun:``/``turn:`` URL (RFC 7064, RFC 7065)."""

    scheme: str  # stun, stuns, turn, turns
    host: str
    port: int
    transport: Literal["udp", "tcp"]

    @property
    def secure(self) -> bool:
        return self.scheme.endswith("s")


def parse_ice_url(url: str) -> IceUrl:
    """``turn:host[:port][?transport=udp|tcp]`` and the stun/stuns/turns forms; IPv6 hosts in
    brackets. Default ports: 3478, and 5349 for the TLS schemes; default transport: UDP,
    TCP for the TLS schemes."""
    scheme, sep, rest = url.strip().partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("stun", "stuns", "turn", "turns"):
        raise ProtocolError(f"ICE server {url!r}: the scheme must be stun, stuns, turn or turns")
    rest, _, query = rest.partition("?")
    transport: Literal["udp", "tcp"] = "tcp" if scheme.endswith("s") else "udp"
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key.lower() == "transport":
            if value.lower() not in ("udp", "tcp"):
                raise ProtocolError(f"ICE server {url!r}: transport must be udp or tcp")
            transport = "udp" if value.lower() == "udp" else "tcp"
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket:
            raise ProtocolError(f"ICE server {url!r}: unclosed '[' in the host")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = rest.partition(":")
    if not host or "@" in host or "/" in host:
        raise ProtocolError(f"ICE server {url!r}: no valid host")
    default = 5349 if scheme.endswith("s") else 3478
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ProtocolError(f"ICE server {url!r}: bad port {port_text!r}")
    return IceUrl(scheme, host, int(port_text) if port_text else default, transport)


def stun_server_to_ice(raw: str | None) -> str | None:
    """The old ``SYFTBOX_HOTLINK_STUN_SERVER`` as an ICE list value, or None when unset.

    Go reads it as ``host:port`` (``0``/``off``/``disabled`` turn STUN off), Rust as an ICE
    URL; we accept both so either kind of deployment keeps working.
    """
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if value.lower() in ("0", "off", "disabled", "none"):
        return "none"
    parts = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        parts.append(entry if entry.lower().startswith(ICE_SCHEMES) else f"stun:{entry}")
    return ",".join(parts) if parts else None


def turn_rest_credentials(secret: str, user: str, now: float, ttl: int = 3600) -> tuple[str, str]:
    """Short-lived TURN credentials in the TURN REST scheme (coturn ``use-auth-secret``).

    The username is ``<expiry unix seconds>:<user>`` and the password is
    base64(HMAC-SHA1(secret, username)); coturn recomputes the HMAC and checks the expiry,
    so no per-user state lives on the TURN server and a leaked password dies with its ttl.
    """
    if not secret:
        raise ProtocolError("TURN REST credentials need a non-empty shared secret")
    if ttl <= 0:
        raise ProtocolError(f"TURN credential ttl must be positive, got {ttl}")
    expiry = int(now) + ttl
    username = f"{expiry}:{user}" if user else str(expiry)
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


# ---------------------------------------------------------------- candidates


@dataclass(frozen=True)
class IceCandidate:
    """One trickled candidate. ``candidate`` is the attribute value without ``candidate:``."""

    candidate: str
    sdp_mid: str = "0"
    sdp_mline_index: int = 0


def _json_object(tok: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(tok)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"{what} token is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} token must be a JSON object, got {type(obj).__name__}")
    return obj


def strip_candidate_prefix(text: str) -> str:
    """The candidate attribute value, whether or not it came as ``[a=]candidate:...``."""
    text = text.strip()
    if text.startswith("a="):
        text = text[2:]
    if text.lower().startswith("candidate:"):
        text = text[len("candidate:") :]
    return text.strip()


def parse_candidate_token(tok: str) -> IceCandidate | None:
    """A candidate from an ``ice_candidate`` token; None means end-of-candidates.

    Lenient where peers differ (DECISIONS.md #3): the Rust client sends ``sdpMid:""`` and
    ``usernameFragment:null``; some stacks leave out the ``candidate:`` prefix or the mid.
    A missing mid becomes the m-line index as a string: a data-channel-only session has one
    m-line, and every stack we talk to names it ``"0"``.
    """
    obj = _json_object(tok, "ICE candidate")
    raw = obj.get("candidate")
    if raw is None:
        raw = ""
    if not isinstance(raw, str):
        raise ProtocolError(
            f"ICE candidate: 'candidate' must be a string, got {type(raw).__name__}"
        )
    index = obj.get("sdpMLineIndex")
    if index is None:
        index = 0
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ProtocolError(
            f"ICE candidate: 'sdpMLineIndex' must be an integer >= 0, got {index!r}"
        )
    mid = obj.get("sdpMid")
    if mid is None or mid == "":
        mid = str(index)
    if not isinstance(mid, str):
        raise ProtocolError(f"ICE candidate: 'sdpMid' must be a string, got {type(mid).__name__}")
    ufrag = obj.get("usernameFragment")
    if ufrag is not None and not isinstance(ufrag, str):
        raise ProtocolError("ICE candidate: 'usernameFragment' must be a string or null")
    value = strip_candidate_prefix(raw)
    if not value:
        return None
    return IceCandidate(value, mid, index)


def candidate_token(c: IceCandidate) -> str:
    """The token we send: ``{"candidate":"candidate:...","sdpMid":...,"sdpMLineIndex":...}``."""
    return json.dumps(
        {
            "candidate": "candidate:" + strip_candidate_prefix(c.candidate),
            "sdpMid": c.sdp_mid,
            "sdpMLineIndex": c.sdp_mline_index,
        },
        separators=(",", ":"),
    )


def candidate_type(candidate: str) -> str | None:
    """``host``, ``srflx``, ``prflx`` or ``relay`` from the ``typ`` token, else None."""
    tokens = strip_candidate_prefix(candidate).split()
    for i, token in enumerate(tokens[:-1]):
        if token.lower() == "typ":
            kind = tokens[i + 1].lower()
            return kind if kind in CANDIDATE_TYPES else None
    return None


# ---------------------------------------------------------------- SDP tokens


def sdp_token(kind: Literal["offer", "answer"], sdp: str) -> str:
    """The ``sdp_offer``/``sdp_answer`` token: ``{"type": kind, "sdp": sdp}``."""
    if kind not in ("offer", "answer"):
        raise ProtocolError(f"SDP token type must be offer or answer, got {kind!r}")
    return json.dumps({"type": kind, "sdp": sdp}, separators=(",", ":"))


def parse_sdp_token(tok: str) -> str:
    """The SDP text of an offer/answer token. Only ``sdp`` is read; ``knd`` gives the type."""
    obj = _json_object(tok, "SDP")
    sdp = obj.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ProtocolError("SDP token has no 'sdp' string")
    return sdp


_MAX_MESSAGE_RE = re.compile(r"^a=max-message-size:\s*(\d+)\s*$", re.MULTILINE | re.IGNORECASE)


def remote_max_message_size(sdp: str) -> int:
    """The largest data-channel message the remote accepts, from its SDP.

    65,536 when absent (RFC 8841's default); ``0`` means "no limit" and becomes
    :data:`UNLIMITED_MAX_MESSAGE_SIZE`. With several values the smallest wins, so a frame
    always fits. Malformed values are ignored (bad input never raises here).
    """
    sizes = []
    for match in _MAX_MESSAGE_RE.finditer(sdp.replace("\r\n", "\n")):
        value = int(match.group(1))
        sizes.append(UNLIMITED_MAX_MESSAGE_SIZE if value == 0 else value)
    return min(sizes) if sizes else DEFAULT_MAX_MESSAGE_SIZE


_FINGERPRINT_RE = re.compile(
    r"^a=fingerprint:[ \t]*(\S+)[ \t]+(\S+)[ \t]*$", re.MULTILINE | re.IGNORECASE
)


def dtls_fingerprints(sdp: str) -> tuple[str, ...]:
    """The DTLS certificate fingerprints an SDP announces (``a=fingerprint:``, RFC 8122), at
    session and media level, each once, in order of appearance.

    Each is ``"<hash function> <HEX:HEX:...>"`` with the hash name in lowercase and the hex in
    uppercase (RFC 8122 writes it so, but hex is case-insensitive and stacks differ), so the
    fingerprints a peer reads from the SDP it received compare equal to the ones the sender
    read from the SDP it made: the end-to-end layer binds these lists to the key exchange
    (protocol/e2e/session.py). Lines that do not have both parts are skipped; bad input never
    raises.
    """
    found: list[str] = []
    for match in _FINGERPRINT_RE.finditer(sdp.replace("\r\n", "\n")):
        value = f"{match.group(1).lower()} {match.group(2).upper()}"
        if value not in found:
            found.append(value)
    return tuple(found)


# ---------------------------------------------------------------- server advertisement


ICE_SERVERS_HEADER = "X-Syft-Hotlink-Ice-Servers"
TURN_USER_HEADER = "X-Syft-Hotlink-Turn-User"
TURN_PASS_HEADER = "X-Syft-Hotlink-Turn-Pass"


def ice_advertisement(
    ice_servers_raw: str | None,
    *,
    turn_user: str = "",
    turn_pass: str = "",
    turn_secret: str = "",
    user: str = "",
    now: float = 0.0,
    ttl: int = 3600,
) -> dict[str, str]:
    """The upgrade-response headers advertising ICE servers (DECISIONS.md #23).

    Empty when the server has no ICE servers configured (no invented ``turns:`` default).
    With a TURN shared secret the credentials are short-lived REST ones for ``user``; else
    static ones if configured.
    """
    if ice_servers_raw is None or ice_servers_raw.strip().lower() in ("", "none"):
        return {}
    headers = {ICE_SERVERS_HEADER: ice_servers_raw.strip()}
    if turn_secret:
        turn_user, turn_pass = turn_rest_credentials(turn_secret, user, now, ttl)
    if turn_user:
        headers[TURN_USER_HEADER] = turn_user
    if turn_pass:
        headers[TURN_PASS_HEADER] = turn_pass
    return headers
