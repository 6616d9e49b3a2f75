"""Typed process settings: every name, default and range, in one table per process.

Each setting is described once, by a :class:`Spec` in :data:`CLIENT_SPECS` or
:data:`SERVER_SPECS`: its key, environment variable(s), kind, default, range, help text and
``--help`` panel. The table drives everything else: reading the environment, reading config
files (:mod:`hotlink.config_file`), and the command-line flags (:mod:`hotlink.cli_options`),
so a setting is never spelled out twice.

Precedence, lowest to highest (each layer overrides the ones before it, key by key)::

    defaults < ~/.syftbox/config.json < --config FILE < SYFTBOX_* environment < flags

Names: a setting's key is its long flag without the dashes, ``-`` becoming ``_``
(``--flow-window`` is ``flow_window``); config files use the keys.

Conventions: an empty value counts as unset (in every layer); booleans accept
1/true/yes/on and 0/false/no/off (any case; TOML booleans too); most numbers outside their
documented range are clamped like the reference does, ports and limits are refused;
anything unparseable raises :class:`SettingsError` naming where the value came from
(``SYFTBOX_HOTLINK_FLOW_WINDOW='x': ...``, ``--flow-window='x': ...`` or
``hotlink.toml: flow_window='x': ...``). Only this module, and :mod:`hotlink.config_file` for
which files to read, look at ``SYFTBOX_*`` variables; commands hand them ``os.environ``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import PurePath
from typing import Any, ClassVar, Literal, Self

from .event_loop import EVENT_LOOPS, EventLoop
from .logs import LOG_FORMATS, LOG_LEVELS, LogFormat, LogLevel
from .protocol.errors import ProtocolError
from .protocol.ice import IceServer, ice_advertisement, parse_ice_servers, stun_server_to_ice

WebRTCBackend = Literal["auto", "libdatachannel", "aiortc"]
IpcMode = Literal["unix", "tcp"]
# End-to-end sealing (docs/SECURITY.md): on when the peer seals too, off, or required.
E2EMode = Literal["on", "off", "required"]
Kind = Literal["str", "path", "bool", "int", "float", "choice"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

KIB = 1024
MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting (from the environment, a config file or a flag) holds a value we cannot use."""


# ---------------------------------------------------------------- address helpers


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


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Spec:
    """One setting: where it is read from, what it may hold, how ``--help`` shows it."""

    key: str  # config-file key; the long flag is "--" + key with "_" as "-"
    kind: Kind
    default: Any
    help: str
    panel: str  # the --help group
    env: tuple[str, ...] = ()  # environment variables, the first one set wins
    attr: str = ""  # the settings field, when it differs from the key
    aliases: tuple[str, ...] = ()  # more flag names (kept for old command lines)
    lo: float | None = None
    hi: float | None = None
    clamp: bool = True  # out of range: clamp (the reference's way) or refuse
    choices: tuple[str, ...] = ()
    # Checks and normalises a parsed value; ``where`` names its origin for errors.
    check: Callable[[Any, str], Any] | None = None
    # Turns an environment variable's text into this setting's text (one part of it).
    env_part: Callable[[str, str], str] | None = None
    secret: bool = False  # a credential: never shown
    hidden: bool = False  # a test hook: a flag, but not listed in --help
    default_text: str | None = None  # --help's default, when str(default) says it badly
    # Given on the command line, this setting also sets these (unless they are given too).
    implies: tuple[tuple[str, Any], ...] = ()

    @property
    def field(self) -> str:
        return self.attr or self.key

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def shown_default(self) -> str | None:
        """The default as ``--help`` prints it, or None to print none."""
        if self.default_text is not None:
            return self.default_text
        if self.secret or self.default is None or self.default == "":
            return None
        if self.kind == "bool":
            return "on" if self.default else "off"
        return str(self.default)


def _ice_list(value: str, where: str) -> str:
    """An ICE list, checked now so a typo fails at start-up, not at the first session."""
    try:
        parse_ice_servers(value)
    except ProtocolError as exc:
        raise SettingsError(f"{where}={value!r}: {exc}") from None
    return value


def _stun_server(value: str, where: str) -> str:
    try:
        parse_ice_servers(stun_server_to_ice(value))
    except ProtocolError as exc:
        raise SettingsError(f"{where}={value!r}: {exc}") from None
    return value


def _zero_or_range(lo: int, hi: int) -> Callable[[Any, str], Any]:
    def check(value: Any, where: str) -> Any:
        if value != 0 and not lo <= value <= hi:
            raise SettingsError(f"{where}={value!r}: must be 0 or {lo}..{hi}")
        return value

    return check


# The bounds the libdatachannel backend accepts (webrtc/libdatachannel_backend.py,
# webrtc/sctp_settings.py), checked at start-up so a typo is not a silent WebRTC-off later.
_webrtc_mtu = _zero_or_range(576, 4096)
_sctp_buffer = _zero_or_range(MIB, 16 * MIB)


def _e2e_env(raw: str, name: str) -> str:
    # SYFTBOX_HOTLINK_E2E=0/1, as the environment's other switches take them.
    lower = raw.lower()
    return "on" if lower in _TRUE else "off" if lower in _FALSE else raw


def _e2e_peers(value: str, where: str) -> str:
    from .protocol.e2e.pins import parse_expected

    try:
        parse_expected(value)
    except ValueError as exc:
        raise SettingsError(f"{where}: {exc}") from None
    return value


def _host_port(value: str, where: str) -> str:
    split_host_port(value, where)
    return value


def _env_host(raw: str, name: str) -> str:
    host, _port = split_host_port(raw, name)
    return host or "0.0.0.0"  # ":8080" means every interface, as in Go


def _env_port(raw: str, name: str) -> str:
    return str(split_host_port(raw, name)[1])


# Panels of --help, in the order a person reads them.
P_RELAY = "Identity and relay"
P_CONFIG = "Configuration files"
P_LOG = "Logging"
P_HOTLINK = "Hotlink: TCP proxy and IPC"
P_P2P = "Peer-to-peer (WebRTC)"
P_ICE = "ICE: STUN and TURN"
P_FLOW = "Flow control"
P_PRIVACY = "Privacy: end-to-end encryption"
P_TEST = "Benchmarks and tests"
P_COMPAT = "SyftBox compatibility"
P_LISTEN = "Listening"
P_AUTH = "Authentication"
P_LIMITS = "Limits"
P_CLUSTER = "Cluster (replicas sharing state through Redis)"
P_PROCESS = "Process"


# asyncio's loop by default: out of descriptors, uvloop (libuv) accepts new connections and
# closes them at once without a word (an app would read a clean EOF), where asyncio's loop
# leaves them waiting and reports it (see loop_errors).
EVENT_LOOP_SPEC = Spec(
    "event_loop", "choice", "asyncio",
    "asyncio or uvloop (faster on the WebSocket path; auto: uvloop where installed).",
    P_PROCESS, env=("SYFTBOX_HOTLINK_EVENT_LOOP",), choices=EVENT_LOOPS,
)  # fmt: skip


def _log_specs(level_default: str, format_default: str = "text") -> tuple[Spec, ...]:
    return (
        Spec(
            "log_level", "choice", None, "Least severe log lines shown.", P_LOG,
            env=("SYFTBOX_HOTLINK_LOG_LEVEL",), choices=LOG_LEVELS, default_text=level_default,
        ),
        Spec(
            "log_format", "choice", None,
            "text: one line per record; json: one JSON object per line "
            "(time, level, logger, message, exception).", P_LOG,
            env=("SYFTBOX_HOTLINK_LOG_FORMAT",), choices=LOG_FORMATS, default_text=format_default,
        ),
    )  # fmt: skip


CLIENT_SPECS: tuple[Spec, ...] = (
    # Identity and relay.
    Spec("server_url", "str", "", "The relay's URL, e.g. https://relay.example.org or "
         "http://127.0.0.1:8080.", P_RELAY, env=("SYFTBOX_SERVER_URL",), aliases=("--server",)),
    Spec("email", "str", "", "Your datasite email.", P_RELAY, env=("SYFTBOX_EMAIL",)),
    Spec("data_dir", "path", "", "The SyftBox data folder; datasites live in DIR/datasites.",
         P_RELAY, env=("SYFTBOX_DATA_DIR",)),
    Spec("access_token", "str", "", "Access token for a relay in token mode.", P_RELAY,
         env=("SYFTBOX_ACCESS_TOKEN",), aliases=("--token",), secret=True),
    Spec("auth_enabled", "bool", None, "Send the access token (off: never send it).", P_RELAY,
         env=("SYFTBOX_AUTH_ENABLED",),
         default_text="send it whenever one is given"),
    # Logging.
    *_log_specs("info; debug with --debug"),
    EVENT_LOOP_SPEC,
    Spec("debug", "bool", False, "Debug logging and a trace of hotlink data frames.", P_LOG,
         env=("SYFTBOX_HOTLINK_DEBUG",)),
    Spec("latency_trace", "bool", False, "Log per-message latency traces.", P_LOG,
         env=("SYFTBOX_LATENCY_TRACE",)),
    # Hotlink.
    Spec("hotlink", "bool", False, "Run hotlink (TCP proxy, IPC, sessions).", P_HOTLINK,
         env=("SYFTBOX_HOTLINK",)),
    Spec("tcp_proxy", "bool", True, "Listen on the TCP ports that tunnel markers name.",
         P_HOTLINK, env=("SYFTBOX_HOTLINK_TCP_PROXY",)),
    Spec("tcp_proxy_addr", "str", "127.0.0.1",
         "Address the TCP proxy binds (a :port suffix is ignored).", P_HOTLINK,
         env=("SYFTBOX_HOTLINK_TCP_PROXY_ADDR",),
         check=lambda v, where: strip_port(v) or "127.0.0.1"),
    Spec("tcp_proxy_chunk_size", "int", 60 * KIB,
         "Bytes per read from an app's TCP connection, 4096-1048576.", P_HOTLINK,
         env=("SYFTBOX_HOTLINK_TCP_PROXY_CHUNK_SIZE",), lo=4 * KIB, hi=MIB),
    Spec("ipc", "choice", "unix", "How local apps reach hotlink endpoints.", P_HOTLINK,
         env=("SYFTBOX_HOTLINK_IPC",), attr="ipc_mode", choices=("unix", "tcp")),
    Spec("tcp_addr", "str", "127.0.0.1:0", "host:port of IPC endpoints with --ipc tcp.",
         P_HOTLINK, env=("SYFTBOX_HOTLINK_TCP_ADDR",), check=_host_port),
    # Peer-to-peer.
    Spec("webrtc", "bool", True, "Try WebRTC data channels (off: relay WebSocket only).",
         P_P2P, env=("SYFTBOX_HOTLINK_WEBRTC",)),
    Spec("webrtc_backend", "choice", "auto", "WebRTC implementation.", P_P2P,
         env=("SYFTBOX_HOTLINK_WEBRTC_BACKEND",), choices=("auto", "libdatachannel", "aiortc")),
    Spec("p2p_only", "bool", False, "Never fall back to the relay WebSocket.", P_P2P,
         env=("SYFTBOX_HOTLINK_P2P_ONLY", "SYFTBOX_HOTLINK_QUIC_ONLY")),
    Spec("relay_only", "bool", False,
         "TURN relay candidates only (hides local addresses from the peer).", P_P2P,
         env=("SYFTBOX_HOTLINK_RELAY_ONLY",)),
    Spec("webrtc_open_timeout_ms", "int", 15_000,
         "Milliseconds a data channel may take to open before a session gives up on P2P, "
         "1000-120000.", P_P2P, env=("SYFTBOX_HOTLINK_WEBRTC_OPEN_TIMEOUT_MS",),
         lo=1_000, hi=120_000),
    Spec("webrtc_buffered_high", "int", MIB,
         "Bytes buffered on a data channel before sending waits, 0-16777216.", P_P2P,
         env=("SYFTBOX_HOTLINK_WEBRTC_BUFFERED_HIGH",), lo=0, hi=16 * MIB),
    Spec("webrtc_mtu", "int", 0,
         "libdatachannel's SCTP packet size: 0 (automatic: 4096 between peers on this host's "
         "network stack, else its 1280) or 576-4096 pinned. Larger is 2-3x faster but only "
         "safe on one host or a jumbo-frame LAN.", P_P2P,
         env=("SYFTBOX_HOTLINK_WEBRTC_MTU",), check=_webrtc_mtu),
    Spec("webrtc_sctp_buffer", "int", 0,
         "libdatachannel's SCTP send and receive buffers: 0 (its 1 MiB) or 1048576-16777216; "
         "size it to the path's bandwidth x round trip (1 Gbit/s x 40 ms = 5 MB), not above: "
         "SCTP does not pace, and a window far beyond the path's overflows its queue.", P_P2P,
         env=("SYFTBOX_HOTLINK_WEBRTC_SCTP_BUFFER",), check=_sctp_buffer),
    Spec("webrtc_sctp_cc", "choice", "hstcp",
         "libdatachannel's SCTP congestion control: hstcp (HighSpeed TCP: Reno on short paths, "
         "faster on long fat ones), rfc2581 (the library's own, Reno-like), htcp (H-TCP) or "
         "rtcc (RTT-based).", P_P2P,
         env=("SYFTBOX_HOTLINK_WEBRTC_SCTP_CC",), choices=("rfc2581", "hstcp", "htcp", "rtcc")),
    Spec("webrtc_tuning", "bool", True,
         "hotlink's tuning of aiortc (SACKs, batched reads, receive buffers); 0 runs it as "
         "shipped, to compare.", P_P2P, env=("SYFTBOX_HOTLINK_WEBRTC_TUNING",)),
    Spec("webrtc_backpressure_wait_ms", "int", 1500,
         "Milliseconds a send waits for a data channel to drain, 0-10000.", P_P2P,
         env=("SYFTBOX_HOTLINK_WEBRTC_BACKPRESSURE_WAIT_MS",), lo=0, hi=10_000),
    Spec("ws_fallback_grace_ms", "int", 1500,
         "Milliseconds to wait for P2P before data goes through the relay, 0-10000.", P_P2P,
         env=("SYFTBOX_HOTLINK_WS_FALLBACK_GRACE_MS",), lo=0, hi=10_000),
    # ICE.
    Spec("ice_servers", "str", None,
         "Comma-separated stun:/turn:/turns: URLs, or none (host candidates only). "
         "Wins over what the relay advertises.", P_ICE,
         env=("SYFTBOX_HOTLINK_ICE_SERVERS",), attr="ice_servers_raw", check=_ice_list,
         default_text="the relay's advertised list, else a public STUN server"),
    Spec("stun_server", "str", None, "Old single STUN server host:port (or off); used when "
         "--ice-servers is unset.", P_ICE, env=("SYFTBOX_HOTLINK_STUN_SERVER",),
         attr="stun_server_raw", check=_stun_server),
    Spec("turn_user", "str", "", "TURN user name (wins over the relay's).", P_ICE,
         env=("SYFTBOX_HOTLINK_TURN_USER",)),
    Spec("turn_pass", "str", "", "TURN password (wins over the relay's).", P_ICE,
         env=("SYFTBOX_HOTLINK_TURN_PASS",), secret=True),
    # Flow control.
    Spec("flow_control", "bool", True,
         "Per-session credit flow control (off: behave as a reference client).", P_FLOW,
         env=("SYFTBOX_HOTLINK_FLOW_CONTROL",)),
    Spec("flow_window", "int", 8 * MIB,
         "Receive window per session in bytes, 65536-268435456.", P_FLOW,
         env=("SYFTBOX_HOTLINK_FLOW_WINDOW",), lo=64 * KIB, hi=256 * MIB),
    # End-to-end encryption.
    Spec("e2e", "choice", "on",
         "Seal every stream end to end: on (when the peer seals too), off, or required "
         "(never plaintext).", P_PRIVACY, env=("SYFTBOX_HOTLINK_E2E",),
         choices=("on", "off", "required"), env_part=_e2e_env),
    Spec("e2e_peers", "str", "",
         "Expected peer keys: email=fingerprint,... (as `hotlink status` shows them); a listed "
         "peer must present one of its keys.", P_PRIVACY, env=("SYFTBOX_HOTLINK_E2E_PEERS",),
         check=_e2e_peers),
    # Benchmarks and tests.
    Spec("bench", "bool", False, "Benchmark mode: extra telemetry.", P_TEST,
         env=("SYFTBOX_HOTLINK_BENCH",)),
    Spec("bench_strict", "bool", False, "Benchmark mode: strict telemetry checks.", P_TEST,
         env=("SYFTBOX_HOTLINK_BENCH_STRICT",)),
    Spec("debug_p2p_kill_after", "int", 0,
         "Test hook: close a session's peer connection after this many frames (0: off).",
         P_TEST, env=("SYFTBOX_HOTLINK_DEBUG_P2P_KILL_AFTER",), lo=0, hi=1 << 62, hidden=True),
    # File sync knobs the reference clients read (kept for compatibility of env files).
    Spec("priority_debounce_ms", "int", 50, "Debounce of priority file events, milliseconds.",
         P_COMPAT, env=("SYFTBOX_PRIORITY_DEBOUNCE_MS",), lo=0, hi=3_600_000),
    Spec("acl_staging_grace_ms", "int", 600_000,
         "How long a staged ACL change may wait, milliseconds.", P_COMPAT,
         env=("SYFTBOX_ACL_STAGING_GRACE_MS",), lo=0, hi=24 * 3_600_000),
)  # fmt: skip

SERVER_SPECS: tuple[Spec, ...] = (
    # Listening.
    Spec("host", "str", "localhost", "Bind address (the variable holds host:port).", P_LISTEN,
         env=("SYFTBOX_HTTP_ADDR",), env_part=_env_host),
    Spec("port", "int", 8080, "Port; 0 picks a free one (the variable holds host:port).",
         P_LISTEN, env=("SYFTBOX_HTTP_ADDR",), env_part=_env_port, lo=0, hi=65535, clamp=False),
    Spec("acl_dir", "path", None,
         "Preload ACLs: DIR/<email>/.../syft.pub.yaml (datasite-relative).", P_LISTEN),
    # Authentication.
    Spec("auth_enabled", "bool", False, "Token mode: clients need an access token.", P_AUTH,
         env=("SYFTBOX_AUTH_ENABLED",)),
    Spec("access_token_secret", "str", "",
         "HS256 secret of access tokens; given as a flag it turns token mode on.", P_AUTH,
         env=("SYFTBOX_AUTH_ACCESS_TOKEN_SECRET",), aliases=("--auth-secret",), secret=True,
         implies=(("auth_enabled", True),)),
    # ICE advertisement (DECISIONS.md #23): nothing is advertised unless configured.
    Spec("ice_servers", "str", None, "ICE servers to advertise to clients (none: nothing).",
         P_ICE, env=("SYFTBOX_HOTLINK_ICE_SERVERS",), attr="ice_servers_raw",
         check=_ice_list, default_text="nothing, unless --turn-host is set"),
    Spec("turn_host", "str", "", "Advertise turns:HOST:PORT?transport=tcp.", P_ICE,
         env=("SYFTBOX_HOTLINK_TURN_HOST",)),
    Spec("turn_port", "int", 5349, "Port of --turn-host, 1-65535.", P_ICE,
         env=("SYFTBOX_HOTLINK_TURN_PORT",), lo=1, hi=65535, clamp=False),
    Spec("turn_user", "str", "", "Static TURN user (never advertised; see --turn-secret).",
         P_ICE, env=("SYFTBOX_HOTLINK_TURN_USER",)),
    Spec("turn_pass", "str", "", "Static TURN password (never advertised).", P_ICE,
         env=("SYFTBOX_HOTLINK_TURN_PASS",), secret=True),
    Spec("turn_secret", "str", "",
         "TURN REST shared secret: advertise short-lived TURN credentials.", P_ICE,
         env=("SYFTBOX_HOTLINK_TURN_SECRET",), secret=True),
    Spec("turn_ttl", "int", 3600, "Lifetime of TURN REST credentials, seconds, 60-604800.",
         P_ICE, env=("SYFTBOX_HOTLINK_TURN_TTL",), lo=60, hi=7 * 24 * 3600),
    # Limits (None: the relay's own default, named in the help).
    Spec("queue_size", "int", None, "Messages per connection send queue; a receiver whose "
         "queue overflows is disconnected as a slow reader.", P_LIMITS, lo=1, clamp=False,
         default_text="16384"),
    Spec("queue_bytes", "int", None, "Bytes per connection held for its peer, queued or in "
         "the socket buffer.", P_LIMITS, lo=1, clamp=False, default_text="67108864 (64 MiB)"),
    Spec("max_queued_bytes", "int", None, "Bytes all connections together hold for their "
         "peers (a shared broadcast counted once); over it broadcasts are dropped and "
         "receivers holding more than their share are disconnected.", P_LIMITS, lo=1,
         clamp=False, default_text="1073741824 (1 GiB)"),
    Spec("max_connections", "int", None,
         "WebSocket connections in total; more are refused with 503.", P_LIMITS, lo=1,
         clamp=False, default_text="10000"),
    Spec("max_connections_per_user", "int", None,
         "WebSocket connections per user; more are refused with 429.", P_LIMITS, lo=1,
         clamp=False, default_text="8"),
    Spec("max_sessions_per_user", "int", None, "Open hotlink sessions per user over all its "
         "connections; more Opens get Reject 'too many sessions'.", P_LIMITS, lo=1,
         clamp=False, default_text="4096"),
    Spec("header_timeout", "float", None,
         "Seconds a connection may take to send its HTTP request.", P_LIMITS, lo=0.1,
         clamp=False, default_text="10"),
    # Cluster mode: without --redis the relay is one process with its state in memory.
    Spec("redis", "str", "", "Run as one replica of a cluster sharing presence, sessions and "
         "ACLs through this Redis (redis://[:PASSWORD@]HOST:PORT/DB).", P_CLUSTER,
         env=("SYFTBOX_HOTLINK_REDIS_URL",), attr="redis_url", secret=True),
    Spec("node_id", "str", "", "This replica's name in the cluster (logs, metrics, Redis "
         "keys); each start adds a random suffix.", P_CLUSTER,
         env=("SYFTBOX_HOTLINK_NODE_ID",), default_text="the host name"),
    Spec("node_ttl", "float", 5.0, "Seconds without a heartbeat after which a replica counts "
         "as dead and its sessions are closed.", P_CLUSTER, lo=0.5, hi=300, clamp=False),
    Spec("cluster_grace", "float", 10.0, "Seconds sessions between replicas wait for Redis "
         "to come back before they are closed ('relay link lost').", P_CLUSTER, lo=0.5,
         hi=3600, clamp=False),
    Spec("cluster_link_bytes", "int", None, "Bytes that may wait to be written for one other "
         "replica; past it the sessions shared with it are closed ('relay link lost').",
         P_CLUSTER, lo=1024, clamp=False, default_text="268435456 (256 MiB)"),
    # Logging.
    *_log_specs("info", "text; json when --env is PROD or STAGE"),
    EVENT_LOOP_SPEC,
    Spec("debug", "bool", False, "Log the hotlink data relay trace.", P_LOG,
         env=("SYFTBOX_HOTLINK_DEBUG",)),
    Spec("latency_trace", "bool", False, "Log per-message latency traces.", P_LOG,
         env=("SYFTBOX_LATENCY_TRACE",)),
    Spec("env", "str", "", "Deployment name; PROD or STAGE default the logs to JSON.", P_LOG,
         env=("SYFTBOX_ENV",), attr="env_name", check=lambda v, where: v.upper()),
)  # fmt: skip


# ---------------------------------------------------------------- parsing


class _Unset:
    """An empty value: it counts as not given."""


_UNSET = _Unset()


def parse_value(spec: Spec, value: object, where: str) -> Any:
    """A value from any layer (environment text, TOML value, typed flag) as the field holds
    it; :data:`_UNSET` for an empty string. ``where`` names the origin in errors."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return _UNSET

    def bad(expected: str) -> SettingsError:
        return SettingsError(f"{where}={value!r}: {expected}")

    result: Any
    if spec.kind in ("str", "path"):
        if not isinstance(value, str):
            raise bad("expected a string")
        result = value
    elif spec.kind == "bool":
        if isinstance(value, bool):
            result = value
        elif isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            result = value.lower() in _TRUE
        else:
            raise bad("expected 1/true/yes/on or 0/false/no/off")
    elif spec.kind == "int":
        result = _number(value, int, bad, "a whole number")
    elif spec.kind == "float":
        result = _number(value, float, bad, "a number")
    else:  # choice
        if not isinstance(value, str) or value.lower() not in spec.choices:
            raise bad(f"expected one of {', '.join(spec.choices)}")
        result = value.lower()
    if spec.kind in ("int", "float"):
        result = _in_range(spec, result, bad)
    return spec.check(result, where) if spec.check is not None else result


def _number(
    value: object,
    kind: type[int] | type[float],
    bad: Callable[[str], SettingsError],
    expected: str,
) -> int | float:
    if isinstance(value, bool):  # TOML true is not 1
        raise bad(f"expected {expected}")
    if isinstance(value, int) or (kind is float and isinstance(value, float)):
        return kind(value)
    if isinstance(value, str):
        try:
            return int(value, 10) if kind is int else float(value)
        except ValueError:
            pass
    raise bad(f"expected {expected}")


def _in_range(spec: Spec, number: int | float, bad: Callable[[str], SettingsError]) -> int | float:
    lo, hi = spec.lo, spec.hi
    if spec.clamp:
        if lo is not None and number < lo:
            number = type(number)(lo)
        if hi is not None and number > hi:
            number = type(number)(hi)
        return number
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        if hi is None:
            raise bad(f"expected at least {lo:g}")
        raise bad(f"expected {lo:g}-{hi:g}")
    return number


@dataclass(frozen=True)
class Source:
    """One config file's values by setting key; ``label`` names it in errors (its path)."""

    label: str
    values: Mapping[str, object]


def resolve(
    specs: Sequence[Spec],
    env: Mapping[str, str] | None = None,
    files: Sequence[Source] = (),
    flags: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """The fields that some layer sets, by field name: defaults < ``files`` (in order) <
    ``env`` < ``flags``. Every given value is checked, also one a higher layer overrides, so
    a typo never waits for the day its override goes. ``flags`` maps keys to flag values
    (None: not given)."""
    by_key = {spec.key: spec for spec in specs}
    for source in files:
        for key in source.values:
            if key not in by_key:
                raise SettingsError(f"{source.label}: unknown setting {key!r}{_hint(key, by_key)}")
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    for key in list(given):
        for implied, implied_value in by_key[key].implies:
            given.setdefault(implied, implied_value)
    out: dict[str, Any] = {}
    for spec in specs:
        chosen: Any = _UNSET
        for source in files:
            if source.values.get(spec.key) is not None:
                value = parse_value(spec, source.values[spec.key], f"{source.label}: {spec.key}")
                chosen = chosen if value is _UNSET else value
        for name in spec.env:
            raw = (env or {}).get(name)
            if raw is None or not raw.strip():
                continue
            text = spec.env_part(raw.strip(), name) if spec.env_part else raw
            value = parse_value(spec, text, name)
            if value is not _UNSET:
                chosen = value
                break
        if spec.key in given:
            value = parse_value(spec, given[spec.key], spec.flag)
            chosen = chosen if value is _UNSET else value
        if chosen is not _UNSET:
            out[spec.field] = chosen
    return out


def _hint(key: str, known: Mapping[str, Spec]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Layered:
    """``from_env`` and ``load`` for a settings dataclass described by ``SPECS``."""

    SPECS: ClassVar[tuple[Spec, ...]] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """Defaults overridden by the environment only."""
        return cls.load(env)

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        files: Sequence[Source] = (),
        flags: Mapping[str, object] | None = None,
    ) -> Self:
        """Defaults < ``files`` (lowest first) < ``env`` < ``flags`` (see :func:`resolve`)."""
        return cls(**resolve(cls.SPECS, env, files, flags))


# ---------------------------------------------------------------- client


@dataclass(frozen=True)
class ClientSettings(_Layered):
    # Identity and server.
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
    webrtc_mtu: int = 0  # SYFTBOX_HOTLINK_WEBRTC_MTU: 0 (automatic) or 576..4096
    webrtc_sctp_buffer: int = 0  # SYFTBOX_HOTLINK_WEBRTC_SCTP_BUFFER: 0 or 1..16 MiB
    webrtc_sctp_cc: str = "hstcp"  # SYFTBOX_HOTLINK_WEBRTC_SCTP_CC
    webrtc_tuning: bool = True  # SYFTBOX_HOTLINK_WEBRTC_TUNING
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

    # End-to-end encryption (docs/SECURITY.md).
    e2e: E2EMode = "on"  # SYFTBOX_HOTLINK_E2E: on, off (0) or required
    e2e_peers: str = ""  # SYFTBOX_HOTLINK_E2E_PEERS: email=fingerprint,...

    # Local IPC.
    ipc_mode: IpcMode = "unix"  # SYFTBOX_HOTLINK_IPC
    tcp_addr: str = "127.0.0.1:0"  # SYFTBOX_HOTLINK_TCP_ADDR

    # File sync knobs the reference clients read (kept for compatibility of env files).
    priority_debounce_ms: int = 50  # SYFTBOX_PRIORITY_DEBOUNCE_MS
    acl_staging_grace_ms: int = 600_000  # SYFTBOX_ACL_STAGING_GRACE_MS

    # Logging (hotlink.logs). None: info (debug with SYFTBOX_HOTLINK_DEBUG), text.
    log_level: LogLevel | None = None  # SYFTBOX_HOTLINK_LOG_LEVEL
    log_format: LogFormat | None = None  # SYFTBOX_HOTLINK_LOG_FORMAT
    event_loop: EventLoop = "asyncio"  # SYFTBOX_HOTLINK_EVENT_LOOP

    SPECS = CLIENT_SPECS

    @property
    def effective_log_level(self) -> LogLevel:
        return self.log_level or ("debug" if self.debug else "info")

    @property
    def effective_log_format(self) -> LogFormat:
        return self.log_format or "text"

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


# ---------------------------------------------------------------- server


@dataclass(frozen=True)
class ServerSettings(_Layered):
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
    env_name: str = ""  # SYFTBOX_ENV (PROD/STAGE: JSON logs unless a format is given)
    log_level: LogLevel | None = None  # SYFTBOX_HOTLINK_LOG_LEVEL; None: info
    log_format: LogFormat | None = None  # SYFTBOX_HOTLINK_LOG_FORMAT; None: see env_name
    event_loop: EventLoop = "asyncio"  # SYFTBOX_HOTLINK_EVENT_LOOP

    # Relay limits and start-up data (flags and config files only). None: the relay's default.
    acl_dir: str | None = None
    queue_size: int | None = None
    queue_bytes: int | None = None
    max_queued_bytes: int | None = None
    max_connections: int | None = None
    max_connections_per_user: int | None = None
    max_sessions_per_user: int | None = None
    header_timeout: float | None = None

    # Cluster mode (server/cluster): "" runs the relay as one process.
    redis_url: str = ""  # SYFTBOX_HOTLINK_REDIS_URL
    node_id: str = ""  # SYFTBOX_HOTLINK_NODE_ID; "": the host name
    node_ttl: float = 5.0
    cluster_grace: float = 10.0
    cluster_link_bytes: int | None = None

    SPECS = SERVER_SPECS

    @property
    def effective_log_level(self) -> LogLevel:
        return self.log_level or "info"

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.env_name in ("PROD", "STAGE") else "text"

    def check(self) -> None:
        """Cross-field checks, run after every layer is applied (a flag may fill the gap)."""
        if self.auth_enabled and not self.access_token_secret:
            raise SettingsError(
                "token mode (--auth-enabled, SYFTBOX_AUTH_ENABLED) needs a secret: "
                "--auth-secret or SYFTBOX_AUTH_ACCESS_TOKEN_SECRET"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"--port {self.port}: expected 0-65535")

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


def _check_tables() -> None:
    """Every settings field has exactly one spec (a forgotten one would never be read)."""
    for cls in (ClientSettings, ServerSettings):
        names = {f.name for f in fields(cls)}
        described = [spec.field for spec in cls.SPECS]
        if sorted(described) != sorted(names):
            raise AssertionError(f"{cls.__name__}: fields {names} vs specs {described}")


_check_tables()
