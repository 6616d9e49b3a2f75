"""The ``hotlink`` command line: each part of the system registers its own commands."""

from __future__ import annotations

import typer

from .client.commands import register as register_client
from .client.e2e.commands import register as register_e2e
from .client.status_commands import register as register_status
from .demo_commands import register as register_demo
from .server.commands import register as register_server
from .tunnel_commands import register as register_tunnel

app = typer.Typer(
    # --install-completion / --show-completion for bash, zsh, fish and PowerShell.
    add_completion=True,
    no_args_is_help=True,
    # Help texts escape their literal brackets ("\\[env: ...]") for rich markup.
    rich_markup_mode="rich",
    help="hotlink: fast, private byte streams between SyftBox datasites.",
)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"hotlink {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the hotlink version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """hotlink: private byte streams between SyftBox datasites."""


register_server(app)
register_client(app)
register_demo(app)
register_tunnel(app)
register_status(app)
register_e2e(app)


@app.command()
def version() -> None:
    """Print the hotlink version."""
    from . import __version__

    typer.echo(f"hotlink {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
