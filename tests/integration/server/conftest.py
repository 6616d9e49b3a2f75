"""One relay per test module (cheap); tests use their own user emails so they cannot collide."""

from support.fixtures import relay_server, relay_server_module  # noqa: F401
