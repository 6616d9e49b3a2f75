"""``hotlink e2e fingerprint|peers|trust|forget``: this client's identity key and the keys
it trusts its peers with (docs/SECURITY.md).

The commands work on the key files in ``<data dir>/.hotlink/`` (:mod:`.keystore`), with the
data dir found as ``hotlink client`` finds it (the SyftBox client config, ``--config``, the
``SYFTBOX_*`` environment, flags); ``peers`` also shows the keys the ``e2e_peers`` setting
lists. They never make a key: ``fingerprint`` refuses until the client made its own.

``trust`` and ``forget`` replace the pin file whole; a running daemon reads it again at its
next session (it watches the file's stamp), so no restart is needed. User errors end in one
``error: ...`` line: exit 2 for a wrong argument or setting, 1 for a key file that cannot be
used or a pin that is not there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from .keystore import PinFile

EXIT_ERROR = 1
EXIT_USAGE = 2

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="The client's data folder (its keys are in DIR/.hotlink) \\[env: SYFTBOX_DATA_DIR]",
        show_default=False,
    ),
]
EmailOpt = Annotated[
    str | None,
    typer.Option(
        "--email", help="The client's datasite email \\[env: SYFTBOX_EMAIL]", show_default=False
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="The client's TOML config file, for its data_dir and e2e_peers "
        "\\[env: SYFTBOX_HOTLINK_CONFIG]",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@dataclass(frozen=True)
class Target:
    """The client whose keys a command works on, with what its settings say about keys."""

    data_dir: Path
    email: str  # "" when no setting names it (the commands do not need it)
    e2e_mode: str
    # The e2e_peers setting: email -> the fingerprints it lists.
    expected: dict[str, frozenset[str]]


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def resolve_target(data_dir: Path | None, email: str | None, config: Path | None) -> Target:
    """The data dir and key settings of the client, layered as ``hotlink client`` layers
    them (see ``config_file.locate_client``; the email is optional here)."""
    from ...config_file import client_files
    from ...protocol.e2e.pins import parse_expected
    from ...settings import ClientSettings, SettingsError

    try:
        files, _notes = client_files(os.environ, config=config)
        settings = ClientSettings.load(
            os.environ, files=files, flags={"data_dir": data_dir, "email": email}
        )
        expected = parse_expected(settings.e2e_peers)
    except (SettingsError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)
    if not settings.data_dir.strip():
        _fail("missing --data-dir (or SYFTBOX_DATA_DIR)", EXIT_USAGE)
    where = Path(settings.data_dir).expanduser().absolute()
    if not where.exists():
        _fail(f"data dir {where} does not exist", EXIT_USAGE)
    if not where.is_dir():
        _fail(f"--data-dir {where} is a file, not a folder", EXIT_USAGE)
    return Target(where, settings.email.strip(), settings.e2e, expected)


def _pin_file(target: Target) -> PinFile:
    from .keystore import KeyFileError, PinFile

    try:
        return PinFile(target.data_dir, target.expected)
    except KeyFileError as exc:
        _fail(str(exc))


def _peer_arg(target: Target, email: str) -> str:
    """``email`` checked as a peer's address (not our own)."""
    from ...protocol.e2e.pins import peer_key
    from ...tunnels import TunnelError, check_email

    try:
        email = check_email(email, "EMAIL")
    except TunnelError as exc:
        _fail(str(exc), EXIT_USAGE)
    if target.email and peer_key(email) == peer_key(target.email):
        _fail(f"{email} is this client's own email: only peers' keys are pinned", EXIT_USAGE)
    return email


def _save(pins: PinFile) -> None:
    pins.save()
    if pins.book().dirty:  # save() logs why and keeps the change in memory only
        _fail(f"nothing changed: cannot write {pins.path}")


def _listed_note(target: Target, email: str) -> str | None:
    from ...protocol.e2e.pins import peer_key

    listed = target.expected.get(peer_key(email))
    if not listed:
        return None
    return (
        f"note: the e2e_peers setting lists {email} (with {', '.join(sorted(listed))}); listed "
        "keys win over pins, so change the setting to change which key it may use"
    )


def peer_rows(target: Target, pins: PinFile) -> list[dict[str, Any]]:
    """The pinned and listed keys: email, fingerprint, source (pinned/listed) and whether
    the client goes by it (a pin of a listed peer is kept but not used)."""
    book = pins.book()
    rows: list[dict[str, Any]] = [
        {"email": email, "fingerprint": fp, "source": "listed", "in_use": True}
        for email, fps in target.expected.items()
        for fp in sorted(fps)
    ]
    rows += [
        {
            "email": email,
            "fingerprint": fp,
            "source": "pinned",
            "in_use": email not in book.expected,
        }
        for email, fp in book.pins.items()
    ]
    rows.sort(key=lambda r: (r["email"], r["source"], r["fingerprint"]))
    return rows


def _source_text(row: dict[str, Any]) -> str:
    if row["source"] == "listed":
        return "listed (e2e_peers)"
    return "pinned" if row["in_use"] else "pinned, unused (e2e_peers lists this peer)"


def register(app: typer.Typer) -> None:
    """Add ``hotlink e2e ...`` to ``app``."""
    e2e_app = typer.Typer(
        no_args_is_help=True,
        help="End-to-end encryption keys: this client's fingerprint, and the peers' keys it "
        "trusts (compare fingerprints out of band; see docs/SECURITY.md).",
    )
    app.add_typer(e2e_app, name="e2e")

    @e2e_app.command("fingerprint")
    def fingerprint(
        as_json: JsonOpt = False,
        data_dir: DataDirOpt = None,
        email: EmailOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Print this client's identity key fingerprint.

        Peers compare it with what their `hotlink status` shows. The client makes the key on
        its first start; this command never does."""
        from .keystore import KeyFileError, key_dir, load_identity

        target = resolve_target(data_dir, email, config)
        try:
            identity = load_identity(target.data_dir, create=False)
        except KeyFileError as exc:
            _fail(str(exc))
        if as_json:
            doc = {
                "data_dir": str(target.data_dir),
                "email": target.email or None,
                "fingerprint": identity.fingerprint,
                "key_dir": str(key_dir(target.data_dir)),
                "e2e": target.e2e_mode,
            }
            typer.echo(json.dumps(doc, indent=2))
            return
        typer.echo(identity.fingerprint)

    @e2e_app.command("peers")
    def peers(
        as_json: JsonOpt = False,
        data_dir: DataDirOpt = None,
        email: EmailOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """List the peers' keys: pinned on first use, or listed by e2e_peers.

        A listed peer must present one of its listed keys; its pin, if any, is not used."""
        target = resolve_target(data_dir, email, config)
        pins = _pin_file(target)
        rows = peer_rows(target, pins)
        if as_json:
            doc = {"data_dir": str(target.data_dir), "pins_file": str(pins.path), "peers": rows}
            typer.echo(json.dumps(doc, indent=2))
            return
        if not rows:
            typer.echo(
                f"no peer keys yet in {pins.path} (a peer's key is pinned at its first sealed "
                "session)"
            )
            return
        table = [("PEER", "FINGERPRINT", "SOURCE")]
        table += [(r["email"], r["fingerprint"], _source_text(r)) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(2)]
        for row in table:
            typer.echo(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")

    @e2e_app.command("trust")
    def trust(
        peer: Annotated[str, typer.Argument(metavar="EMAIL", help="The peer's email.")],
        key: Annotated[
            str,
            typer.Argument(
                metavar="FINGERPRINT",
                help="The peer's key fingerprint, as `hotlink e2e fingerprint` shows it on "
                "the peer's machine (spaces, dashes and case do not matter).",
            ),
        ],
        data_dir: DataDirOpt = None,
        email: EmailOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Pin (or replace) a peer's key, after comparing it with the peer out of band.

        A running client uses it from the peer's next session on (no restart)."""
        from ...protocol.e2e.identity import normalize_fingerprint
        from ...protocol.e2e.pins import peer_key

        target = resolve_target(data_dir, email, config)
        peer = _peer_arg(target, peer)
        try:
            new = normalize_fingerprint(key)
        except ValueError as exc:
            _fail(str(exc), EXIT_USAGE)
        pins = _pin_file(target)
        book = pins.book()
        old = book.pins.get(peer_key(peer))
        if old == new:
            typer.echo(f"{peer}: {new} is already pinned (nothing changed)")
        else:
            book.pin(peer, new)
            _save(pins)
            typer.echo(f"{peer}: {old or '(none)'} → {new}")
            typer.echo(f"pinned in {pins.path}; a running client uses it from the next session")
        note = _listed_note(target, peer)
        if note is not None:
            typer.echo(note, err=True)

    @e2e_app.command("forget")
    def forget(
        peer: Annotated[str, typer.Argument(metavar="EMAIL", help="The peer's email.")],
        data_dir: DataDirOpt = None,
        email: EmailOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Remove a peer's pinned key.

        The peer's next sealed session pins the key it presents (trust on first use again)."""
        from ...protocol.e2e.pins import peer_key

        target = resolve_target(data_dir, email, config)
        peer = _peer_arg(target, peer)
        pins = _pin_file(target)
        book = pins.book()
        old = book.pins.get(peer_key(peer))
        if old is None or not book.forget(peer):
            listed = " (the e2e_peers setting lists it: change the setting)"
            _fail(
                f"no pinned key for {peer} in {pins.path}"
                + (listed if peer_key(peer) in target.expected else "")
            )
        _save(pins)
        typer.echo(f"{peer}: forgot {old}; its next sealed session pins the key it presents")
        note = _listed_note(target, peer)
        if note is not None:
            typer.echo(note, err=True)
