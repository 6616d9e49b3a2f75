"""pytest fixtures around the real relay. Import the ones you use into your test module or
conftest (``from support.fixtures import relay_server  # noqa: F401``).

* ``relay_server``: a fresh server per test (dev mode, no ICE advertisement), a
  :class:`support.server_proc.ServerProcess`.
* ``relay_server_module``: one server shared by a module's tests (cheaper; use distinct
  user emails per test, e.g. with :func:`unique_email`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from .server_proc import ServerProcess, running_server_sync


def unique_email(name: str) -> str:
    """``<name>-<6 hex>@example.com``: a user no other test uses."""
    return f"{name}-{secrets.token_hex(3)}@example.com"


@pytest.fixture
def relay_server(tmp_path) -> Iterator[ServerProcess]:
    with running_server_sync(tmp_path) as srv:
        yield srv


@pytest.fixture(scope="module")
def relay_server_module(tmp_path_factory) -> Iterator[ServerProcess]:
    with running_server_sync(tmp_path_factory.mktemp("relay")) as srv:
        yield srv
