"""The real client daemon on aiortc, with SCTP associations refused: a peer whose ICE and DTLS
connect but whose data channel never opens (as with pion releases before 2024).

    python tests/support/sctp_refusing_client.py --server URL --email E --data-dir DIR

Takes the same arguments and environment as ``hotlink client`` (it runs that very command).
It forces ``SYFTBOX_HOTLINK_WEBRTC_BACKEND=aiortc`` (only aiortc can be patched) and applies
:func:`support.sctp_refusal.refuse_sctp` before anything starts. ``HOTLINK_TEST_SCTP_REFUSAL``
picks the mode: ``drop`` (default: silence, the remote retransmits its INIT until it gives
up) or ``abort`` (an INIT gets an ABORT, as pion answers; a libdatachannel remote fails at
once). Tests start it with ``spawn_client(..., script=SCTP_REFUSING_CLIENT)``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MODE_ENV = "HOTLINK_TEST_SCTP_REFUSAL"


def main(argv: list[str]) -> None:
    # Run as a file, so ``support`` (this file's package) is not importable yet.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from support.sctp_refusal import refuse_sctp

    mode = os.environ.get(MODE_ENV, "drop")
    if mode not in ("drop", "abort"):
        sys.exit(f"{MODE_ENV} must be drop or abort, got {mode!r}")
    # Read by ClientSettings.from_env when the command runs, below.
    os.environ["SYFTBOX_HOTLINK_WEBRTC_BACKEND"] = "aiortc"
    refuse_sctp("abort" if mode == "abort" else "drop")
    # Tests may wait for this line in the client log before relying on the refusal.
    print(f"sctp refusal: aiortc refuses SCTP associations (mode {mode})", flush=True)

    from hotlink.cli import app

    app(args=["client", *argv], prog_name="sctp_refusing_client")


if __name__ == "__main__":
    main(sys.argv[1:])
