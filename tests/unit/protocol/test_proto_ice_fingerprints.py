"""DTLS fingerprints from an SDP: what the end-to-end layer binds to the key exchange. The
sender reads them from the SDP it made, the peer from the SDP it received, so the same
text must give the same list however a stack spells it, and any other certificate must
give another list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotlink.protocol.ice import dtls_fingerprints

SHA256 = (
    "F3:E2:E5:BA:57:52:06:FF:29:02:FE:3E:52:AC:9F:A2:91:C1:CC:CE"
    ":F2:88:34:F9:A2:7A:F8:A1:3E:2B:48:C8"
)
SHA384 = ":".join(["55"] * 48)

# Session level, as libdatachannel writes it.
LIBDATACHANNEL = (
    "v=0\r\no=rtc 1196364703 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    f"a=ice-options:ice2 trickle\r\na=fingerprint:sha-256 {SHA256}\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=setup:actpass\r\na=ice-ufrag:fvO2\r\na=ice-pwd:Y3jf8C1bUDbi4AlhBfo3bW\r\n"
)
# Media level, several hash functions, as aiortc writes it.
AIORTC = (
    "v=0\r\no=- 4005569936 4005569936 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=application 51502 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n"
    f"a=fingerprint:sha-256 {SHA256}\r\na=fingerprint:sha-384 {SHA384}\r\n"
    "a=setup:actpass\r\n"
)


def test_session_level_fingerprint() -> None:
    assert dtls_fingerprints(LIBDATACHANNEL) == (f"sha-256 {SHA256}",)


def test_media_level_fingerprints_each_hash_function() -> None:
    assert dtls_fingerprints(AIORTC) == (f"sha-256 {SHA256}", f"sha-384 {SHA384}")


def test_both_levels_each_value_once() -> None:
    both = LIBDATACHANNEL + f"a=fingerprint:SHA-256 {SHA256.lower()}\r\n"
    assert dtls_fingerprints(both) == (f"sha-256 {SHA256}",)


def test_spelling_does_not_matter() -> None:
    spelled = LIBDATACHANNEL.replace(f"sha-256 {SHA256}", f"SHA-256   {SHA256.lower()} ")
    assert dtls_fingerprints(spelled.replace("\r\n", "\n")) == dtls_fingerprints(LIBDATACHANNEL)


@pytest.mark.parametrize(
    "sdp",
    [
        "",
        "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
        "a=fingerprint:\r\n",
        "a=fingerprint:sha-256\r\n",
        f"x=fingerprint:sha-256 {SHA256}\r\n",
        f"a=fingerprints:sha-256 {SHA256}\r\n",
    ],
)
def test_no_fingerprint(sdp: str) -> None:
    assert dtls_fingerprints(sdp) == ()


@given(st.integers(0, 31), st.integers(1, 255))
def test_another_certificate_gives_another_list(index: int, delta: int) -> None:
    octets = SHA256.split(":")
    octets[index] = f"{(int(octets[index], 16) + delta) % 256:02x}"
    forged = LIBDATACHANNEL.replace(SHA256, ":".join(octets))
    assert dtls_fingerprints(forged) != dtls_fingerprints(LIBDATACHANNEL)


@given(st.text(max_size=400))
def test_any_text_is_read_without_raising(text: str) -> None:
    for value in dtls_fingerprints(text):
        algorithm, _, digest = value.partition(" ")
        assert algorithm == algorithm.lower() and digest == digest.upper() and digest
