"""``hotlink status``: what a running client daemon is doing, from its control socket.

The daemon is found from the data dir and the email, layered as ``hotlink client`` layers
them (the SyftBox client config, ``--config``, the ``SYFTBOX_*`` environment, flags); its
socket's place follows from those two (:mod:`.control_client`). Without a running daemon the
command says so in one line and exits with :data:`EXIT_NO_DAEMON`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
WATCH_INTERVAL = 1.0
# Ended sessions the table shows (--json has them all).
RECENT_SHOWN = 8
# Columns when the output is not a terminal.
WIDE = 200


def register(app: typer.Typer) -> None:
    """Add ``hotlink status`` to ``app``."""

    @app.command()
    def status(
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the status document as JSON.")
        ] = False,
        watch: Annotated[
            bool, typer.Option("--watch", help="Refresh every second until Ctrl-C.")
        ] = False,
        data_dir: Annotated[
            Path | None,
            typer.Option(
                "--data-dir",
                help="The client's data folder [SYFTBOX_DATA_DIR]",
                show_default=False,
            ),
        ] = None,
        email: Annotated[
            str | None,
            typer.Option("--email", help="The client's datasite email [SYFTBOX_EMAIL]"),
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option(
                "--config",
                help="The client's TOML config file [SYFTBOX_HOTLINK_CONFIG]",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """Show the running client's tunnels and sessions (peer, path, bytes, rate, RTT)."""
        raise typer.Exit(run_status(data_dir, email, config, as_json=as_json, watch=watch))


# ---------------------------------------------------------------- finding the daemon


def resolve_target(
    data_dir: Path | None, email: str | None, config: Path | None = None
) -> tuple[Path, str]:
    """The data dir and email of the client to ask (see ``config_file.locate_client``);
    raises ValueError with a readable reason."""
    from ..config_file import locate_client
    from ..settings import SettingsError

    try:
        return locate_client(data_dir, email, config)
    except SettingsError as exc:
        raise ValueError(str(exc)) from None


def run_status(
    data_dir: Path | None,
    email: str | None,
    config: Path | None = None,
    *,
    as_json: bool,
    watch: bool,
) -> int:
    from .control_client import ControlUnavailable, control_socket_path, fetch_status

    try:
        where, who = resolve_target(data_dir, email, config)
    except ValueError as exc:
        typer.echo(f"hotlink status: {exc}", err=True)
        return EXIT_USAGE
    path = control_socket_path(where, who)
    try:
        doc = fetch_status(path)
    except (ControlUnavailable, ValueError) as exc:
        typer.echo(f"hotlink status: {who} in {where}: {exc}", err=True)
        return EXIT_NO_DAEMON
    if not watch:
        if as_json:
            typer.echo(json.dumps(doc, indent=2))
        else:
            _console().print(render(doc))
        return 0
    try:
        if as_json:
            _watch_json(path, doc)
        else:
            _watch_table(path, doc)
    except KeyboardInterrupt:
        pass
    return 0


def _console() -> Any:
    from rich.console import Console

    if not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        # Piped or captured: wide enough that rows stay whole for grep.
        return Console(width=WIDE)
    return Console()


def _fetch_or_error(path: Path) -> dict[str, Any] | str:
    from .control_client import ControlUnavailable, fetch_status

    try:
        return fetch_status(path)
    except (ControlUnavailable, ValueError) as exc:
        return str(exc)


def _watch_json(path: Path, doc: dict[str, Any]) -> None:
    """One document per line, each second (JSON lines)."""
    current: dict[str, Any] | str = doc
    while True:
        if isinstance(current, dict):
            typer.echo(json.dumps(current))
        else:
            typer.echo(json.dumps({"error": current}))
        time.sleep(WATCH_INTERVAL)
        current = _fetch_or_error(path)


def _watch_table(path: Path, doc: dict[str, Any]) -> None:
    from rich.live import Live
    from rich.text import Text

    console = _console()
    with Live(render(doc), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(WATCH_INTERVAL)
            current = _fetch_or_error(path)
            if isinstance(current, dict):
                live.update(render(current), refresh=True)
            else:
                live.update(Text(f"{current} (retrying; Ctrl-C to stop)"), refresh=True)


# ---------------------------------------------------------------- the tables


def render(doc: Mapping[str, Any]) -> Any:
    """The document as rich renderables: a header, then tunnels, sessions, the peers' keys,
    recent ends."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [_header(doc)]
    tunnels = doc.get("tunnels", [])
    if tunnels:
        table = _table("Tunnels", "Tunnel", "Port", "Peer", "Listening", "Apps", "Bytes", "Rate")
        for t in tunnels:
            table.add_row(
                _folder(t.get("key", "")),
                str(t.get("port", "")),
                t.get("peer", ""),
                "yes" if t.get("listening") else "no",
                str(t.get("app_connections", 0)),
                _both(t.get("tx_bytes"), t.get("rx_bytes"), human_bytes),
                _both(t.get("tx_rate"), t.get("rx_rate"), _rate),
            )
        parts.append(table)
    sessions = doc.get("sessions", [])
    if sessions:
        table = _table(
            "Sessions", "Session", "Peer", "Channel", "Transport", "E2E", "Bytes", "Rate", "RTT",
            "Up", "Last error",
        )  # fmt: skip
        for s in sessions:
            table.add_row(
                _sid(s),
                s.get("peer", ""),
                s.get("channel", ""),
                s.get("transport", ""),
                _e2e_cell(s),
                _both(s.get("tx_bytes"), s.get("rx_bytes"), human_bytes),
                _both(s.get("tx_rate"), s.get("rx_rate"), _rate),
                _rtt(s.get("rtt_ms")),
                human_duration(s.get("uptime_s")),
                s.get("last_error", "") or "",
            )
        parts.append(table)
    else:
        parts.append(Text("no live sessions", style="dim"))
    recent = doc.get("recent", [])
    keys = _peer_keys([*sessions, *recent[:RECENT_SHOWN]])
    if keys:
        title = "Peer keys (theirs: `hotlink e2e fingerprint`)"
        table = _table(title, "Peer", "Key fingerprint")
        for peer, key in keys:
            table.add_row(peer, key)
        parts.append(table)
    if recent:
        shown = recent[:RECENT_SHOWN]
        title = "Ended" if len(shown) == len(recent) else f"Ended (last {len(shown)})"
        table = _table(
            title, "Session", "Peer", "Channel", "Transport", "E2E", "Bytes", "Lasted", "Ended",
            "Reason",
        )  # fmt: skip
        for e in shown:
            table.add_row(
                _sid(e),
                e.get("peer", ""),
                e.get("channel", ""),
                e.get("transport", ""),
                _e2e_cell(e),
                _both(e.get("tx_bytes"), e.get("rx_bytes"), human_bytes),
                human_duration(e.get("duration_s")),
                _clock(e.get("ended_at")),
                e.get("reason", ""),
            )
        parts.append(table)
    return Group(*parts)


def _table(title: str, *columns: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", expand=False)
    for name in columns:
        # Names and paths wrap rather than lose their ends to an ellipsis.
        table.add_column(name, justify="right" if name in _NUMERIC else "left", overflow="fold")
    return table


_NUMERIC = {"Port", "Apps", "Bytes", "Rate", "RTT", "Up", "Lasted"}


def _header(doc: Mapping[str, Any]) -> Any:
    from rich.text import Text

    conn = doc.get("connection", {})
    text = Text()
    text.append(f"{doc.get('email', '?')}", style="bold")
    if conn.get("state") == "connected":
        text.append("  connected", style="green")
        text.append(f" to {conn.get('server_url', '?')}")
        since = conn.get("connected_since")
        if isinstance(since, int | float):
            text.append(f" for {human_duration(time.time() - since)}")
        if conn.get("rtt_ms") is not None:
            text.append(f", relay rtt {_rtt(conn.get('rtt_ms'))}")
    else:
        text.append("  not connected", style="red")
        text.append(f" to {conn.get('server_url', '?')}")
    reconnects = conn.get("reconnects", 0)
    if reconnects:
        text.append(f", {reconnects} reconnects")
    backend = doc.get("webrtc", {}).get("backend")
    p2p = f"webrtc {backend}" if backend else "webrtc off"
    text.append(
        f"\npid {doc.get('pid', '?')}, up {human_duration(doc.get('uptime_s'))}, {p2p}",
        style="dim",
    )
    if doc.get("hotlink", True):
        text.append("\n")
        text.append_text(_e2e_line(doc.get("e2e")))
    if conn.get("last_error"):
        text.append(f"\nlast connection error ({_clock(conn.get('last_error_at'))}): ")
        text.append(str(conn["last_error"]), style="yellow")
    return text


# How a session's end-to-end state reads in the tables.
_E2E_STYLES = {"sealed": "green", "plaintext": "yellow", "pending": "dim", "off": "dim"}


def _e2e_line(e2e: object) -> Any:
    """The header's end-to-end line: the mode and our own key's fingerprint."""
    from rich.text import Text

    if not isinstance(e2e, Mapping):
        return Text("e2e unknown (an older client)", style="dim")
    mode = e2e.get("mode", "?")
    if mode == "off":
        return Text("e2e off: the relay can read every stream", style="yellow")
    text = Text(f"e2e {mode}", style="green")
    text.append(f", identity key {e2e.get('fingerprint') or '?'}")
    return text


def _e2e_cell(entry: Mapping[str, Any]) -> Any:
    from rich.text import Text

    if str(entry.get("reason", "")).startswith("e2e:"):
        # An ended session that end-to-end protection closed (the reason says why).
        return Text("failed", style="bold red")
    state = str(entry.get("e2e_state") or ("sealed" if entry.get("e2e") else "off"))
    return Text(state, style=_E2E_STYLES.get(state, ""))


def _peer_keys(entries: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Each (peer, key fingerprint) the sessions proved, once, in order of first sight."""
    seen: dict[tuple[str, str], None] = {}
    for entry in entries:
        key = entry.get("peer_key")
        if isinstance(key, str) and key:
            seen.setdefault((str(entry.get("peer", "")), key), None)
    return list(seen)


def _folder(key: str) -> str:
    # The canonical key ends in the request file; the channel folder is what people named.
    return key.rsplit("/", 1)[0] if key.endswith("/stream.tcp.request") else key


def _sid(entry: Mapping[str, Any]) -> str:
    # The arrow says which way the session carries bytes: out (we send) or in.
    arrow = "↑" if entry.get("direction") == "out" else "↓"
    return f"{arrow} {str(entry.get('sid', ''))[:8]}"


def _both(tx: float | None, rx: float | None, fmt: Any) -> str:
    """``↑sent ↓received``, leaving out a direction that carried nothing."""
    parts = [f"{arrow}{fmt(v)}" for arrow, v in (("↑", tx), ("↓", rx)) if v]
    if parts:
        return " ".join(parts)
    return "-" if tx is None and rx is None else "0"


def _rate(value: float) -> str:
    return f"{human_bytes(value)}/s"


def _rtt(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.0f} ms"


def _clock(at: float | None) -> str:
    if not isinstance(at, int | float):
        return "-"
    return datetime.fromtimestamp(at).strftime("%H:%M:%S")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"
