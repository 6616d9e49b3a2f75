"""``hotlink tunnel open|list|close``: set up, see and remove TCP tunnels in a data dir.

The files are written by :mod:`hotlink.tunnels` (where the layout and the party-id rule are
explained); this module finds the data dir and the email, prints what happened, and asks a
running daemon (through its control socket) which tunnels it listens on.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from .tunnels import DEFAULT_FLOW, TunnelEntry, TunnelError

PeerOpt = Annotated[str, typer.Option("--peer", help="The other side's datasite email.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data folder of the client (datasites live in DIR/datasites) "
        "\\[env: SYFTBOX_DATA_DIR]",
        show_default=False,
    ),
]
EmailOpt = Annotated[
    str | None,
    typer.Option("--email", help="Your datasite email \\[env: SYFTBOX_EMAIL]", show_default=False),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="The client's TOML config file, for its email and data_dir "
        "\\[env: SYFTBOX_HOTLINK_CONFIG]",
        show_default=False,
    ),
]


@dataclass(frozen=True)
class Where:
    """The client whose tree a tunnel command works on."""

    data_dir: Path
    email: str

    @property
    def datasites(self) -> Path:
        return self.data_dir / "datasites"


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def resolve_where(data_dir: Path | None, email: str | None, config: Path | None = None) -> Where:
    """The data dir and email of the client to work on, found as ``hotlink client`` finds
    them: flags, then the environment, then the config files."""
    from .config_file import locate_client
    from .settings import SettingsError

    try:
        found_dir, found_email = locate_client(data_dir, email, config)
    except SettingsError as exc:
        _fail(str(exc), 2)
    where = Where(found_dir, found_email)
    if where.data_dir.exists() and not where.data_dir.is_dir():
        _fail(f"--data-dir {where.data_dir} is a file, not a folder", 2)
    return where


def daemon_status(where: Where) -> dict[str, Any] | None:
    """The running daemon's status document, or None when no daemon answers."""
    from .client.control_client import ControlUnavailable, control_socket_path, fetch_status

    try:
        return fetch_status(control_socket_path(where.data_dir, where.email), timeout=2.0)
    except (ControlUnavailable, ValueError):
        return None


def _listening_keys(status: dict[str, Any]) -> dict[str, bool]:
    found: dict[str, bool] = {}
    for tunnel in status.get("tunnels", []):
        if isinstance(tunnel, dict) and isinstance(tunnel.get("key"), str):
            found[tunnel["key"]] = bool(tunnel.get("listening"))
    return found


def _entry_doc(entry: TunnelEntry, listening: dict[str, bool] | None) -> dict[str, Any]:
    channel = entry.channel
    key = channel.canonical_key if channel is not None else None
    return {
        "path": entry.rel_path,
        "peer": channel.peer_email if channel is not None else None,
        "port": channel.listen_port if channel is not None else None,
        "peer_port": entry.peer_port,
        "flow": entry.flow_path,
        "key": key,
        "listening": (listening.get(key, False) if key and listening is not None else None),
        "problem": entry.problem,
    }


def _state(doc: dict[str, Any], daemon: bool) -> str:
    if doc["problem"]:
        return "ignored"
    if not daemon:
        return "-"
    return "listening" if doc["listening"] else "not listening"


def _print_table(docs: list[dict[str, Any]], daemon: bool) -> None:
    rows = [("PEER", "PORT", "PEER PORT", "STATE", "MARKER")]
    for doc in docs:
        rows.append(
            (
                doc["peer"] or "?",
                str(doc["port"] or "?"),
                str(doc["peer_port"] or "?"),
                _state(doc, daemon),
                doc["path"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        typer.echo("  ".join([*cells, row[4]]))
    for doc in docs:
        if doc["problem"]:
            typer.echo(f"ignored {doc['path']}: {doc['problem']}")


def register(app: typer.Typer) -> None:
    """Add ``hotlink tunnel ...`` to ``app``."""
    tunnel_app = typer.Typer(
        no_args_is_help=True,
        help="Set up, list and remove TCP tunnels between two datasites.",
    )
    app.add_typer(tunnel_app, name="tunnel")

    @tunnel_app.command("open")
    def open_(
        peer: PeerOpt,
        port: Annotated[
            int, typer.Option("--port", help="Local port your app connects to (on this machine).")
        ],
        peer_port: Annotated[
            int,
            typer.Option("--peer-port", help="Port the peer's app connects to on its machine."),
        ],
        flow: Annotated[
            str | None,
            typer.Option(
                "--flow",
                help=f"Name of the tunnel, to tell several with one peer apart (folder "
                f"shared/flows/NAME; a value with / is a datasite-relative folder) "
                f"\\[default: {DEFAULT_FLOW}]",
                show_default=False,
            ),
        ] = None,
        run: Annotated[
            str | None,
            typer.Option(
                "--run",
                help="Run folder below the flow \\[default: both emails, in order]",
                show_default=False,
            ),
        ] = None,
        data_dir: DataDirOpt = None,
        email: EmailOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Write this side's marker and ACL for a tunnel with PEER, and print the command
        the peer runs on its machine.

        Both sides run it (with the ports swapped); the party ids follow from the order of the
        two emails, so both write the same marker without agreeing on anything else.
        """
        from .tunnels import mirror_command, open_tunnel, terminal_acl_above, tunnel_channel

        where = resolve_where(data_dir, email, config)
        try:
            channel = tunnel_channel(
                where.email, peer, port, peer_port, flow=flow or DEFAULT_FLOW, run=run
            )
            written = open_tunnel(where.datasites, where.email, channel)
        except TunnelError as exc:
            _fail(str(exc), 2)
        except OSError as exc:
            _fail(f"cannot write the tunnel in {where.datasites}: {exc}")
        peer_email = channel.peer_of(where.email)
        party = {channel.from_email: channel.from_id, channel.to_email: channel.to_id}
        typer.echo(
            f"tunnel {where.email} (party {party[where.email]}) <-> {peer_email} "
            f"(party {party[peer_email]})"
        )
        for path in written:
            typer.echo(f"  wrote {path}")
        typer.echo(f"  channel key: {channel.canonical_key}")
        blocking = terminal_acl_above(where.datasites, where.email, channel)
        if blocking is not None:
            typer.echo(
                f"warning: {blocking} says 'terminal: true', so the relay never reads the "
                "tunnel's ACL below it; the peer will be refused",
                err=True,
            )
        daemon = daemon_status(where) is not None
        when = "now (the running client picks it up)" if daemon else "once `hotlink client` runs"
        typer.echo(f"Your app connects to 127.0.0.1:{channel.port(where.email)} {when}.")
        typer.echo(f"On {peer_email}'s machine, run:")
        typer.echo(f"  {mirror_command(channel, where.email, flow=flow, run=run)}")

    @tunnel_app.command("list")
    def list_(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        data_dir: DataDirOpt = None,
        email: EmailOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """List the tunnel markers in the data dir: peer, ports, and whether the running
        client listens (when one answers on its control socket)."""
        from .tunnels import find_tunnels

        where = resolve_where(data_dir, email, config)
        entries = find_tunnels(where.datasites, where.email)
        status = daemon_status(where)
        listening = _listening_keys(status) if status is not None else None
        docs = [_entry_doc(e, listening) for e in entries]
        if as_json:
            doc = {
                "data_dir": str(where.data_dir),
                "email": where.email,
                "daemon": status is not None,
                "tunnels": docs,
            }
            typer.echo(json.dumps(doc, indent=2))
            return
        if not docs:
            typer.echo(f"no tunnels in {where.datasites} (set one up with `hotlink tunnel open`)")
            return
        _print_table(docs, status is not None)
        if status is None:
            typer.echo("(no running client answered: listening state unknown)")

    @tunnel_app.command("close")
    def close(
        peer: PeerOpt,
        flow: Annotated[
            str | None,
            typer.Option("--flow", help="Only the tunnel of this name.", show_default=False),
        ] = None,
        acls: Annotated[
            bool, typer.Option("--acls", help="Remove the tunnel's ACL files too.")
        ] = False,
        data_dir: DataDirOpt = None,
        email: EmailOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Remove our markers of tunnels with PEER; the running client stops listening.
        The ACL files stay (the peer's side keeps working with them) unless --acls."""
        from .tunnels import check_email, close_tunnels

        where = resolve_where(data_dir, email, config)
        try:
            removed = close_tunnels(
                where.datasites, where.email, check_email(peer, "--peer"), flow=flow, acls=acls
            )
        except TunnelError as exc:
            _fail(str(exc), 2)
        if not removed:
            which = f" named {flow}" if flow else ""
            _fail(f"no tunnel{which} with {peer} in {where.datasites}")
        for path in removed:
            typer.echo(f"removed {path}")
        mirror = ["hotlink", "tunnel", "close", "--peer", where.email]
        mirror += ["--flow", flow] if flow else []
        typer.echo(f"The peer closes its side with: {shlex.join(mirror)}")
