"""End-to-end sealing, pure: the exchange binds who and which session; sealed frames open
only as sent (any flipped bit, moved seq, other path or other session fails); a resend is
the same bytes; the sealed end cannot be faked or moved; pins refuse a changed key; the
DTLS binding refuses other fingerprints; plaintext is refused where sealing was promised."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlink.protocol.e2e.errors import E2EError
from hotlink.protocol.e2e.handshake import MAX_HELLO_TOKEN, Hello, SessionParams
from hotlink.protocol.e2e.identity import Identity, fingerprint, normalize_fingerprint
from hotlink.protocol.e2e.pins import PinBook, Verdict, parse_expected
from hotlink.protocol.e2e.seal import SEALED_ETAG, is_sealed
from hotlink.protocol.e2e.session import E2ESession
from hotlink.protocol.frames import Frame

ALICE, BOB, MALLORY = "alice@example.com", "bob@example.com", "mallory@example.com"
PATH = "bob@example.com/app_data/mpc/rpc/_mpc/0_to_1/stream.tcp.request"
PARAMS = SessionParams("0123456789abcdef", PATH, ALICE, BOB)
IDS = {ALICE: Identity.generate(), BOB: Identity.generate(), MALLORY: Identity.generate()}


def pair(
    params: SessionParams = PARAMS,
    pins_a: PinBook | None = None,
    pins_b: PinBook | None = None,
) -> tuple[E2ESession, E2ESession]:
    a = E2ESession(
        role="opener",
        params=params,
        identity=IDS[ALICE],
        pins=pins_a or PinBook(),
        refuse_plaintext=False,
    )
    b = E2ESession(
        role="acceptor",
        params=params,
        identity=IDS[BOB],
        pins=pins_b or PinBook(),
        refuse_plaintext=False,
    )
    return a, b


def sealed_pair() -> tuple[E2ESession, E2ESession]:
    a, b = pair()
    assert a.on_hello(b.hello_token()) and b.on_hello(a.hello_token())
    return a, b


payloads = st.binary(min_size=0, max_size=4096)
seqs = st.integers(1, (1 << 64) - 1)
etags = st.text(max_size=40)


@settings(max_examples=60, deadline=None)
@given(payloads, seqs, etags)
def test_a_sealed_frame_opens_as_sent_and_hides_the_payload(
    payload: bytes, seq: int, etag: str
) -> None:
    a, b = sealed_pair()
    frame = Frame(PATH, etag, seq, payload)
    sealed = a.seal(frame)
    assert is_sealed(sealed) and sealed.etag == SEALED_ETAG and sealed.seq == seq
    if len(payload) >= 8:
        assert payload not in sealed.payload
    opened = b.open(sealed)
    assert not opened.fin and opened.frame == frame


@settings(max_examples=60, deadline=None)
@given(payloads, seqs, st.data())
def test_any_flipped_bit_fails_and_nothing_is_returned(
    payload: bytes, seq: int, data: st.DataObject
) -> None:
    a, b = sealed_pair()
    sealed = a.seal(Frame(PATH, "", seq, payload))
    bit = data.draw(st.integers(0, len(sealed.payload) * 8 - 1))
    damaged = bytearray(sealed.payload)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(E2EError, match="failed authentication"):
        b.open(dataclasses.replace(sealed, payload=bytes(damaged)))


def test_a_frame_moved_to_another_seq_path_or_session_fails() -> None:
    a, b = sealed_pair()
    sealed = a.seal(Frame(PATH, "", 5, b"secret share"))
    for moved in (
        dataclasses.replace(sealed, seq=6),
        dataclasses.replace(sealed, path=PATH + "x"),
    ):
        with pytest.raises(E2EError):
            b.open(moved)
    other_a, other_b = pair(dataclasses.replace(PARAMS, sid="fedcba9876543210"))
    other_a.on_hello(other_b.hello_token())
    other_b.on_hello(other_a.hello_token())
    with pytest.raises(E2EError):
        other_b.open(sealed)


def test_a_resend_is_the_same_bytes_and_keys_differ_per_session() -> None:
    a, _b = sealed_pair()
    frame = Frame(PATH, "e", 9, b"x" * 1000)
    assert a.seal(frame) == a.seal(frame)
    a2, _b2 = sealed_pair()
    assert a2.seal(frame).payload != a.seal(frame).payload


def test_the_sealed_end_closes_the_stream_and_nothing_follows_it() -> None:
    a, b = sealed_pair()
    for seq in (1, 2):
        b.open(a.seal(Frame(PATH, "", seq, b"data")))
    fin = a.fin(3, PATH)
    assert b.open(fin).fin and b.fin_seq == 3
    b.check_end(3)
    with pytest.raises(E2EError, match="after the sealed end"):
        b.open(a.seal(Frame(PATH, "", 4, b"late")))


def test_an_eof_short_of_the_sealed_end_is_refused() -> None:
    a, b = sealed_pair()
    b.open(a.seal(Frame(PATH, "", 1, b"data")))
    with pytest.raises(E2EError, match="cut short"):
        b.check_end(1)  # no fin: a relay forged Close eof:1


def test_a_fin_cannot_be_forged_from_a_data_frame() -> None:
    a, b = sealed_pair()
    sealed = a.seal(Frame(PATH, "", 2, b""))  # an empty data frame is not a fin
    opened = b.open(sealed)
    assert not opened.fin and b.fin_seq is None


def test_a_hello_for_another_role_session_or_signer_fails() -> None:
    a, b = pair()
    with pytest.raises(E2EError, match="signature"):
        a.on_hello(pair()[0].hello_token())  # an opener's hello reflected back to an opener
    a, b = pair()
    other = pair(dataclasses.replace(PARAMS, sid="ffffffffffffffff"))[1]
    with pytest.raises(E2EError, match="signature"):
        a.on_hello(other.hello_token())  # bob's hello from another session (a replay)
    a, b = pair()
    mallory = E2ESession(
        role="acceptor",
        params=PARAMS,
        identity=IDS[MALLORY],
        pins=PinBook(),
        refuse_plaintext=False,
    )
    doc = json.loads(b.hello_token())
    swapped = json.loads(mallory.hello_token())
    doc["eph"] = swapped["eph"]  # a middleman's key under bob's signature
    with pytest.raises(E2EError, match="signature"):
        a.on_hello(json.dumps(doc))


@pytest.mark.parametrize(
    "token",
    ["", "{", "[]", '{"v":2}', '{"v":1,"eph":"!!","id":"","sig":""}', "x" * (MAX_HELLO_TOKEN + 1)],
)
def test_malformed_hellos_are_refused(token: str) -> None:
    with pytest.raises(E2EError):
        Hello.parse(token)


def test_pins_first_use_then_refuse_a_changed_key_until_trusted() -> None:
    pins = PinBook()
    real, other = IDS[BOB].fingerprint, IDS[MALLORY].fingerprint
    assert not pins.knows(BOB)
    assert pins.admit(BOB, real) is Verdict.NEW and pins.dirty
    assert pins.knows("Bob@Example.com")
    assert pins.admit(BOB, real) is Verdict.PINNED
    with pytest.raises(E2EError, match="pinned"):
        pins.admit(BOB, other)
    pins.pin(BOB, other)
    assert pins.admit(BOB, other) is Verdict.PINNED
    again = PinBook.from_json(pins.to_json())
    assert again.pins == pins.pins


def test_listed_keys_win_over_pins_from_the_first_session() -> None:
    expected = parse_expected(f"{BOB}={IDS[BOB].fingerprint.replace('-', ':').upper()}")
    pins = PinBook(expected=expected)
    assert pins.knows(BOB)
    assert pins.admit(BOB, IDS[BOB].fingerprint) is Verdict.LISTED
    with pytest.raises(E2EError, match="e2e_peers"):
        pins.admit(BOB, IDS[MALLORY].fingerprint)


@pytest.mark.parametrize("text", ["bob@x=zz", "nobody=" + "a" * 32, "bob@x"])
def test_bad_listed_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_expected(text)


@pytest.mark.parametrize("text", ["[]", '{"version":2,"peers":{}}', '{"version":1}', "nope"])
def test_a_broken_pin_book_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        PinBook.from_json(text)


def test_fingerprints_normalise_and_reject_typos() -> None:
    fp = fingerprint(IDS[ALICE].public)
    assert normalize_fingerprint(fp.replace("-", " ").upper()) == fp
    with pytest.raises(ValueError):
        normalize_fingerprint(fp[:-1])


def test_plaintext_is_refused_where_sealing_was_promised() -> None:
    _a, b = pair()
    b.refuse_plaintext = True
    with pytest.raises(E2EError, match="required"):
        b.open(Frame(PATH, "", 1, b"plain"))
    _a, b = pair(pins_b=PinBook({ALICE: IDS[ALICE].fingerprint}))
    b.refuse_plaintext = b.pins.knows(ALICE)
    with pytest.raises(E2EError, match="sealed before"):
        b.open(Frame(PATH, "", 1, b"plain"))
    _a, b = sealed_pair()
    with pytest.raises(E2EError, match="not sealed"):
        b.open(Frame(PATH, "", 1, b"plain"))


def test_plaintext_then_a_late_hello_or_a_sealed_frame_fails() -> None:
    a, b = pair()
    assert b.open(Frame(PATH, "", 1, b"plain")).frame.payload == b"plain"
    assert b.state == "plaintext"
    with pytest.raises(E2EError, match="after the stream had started"):
        b.on_hello(a.hello_token())
    a2, b2 = pair()
    b2.go_plaintext("test")
    a2.on_hello(pair()[1].hello_token())
    with pytest.raises(E2EError, match="plaintext session"):
        b2.open(a2.seal(Frame(PATH, "", 1, b"x")))


def test_a_repeated_hello_is_harmless_and_a_different_one_fails() -> None:
    a, b = pair()
    token = b.hello_token()
    assert a.on_hello(token) and not a.on_hello(token)
    with pytest.raises(E2EError, match="second"):
        a.on_hello(pair()[1].hello_token())


def test_the_dtls_binding_accepts_the_bound_fingerprints_only() -> None:
    a, b = pair()
    a.bind_local(("sha-256 AA:BB",))  # before the keys: sent once they are there
    assert a.take_binding() is None
    a.on_hello(b.hello_token())
    b.on_hello(a.hello_token())
    token = a.take_binding()
    assert token is not None and a.take_binding() is None
    b.bind_remote(("sha-256 AA:BB",))
    b.on_binding(token)
    assert b.dtls_verified
    _a, c = pair()
    c.on_hello(_a.hello_token())
    _a.on_hello(c.hello_token())
    c.bind_remote(("sha-256 CC:DD",))  # the SDP a middleman rewrote
    _a.bind_local(("sha-256 AA:BB",))
    with pytest.raises(E2EError, match="middleman"):
        c.on_binding(_a.take_binding() or "")


def test_an_end_without_any_exchange_is_plaintext_and_refused_where_promised() -> None:
    _a, b = pair()
    b.check_end(0)
    assert b.state == "plaintext"
    _a, b = pair()
    b.refuse_plaintext = True
    with pytest.raises(E2EError, match="ended without a key exchange"):
        b.check_end(0)
