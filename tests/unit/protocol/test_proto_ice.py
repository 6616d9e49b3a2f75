"""ICE server lists, candidate/SDP tokens, max-message-size, TURN REST credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.ice import (
    DEFAULT_ICE_SERVERS,
    DEFAULT_MAX_MESSAGE_SIZE,
    ICE_SERVERS_HEADER,
    TURN_PASS_HEADER,
    TURN_USER_HEADER,
    UNLIMITED_MAX_MESSAGE_SIZE,
    IceCandidate,
    IceServer,
    candidate_token,
    candidate_type,
    ice_advertisement,
    parse_candidate_token,
    parse_ice_servers,
    parse_ice_url,
    parse_sdp_token,
    remote_max_message_size,
    sdp_token,
    stun_server_to_ice,
    turn_rest_credentials,
)

HOST = "1 1 UDP 2122317823 192.0.2.1 5000 typ host"
SRFLX = "2 1 udp 1686052607 203.0.113.7 61000 typ srflx raddr 192.0.2.1 rport 5000"
RELAY = "3 1 UDP 16777215 198.51.100.9 49160 typ relay raddr 0.0.0.0 rport 0"

# ---------------------------------------------------------------- ICE server lists


def test_default_when_unset_or_blank() -> None:
    for raw in (None, "", "   ", " , "[:0]):
        assert parse_ice_servers(raw) == [IceServer(DEFAULT_ICE_SERVERS)]


@pytest.mark.parametrize("raw", ["none", "NONE", " None "])
def test_none_means_host_candidates_only(raw: str) -> None:
    assert parse_ice_servers(raw, "u", "p") == []


def test_split_trim_and_credentials_only_on_turn() -> None:
    raw = " stun:192.0.2.1:3478 ,, turn:192.0.2.2:3478?transport=udp , turns:relay.test:5349 ,"
    assert parse_ice_servers(raw, "user", "pass") == [
        IceServer("stun:192.0.2.1:3478"),
        IceServer("turn:192.0.2.2:3478?transport=udp", "user", "pass"),
        IceServer("turns:relay.test:5349", "user", "pass"),
    ]


def test_is_turn() -> None:
    assert IceServer("TURN:x:1").is_turn
    assert not IceServer("stun:x:1").is_turn


@pytest.mark.parametrize(
    "raw",
    ["stun.l.google.com:19302", "http://x", "stun:", "turn:  ", "none,stun:x:1", "stun:x,foo"],
)
def test_bad_urls_are_rejected(raw: str) -> None:
    with pytest.raises(ProtocolError):
        parse_ice_servers(raw)


@pytest.mark.parametrize(
    "raw,expected",
    [
        (None, None),
        ("", None),
        ("stun.example.org:3478", "stun:stun.example.org:3478"),  # Go: host:port
        ("stun:stun.example.org:3478", "stun:stun.example.org:3478"),  # Rust: an ICE URL
        ("turn:t:3478,192.0.2.5:3478", "turn:t:3478,stun:192.0.2.5:3478"),
        ("off", "none"),
        ("0", "none"),
        ("Disabled", "none"),
    ],
)
def test_old_stun_variable(raw: str | None, expected: str | None) -> None:
    assert stun_server_to_ice(raw) == expected


# ---------------------------------------------------------------- candidates

RUST_TOKEN = json.dumps(
    {"candidate": f"candidate:{HOST}", "sdpMid": "", "sdpMLineIndex": 0, "usernameFragment": None}
)


@pytest.mark.parametrize(
    "token",
    [
        RUST_TOKEN,
        json.dumps({"candidate": f"candidate:{HOST}", "sdpMid": "0", "sdpMLineIndex": 0}),
        json.dumps({"candidate": HOST, "sdpMid": "0", "sdpMLineIndex": 0}),  # no prefix
        json.dumps({"candidate": f"a=candidate:{HOST}"}),  # SDP line form, no mid or index
        json.dumps({"candidate": f"candidate:{HOST}", "sdpMid": None, "sdpMLineIndex": None}),
        json.dumps({"candidate": f"  candidate:{HOST}  ", "usernameFragment": "abcd"}),
    ],
)
def test_candidate_forms_normalise(token: str) -> None:
    assert parse_candidate_token(token) == IceCandidate(HOST, "0", 0)


def test_candidate_keeps_explicit_mid_and_index() -> None:
    token = json.dumps({"candidate": SRFLX, "sdpMid": "data", "sdpMLineIndex": 1})
    assert parse_candidate_token(token) == IceCandidate(SRFLX, "data", 1)
    # No mid: the m-line index stands in for it.
    assert parse_candidate_token(json.dumps({"candidate": SRFLX, "sdpMLineIndex": 2})) == (
        IceCandidate(SRFLX, "2", 2)
    )


@pytest.mark.parametrize(
    "token",
    [
        json.dumps({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}),
        json.dumps({"candidate": "candidate:"}),
        json.dumps({"candidate": None}),
        json.dumps({}),
    ],
)
def test_end_of_candidates(token: str) -> None:
    assert parse_candidate_token(token) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not json",
        "[]",
        '"candidate:1 1 udp 1 192.0.2.1 1 typ host"',
        json.dumps({"candidate": 5}),
        json.dumps({"candidate": HOST, "sdpMLineIndex": "0"}),
        json.dumps({"candidate": HOST, "sdpMLineIndex": -1}),
        json.dumps({"candidate": HOST, "sdpMLineIndex": True}),
        json.dumps({"candidate": HOST, "sdpMid": 0}),
        json.dumps({"candidate": HOST, "usernameFragment": 3}),
    ],
)
def test_bad_candidate_tokens(token: str) -> None:
    with pytest.raises(ProtocolError):
        parse_candidate_token(token)


def test_candidate_token_shape() -> None:
    token = candidate_token(IceCandidate(HOST, "0", 0))
    assert json.loads(token) == {
        "candidate": f"candidate:{HOST}",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    # A candidate handed over with its prefix is not prefixed twice.
    again = candidate_token(IceCandidate(f"candidate:{HOST}", "0", 0))
    assert json.loads(again)["candidate"] == f"candidate:{HOST}"


@given(
    st.sampled_from([HOST, SRFLX, RELAY]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=5),
    st.integers(0, 10),
)
def test_candidate_round_trip(candidate: str, mid: str, index: int) -> None:
    c = IceCandidate(candidate, mid, index)
    assert parse_candidate_token(candidate_token(c)) == c


@pytest.mark.parametrize(
    "candidate,kind",
    [
        (HOST, "host"),
        (SRFLX, "srflx"),
        (RELAY, "relay"),
        (f"candidate:{RELAY}", "relay"),
        ("4 1 udp 1 192.0.2.1 9 typ prflx", "prflx"),
        ("1 1 udp 1 192.0.2.1 9 TYP HOST", "host"),
        ("1 1 udp 1 192.0.2.1 9 typ", None),
        ("1 1 udp 1 192.0.2.1 9 typ weird", None),
        ("", None),
    ],
)
def test_candidate_type(candidate: str, kind: str | None) -> None:
    assert candidate_type(candidate) == kind


# ---------------------------------------------------------------- SDP


def test_sdp_token_round_trip() -> None:
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"
    for kind in ("offer", "answer"):
        token = sdp_token(kind, sdp)
        assert json.loads(token) == {"type": kind, "sdp": sdp}
        assert parse_sdp_token(token) == sdp


def test_sdp_token_reads_only_sdp() -> None:
    assert parse_sdp_token('{"sdp":"v=0\\r\\n","type":"pranswer"}') == "v=0\r\n"
    assert parse_sdp_token('{"sdp":"v=0\\r\\n"}') == "v=0\r\n"


def test_sdp_token_bad_kind() -> None:
    with pytest.raises(ProtocolError):
        sdp_token("rollback", "v=0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "token", ["", "{", "[]", '{"type":"offer"}', '{"sdp":5}', '{"sdp":""}', '{"sdp":"  "}']
)
def test_bad_sdp_tokens(token: str) -> None:
    with pytest.raises(ProtocolError):
        parse_sdp_token(token)


SDP_HEAD = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
SDP_APP = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"


@pytest.mark.parametrize(
    "extra,expected",
    [
        ("", DEFAULT_MAX_MESSAGE_SIZE),
        ("a=max-message-size:262144\r\n", 262144),
        ("a=max-message-size:65536\r\n", 65536),
        ("a=max-message-size:1073741823\r\n", 1073741823),
        ("a=max-message-size:0\r\n", UNLIMITED_MAX_MESSAGE_SIZE),
        ("a=max-message-size:abc\r\n", DEFAULT_MAX_MESSAGE_SIZE),
        ("a=max-message-size:\r\n", DEFAULT_MAX_MESSAGE_SIZE),
        ("a=max-message-size:100000\na=sctp-port:5000\n", 100000),  # bare LF
        ("a=max-message-size:70000\r\na=max-message-size:80000\r\n", 70000),
    ],
)
def test_remote_max_message_size(extra: str, expected: int) -> None:
    assert remote_max_message_size(SDP_HEAD + SDP_APP + extra) == expected


# ---------------------------------------------------------------- TURN REST credentials


def test_turn_rest_credentials_match_coturn_scheme() -> None:
    user, password = turn_rest_credentials("s3cret", "alice@example.com", 1_700_000_000.7, 600)
    assert user == "1700000600:alice@example.com"
    expected = base64.b64encode(hmac.new(b"s3cret", user.encode(), hashlib.sha1).digest()).decode()
    assert password == expected


def test_turn_rest_credentials_without_user() -> None:
    assert turn_rest_credentials("k", "", 100.0, 50)[0] == "150"


@pytest.mark.parametrize("secret,ttl", [("", 60), ("k", 0), ("k", -5)])
def test_turn_rest_credentials_bad_input(secret: str, ttl: int) -> None:
    with pytest.raises(ProtocolError):
        turn_rest_credentials(secret, "u", 0.0, ttl)


def test_advertisement_only_when_configured() -> None:
    assert ice_advertisement(None, turn_user="u", turn_pass="p") == {}
    assert ice_advertisement("  ", turn_secret="k") == {}
    assert ice_advertisement("None", turn_user="u", turn_pass="p") == {}


def test_advertisement_static_credentials() -> None:
    headers = ice_advertisement("turn:192.0.2.1:3478", turn_user="u", turn_pass="p")
    assert headers == {
        ICE_SERVERS_HEADER: "turn:192.0.2.1:3478",
        TURN_USER_HEADER: "u",
        TURN_PASS_HEADER: "p",
    }
    assert ice_advertisement("stun:192.0.2.1:3478") == {ICE_SERVERS_HEADER: "stun:192.0.2.1:3478"}


def test_advertisement_secret_beats_static_password() -> None:
    headers = ice_advertisement(
        "turn:192.0.2.1:3478",
        turn_user="u",
        turn_pass="p",
        turn_secret="k",
        user="bob@x.y",
        now=10.0,
        ttl=90,
    )
    assert headers[TURN_USER_HEADER] == "100:bob@x.y"
    assert headers[TURN_PASS_HEADER] == turn_rest_credentials("k", "bob@x.y", 10.0, 90)[1]
    assert "p" != headers[TURN_PASS_HEADER]


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("turn:turn.example.com", ("turn", "turn.example.com", 3478, "udp")),
        ("turn:203.0.113.7:3479?transport=tcp", ("turn", "203.0.113.7", 3479, "tcp")),
        ("turns:turn.example.com", ("turns", "turn.example.com", 5349, "tcp")),
        ("stun:[2001:db8::1]:19302", ("stun", "2001:db8::1", 19302, "udp")),
        ("TURN:h:1?transport=UDP&x=y", ("turn", "h", 1, "udp")),
    ],
)
def test_ice_urls_parse_with_their_defaults(url: str, parts: tuple[str, str, int, str]) -> None:
    parsed = parse_ice_url(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.transport) == parts


@pytest.mark.parametrize(
    "url",
    ["http://x", "turn:", "turn:h:0", "turn:h:99999", "turn:h:x", "turn:[::1", "turn:u@h",
     "turn:h?transport=sctp"],
)  # fmt: skip
def test_bad_ice_urls_are_protocol_errors(url: str) -> None:
    with pytest.raises(ProtocolError):
        parse_ice_url(url)
