"""Suite-wide settings: no test may ever reach a public STUN server."""

import os

import pytest


@pytest.fixture(autouse=True)
def _no_public_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    # Anything that builds ICE config from the environment sees "none" unless a test says otherwise.
    if "SYFTBOX_HOTLINK_ICE_SERVERS" not in os.environ:
        monkeypatch.setenv("SYFTBOX_HOTLINK_ICE_SERVERS", "none")
