"""libdatachannel's SCTP settings: the C struct we hand over, the bandwidth-delay sizing, and
applying them once per process (with a clear fallback when the library lacks the call)."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from dataclasses import astuple, fields
from types import SimpleNamespace
from typing import Any

import pytest

from hotlink.client.p2p.session import REPLAY_EXTRA, replay_window
from hotlink.client.p2p.webrtc_transport import sctp_from_settings
from hotlink.webrtc import BackendUnavailableError, load_backend
from hotlink.webrtc import sctp_settings as mod
from hotlink.webrtc.sctp_settings import (
    CC_HSTCP,
    CC_HTCP,
    CC_RFC2581,
    DEFAULT_SCTP_SETTINGS,
    MAX_SCTP_BUFFER,
    MIB,
    MIN_SCTP_BUFFER,
    STRUCT_PADDING,
    SctpSettings,
    applied_sctp_settings,
    apply_sctp_settings,
    sctp_buffer_for,
)

# libdatachannel's rtcSctpSettings (rtc.h), in declaration order.
C_FIELDS = [
    "recvBufferSize",
    "sendBufferSize",
    "maxChunksOnQueue",
    "initialCongestionWindow",
    "maxBurst",
    "congestionControlModule",
    "delayedSackTimeoutMs",
    "minRetransmitTimeoutMs",
    "maxRetransmitTimeoutMs",
    "initialRetransmitTimeoutMs",
    "maxRetransmitAttempts",
    "heartbeatIntervalMs",
]


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    mod._reset_for_tests()
    yield
    mod._reset_for_tests()


class FakeFunction:
    def __init__(self, code: int = 0) -> None:
        self.code = code
        self.calls: list[list[int]] = []

    def __call__(self, pointer: Any) -> int:
        struct = pointer._obj
        self.calls.append(list(struct))
        return self.code


def test_the_struct_is_twelve_ints_in_the_c_order() -> None:
    assert [_snake(n) for n in C_FIELDS] == [f.name for f in fields(SctpSettings)]
    settings = SctpSettings(*range(1, 4), 4, 5, 2, *range(7, 13))
    struct = settings.as_struct()
    # Twelve known fields, then zeros ("default") for any field a later library might add.
    assert ctypes.sizeof(struct) == (12 + STRUCT_PADDING) * ctypes.sizeof(ctypes.c_int)
    assert list(struct)[:12] == list(astuple(settings)) == [1, 2, 3, 4, 5, 2, *range(7, 13)]
    assert list(struct)[12:] == [0] * STRUCT_PADDING


def test_zero_means_the_library_default_and_bad_values_are_refused() -> None:
    assert list(SctpSettings().as_struct()) == [0] * (12 + STRUCT_PADDING)
    SctpSettings(max_burst=-1, delayed_sack_timeout_ms=-1)  # "disabled" is allowed
    with pytest.raises(ValueError, match="congestion_control_module"):
        SctpSettings(congestion_control_module=7)
    with pytest.raises(ValueError, match="recv_buffer_size"):
        SctpSettings(recv_buffer_size=-1)
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        SctpSettings(heartbeat_interval_ms=-5)
    with pytest.raises(ValueError, match="send_buffer_size"):
        SctpSettings(send_buffer_size=2**31)


def test_buffer_follows_the_bandwidth_delay_product_within_bounds() -> None:
    # 1 Gbit/s x 100 ms = 12.5 MB: within the 16 MiB budget.
    assert sctp_buffer_for(1_000_000_000, 100) == 12_500_000
    # A short path never goes below libdatachannel's own 1 MiB.
    assert sctp_buffer_for(100_000_000, 2) == MIN_SCTP_BUFFER
    # A long fat path is capped by the budget.
    assert sctp_buffer_for(10_000_000_000, 200) == MAX_SCTP_BUFFER
    assert sctp_buffer_for(1_000_000_000, 100, budget=4 * MIB) == 4 * MIB
    with pytest.raises(ValueError):
        sctp_buffer_for(-1, 10)


def test_applying_is_idempotent_and_a_change_is_applied_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeFunction()
    monkeypatch.setattr(mod, "_library_function", lambda path: fake)
    wide = SctpSettings(recv_buffer_size=8 * MIB, send_buffer_size=8 * MIB)
    assert apply_sctp_settings(wide, library_path="x")
    assert apply_sctp_settings(wide, library_path="x")
    assert fake.calls == [[8 * MIB, 8 * MIB] + [0] * (10 + STRUCT_PADDING)]
    assert applied_sctp_settings() == wide
    assert apply_sctp_settings(DEFAULT_SCTP_SETTINGS, library_path="x")
    assert len(fake.calls) == 2 and applied_sctp_settings() == DEFAULT_SCTP_SETTINGS


def test_a_library_without_the_call_keeps_its_defaults_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing(path: str) -> Any:
        raise AttributeError("undefined symbol: rtcSetSctpSettings")

    monkeypatch.setattr(mod, "_library_function", missing)
    with caplog.at_level(logging.WARNING, "hotlink.webrtc.libdatachannel"):
        assert not apply_sctp_settings(DEFAULT_SCTP_SETTINGS, library_path="x")
        assert not apply_sctp_settings(SctpSettings(recv_buffer_size=2 * MIB), library_path="x")
    warnings = [r for r in caplog.records if "SCTP settings cannot be applied" in r.message]
    assert len(warnings) == 1
    assert "rtcSetSctpSettings" in warnings[0].message
    assert "library's defaults" in warnings[0].message
    assert applied_sctp_settings() is None


def test_a_refusal_by_the_library_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mod, "_library_function", lambda path: FakeFunction(code=-1))
    with caplog.at_level(logging.WARNING, "hotlink.webrtc.libdatachannel"):
        assert not apply_sctp_settings(DEFAULT_SCTP_SETTINGS, library_path="x")
    assert any("refused the SCTP settings" in r.message for r in caplog.records)
    assert applied_sctp_settings() is None


def test_the_bundled_library_takes_the_settings() -> None:
    try:
        backend = load_backend("libdatachannel")
    except BackendUnavailableError as exc:
        pytest.skip(f"libdatachannel not available here: {exc}")
    assert getattr(backend, "sctp_settings", None) == DEFAULT_SCTP_SETTINGS
    assert apply_sctp_settings(DEFAULT_SCTP_SETTINGS)
    assert applied_sctp_settings() == DEFAULT_SCTP_SETTINGS


def test_the_replay_window_covers_what_larger_sctp_buffers_hold() -> None:
    # libdatachannel's own 1 MiB buffers: the window as it always was.
    library = SctpSettings()
    assert replay_window(MIB, library) == MIB + REPLAY_EXTRA
    assert replay_window(MIB, SctpSettings(recv_buffer_size=MIB, send_buffer_size=MIB)) == (
        MIB + REPLAY_EXTRA
    )
    # Every byte SCTP may hold beyond that (our send buffer, the peer's receive buffer) is
    # kept for a resend too.
    wide = SctpSettings(recv_buffer_size=8 * MIB, send_buffer_size=8 * MIB)
    assert replay_window(2 * MIB, wide) == 2 * MIB + REPLAY_EXTRA + 14 * MIB
    assert replay_window(MIB, DEFAULT_SCTP_SETTINGS) >= MIB + 2 * (
        DEFAULT_SCTP_SETTINGS.send_buffer_size
    )


def test_client_settings_choose_the_sctp_buffer() -> None:
    from hotlink.settings import ClientSettings, SettingsError

    assert sctp_from_settings(ClientSettings.load(env={})) == DEFAULT_SCTP_SETTINGS
    env = {"SYFTBOX_HOTLINK_WEBRTC_SCTP_BUFFER": str(12 * MIB)}
    chosen = sctp_from_settings(ClientSettings.load(env=env))
    with pytest.raises(SettingsError, match="must be 0 or"):
        ClientSettings.load(env={"SYFTBOX_HOTLINK_WEBRTC_SCTP_BUFFER": "4096"})
    assert (chosen.recv_buffer_size, chosen.send_buffer_size) == (12 * MIB, 12 * MIB)
    assert chosen.congestion_control_module == DEFAULT_SCTP_SETTINGS.congestion_control_module


class _FakeBackend:
    name = "libdatachannel"
    same_host_mtu = 4096


def test_the_transport_gives_its_mtu_and_sctp_settings_to_libdatachannel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hotlink.client.p2p import webrtc_transport
    from hotlink.client.p2p.session import WebRTCConfig
    from hotlink.settings import ClientSettings

    loaded: list[dict[str, Any]] = []
    backend = _FakeBackend()

    def fake_load(name: str, **kwargs: Any) -> _FakeBackend:
        loaded.append({"name": name, **kwargs})
        return backend

    monkeypatch.setattr(webrtc_transport, "load_backend", fake_load)
    wide = SctpSettings(recv_buffer_size=8 * MIB, send_buffer_size=8 * MIB)
    config = WebRTCConfig(backend="libdatachannel", mtu=4096, sctp=wide)
    transport = webrtc_transport.WebRTCPeerTransport(ClientSettings.from_env({}), config=config)
    transport.bind(SimpleNamespace())  # type: ignore[arg-type]
    assert loaded == [{"name": "libdatachannel", "mtu": 4096, "sctp": wide, "tuned": True}]


def test_client_settings_choose_the_congestion_control() -> None:
    from hotlink.settings import ClientSettings, SettingsError

    for name, module in (("rfc2581", CC_RFC2581), ("htcp", CC_HTCP), ("hstcp", CC_HSTCP)):
        env = {"SYFTBOX_HOTLINK_WEBRTC_SCTP_CC": name}
        chosen = sctp_from_settings(ClientSettings.load(env=env))
        assert chosen.congestion_control_module == module
        assert chosen.recv_buffer_size == DEFAULT_SCTP_SETTINGS.recv_buffer_size
    with pytest.raises(SettingsError, match="bbr"):
        ClientSettings.load(env={"SYFTBOX_HOTLINK_WEBRTC_SCTP_CC": "bbr"})
