"""Marker parsing on hostile input: every parser failure is a ProtocolError, never a crash."""

from __future__ import annotations

import threading

import pytest

from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.markers import parse_tcp_marker

SOURCE = "alice@example.com/shared/flows/t/run1/_mpc/0_to_1/stream.tcp"


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '{"from":' * 50_000,
        "[" * 2_000 + "]" * 2_000,
        '{"from": "a@x", "to": "b@x", "ports": ' + '{"a":' * 5_000 + "}",
    ],
)
def test_deep_nesting_is_a_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_tcp_marker(text, SOURCE)
    assert SOURCE in str(info.value) and len(str(info.value)) < 300


def test_deep_nesting_is_a_protocol_error_in_a_worker_thread_too() -> None:
    """The proxy parses markers off the loop, where the C stack is a thread's."""
    errors: list[BaseException] = []

    def parse() -> None:
        try:
            parse_tcp_marker("[" * 100_000, SOURCE)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=parse)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], ProtocolError)


def test_errors_do_not_echo_long_values() -> None:
    text = '{"from": "a@x", "to": "b@x", "port": "' + "9" * 10_000 + '"}'
    with pytest.raises(ProtocolError) as info:
        parse_tcp_marker(text, SOURCE)
    assert len(str(info.value)) < 300
