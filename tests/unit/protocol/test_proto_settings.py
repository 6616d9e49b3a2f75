"""Settings: the SYFTBOX_* environment (defaults, clamps, errors naming the variable), and
the layers over it (config files, flags) in their order."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hotlink.config_file import (
    ConfigFileError,
    client_files,
    config_path,
    read_config_file,
    read_syftbox_config,
    syftbox_config_path,
)
from hotlink.protocol.errors import ProtocolError
from hotlink.protocol.ice import DEFAULT_ICE_SERVERS, IceServer
from hotlink.settings import (
    CLIENT_SPECS,
    SERVER_SPECS,
    ClientSettings,
    ServerSettings,
    SettingsError,
    Source,
    resolve,
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


# ---------------------------------------------------------------- layers (flags, files)


def _syftbox(tmp_path: Path, **doc: object) -> Source:
    path = tmp_path / "home" / ".syftbox" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    source = read_syftbox_config(path)
    assert source is not None
    return source


def _toml(tmp_path: Path, text: str, section: str = "client") -> Source:
    path = tmp_path / "hotlink.toml"
    path.write_text(text)
    return read_config_file(path, section)  # type: ignore[arg-type]


def test_flags_beat_env_beat_config_file_beat_syftbox_config(tmp_path: Path) -> None:
    syftbox = _syftbox(
        tmp_path,
        email="sb@example.com",
        server_url="http://sb.example:1",
        data_dir="/sb",
        refresh_token="not ours to read",
    )
    ours = _toml(
        tmp_path,
        'email = "file@example.com"\nserver_url = "http://file.example:2"\n'
        "flow_window = 1048576\nhotlink = true\n",
    )
    env = {"SYFTBOX_EMAIL": "env@example.com", "SYFTBOX_HOTLINK_FLOW_WINDOW": "2097152"}
    flags = {"email": "flag@example.com", "flow_window": None, "hotlink": None}

    s = ClientSettings.load(env, files=[syftbox, ours], flags=flags)
    assert s.email == "flag@example.com"  # flag > env > file > syftbox
    assert s.flow_window == 2 * 1024 * 1024  # env > file (no flag given)
    assert s.server_url == "http://file.example:2"  # file > syftbox (nothing higher)
    assert s.hotlink is True  # file > default
    assert s.data_dir == "/sb"  # syftbox > default
    assert s.webrtc_backend == "auto"  # the default when nobody says otherwise

    # Each layer taken away in turn uncovers the next one down.
    assert ClientSettings.load(env, files=[syftbox, ours]).email == "env@example.com"
    assert ClientSettings.load({}, files=[syftbox, ours]).email == "file@example.com"
    assert ClientSettings.load({}, files=[syftbox]).email == "sb@example.com"
    assert ClientSettings.load({}).email == ""


def test_empty_values_in_any_layer_count_as_unset(tmp_path: Path) -> None:
    ours = _toml(tmp_path, 'email = "file@example.com"\n')
    s = ClientSettings.load({"SYFTBOX_EMAIL": " "}, files=[ours], flags={"email": ""})
    assert s.email == "file@example.com"


def test_every_field_has_one_spec_and_every_spec_a_unique_flag() -> None:
    for cls, specs in ((ClientSettings, CLIENT_SPECS), (ServerSettings, SERVER_SPECS)):
        assert sorted(s.field for s in specs) == sorted(f.name for f in dataclasses.fields(cls))
        flags = [name for s in specs for name in (s.flag, *s.aliases)]
        assert len(flags) == len(set(flags))
        for spec in specs:
            assert spec.help and spec.panel
            # The default a spec documents is the default the dataclass has.
            assert getattr(cls(), spec.field) == spec.default, spec.key


def test_every_old_variable_is_still_read() -> None:
    env_names = {name for spec in CLIENT_SPECS for name in spec.env}
    assert {
        "SYFTBOX_SERVER_URL", "SYFTBOX_EMAIL", "SYFTBOX_DATA_DIR", "SYFTBOX_ACCESS_TOKEN",
        "SYFTBOX_AUTH_ENABLED", "SYFTBOX_HOTLINK", "SYFTBOX_HOTLINK_DEBUG",
        "SYFTBOX_HOTLINK_TCP_PROXY", "SYFTBOX_HOTLINK_WEBRTC", "SYFTBOX_HOTLINK_WEBRTC_BACKEND",
        "SYFTBOX_HOTLINK_P2P_ONLY", "SYFTBOX_HOTLINK_QUIC_ONLY", "SYFTBOX_HOTLINK_BENCH_STRICT",
        "SYFTBOX_HOTLINK_BENCH", "SYFTBOX_LATENCY_TRACE", "SYFTBOX_HOTLINK_ICE_SERVERS",
        "SYFTBOX_HOTLINK_STUN_SERVER", "SYFTBOX_HOTLINK_TURN_USER", "SYFTBOX_HOTLINK_TURN_PASS",
        "SYFTBOX_HOTLINK_TCP_PROXY_ADDR", "SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE",
        "SYFTBOX_HOTLINK_WEBRTC_BUFFERED_HIGH", "SYFTBOX_HOTLINK_WEBRTC_BACKPRESSURE_WAIT_MS",
        "SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS", "SYFTBOX_HOTLINK_RELAY_ONLY",
        "SYFTBOX_HOTLINK_WEBRTC_OPEN_TIMEOUT_MS", "SYFTBOX_HOTLINK_DEBUG_P2P_KILL_AFTER",
        "SYFTBOX_HOTLINK_FLOW_CONTROL", "SYFTBOX_HOTLINK_FLOW_WINDOW", "SYFTBOX_HOTLINK_IPC",
        "SYFTBOX_HOTLINK_TCP_ADDR", "SYFTBOX_PRIORITY_DEBOUNCE_MS",
        "SYFTBOX_ACL_STAGING_GRACE_MS",
    } <= env_names  # fmt: skip
    server_names = {name for spec in SERVER_SPECS for name in spec.env}
    assert {
        "SYFTBOX_HTTP_ADDR", "SYFTBOX_AUTH_ENABLED", "SYFTBOX_AUTH_ACCESS_TOKEN_SECRET",
        "SYFTBOX_HOTLINK_ICE_SERVERS", "SYFTBOX_HOTLINK_TURN_HOST", "SYFTBOX_HOTLINK_TURN_PORT",
        "SYFTBOX_HOTLINK_TURN_USER", "SYFTBOX_HOTLINK_TURN_PASS", "SYFTBOX_HOTLINK_TURN_SECRET",
        "SYFTBOX_HOTLINK_TURN_TTL", "SYFTBOX_HOTLINK_DEBUG", "SYFTBOX_LATENCY_TRACE",
        "SYFTBOX_ENV",
    } <= server_names  # fmt: skip


def test_flags_are_parsed_and_checked_like_the_environment() -> None:
    s = ClientSettings.load(
        {}, flags={"flow_window": 1, "webrtc_backend": "AIORTC", "tcp_proxy_addr": "[::1]:80"}
    )
    assert s.flow_window == 64 * 1024  # clamped like the variable
    assert s.webrtc_backend == "aiortc"
    assert s.tcp_proxy_addr == "::1"
    with pytest.raises(SettingsError, match=r"^--ice-servers='stun\.l\.google\.com:19302'"):
        ClientSettings.load({}, flags={"ice_servers": "stun.l.google.com:19302"})
    with pytest.raises(SettingsError, match=r"^--tcp-addr='nope'"):
        ClientSettings.load({}, flags={"tcp_addr": "nope"})
    with pytest.raises(SettingsError, match=r"^--port=70000: expected 0-65535"):
        ServerSettings.load({}, flags={"port": 70000})
    with pytest.raises(SettingsError, match=r"^--max-connections=0: expected at least 1"):
        ServerSettings.load({}, flags={"max_connections": 0})


def test_a_bad_value_fails_even_when_a_higher_layer_overrides_it(tmp_path: Path) -> None:
    env = {"SYFTBOX_HOTLINK_FLOW_WINDOW": "lots"}
    with pytest.raises(SettingsError, match="SYFTBOX_HOTLINK_FLOW_WINDOW"):
        ClientSettings.load(env, flags={"flow_window": 1 << 20})


def test_config_file_values_are_typed_and_errors_name_file_and_key(tmp_path: Path) -> None:
    ours = _toml(
        tmp_path,
        "flow_control = false\nflow_window = 131072\nwebrtc_backend = 'libdatachannel'\n"
        "ice_servers = 'none'\nipc = 'tcp'\ntcp_addr = '127.0.0.1:7000'\n",
    )
    s = ClientSettings.load({}, files=[ours])
    assert (s.flow_control, s.flow_window, s.webrtc_backend) == (False, 131072, "libdatachannel")
    assert (s.ice_servers_raw, s.ipc_mode, s.tcp_addr) == ("none", "tcp", "127.0.0.1:7000")
    label = str(tmp_path / "hotlink.toml")
    for text, expected in [
        ("flow_window = true\n", f"{label}: flow_window=True: expected a whole number"),
        ("hotlink = 2\n", f"{label}: hotlink=2: expected 1/true/yes/on"),
        ("email = 5\n", f"{label}: email=5: expected a string"),
        (
            "flow_windw = 1\n",
            f"{label}: unknown setting 'flow_windw' (did you mean 'flow_window'?)",
        ),
        ("port = 8080\n", f"{label}: unknown setting 'port'"),  # a server key
    ]:
        with pytest.raises(SettingsError) as info:
            ClientSettings.load({}, files=[_toml(tmp_path, text)])
        assert str(info.value).startswith(expected), (text, str(info.value))


def test_config_file_sections_apply_to_their_command(tmp_path: Path) -> None:
    text = (
        'log_format = "json"\nlog_level = "debug"\n'
        '[client]\nemail = "alice@example.com"\nlog_level = "warning"\n'
        "[server]\nport = 8443\nmax_connections_per_user = 16\nauth_enabled = true\n"
        'access_token_secret = "s"\n'
    )
    client = ClientSettings.load({}, files=[_toml(tmp_path, text, "client")])
    assert (client.email, client.log_format, client.log_level) == (
        "alice@example.com",
        "json",
        "warning",  # the section wins over the top level
    )
    server = ServerSettings.load({}, files=[_toml(tmp_path, text, "server")])
    assert (server.port, server.max_connections_per_user, server.log_level) == (8443, 16, "debug")
    server.check()


@pytest.mark.parametrize(
    "text,message",
    [
        ("flow_window = = 3\n", "does not parse"),
        ("[client]\n[client]\n", "does not parse"),
        ("client = 3\n", "[client] must be a table"),
    ],
)
def test_config_file_that_does_not_parse_is_one_clear_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigFileError) as info:
        _toml(tmp_path, text)
    assert message in str(info.value) and "hotlink.toml" in str(info.value)


def test_missing_config_file_and_folder_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="does not exist"):
        read_config_file(tmp_path / "nope.toml", "client")
    with pytest.raises(ConfigFileError, match="is a folder"):
        read_config_file(tmp_path, "client")


def test_config_path_from_flag_or_env(tmp_path: Path) -> None:
    assert config_path(None, {}) is None
    assert config_path(None, {"SYFTBOX_HOTLINK_CONFIG": "/etc/h.toml"}) == Path("/etc/h.toml")
    assert config_path(Path("/x.toml"), {"SYFTBOX_HOTLINK_CONFIG": "/etc/h.toml"}) == Path(
        "/x.toml"
    )


def test_syftbox_config_location_reads_home_not_the_users_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert syftbox_config_path(None, {}) == tmp_path / "home" / ".syftbox" / "config.json"
    assert read_syftbox_config(syftbox_config_path(None, {})) is None  # absent: no layer
    assert syftbox_config_path(None, {"SYFTBOX_CONFIG_PATH": "/c.json"}) == Path("/c.json")
    assert syftbox_config_path(Path("/d.json"), {"SYFTBOX_CONFIG_PATH": "/c.json"}) == Path(
        "/d.json"
    )
    source = _syftbox(tmp_path, email="a@example.com", client_url="http://x", access_token="t")
    assert dict(source.values) == {"email": "a@example.com"}  # only the three keys we use
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigFileError, match="does not parse"):
        read_syftbox_config(bad)


def test_auth_secret_flag_turns_token_mode_on_but_the_variable_does_not() -> None:
    s = ServerSettings.load({}, flags={"access_token_secret": "k" * 32})
    assert s.auth_enabled and s.access_token_secret == "k" * 32
    s = ServerSettings.load({}, flags={"access_token_secret": "k", "auth_enabled": False})
    assert not s.auth_enabled  # an explicit flag still wins
    s = ServerSettings.load({"SYFTBOX_AUTH_ACCESS_TOKEN_SECRET": "k"})
    assert not s.auth_enabled


def test_http_addr_parts_layer_with_host_and_port_flags() -> None:
    env = {"SYFTBOX_HTTP_ADDR": "0.0.0.0:9000"}
    s = ServerSettings.load(env, flags={"port": 9100})
    assert (s.host, s.port) == ("0.0.0.0", 9100)


def test_log_settings() -> None:
    assert ClientSettings().effective_log_level == "info"
    assert ClientSettings(debug=True).effective_log_level == "debug"
    assert ClientSettings(debug=True, log_level="warning").effective_log_level == "warning"
    assert ServerSettings().effective_log_format == "text"
    assert ServerSettings.from_env({"SYFTBOX_ENV": "prod"}).effective_log_format == "json"
    s = ServerSettings.from_env({"SYFTBOX_ENV": "prod", "SYFTBOX_HOTLINK_LOG_FORMAT": "TEXT"})
    assert s.effective_log_format == "text"
    with pytest.raises(SettingsError, match="SYFTBOX_HOTLINK_LOG_LEVEL"):
        ClientSettings.from_env({"SYFTBOX_HOTLINK_LOG_LEVEL": "loud"})


def test_resolve_returns_only_what_some_layer_sets() -> None:
    assert resolve(CLIENT_SPECS, {}, (), {}) == {}
    assert resolve(CLIENT_SPECS, {"SYFTBOX_HOTLINK_IPC": "tcp"}) == {"ipc_mode": "tcp"}


def test_client_files_in_order_and_a_broken_default_syftbox_config_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert client_files({}) == ([], [])  # neither file exists: no layers, no complaint
    syftbox = _syftbox(tmp_path, email="sb@example.com")
    ours = tmp_path / "ours.toml"
    ours.write_text('email = "toml@example.com"\n')
    sources, notes = client_files({"SYFTBOX_HOTLINK_CONFIG": str(ours)})
    assert [s.label for s in sources] == [syftbox.label, str(ours)] and notes == []
    assert ClientSettings.load({}, files=sources).email == "toml@example.com"
    assert client_files({}, use_syftbox=False) == ([], [])

    Path(syftbox.label).write_text("{broken")
    sources, notes = client_files({})
    assert sources == [] and len(notes) == 1 and "does not parse" in notes[0]
    with pytest.raises(ConfigFileError, match="does not parse"):
        client_files({}, syftbox_config=Path(syftbox.label))  # asked for by name
    with pytest.raises(ConfigFileError, match="does not exist"):
        client_files({}, syftbox_config=tmp_path / "nope.json")
    with pytest.raises(ConfigFileError, match="does not exist"):
        client_files({}, config=tmp_path / "nope.toml")
