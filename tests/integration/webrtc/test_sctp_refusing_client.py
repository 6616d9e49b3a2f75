"""The SCTP-refusing client script runs the real client daemon: it starts, patched, and joins
a real relay like ``hotlink client`` does (the client-level tests pair it with a normal one)."""

from __future__ import annotations

from pathlib import Path

from support.client_proc import ALICE, SCTP_REFUSING_CLIENT, running_client
from support.server_proc import running_server_sync


def test_the_sctp_refusing_client_starts_patched_and_connects_to_the_relay(
    tmp_path: Path,
) -> None:
    with (
        running_server_sync(tmp_path) as relay,
        running_client(
            relay.url,
            ALICE,
            tmp_path / "alice",
            script=SCTP_REFUSING_CLIENT,
            env={"HOTLINK_TEST_SCTP_REFUSAL": "abort"},
        ) as alice,
    ):
        # running_client returned: connected, ACLs published, as `hotlink client` would be.
        assert alice.alive()
        assert alice.search_log(r"sctp refusal: aiortc refuses SCTP associations \(mode abort\)")
        assert alice.search_log(r"hotlink enabled: ")
