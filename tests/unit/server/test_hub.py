"""The bounded send queue, the ICE advertisement headers and the metrics registry."""

from __future__ import annotations

import asyncio

from hotlink.protocol.flow import DEFAULT_WINDOW
from hotlink.protocol.ice import ICE_SERVERS_HEADER, TURN_PASS_HEADER, TURN_USER_HEADER
from hotlink.protocol.messages import MsgType
from hotlink.server.hub import DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_MESSAGES, SendQueue
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
        q.try_put(str(i))
    assert [await q.get() for _ in range(5)] == ["0", "1", "2", "3", "4"]


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
