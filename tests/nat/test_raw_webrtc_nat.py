"""WebRTC data channels through NAT, with the project's backends but without the hotlink
client and server: one peer process in alice's LAN, one in bob's, signaling through a small
relay on the public segment, coturn there as STUN/TURN server.

Each case records its negotiation time (alice's offer to the channel open on both sides) and
selected candidate pair in the terminal summary.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hotlink.webrtc import BackendUnavailableError, load_backend
from nat.lab import NatLab, PairResult
from nat.topology import Impairment

pytestmark = [pytest.mark.nat, pytest.mark.slow]

MiB = 1024 * 1024
# Guards only: every case that opens does so in well under a second here.
OPEN_TIMEOUT = 20.0
# How long a case that must NOT open is given: many times what a working path needs.
NO_OPEN_WINDOW = 8.0


def need_backends(*names: str) -> None:
    for name in names:
        try:
            load_backend(name)
        except BackendUnavailableError as exc:
            pytest.skip(f"{name} backend not available here: {exc}")


def assert_opened(result: PairResult) -> None:
    assert result.opened, "data channel did not open on both sides:\n" + result.explain()
    # Each side got the other's message: data flowed both ways over the channel.
    assert (result.alice.event("message") or {}).get("data") == "hello from bob", result.explain()
    assert (result.bob.event("message") or {}).get("data") == "hello from alice", result.explain()


def pair_types(result: PairResult) -> set[str]:
    """Candidate types at either end of either side's selected pair (as far as known)."""
    return {
        str(p.pair.get(key))
        for p in (result.alice, result.bob)
        for key in ("local_type", "remote_type")
        if p.pair.get(key)
    }


def test_symmetric_nat_opens_through_turn(
    make_lab: Callable[..., NatLab], nat_report: Callable[[str], None]
) -> None:
    """Case 1: symmetric NAT on both sides, all candidate types, TURN configured."""
    need_backends("libdatachannel")
    lab = make_lab(symmetric=True)
    result = lab.run_pair(ice="turn", open_timeout=OPEN_TIMEOUT, label="1 symmetric+TURN")
    nat_report(result.summary())
    assert_opened(result)
    # Only the relay can work through two symmetric NATs: at least one end of the selected
    # pair is a TURN allocation (libdatachannel reports the whole pair).
    assert "relay" in pair_types(result), result.explain()


def test_eim_nat_opens_with_stun_only_via_srflx(
    make_lab: Callable[..., NatLab], nat_report: Callable[[str], None]
) -> None:
    """Case 2: endpoint-independent NAT, coturn as a plain STUN server: hole punching."""
    need_backends("libdatachannel")
    lab = make_lab(symmetric=False)
    result = lab.run_pair(ice="stun", open_timeout=OPEN_TIMEOUT, label="2 EIM+STUN")
    nat_report(result.summary())
    assert_opened(result)
    for peer in (result.alice, result.bob):
        # Server-reflexive on both ends (a peer-reflexive twin of it counts the same).
        assert peer.pair.get("local_type") in ("srflx", "prflx"), result.explain()
        assert peer.pair.get("remote_type") in ("srflx", "prflx"), result.explain()


def test_symmetric_nat_without_turn_does_not_open(
    make_lab: Callable[..., NatLab], nat_report: Callable[[str], None]
) -> None:
    """Case 3: symmetric NAT and STUN only: no candidate pair can work."""
    need_backends("libdatachannel")
    lab = make_lab(symmetric=True)
    result = lab.run_pair(ice="stun", open_timeout=NO_OPEN_WINDOW, label="3 symmetric+STUN")
    nat_report(f"3 symmetric+STUN: not open after {NO_OPEN_WINDOW:.0f} s (expected)")
    assert not result.alice.opened and not result.bob.opened, result.explain()
    assert result.alice.event("timeout") and result.bob.event("timeout"), result.explain()


def test_impaired_uplinks_carry_16_mib_intact(
    make_lab: Callable[..., NatLab], nat_report: Callable[[str], None]
) -> None:
    """Case 4: delay and 2 % loss on both NAT uplinks; 16 MiB arrive intact (sha256)."""
    need_backends("libdatachannel")
    # 10 ms each way: at 2 % loss SCTP's congestion control, like TCP's, gets about
    # MSS / (RTT * sqrt(loss)), so 16 MiB take ~40 s here; 20 ms would double that.
    lab = make_lab(symmetric=True, impair=Impairment(delay_ms=10, loss_pct=2))
    result = lab.run_pair(
        ice="turn",
        open_timeout=OPEN_TIMEOUT,
        transfer=16 * MiB,
        guard_s=240,
        label="4 impaired 10ms/2%+TURN",
    )
    nat_report(result.summary() + " (16 MiB transfer)")
    assert result.opened, result.explain()
    sent, received = result.alice.event("sent"), result.bob.event("received")
    assert sent is not None and received is not None, result.explain()
    assert received["bytes"] == 16 * MiB
    assert received["sha256"] == sent["sha256"]
    assert sent["peer_sha256"] == sent["sha256"] and sent["peer_bytes"] == 16 * MiB


@pytest.mark.parametrize(
    "backends",
    [("aiortc", "libdatachannel"), ("libdatachannel", "aiortc")],
    ids=["aiortc-offers", "ldc-offers"],
)
def test_cross_backend_symmetric_nat_through_turn(
    make_lab: Callable[..., NatLab],
    nat_report: Callable[[str], None],
    backends: tuple[str, str],
) -> None:
    """Case 1 with one aiortc peer: the two stacks interoperate through TURN."""
    need_backends(*backends)
    lab = make_lab(symmetric=True)
    label = f"1 symmetric+TURN alice={backends[0]} bob={backends[1]}"
    result = lab.run_pair(ice="turn", backends=backends, open_timeout=OPEN_TIMEOUT, label=label)
    nat_report(result.summary())
    assert_opened(result)
    assert "relay" in pair_types(result), result.explain()
