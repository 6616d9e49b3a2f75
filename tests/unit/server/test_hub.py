"""The bounded send queue, the ICE advertisement headers and the metrics registry."""

from __future__ import annotations

import asyncio
import errno
import logging
import os

from hotlink.loop_errors import Throttle, accept_error_handler
from hotlink.protocol.flow import DEFAULT_WINDOW
from hotlink.protocol.ice import ICE_SERVERS_HEADER, TURN_PASS_HEADER, TURN_USER_HEADER
from hotlink.protocol.messages import MsgType
from hotlink.server.hub import (
    DEFAULT_QUEUE_BYTES,
    DEFAULT_QUEUE_MESSAGES,
    Admission,
    SendQueue,
)
from hotlink.server.ice_headers import ice_headers, static_turn_password_ignored
from hotlink.server.metrics import RelayMetrics
from hotlink.settings import ServerSettings

# ---------------------------------------------------------------- SendQueue


async def test_queue_is_bounded_by_message_count():
    q = SendQueue(max_messages=3, max_bytes=1 << 20)
    assert all(q.try_put(b"x") for _ in range(3))
    assert not q.try_put(b"x")
    assert len(q) == 3


async def test_queue_is_bounded_by_bytes_but_always_takes_one_frame():
    q = SendQueue(max_messages=100, max_bytes=10)
    assert q.try_put(b"y" * 50)  # an empty queue takes any single frame
    assert not q.try_put(b"z")
    assert await q.get() == b"y" * 50
    assert q.try_put(b"a" * 6) and not q.try_put(b"b" * 5) and q.try_put(b"c" * 4)
    assert q.nbytes == 10


async def test_queue_keeps_fifo_order():
    q = SendQueue(10, 1000)
    for i in range(5):
        q.try_put(b"%d" % i)
    assert [await q.get() for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_full_queue_says_no_at_once_and_takes_frames_again_after_a_get():
    q = SendQueue(max_messages=1, max_bytes=100)
    assert q.try_put(b"first")
    assert not q.try_put(b"second")  # no waiting: the caller decides what a full queue means
    assert await q.get() == b"first"
    assert q.try_put(b"third") and len(q) == 1


def test_default_bound_holds_several_full_credit_windows_of_small_frames():
    q = SendQueue(DEFAULT_QUEUE_MESSAGES, DEFAULT_QUEUE_BYTES)
    frame = b"d" * (4 * 1024)  # the smallest tunnel chunk a client may use
    for _ in range(6 * DEFAULT_WINDOW // len(frame)):  # six sessions, each a full window
        assert q.try_put(frame)


async def test_closed_queue_refuses_frames_and_wakes_the_reader():
    q = SendQueue(4, 100)
    reader = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.close()
    assert await asyncio.wait_for(reader, 5) is None
    assert not q.try_put(b"x")


# ---------------------------------------------------------------- ICE headers (#23, #24)


def test_no_ice_headers_unless_configured():
    assert ice_headers(ServerSettings(), "alice@example.com", 0) == {}
    assert ice_headers(ServerSettings(ice_servers_raw="none"), "alice@example.com", 0) == {}


def test_configured_ice_servers_are_advertised_verbatim():
    settings = ServerSettings(ice_servers_raw="stun:192.0.2.1:3478,turn:192.0.2.1:3478")
    headers = ice_headers(settings, "alice@example.com", 0)
    assert headers == {ICE_SERVERS_HEADER: "stun:192.0.2.1:3478,turn:192.0.2.1:3478"}


def test_turn_secret_gives_short_lived_rest_credentials_per_user():
    settings = ServerSettings(
        ice_servers_raw="turn:192.0.2.1:3478", turn_secret="shared", turn_ttl=600
    )
    headers = ice_headers(settings, "alice@example.com", 1_000_000)
    assert headers[TURN_USER_HEADER] == "1000600:alice@example.com"
    assert headers[TURN_PASS_HEADER]
    other = ice_headers(settings, "bob@example.com", 1_000_000)
    assert other[TURN_PASS_HEADER] != headers[TURN_PASS_HEADER]


def test_static_turn_password_is_never_advertised():
    settings = ServerSettings(
        ice_servers_raw="turn:192.0.2.1:3478", turn_user="syftbox", turn_pass="syftbox"
    )
    headers = ice_headers(settings, "alice@example.com", 0)
    assert TURN_PASS_HEADER not in headers and TURN_USER_HEADER not in headers
    assert static_turn_password_ignored(settings)


# ---------------------------------------------------------------- metrics


def test_each_relay_has_its_own_metrics_registry():
    one, two = RelayMetrics(), RelayMetrics()
    one.relayed(MsgType.HOTLINK_DATA, 100)
    one.rejects.labels("permission denied").inc()
    text = one.render().decode()
    assert 'hotlink_relayed_messages_total{type="HOTLINK_DATA"} 1.0' in text
    assert 'hotlink_relayed_bytes_total{type="HOTLINK_DATA"} 100.0' in text
    assert 'hotlink_rejects_total{reason="permission denied"} 1.0' in text
    assert "HOTLINK_DATA" not in two.render().decode()


# ---------------------------------------------------------------- bytes not yet sent


def test_bytes_in_the_socket_buffer_count_against_the_byte_bound():
    q = SendQueue(max_messages=100, max_bytes=100)
    assert not q.try_put(b"x" * 30, unsent=80)  # 80 + 30 > 100
    assert q.try_put(b"x" * 20, unsent=80)
    assert not q.try_put(b"x", unsent=80)


def test_an_empty_queue_with_unsent_bytes_does_not_take_an_oversized_frame():
    q = SendQueue(max_messages=100, max_bytes=100)
    assert not q.try_put(b"x" * 150, unsent=1)
    assert q.try_put(b"x" * 150, unsent=0)  # nothing held: any one frame goes


# ---------------------------------------------------------------- connection caps


def test_admission_caps_connections_per_user_with_429():
    admission = Admission(max_total=100, max_per_user=2)
    assert admission.admit("a@example.com") is None
    assert admission.admit("a@example.com") is None
    refusal = admission.admit("a@example.com")
    assert refusal is not None and refusal.status == 429
    assert refusal.body()["code"] == "too_many_connections"
    assert "a@example.com" in refusal.body()["error"]
    assert admission.admit("b@example.com") is None  # other users are not affected
    admission.release("a@example.com")
    assert admission.admit("a@example.com") is None
    assert admission.held_by("a@example.com") == 2 and len(admission) == 3


def test_admission_caps_connections_in_total_with_503():
    admission = Admission(max_total=2, max_per_user=8)
    assert admission.admit("a@example.com") is None
    assert admission.admit("b@example.com") is None
    refusal = admission.admit("c@example.com")
    assert refusal is not None and refusal.status == 503
    assert refusal.body()["code"] == "server_busy"
    admission.release("b@example.com")
    assert admission.admit("c@example.com") is None


def test_admission_release_of_an_unknown_user_changes_nothing():
    admission = Admission(max_total=1, max_per_user=1)
    admission.release("nobody@example.com")
    assert len(admission) == 0
    assert admission.admit("a@example.com") is None
    assert admission.admit("b@example.com") is not None


# ---------------------------------------------------------------- accept() out of descriptors


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_speaks_once_per_interval_and_counts_the_rest():
    clock = Clock()
    throttle = Throttle(10.0, clock)
    assert throttle.ready() == 0
    assert [throttle.ready() for _ in range(5)] == [None] * 5
    clock.now += 10.0
    assert throttle.ready() == 5
    assert throttle.ready() is None


def _accept_failure(code: int = errno.EMFILE) -> dict[str, object]:
    """What asyncio's accept loop passes to the exception handler."""
    return {
        "message": "socket.accept() out of system resource",
        "exception": OSError(code, os.strerror(code)),
        "socket": object(),
    }


async def test_a_flood_of_failed_accepts_is_one_log_line(caplog):
    failures: list[int] = []
    handler = accept_error_handler(logging.getLogger("t"), lambda: failures.append(1), 60.0)
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.DEBUG):
        for _ in range(1000):
            handler(loop, _accept_failure())
    lines = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "Too many open files" in lines[0].getMessage()
    assert len(failures) == 1000


async def test_other_loop_errors_still_reach_the_default_handler(caplog):
    handler = accept_error_handler(logging.getLogger("t"), interval=60.0)
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        handler(loop, {"message": "something else", "exception": ValueError("boom")})
        handler(loop, {"message": "refused", "exception": OSError(errno.ECONNREFUSED, "x")})
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == [
        "something else",
        "refused",
    ]


async def test_a_retry_of_a_listener_closed_meanwhile_is_not_an_error(caplog):
    # What asyncio schedules after a failed accept, run after the listener has closed (as at
    # shutdown): its callback finds no descriptor. Quiet; any other ValueError is not.
    handler = accept_error_handler(logging.getLogger("t"), interval=60.0)
    loop = asyncio.get_running_loop()

    def _start_serving() -> None:
        raise ValueError("Invalid file descriptor: -1")

    retry = asyncio.TimerHandle(0.0, _start_serving, (), loop)
    other = asyncio.Handle(lambda: None, (), loop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        error = ValueError("Invalid file descriptor: -1")
        handler(loop, {"message": "Exception in callback", "exception": error, "handle": retry})
        handler(loop, {"message": "another callback", "exception": error, "handle": other})
    reported = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(reported) == 1 and reported[0].startswith("another callback")
