"""Typed process settings, built once from the SYFTBOX_* environment (PROTOCOL.md §8).

Each process builds one frozen object at start-up (``ClientSettings.from_env(os.environ)``
or ``ServerSettings.from_env(os.environ)``); CLI flags override fields with
``dataclasses.replace``. Nothing else in the code reads ``os.environ``.

Conventions: an empty variable counts as unset; booleans accept 1/true/yes/on and
0/false/no/off (any case); numbers outside their documented range are clamped like the
reference does; anything unparseable raises :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from .protocol.errors import ProtocolError
from .protocol.ice import IceServer, ice_advertisement, parse_ice_servers, stun_server_to_ice

WebRTCBackend = Literal["auto", "libdatachannel", "aiortc"]
IpcMode = Literal["unix", "tcp"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

KIB = 1024
MIB = 1024 * 1024


class SettingsError(ValueError):
    """A SYFTBOX_* variable (or a flag overriding one) holds a value we cannot use."""


# ---------------------------------------------------------------- parsing helpers


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _raw(env, name)
    if value is None:
        return default
    lower = value.lower()
    if lower in _TRUE:
        return True
    if lower in _FALSE:
        return False
    raise SettingsError(f"{name}={value!r}: expected 1/true/yes/on or 0/false/no/off")


def _opt_bool(env: Mapping[str, str], name: str) -> bool | None:
    return None if _raw(env, name) is None else _bool(env, name, False)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An integer clamped to [lo, hi], as the reference clamps out-of-range values."""
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected a whole number") from None
    return max(lo, min(hi, number))


def _str(env: Mapping[str, str], name: str, default: str = "") -> str:
    value = _raw(env, name)
    return default if value is None else value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _raw(env, name)
    if value is None:
        return default
    lower = value.lower()
    if lower not in choices:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return lower


def _ice_raw(env: Mapping[str, str], name: str) -> str | None:
    """An ICE list value, checked now so a typo fails at start-up, not at the first session."""
    value = _raw(env, name)
    if value is not None:
        try:
            parse_ice_servers(value)
        except ProtocolError as exc:
            raise SettingsError(f"{name}={value!r}: {exc}") from None
    return value


def strip_port(addr: str) -> str:
    """The host part of ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address.

    ``SYFTBOX_HOTLINK_TCP_PROXY_ADDR`` names a bind IP; the port comes from each marker, so a
    ``:port`` suffix is stripped (DECISIONS.md #13).
    """
    addr = addr.strip()
    if addr.startswith("["):
        end = addr.find("]")
        return addr[1:end] if end > 0 else addr
    if addr.count(":") == 1:
        return addr.split(":", 1)[0]
    return addr


def split_host_port(value: str, name: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into its parts; a bad value names the variable."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise SettingsError(f"{name}={value!r}: expected host:port")
    port = int(port_text)
    if port > 65535:
        raise SettingsError(f"{name}={value!r}: port must be 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


# ---------------------------------------------------------------- client


@dataclass(frozen=True)
class ClientSettings:
    # Identity and server (the CLI flags --server/--email/--data-dir/--token override these).
    server_url: str = ""  # SYFTBOX_SERVER_URL
    email: str = ""  # SYFTBOX_EMAIL
    data_dir: str = ""  # SYFTBOX_DATA_DIR
    access_token: str = ""  # SYFTBOX_ACCESS_TOKEN
    # None: decide from the server URL like the Go client (loopback hosts mean no auth).
    auth_enabled: bool | None = None  # SYFTBOX_AUTH_ENABLED

    # Switches (DECISIONS.md #11: SYFTBOX_HOTLINK=1 turns everything on).
    hotlink: bool = False  # SYFTBOX_HOTLINK
    debug: bool = False  # SYFTBOX_HOTLINK_DEBUG
    tcp_proxy: bool = True  # SYFTBOX_HOTLINK_TCP_PROXY (0 turns the proxy off)
    webrtc: bool = True  # SYFTBOX_HOTLINK_WEBRTC (0: WebSocket path only)
    webrtc_backend: WebRTCBackend = "auto"  # SYFTBOX_HOTLINK_WEBRTC_BACKEND
    p2p_only: bool = False  # SYFTBOX_HOTLINK_P2P_ONLY or SYFTBOX_HOTLINK_QUIC_ONLY
    bench_strict: bool = False  # SYFTBOX_HOTLINK_BENCH_STRICT
    bench: bool = False  # SYFTBOX_HOTLINK_BENCH
    latency_trace: bool = False  # SYFTBOX_LATENCY_TRACE

    # ICE (PROTOCOL.md §6.2; DECISIONS.md #23, #24). None = unset.
    ice_servers_raw: str | None = None  # SYFTBOX_HOTLINK_ICE_SERVERS
    stun_server_raw: str | None = None  # SYFTBOX_HOTLINK_STUN_SERVER (old fallback)
    turn_user: str = ""  # SYFTBOX_HOTLINK_TURN_USER
    turn_pass: str = ""  # SYFTBOX_HOTLINK_TURN_PASS

    # TCP proxy.
    tcp_proxy_addr: str = "127.0.0.1"  # SYFTBOX_HOTLINK_TCP_PROXY_ADDR, :port stripped
    tcp_proxy_chunk_size: int = 60 * KIB  # SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE, 4 KiB-1 MiB

    # WebRTC sending.
    webrtc_buffered_high: int = MIB  # SYFTBOX_HOTLINK_WEBRTC_BUFFERED_HIGH, max 16 MiB
    webrtc_backpressure_wait_ms: int = 1500  # SYFTBOX_HOTLINK_WEBRTC_BACKPRESSURE_WAIT_MS
    ws_fallback_grace_ms: int = 1500  # SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS, max 10 s
    # Ours, not the reference's: TURN relay candidates only (like a browser's
    # iceTransportPolicy "relay"; hides local addresses from the peer).
    relay_only: bool = False  # SYFTBOX_HOTLINK_RELAY_ONLY
    # How long a session's data channel may take to open before P2P is given up for it
    # (aiortc never reports an ICE failure by itself). 1-120 s.
    webrtc_open_timeout_ms: int = 15_000  # SYFTBOX_HOTLINK_WEBRTC_OPEN_TIMEOUT_MS
    # Test hook: close a session's peer connection after it carried this many frames, to
    # exercise the mid-stream move to the WebSocket. 0 = off.
    debug_p2p_kill_after: int = 0  # SYFTBOX_HOTLINK_DEBUG_P2P_KILL_AFTER

    # Flow control (ours; docs/DECISIONS-LOCAL.md): receivers grant credit as their app reads.
    # Off: this client neither grants nor waits for credit (as a reference client).
    flow_control: bool = True  # SYFTBOX_HOTLINK_FLOW_CONTROL
    flow_window: int = 8 * MIB  # SYFTBOX_HOTLINK_FLOW_WINDOW, bytes per session, 64 KiB-256 MiB

    # Local IPC.
    ipc_mode: IpcMode = "unix"  # SYFTBOX_HOTLINK_IPC
    tcp_addr: str = "127.0.0.1:0"  # SYFTBOX_HOTLINK_TCP_ADDR

    # File sync knobs the reference clients read (kept for compatibility of env files).
    priority_debounce_ms: int = 50  # SYFTBOX_PRIORITY_DEBOUNCE_MS
    acl_staging_grace_ms: int = 600_000  # SYFTBOX_ACL_STAGING_GRACE_MS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientSettings:
        tcp_addr = _str(env, "SYFTBOX_HOTLINK_TCP_ADDR", "127.0.0.1:0")
        split_host_port(tcp_addr, "SYFTBOX_HOTLINK_TCP_ADDR")
        return cls(
            server_url=_str(env, "SYFTBOX_SERVER_URL"),
            email=_str(env, "SYFTBOX_EMAIL"),
            data_dir=_str(env, "SYFTBOX_DATA_DIR"),
            access_token=_str(env, "SYFTBOX_ACCESS_TOKEN"),
            auth_enabled=_opt_bool(env, "SYFTBOX_AUTH_ENABLED"),
            hotlink=_bool(env, "SYFTBOX_HOTLINK", False),
            debug=_bool(env, "SYFTBOX_HOTLINK_DEBUG", False),
            tcp_proxy=_bool(env, "SYFTBOX_HOTLINK_TCP_PROXY", True),
            webrtc=_bool(env, "SYFTBOX_HOTLINK_WEBRTC", True),
            webrtc_backend=cast(
                WebRTCBackend,
                _choice(
                    env,
                    "SYFTBOX_HOTLINK_WEBRTC_BACKEND",
                    "auto",
                    ("auto", "libdatachannel", "aiortc"),
                ),
            ),
            p2p_only=_bool(env, "SYFTBOX_HOTLINK_P2P_ONLY", False)
            or _bool(env, "SYFTBOX_HOTLINK_QUIC_ONLY", False),
            bench_strict=_bool(env, "SYFTBOX_HOTLINK_BENCH_STRICT", False),
            bench=_bool(env, "SYFTBOX_HOTLINK_BENCH", False),
            latency_trace=_bool(env, "SYFTBOX_LATENCY_TRACE", False),
            ice_servers_raw=_ice_raw(env, "SYFTBOX_HOTLINK_ICE_SERVERS"),
            stun_server_raw=_stun_raw(env),
            turn_user=_str(env, "SYFTBOX_HOTLINK_TURN_USER"),
            turn_pass=_str(env, "SYFTBOX_HOTLINK_TURN_PASS"),
            tcp_proxy_addr=strip_port(_str(env, "SYFTBOX_HOTLINK_TCP_PROXY_ADDR", "127.0.0.1"))
            or "127.0.0.1",
            tcp_proxy_chunk_size=_int(
                env, "SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE", 60 * KIB, 4 * KIB, MIB
            ),
            webrtc_buffered_high=_int(
                env, "SYFTBOX_HOTLINK_WEBRTC_BUFFERED_HIGH", MIB, 0, 16 * MIB
            ),
            webrtc_backpressure_wait_ms=_int(
                env, "SYFTBOX_HOTLINK_WEBRTC_BACKPRESSURE_WAIT_MS", 1500, 0, 10_000
            ),
            ws_fallback_grace_ms=_int(env, "SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS", 1500, 0, 10_000),
            relay_only=_bool(env, "SYFTBOX_HOTLINK_RELAY_ONLY", False),
            webrtc_open_timeout_ms=_int(
                env, "SYFTBOX_HOTLINK_WEBRTC_OPEN_TIMEOUT_MS", 15_000, 1_000, 120_000
            ),
            debug_p2p_kill_after=_int(env, "SYFTBOX_HOTLINK_DEBUG_P2P_KILL_AFTER", 0, 0, 1 << 62),
            flow_control=_bool(env, "SYFTBOX_HOTLINK_FLOW_CONTROL", True),
            flow_window=_int(env, "SYFTBOX_HOTLINK_FLOW_WINDOW", 8 * MIB, 64 * KIB, 256 * MIB),
            ipc_mode=cast(IpcMode, _choice(env, "SYFTBOX_HOTLINK_IPC", "unix", ("unix", "tcp"))),
            tcp_addr=tcp_addr,
            priority_debounce_ms=_int(env, "SYFTBOX_PRIORITY_DEBOUNCE_MS", 50, 0, 3_600_000),
            acl_staging_grace_ms=_int(
                env, "SYFTBOX_ACL_STAGING_GRACE_MS", 600_000, 0, 24 * 3_600_000
            ),
        )

    def ice_servers(
        self, advertised: str | None = None, adv_user: str = "", adv_pass: str = ""
    ) -> list[IceServer]:
        """The ICE servers for a new peer connection.

        Order: our ``SYFTBOX_HOTLINK_ICE_SERVERS``, else our old ``SYFTBOX_HOTLINK_STUN_SERVER``,
        else the server's advertised list, else the default STUN server. Each TURN credential
        is ours when set, else the advertised one (DECISIONS.md #23). A malformed advertised
        list raises ProtocolError (the caller logs it and may retry without it).
        """
        raw = self.ice_servers_raw
        if raw is None:
            raw = stun_server_to_ice(self.stun_server_raw)
        if raw is None and advertised is not None and advertised.strip():
            raw = advertised
        return parse_ice_servers(raw, self.turn_user or adv_user, self.turn_pass or adv_pass)

    def uses_auth(self) -> bool:
        """Whether to send a bearer token: explicit setting, else the Go loopback heuristic."""
        if self.auth_enabled is not None:
            return self.auth_enabled
        return not any(h in self.server_url for h in ("localhost", "127.0.0.1", "0.0.0.0"))


def _stun_raw(env: Mapping[str, str]) -> str | None:
    name = "SYFTBOX_HOTLINK_STUN_SERVER"
    value = _raw(env, name)
    if value is not None:
        try:
            parse_ice_servers(stun_server_to_ice(value))
        except ProtocolError as exc:
            raise SettingsError(f"{name}={value!r}: {exc}") from None
    return value


# ---------------------------------------------------------------- server


@dataclass(frozen=True)
class ServerSettings:
    host: str = "localhost"  # SYFTBOX_HTTP_ADDR host part
    port: int = 8080  # SYFTBOX_HTTP_ADDR port part
    auth_enabled: bool = False  # SYFTBOX_AUTH_ENABLED
    access_token_secret: str = ""  # SYFTBOX_AUTH_ACCESS_TOKEN_SECRET

    # ICE advertisement (DECISIONS.md #23): nothing is advertised unless configured.
    ice_servers_raw: str | None = None  # SYFTBOX_HOTLINK_ICE_SERVERS
    turn_host: str = ""  # SYFTBOX_HOTLINK_TURN_HOST: advertise turns:<host>:<port>
    turn_port: int = 5349  # SYFTBOX_HOTLINK_TURN_PORT
    turn_user: str = ""  # SYFTBOX_HOTLINK_TURN_USER
    turn_pass: str = ""  # SYFTBOX_HOTLINK_TURN_PASS
    turn_secret: str = ""  # SYFTBOX_HOTLINK_TURN_SECRET: REST credentials instead of a password
    turn_ttl: int = 3600  # SYFTBOX_HOTLINK_TURN_TTL, seconds

    debug: bool = False  # SYFTBOX_HOTLINK_DEBUG
    latency_trace: bool = False  # SYFTBOX_LATENCY_TRACE
    env_name: str = ""  # SYFTBOX_ENV (PROD/STAGE: JSON logs)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerSettings:
        addr = _str(env, "SYFTBOX_HTTP_ADDR", "localhost:8080")
        host, port = split_host_port(addr, "SYFTBOX_HTTP_ADDR")
        turn_port_text = _str(env, "SYFTBOX_HOTLINK_TURN_PORT", "5349")
        if not turn_port_text.isdigit() or not 0 < int(turn_port_text) <= 65535:
            raise SettingsError(
                f"SYFTBOX_HOTLINK_TURN_PORT={turn_port_text!r}: expected a port 1-65535"
            )
        return cls(
            host=host or "0.0.0.0",
            port=port,
            auth_enabled=_bool(env, "SYFTBOX_AUTH_ENABLED", False),
            access_token_secret=_str(env, "SYFTBOX_AUTH_ACCESS_TOKEN_SECRET"),
            ice_servers_raw=_ice_raw(env, "SYFTBOX_HOTLINK_ICE_SERVERS"),
            turn_host=_str(env, "SYFTBOX_HOTLINK_TURN_HOST"),
            turn_port=int(turn_port_text),
            turn_user=_str(env, "SYFTBOX_HOTLINK_TURN_USER"),
            turn_pass=_str(env, "SYFTBOX_HOTLINK_TURN_PASS"),
            turn_secret=_str(env, "SYFTBOX_HOTLINK_TURN_SECRET"),
            turn_ttl=_int(env, "SYFTBOX_HOTLINK_TURN_TTL", 3600, 60, 7 * 24 * 3600),
            debug=_bool(env, "SYFTBOX_HOTLINK_DEBUG", False),
            latency_trace=_bool(env, "SYFTBOX_LATENCY_TRACE", False),
            env_name=_str(env, "SYFTBOX_ENV").upper(),
        )

    def check(self) -> None:
        """Cross-field checks, run after CLI flags are applied (a flag may fill the gap)."""
        if self.auth_enabled and not self.access_token_secret:
            raise SettingsError(
                "SYFTBOX_AUTH_ENABLED is on but SYFTBOX_AUTH_ACCESS_TOKEN_SECRET is empty"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"SYFTBOX_HTTP_ADDR: port {self.port} is not 0-65535")

    @property
    def http_addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def advertised_ice_servers(self) -> str | None:
        """What ``X-Syft-Hotlink-Ice-Servers`` carries, or None to send no ICE headers.

        Unlike the reference there is no invented ``turns:`` default (DECISIONS.md #23): an
        explicit list wins, else an explicit ``SYFTBOX_HOTLINK_TURN_HOST`` builds one.
        """
        if self.ice_servers_raw and self.ice_servers_raw.strip().lower() == "none":
            return None  # "none" is our own switch; never hand it to other clients
        if self.ice_servers_raw:
            return self.ice_servers_raw
        if self.turn_host:
            host = f"[{self.turn_host}]" if ":" in self.turn_host else self.turn_host
            return f"turns:{host}:{self.turn_port}?transport=tcp"
        return None

    def ice_headers(self, user: str, now: float) -> dict[str, str]:
        """The ICE advertisement headers for ``user``'s upgrade response."""
        return ice_advertisement(
            self.advertised_ice_servers(),
            turn_user=self.turn_user,
            turn_pass=self.turn_pass,
            turn_secret=self.turn_secret,
            user=user,
            now=now,
            ttl=self.turn_ttl,
        )
