"""Text from the network in the relay's log lines and Error replies: cut short and escaped.

Whatever a client puts in a frame (an 8 MiB id, a session id holding a newline and a fake
log line, terminal escapes, a right-to-left override that reorders what an operator reads),
the relay's log line about it is one short printable line and its Error reply is short.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSCloseCode

from hotlink.protocol.codec import decode, encode_json, encode_msgpack
from hotlink.protocol.messages import Error, HotlinkData, HotlinkReject, Message
from hotlink.server.app import Relay, RelayConfig
from hotlink.server.decisions import MAX_TEXT_CHARS, clip_text, error_reply
from hotlink.server.hub import Connection

FORGED = "ok\r\n2026-01-01 12:00:00 ERROR hotlink.server: forged \x1b[2J\u202eenil"
UNPRINTABLE = ["\n", "\r", "\x1b", "\u202e", "\u2028", "\x00", "\t", "\x7f", "\ud800"]


# ---------------------------------------------------------------- clip_text


def test_short_printable_text_is_left_alone():
    text = "open 0123456789abcdef: bob@example.com may not write 'alice/x.request'"
    assert clip_text(text) == text


def test_long_text_is_cut_to_the_limit():
    clipped = clip_text("x" * 10_000)
    assert len(clipped) == MAX_TEXT_CHARS and clipped.endswith("...")
    assert len(clip_text("y" * 1000, 60)) == 60
    assert clip_text("z" * MAX_TEXT_CHARS) == "z" * MAX_TEXT_CHARS  # exactly at the limit


@pytest.mark.parametrize("char", UNPRINTABLE)
def test_characters_that_could_forge_or_reorder_a_line_are_escaped(char: str):
    clipped = clip_text(f"before{char}after")
    assert char not in clipped
    assert clipped.isprintable()
    assert clipped.startswith("before") and clipped.endswith("after")


def test_escapes_are_readable():
    assert clip_text("a\nb") == "a\\nb"
    assert clip_text("a\x1bb") == "a\\x1bb"
    assert clip_text("a\u202eb") == "a\\u202eb"


def test_a_forged_log_line_stays_on_one_line():
    clipped = clip_text(FORGED)
    assert clipped.isprintable()
    assert "\\r\\n2026-01-01" in clipped


@pytest.mark.parametrize("char", ["\x1b", "\U000e0001", "\n"])
def test_text_made_longer_by_escaping_is_still_within_the_limit(char: str):
    clipped = clip_text(char * 10_000)
    assert len(clipped) <= MAX_TEXT_CHARS
    assert clipped.isprintable()
    assert len(clip_text(char * 30, 50)) <= 50


def test_an_error_reply_is_clipped_and_escaped():
    send = error_reply("c1", 400, f"bad message: {FORGED * 10_000}")
    error = send.message.payload
    assert isinstance(error, Error)
    assert len(error.msg) <= MAX_TEXT_CHARS
    assert error.msg.isprintable()
    assert error.msg.startswith("bad message: ok\\r\\n")


def test_an_error_reply_keeps_the_senders_own_path_whole():
    """The path goes back unchanged: the client matches it to the file it wrote."""
    path = "alice@example.com/" + "p" * 500
    error = error_reply("c1", 403, "permission denied", path=path).message.payload
    assert isinstance(error, Error) and error.pth == path


# ---------------------------------------------------------------- the relay's frame handling


class FakeWebSocket:
    closed = False
    close_code = None

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool:
        self.closed = True
        return True


@pytest.fixture
async def relay_and_conn() -> AsyncIterator[tuple[Relay, Connection]]:
    relay = Relay(RelayConfig())
    conn = Connection(
        "c-mallory",
        "mallory@example.com",
        "json",
        FakeWebSocket(),  # type: ignore[arg-type]
        ledger=relay.hub.ledger,
    )
    relay.hub.add(conn)
    relay.connections.add(conn.id, conn.user)
    yield relay, conn
    await conn.finish()


def replies(conn: Connection) -> list[Message]:
    out = []
    while len(conn.queue):
        coro = conn.queue.get()
        try:
            coro.send(None)
        except StopIteration as done:
            out.append(decode(done.value.decode()))  # a TextFrame: JSON
    return out


def relay_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hotlink.server"]


HUGE = 8 * 1024 * 1024 - 4096


async def test_an_8_mib_undecodable_frame_costs_one_short_reply_and_one_short_line(
    relay_and_conn, caplog
):
    relay, conn = relay_and_conn
    caplog.set_level(logging.INFO, "hotlink.server")
    frame = json.dumps({"id": "a", "typ": 6, "dat": {"syft_url": FORGED * (HUGE // len(FORGED))}})
    assert relay._handle_frame(conn, frame) is None
    [reply] = replies(conn)
    assert isinstance(reply.payload, Error) and reply.payload.cod == 400
    assert len(reply.payload.msg) <= MAX_TEXT_CHARS and reply.payload.msg.isprintable()
    [line] = relay_lines(caplog)
    assert "undecodable text frame" in line
    assert len(line) <= MAX_TEXT_CHARS + 40  # the connection's name comes first
    assert line.isprintable()


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_a_refused_message_with_huge_hostile_ids_is_logged_in_one_short_line(
    relay_and_conn, caplog, encoding
):
    """A message that decodes but is refused (Data for no session): its id and session id
    are the sender's, and end up in the log line."""
    relay, conn = relay_and_conn
    caplog.set_level(logging.INFO, "hotlink.server")
    hostile = FORGED * 1000
    message = Message(hostile, HotlinkData(sid=hostile, seq=1, pth="p", pay=b"x"))
    frame = encode_json(message) if encoding == "json" else encode_msgpack(message)
    relay._handle_frame(conn, frame)
    [line] = relay_lines(caplog)
    assert len(line) <= MAX_TEXT_CHARS + 40
    assert line.isprintable(), line
    [reply] = replies(conn)  # the sender hears of it (its own session id comes back)
    assert isinstance(reply.payload, HotlinkReject) and reply.payload.sid == hostile


async def test_bad_frames_of_one_user_are_logged_up_to_its_burst(relay_and_conn, caplog):
    relay, conn = relay_and_conn
    caplog.set_level(logging.INFO, "hotlink.server")
    for _ in range(500):
        relay._handle_frame(conn, b"not an envelope")
    lines = relay_lines(caplog)
    assert 0 < len(lines) == relay.bad_input_log.per_key
    assert len(replies(conn)) == 500  # every bad frame is still answered
    caplog.clear()
    relay.report_skipped_lines(everything=True)
    assert relay_lines(caplog) == [
        f"{500 - len(lines)} more bad-input lines from mallory@example.com "
        "in the last minute (not logged)"
    ]
