"""CLI commands of the demo (registered on the main typer app by ``hotlink.cli``)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Scenario(StrEnum):
    tunnel = "tunnel"
    mpc3 = "mpc3"


class BackendChoice(StrEnum):
    auto = "auto"
    libdatachannel = "libdatachannel"
    aiortc = "aiortc"


def register(app: typer.Typer) -> None:
    """Add the demo commands to ``app``."""

    @app.command()
    def demo(
        size: Annotated[
            str, typer.Option(help="Payload streamed alice → bob, e.g. 4MiB, 64MiB, 1GiB.")
        ] = "64MiB",
        backend: Annotated[
            BackendChoice, typer.Option(help="WebRTC backend of both clients.")
        ] = BackendChoice.auto,
        ws_only: Annotated[
            bool, typer.Option("--ws-only", help="No WebRTC: data goes through the relay.")
        ] = False,
        keep: Annotated[
            bool,
            typer.Option("--keep", help="Leave the processes running; print how to connect."),
        ] = False,
        scenario: Annotated[
            Scenario, typer.Option(help="tunnel: alice → bob; mpc3: 3-party secret sharing.")
        ] = Scenario.tunnel,
        rounds: Annotated[
            int, typer.Option(help="Round trips measured after the stream.", min=1)
        ] = 200,
        data_dir: Annotated[
            Path | None,
            typer.Option(help="Put the processes' data here instead of a temp dir (kept)."),
        ] = None,
        debug_corrupt_offset: Annotated[
            int | None,
            typer.Option(hidden=True, help="Debug: flip the byte at this offset as it is sent."),
        ] = None,
    ) -> None:
        """Run a relay and clients on this machine, open a tunnel, stream, and report.

        Everything stays on loopback: no STUN/TURN server is contacted (host candidates only).
        Exits 1 if any byte differs (or a party's MPC result is wrong), 2 if set-up fails.
        """
        from .demo.payload import parse_size
        from .demo.runner import DemoOptions, main_guarded, run_mpc_demo, run_tunnel_demo

        try:
            nbytes = parse_size(size)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--size") from None
        opts = DemoOptions(
            size=nbytes,
            backend=backend.value,
            ws_only=ws_only,
            keep=keep,
            rtt_rounds=rounds,
            corrupt_offset=debug_corrupt_offset,
            root=data_dir.absolute() if data_dir else None,
        )
        fn = run_mpc_demo if scenario is Scenario.mpc3 else run_tunnel_demo
        raise typer.Exit(main_guarded(fn, opts))
