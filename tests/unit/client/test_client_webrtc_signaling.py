"""Early-signal buffer, ended-session memory, replay window, transport naming, settings."""

from __future__ import annotations

from hotlink.client.p2p.signaling import (
    MAX_CANDIDATE_TOKEN,
    MAX_SDP_TOKEN,
    PendingSignals,
    RecentSids,
    ReplayWindow,
    SignalQuota,
    is_legacy_kind,
    oversized,
    signal_size,
    transport_kind,
)
from hotlink.client.p2p.webrtc_transport import config_from_settings
from hotlink.protocol.frames import Frame
from hotlink.protocol.messages import HotlinkSignal
from hotlink.settings import ClientSettings


def sig(sid: str, n: int = 0, knd: str = "ice_candidate") -> HotlinkSignal:
    return HotlinkSignal(sid=sid, knd=knd, tok=f'{{"n":{n}}}')


def test_pending_signals_come_back_in_arrival_order_once() -> None:
    pending = PendingSignals()
    for n in range(3):
        assert pending.add(sig("a", n), now=10.0 + n)
    pending.add(sig("b"), now=11.0)
    assert [s.tok for s in pending.take("a", now=12.0)] == ['{"n":0}', '{"n":1}', '{"n":2}']
    assert pending.take("a", now=12.0) == []
    assert "b" in pending


def test_pending_signals_expire_after_30_s_counted_not_silent() -> None:
    pending = PendingSignals()
    pending.add(sig("a", 1), now=0.0)
    pending.add(sig("a", 2), now=20.0)
    pending.add(sig("b"), now=25.0)
    assert pending.take("a", now=29.9) != []
    pending.add(sig("a", 3), now=30.0)
    assert pending.take("a", now=60.0) == []
    assert pending.expired == 2  # "a"'s late one and "b"
    assert "b" not in pending


def test_pending_signals_are_bounded_per_session_and_in_sessions() -> None:
    pending = PendingSignals(per_sid=2, max_sids=2)
    assert pending.add(sig("a", 1), 0.0)
    assert pending.add(sig("a", 2), 0.0)
    assert not pending.add(sig("a", 3), 0.0)
    pending.add(sig("b"), 0.0)
    pending.add(sig("c"), 0.0)  # pushes out "a", the oldest session
    assert "a" not in pending
    assert len(pending) == 2
    assert pending.overflowed == 3


def test_signals_too_large_to_be_a_real_peers_are_named() -> None:
    sdp = "v=0\r\n" + "a=x\r\n" * 2000  # about 12 KiB: a rich but real SDP
    assert oversized(HotlinkSignal("s", "sdp_offer", tok=sdp)) == ""
    assert oversized(HotlinkSignal("s", "sdp_answer", tok="x" * MAX_SDP_TOKEN)) == ""
    assert "token" in oversized(HotlinkSignal("s", "sdp_offer", tok="x" * (MAX_SDP_TOKEN + 1)))
    cand = '{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host"}'
    assert oversized(HotlinkSignal("s", "ice_candidate", tok=cand)) == ""
    big = "x" * (MAX_CANDIDATE_TOKEN + 1)
    assert "token" in oversized(HotlinkSignal("s", "ice_candidate", tok=big))
    assert "error" in oversized(HotlinkSignal("s", "webrtc_error", err="e" * 5000))
    assert "session id" in oversized(HotlinkSignal("s" * 1000, "ice_candidate"))
    assert "kind" in oversized(HotlinkSignal("s", "k" * 1000))
    assert "token" in oversized(HotlinkSignal("s", "something_new", tok="x" * (8 << 20)))


def test_pending_signals_are_bounded_in_bytes_per_session_and_in_all() -> None:
    def big(sid: str) -> HotlinkSignal:
        return HotlinkSignal(sid=sid, knd="sdp_offer", tok="o" * 1000)

    size = signal_size(big("a"))
    pending = PendingSignals(per_sid_bytes=2 * size, max_bytes=3 * size)
    assert pending.add(big("a"), 0.0) and pending.add(big("a"), 0.0)
    assert not pending.add(big("a"), 0.0)  # session "a" holds its share
    assert pending.add(big("b"), 0.0)
    assert not pending.add(big("c"), 0.0)  # all sessions together hold the total
    assert "c" not in pending  # a refused first signal leaves no empty entry
    assert pending.nbytes == 3 * size
    pending.take("a", 0.0)
    assert pending.nbytes == size
    assert pending.add(big("c"), 0.0)
    pending.discard("b")
    pending.expire(100.0)
    assert (pending.nbytes, len(pending)) == (0, 0)
    assert pending.overflowed == 2


def test_pending_signals_default_bounds_hold_far_less_than_a_flood() -> None:
    # 200 candidates of 8 MiB for one unknown session, then many small ones for many
    # sessions: what is held stays within the byte bound whatever gets in.
    pending = PendingSignals()
    flood = HotlinkSignal(sid="a", knd="ice_candidate", tok="c" * (8 << 20))
    for _ in range(200):
        pending.add(flood, 0.0)
    assert pending.nbytes == 0
    for n in range(10_000):
        pending.add(HotlinkSignal(sid=f"s{n % 300}", knd="sdp_offer", tok="o" * 60_000), 0.0)
        assert pending.nbytes <= pending.max_bytes


def test_signal_quota_is_shared_and_never_negative() -> None:
    quota = SignalQuota(100)
    assert quota.take(60)
    assert not quota.take(41)
    assert quota.take(40)
    quota.give(500)
    assert quota.used == 0


def test_recent_sids_forget_the_oldest() -> None:
    recent = RecentSids(size=2)
    for sid in ("a", "b", "c"):
        recent.add(sid)
    assert "a" not in recent
    assert "b" in recent and "c" in recent


def test_replay_window_keeps_the_newest_frames_within_its_bytes() -> None:
    window = ReplayWindow(max_bytes=250)
    for seq in range(1, 6):
        window.add(Frame("p", "", seq, b"x" * 100))
    assert [f.seq for f in window.take_all()] == [4, 5]
    assert len(window) == 0 and window.bytes == 0
    window.add(Frame("p", "", 9, b"x" * 1000))  # larger than the bound: still kept
    assert [f.seq for f in window.take_all()] == [9]


def test_transport_kind_names_the_path() -> None:
    assert transport_kind("host", "host") == "p2p-host"
    assert transport_kind("srflx", "host") == "p2p-srflx"
    assert transport_kind("host", "srflx") == "p2p-srflx"
    assert transport_kind("relay", "host") == "p2p-relay"
    # libdatachannel: our end peer-reflexive, the path through the peer's TURN allocation.
    assert transport_kind("prflx", "relay") == "p2p-relay"
    assert transport_kind("prflx", "host") == "p2p-host"
    assert transport_kind(None, None) == "p2p-host"


def test_quic_kinds_are_legacy() -> None:
    assert is_legacy_kind("quic_offer") and is_legacy_kind("quic_error")
    assert not is_legacy_kind("sdp_offer")


def test_webrtc_settings_from_env_and_transport_config() -> None:
    settings = ClientSettings.from_env(
        {
            "SYFTBOX_HOTLINK_RELAY_ONLY": "1",
            "SYFTBOX_HOTLINK_WEBRTC_OPEN_TIMEOUT_MS": "500",  # clamped to 1 s
            "SYFTBOX_HOTLINK_DEBUG_P2P_KILL_AFTER": "40",
            "SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS": "250",
            "SYFTBOX_HOTLINK_WEBRTC_BUFFERED_HIGH": "0",
            "SYFTBOX_HOTLINK_WEBRTC_BACKEND": "aiortc",
        }
    )
    config = config_from_settings(settings)
    assert config.relay_only and config.backend == "aiortc"
    assert config.open_timeout == 1.0
    assert config.kill_after == 40
    assert config.grace == 0.25
    assert config.buffered_high == 1  # 0 would make every send wait for a drain forever
    defaults = config_from_settings(ClientSettings.from_env({}))
    assert (defaults.open_timeout, defaults.grace, defaults.relay_only) == (15.0, 1.5, False)
    assert defaults.replay_window > defaults.buffered_high
