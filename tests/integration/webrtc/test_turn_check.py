"""The TURN check against a real coturn: an allocation with the right credentials, a named
authentication failure with wrong ones, "no answer" for a port nobody serves; and the
diagnosis warns once per problem, plus once for relay-only with no working TURN server."""

from __future__ import annotations

import logging

import pytest

from hotlink.client.p2p.turn_diagnosis import TurnDiagnosis
from hotlink.protocol.ice import IceServer
from hotlink.webrtc.turn_check import check_turn
from support.coturn import coturn, require_turnserver


async def test_turn_check_tells_bad_credentials_from_silence_and_success() -> None:
    require_turnserver()
    with coturn() as turn:
        url = turn.turn_url()
        assert (await check_turn(IceServer(url, "syftbox", "syftbox"))).ok
        assert (await check_turn(IceServer(turn.turn_url("tcp"), "syftbox", "syftbox"))).ok
        bad = await check_turn(IceServer(url, "syftbox", "wrong"))
        assert bad.problem.startswith("authentication failed (401")
        silent = IceServer(f"turn:127.0.0.1:{_closed_udp_port()}", "syftbox", "syftbox")
        assert (await check_turn(silent, timeout=1.0)).problem == "no answer within 1 s"
    # STUN needs no credentials: nothing to check, nothing contacted.
    assert (await check_turn(IceServer("stun:192.0.2.1:3478"))).ok


async def test_diagnosis_warns_once_per_problem(caplog: pytest.LogCaptureFixture) -> None:
    require_turnserver()
    with coturn() as turn:
        wrong = [IceServer(turn.turn_url(), "syftbox", "wrong")]
        diagnosis = TurnDiagnosis(relay_only=True)
        with caplog.at_level(logging.WARNING, logger="hotlink.webrtc"):
            await diagnosis.check(wrong)
            await diagnosis.check(wrong)  # the same servers again: not checked, not said
            # New credentials (TURN REST ones change at every connect), the same failure:
            # checked again, but the same problem is not said twice.
            await diagnosis.check([IceServer(wrong[0].url, "syftbox", "wrong2")])
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    auth = [s for s in said if "authentication failed" in s]
    assert len(auth) == 1 and "SYFTBOX_HOTLINK_TURN_USER" in auth[0]
    assert diagnosis.results and not diagnosis.results[0].ok
    assert len([s for s in said if "RELAY_ONLY=1 and no TURN server" in s]) == 1


async def test_relay_only_without_turn_is_named(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hotlink.webrtc"):
        await TurnDiagnosis(relay_only=True).check([IceServer("stun:192.0.2.1:3478")])
    assert any("no TURN server is configured" in r.getMessage() for r in caplog.records)


def _closed_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
