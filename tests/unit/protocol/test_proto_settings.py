"""Settings from the SYFTBOX_* environment: defaults, clamps, errors naming the variable."""

from __future__ import annotations

import dataclasses

import pytest

from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.ice import DEFAULT_ICE_SERVERS, IceServer
from hotlink.settings import (
    ClientSettings,
    ServerSettings,
    SettingsError,
    split_host_port,
    strip_port,
)

# ---------------------------------------------------------------- client


def test_client_defaults() -> None:
    s = ClientSettings.from_env({})
    assert s == ClientSettings()
    assert s.hotlink is False
    assert s.tcp_proxy is True and s.webrtc is True
    assert s.webrtc_backend == "auto"
    assert s.tcp_proxy_addr == "127.0.0.1"
    assert s.tcp_proxy_chunk_size == 61440
    assert s.webrtc_buffered_high == 1048576
    assert s.webrtc_backpressure_wait_ms == 1500
    assert s.ws_fallback_grace_ms == 1500
    assert s.ipc_mode == "unix" and s.tcp_addr == "127.0.0.1:0"
    assert s.priority_debounce_ms == 50 and s.acl_staging_grace_ms == 600_000
    assert s.ice_servers_raw is None and s.stun_server_raw is None
    assert s.ice_servers() == [IceServer(DEFAULT_ICE_SERVERS)]


def test_client_reads_every_variable() -> None:
    env = {
        "SYFTBOX_SERVER_URL": "http://127.0.0.1:8080",
        "SYFTBOX_EMAIL": "alice@example.com",
        "SYFTBOX_DATA_DIR": "/tmp/a",
        "SYFTBOX_ACCESS_TOKEN": "tok",
        "SYFTBOX_AUTH_ENABLED": "1",
        "SYFTBOX_HOTLINK": "1",
        "SYFTBOX_HOTLINK_DEBUG": "true",
        "SYFTBOX_HOTLINK_TCP_PROXY": "0",
        "SYFTBOX_HOTLINK_WEBRTC": "0",
        "SYFTBOX_HOTLINK_WEBRTC_BACKEND": "AIORTC",
        "SYFTBOX_HOTLINK_P2P_ONLY": "yes",
        "SYFTBOX_HOTLINK_BENCH_STRICT": "on",
        "SYFTBOX_HOTLINK_BENCH": "1",
        "SYFTBOX_LATENCY_TRACE": "1",
        "SYFTBOX_HOTLINK_ICE_SERVERS": "turn:192.0.2.1:3478",
        "SYFTBOX_HOTLINK_STUN_SERVER": "192.0.2.2:3478",
        "SYFTBOX_HOTLINK_TURN_USER": "u",
        "SYFTBOX_HOTLINK_TURN_PASS": "p",
        "SYFTBOX_HOTLINK_TCP_PROXY_ADDR": "0.0.0.0:9000",
        "SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE": "16384",
        "SYFTBOX_HOTLINK_WEBRTC_BUFFERED_HIGH": "262144",
        "SYFTBOX_HOTLINK_WEBRTC_BACKPRESSURE_WAIT_MS": "200",
        "SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS": "0",
        "SYFTBOX_HOTLINK_IPC": "tcp",
        "SYFTBOX_HOTLINK_TCP_ADDR": "127.0.0.1:7000",
        "SYFTBOX_PRIORITY_DEBOUNCE_MS": "0",
        "SYFTBOX_ACL_STAGING_GRACE_MS": "0",
    }
    s = ClientSettings.from_env(env)
    assert s == ClientSettings(
        server_url="http://127.0.0.1:8080",
        email="alice@example.com",
        data_dir="/tmp/a",
        access_token="tok",
        auth_enabled=True,
        hotlink=True,
        debug=True,
        tcp_proxy=False,
        webrtc=False,
        webrtc_backend="aiortc",
        p2p_only=True,
        bench_strict=True,
        bench=True,
        latency_trace=True,
        ice_servers_raw="turn:192.0.2.1:3478",
        stun_server_raw="192.0.2.2:3478",
        turn_user="u",
        turn_pass="p",
        tcp_proxy_addr="0.0.0.0",
        tcp_proxy_chunk_size=16384,
        webrtc_buffered_high=262144,
        webrtc_backpressure_wait_ms=200,
        ws_fallback_grace_ms=0,
        ipc_mode="tcp",
        tcp_addr="127.0.0.1:7000",
        priority_debounce_ms=0,
        acl_staging_grace_ms=0,
    )


def test_quic_only_is_an_alias_for_p2p_only() -> None:
    assert ClientSettings.from_env({"SYFTBOX_HOTLINK_QUIC_ONLY": "1"}).p2p_only


@pytest.mark.parametrize(
    "name,value,field,expected",
    [
        ("SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE", "1", "tcp_proxy_chunk_size", 4096),
        ("SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE", "99999999", "tcp_proxy_chunk_size", 1048576),
        ("SYFTBOX_HOTLINK_WEBRTC_BUFFERED_HIGH", "999999999", "webrtc_buffered_high", 16 << 20),
        (
            "SYFTBOX_HOTLINK_WEBRTC_BACKPRESSURE_WAIT_MS",
            "60000",
            "webrtc_backpressure_wait_ms",
            10000,
        ),
        ("SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS", "20000", "ws_fallback_grace_ms", 10000),
        ("SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS", "-5", "ws_fallback_grace_ms", 0),
    ],
)
def test_client_clamps(name: str, value: str, field: str | None, expected: int | None) -> None:
    if field is None:
        with pytest.raises(SettingsError, match=name):
            ClientSettings.from_env({name: value})
        return
    assert getattr(ClientSettings.from_env({name: value}), field) == expected


def test_backpressure_wait_clamped() -> None:
    env = {"SYFTBOX_HOTLINK_WEBRTC_BACKPRESSURE_WAIT_MS": "60000"}
    assert ClientSettings.from_env(env).webrtc_backpressure_wait_ms == 10000


@pytest.mark.parametrize(
    "name,value",
    [
        ("SYFTBOX_HOTLINK", "maybe"),
        ("SYFTBOX_HOTLINK_DEBUG", "2"),
        ("SYFTBOX_HOTLINK_WEBRTC", "enable"),
        ("SYFTBOX_AUTH_ENABLED", "sometimes"),
        ("SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE", "60k"),
        ("SYFTBOX_HOTLINK_WEBRTC_BUFFERED_HIGH", "1.5"),
        ("SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS", "soon"),
        ("SYFTBOX_HOTLINK_WEBRTC_BACKEND", "pion"),
        ("SYFTBOX_HOTLINK_IPC", "pipe"),
        ("SYFTBOX_HOTLINK_TCP_ADDR", "127.0.0.1"),
        ("SYFTBOX_HOTLINK_ICE_SERVERS", "stun.l.google.com:19302"),
        ("SYFTBOX_HOTLINK_ICE_SERVERS", "http://turn"),
        ("SYFTBOX_HOTLINK_STUN_SERVER", "stun:"),
    ],
)
def test_client_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        ClientSettings.from_env({name: value})
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_empty_values_count_as_unset() -> None:
    env = {
        "SYFTBOX_HOTLINK": "",
        "SYFTBOX_HOTLINK_ICE_SERVERS": "  ",
        "SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE": "",
    }
    assert ClientSettings.from_env(env) == ClientSettings()


@pytest.mark.parametrize(
    "value,expected",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:9000", "127.0.0.1"),
        ("0.0.0.0:0", "0.0.0.0"),
        ("[::1]:9000", "::1"),
        ("::1", "::1"),
        (":9000", "127.0.0.1"),
    ],
)
def test_tcp_proxy_addr_port_is_stripped(value: str, expected: str) -> None:
    # DECISIONS.md #13.
    assert (
        ClientSettings.from_env({"SYFTBOX_HOTLINK_TCP_PROXY_ADDR": value}).tcp_proxy_addr
        == expected
    )


def test_strip_port_and_split_host_port() -> None:
    assert strip_port("[fe80::1]") == "fe80::1"
    assert split_host_port("[::1]:80", "X") == ("::1", 80)
    assert split_host_port(":8080", "X") == ("", 8080)
    with pytest.raises(SettingsError, match="X"):
        split_host_port("host:99999", "X")


# ---------------------------------------------------------------- ICE choice (DECISIONS #23/#24)


def _client(**env: str) -> ClientSettings:
    return ClientSettings.from_env(env)


def test_own_ice_servers_win_over_advertised() -> None:
    s = _client(SYFTBOX_HOTLINK_ICE_SERVERS="stun:192.0.2.1:3478")
    assert s.ice_servers("turn:198.51.100.1:3478", "au", "ap") == [IceServer("stun:192.0.2.1:3478")]


def test_none_wins_over_advertised() -> None:
    s = _client(SYFTBOX_HOTLINK_ICE_SERVERS="none")
    assert s.ice_servers("turn:198.51.100.1:3478", "au", "ap") == []


def test_advertised_used_when_own_unset() -> None:
    s = _client()
    assert s.ice_servers("turn:198.51.100.1:3478", "au", "ap") == [
        IceServer("turn:198.51.100.1:3478", "au", "ap")
    ]
    assert s.ice_servers(None) == [IceServer(DEFAULT_ICE_SERVERS)]
    assert s.ice_servers("") == [IceServer(DEFAULT_ICE_SERVERS)]


def test_own_credentials_win_per_variable() -> None:
    s = _client(SYFTBOX_HOTLINK_TURN_USER="me")
    assert s.ice_servers("turn:198.51.100.1:3478", "au", "ap") == [
        IceServer("turn:198.51.100.1:3478", "me", "ap")
    ]


def test_old_stun_variable_is_a_fallback() -> None:
    s = _client(SYFTBOX_HOTLINK_STUN_SERVER="192.0.2.9:3478")
    assert s.ice_servers("turn:198.51.100.1:3478") == [IceServer("stun:192.0.2.9:3478")]
    s = _client(SYFTBOX_HOTLINK_STUN_SERVER="off")
    assert s.ice_servers() == []
    s = _client(SYFTBOX_HOTLINK_STUN_SERVER="x:1", SYFTBOX_HOTLINK_ICE_SERVERS="none")
    assert s.ice_servers() == []


def test_bad_advertised_list_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        _client().ice_servers("garbage-from-server")


def test_uses_auth() -> None:
    assert not ClientSettings(server_url="http://127.0.0.1:8080").uses_auth()
    assert not ClientSettings(server_url="http://localhost:8080").uses_auth()
    assert ClientSettings(server_url="https://syftbox.example.org").uses_auth()
    assert ClientSettings(server_url="http://127.0.0.1:8080", auth_enabled=True).uses_auth()
    assert not ClientSettings(server_url="https://x.org", auth_enabled=False).uses_auth()


def test_replace_for_cli_flags() -> None:
    s = dataclasses.replace(ClientSettings.from_env({}), email="bob@example.com", hotlink=True)
    assert s.email == "bob@example.com" and s.hotlink
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.email = "x"  # type: ignore[misc]


# ---------------------------------------------------------------- server


def test_server_defaults() -> None:
    s = ServerSettings.from_env({})
    assert s == ServerSettings()
    assert (s.host, s.port, s.http_addr) == ("localhost", 8080, "localhost:8080")
    assert s.auth_enabled is False
    assert s.advertised_ice_servers() is None
    assert s.ice_headers("alice@example.com", 0.0) == {}
    s.check()


def test_server_reads_every_variable() -> None:
    env = {
        "SYFTBOX_HTTP_ADDR": "0.0.0.0:9090",
        "SYFTBOX_AUTH_ENABLED": "1",
        "SYFTBOX_AUTH_ACCESS_TOKEN_SECRET": "jwt-secret",
        "SYFTBOX_HOTLINK_ICE_SERVERS": "turn:192.0.2.1:3478",
        "SYFTBOX_HOTLINK_TURN_HOST": "relay.test",
        "SYFTBOX_HOTLINK_TURN_PORT": "443",
        "SYFTBOX_HOTLINK_TURN_USER": "u",
        "SYFTBOX_HOTLINK_TURN_PASS": "p",
        "SYFTBOX_HOTLINK_TURN_SECRET": "k",
        "SYFTBOX_HOTLINK_TURN_TTL": "600",
        "SYFTBOX_HOTLINK_DEBUG": "1",
        "SYFTBOX_LATENCY_TRACE": "1",
        "SYFTBOX_ENV": "prod",
    }
    s = ServerSettings.from_env(env)
    assert s == ServerSettings(
        host="0.0.0.0",
        port=9090,
        auth_enabled=True,
        access_token_secret="jwt-secret",
        ice_servers_raw="turn:192.0.2.1:3478",
        turn_host="relay.test",
        turn_port=443,
        turn_user="u",
        turn_pass="p",
        turn_secret="k",
        turn_ttl=600,
        debug=True,
        latency_trace=True,
        env_name="PROD",
    )
    s.check()
    headers = s.ice_headers("bob@example.com", 1000.0)
    assert headers["X-Syft-Hotlink-Ice-Servers"] == "turn:192.0.2.1:3478"
    assert headers["X-Syft-Hotlink-Turn-User"] == "1600:bob@example.com"


def test_server_none_advertises_nothing() -> None:
    s = ServerSettings.from_env(
        {"SYFTBOX_HOTLINK_ICE_SERVERS": "none", "SYFTBOX_HOTLINK_TURN_USER": "u"}
    )
    assert s.advertised_ice_servers() is None
    assert s.ice_headers("bob@example.com", 0.0) == {}


def test_server_turn_host_builds_a_turns_url() -> None:
    s = ServerSettings.from_env({"SYFTBOX_HOTLINK_TURN_HOST": "relay.test"})
    assert s.advertised_ice_servers() == "turns:relay.test:5349?transport=tcp"
    s = ServerSettings(turn_host="2001:db8::1", turn_port=3478)
    assert s.advertised_ice_servers() == "turns:[2001:db8::1]:3478?transport=tcp"


@pytest.mark.parametrize(
    "name,value",
    [
        ("SYFTBOX_HTTP_ADDR", "localhost"),
        ("SYFTBOX_HTTP_ADDR", "localhost:http"),
        ("SYFTBOX_HTTP_ADDR", "localhost:70000"),
        ("SYFTBOX_AUTH_ENABLED", "perhaps"),
        ("SYFTBOX_HOTLINK_TURN_PORT", "0"),
        ("SYFTBOX_HOTLINK_TURN_PORT", "x"),
        ("SYFTBOX_HOTLINK_TURN_TTL", "1h"),
        ("SYFTBOX_HOTLINK_ICE_SERVERS", "relay:3478"),
        ("SYFTBOX_HOTLINK_DEBUG", "loud"),
    ],
)
def test_server_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        ServerSettings.from_env({name: value})
    assert name in str(info.value)


def test_server_auth_without_secret_fails_check() -> None:
    s = ServerSettings.from_env({"SYFTBOX_AUTH_ENABLED": "1"})
    with pytest.raises(SettingsError, match="SYFTBOX_AUTH_ACCESS_TOKEN_SECRET"):
        s.check()
    dataclasses.replace(s, access_token_secret="from-a-flag").check()


def test_server_ipv6_and_wildcard_addr() -> None:
    s = ServerSettings.from_env({"SYFTBOX_HTTP_ADDR": "[::1]:8443"})
    assert (s.host, s.port, s.http_addr) == ("::1", 8443, "[::1]:8443")
    assert ServerSettings.from_env({"SYFTBOX_HTTP_ADDR": ":8080"}).host == "0.0.0.0"
