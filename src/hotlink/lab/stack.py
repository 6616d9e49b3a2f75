"""A local stack of real hotlink processes: one relay server and clients, on loopback.

The demo, the benchmarks and the test harnesses all need the same thing: start a relay
server and a few client daemons as real processes, write the markers and ACLs of a tunnel
into their trees, wait until everything is ready, and stop every process again, by pid,
whatever happens::

    with DevStack() as stack:                           # temp dir, removed on exit
        server = stack.start_server()                   # --port 0 --ready-file
        alice = stack.start_client("alice@example.com")  # waits: connected + ACLs published
        bob = stack.start_client("bob@example.com")
        channel = stack.channel(alice.email, bob.email)  # ports picked, 0_to_1
        stack.write_channel(channel)                    # markers + ACLs, both trees
        stack.wait_channel(channel)                     # both proxies listen, ACL published
        ... dial channel.port(alice.email) / channel.port(bob.email) ...

Every wait has an ``a``-prefixed coroutine twin (``astart_client``, ``await_channel``).
Children stop in order (clients first, then the server); ``stop()`` runs on context exit, at
interpreter exit and from :func:`stop_on_signals`. Unless the stack is ``detached`` they
carry the kernel's parent-death signal (see :mod:`hotlink.lab.processes`).

Children of a stack get a clean environment: our ``SYFTBOX_*`` variables only (inherited
ones are dropped unless ``inherit_syftbox_env``), and always ``SYFTBOX_HOTLINK_ICE_SERVERS``
(``none`` by default: host candidates only, never a public STUN server).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from .processes import (
    ClientProc,
    Proc,
    ServerProc,
    StackError,
    child_env,
    client_settings,
    launch_client,
    launch_server,
)
from .trees import Channel, free_port, write_channel_tree, write_default_acls

STATE_FILE = "devstack.json"
DEFAULT_FLOW = "shared/flows/hotlink-demo"


_live: set[DevStack] = set()
_live_lock = threading.Lock()
_atexit_installed = False


def _stop_all_live() -> None:
    with _live_lock:
        stacks = list(_live)
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.stop()


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit in the main thread, so ``finally`` blocks and
    context managers (and so :meth:`DevStack.stop`) run; Ctrl-C already raises
    KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit)


class DevStack:
    """A relay server and clients as child processes, in ``root`` (default: a temp dir).

    ``env`` goes to every child; ``ice_servers`` becomes ``SYFTBOX_HOTLINK_ICE_SERVERS`` of
    every child. ``detached`` children outlive this process (``--keep``): no parent-death
    signal, no stop at exit, and the temp dir stays. ``keep_root`` keeps the dir only.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        env: Mapping[str, str | None] | None = None,
        ice_servers: str = "none",
        detached: bool = False,
        keep_root: bool = False,
        inherit_syftbox_env: bool = False,
        python: str = sys.executable,
    ) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="hotlink-devstack-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.ice_servers = ice_servers
        self.detached = detached
        self.keep_root = keep_root or detached
        self.inherit_syftbox_env = inherit_syftbox_env
        self.python = python
        self.server: ServerProc | None = None
        self.clients: dict[str, ClientProc] = {}
        self._ports: set[int] = set()  # proxy ports handed out to channels
        self.extra: list[Proc] = []
        self._stopped = False
        self._register()

    def _register(self) -> None:
        global _atexit_installed
        if self.detached:
            return
        with _live_lock:
            _live.add(self)
            if not _atexit_installed:
                atexit.register(_stop_all_live)
                _atexit_installed = True

    # ------------------------------------------------------------ context

    def __enter__(self) -> DevStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.detached:
            self.stop()

    # ------------------------------------------------------------ spawning

    def base_env(self, *layers: Mapping[str, str | None] | None) -> dict[str, str]:
        """The environment of this stack's children, with ``layers`` on top."""
        return child_env(
            {"SYFTBOX_HOTLINK_ICE_SERVERS": self.ice_servers, "PYTHONUNBUFFERED": "1"},
            self.env,
            *layers,
            inherit_syftbox=self.inherit_syftbox_env,
        )

    def spawn_server(
        self,
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        env: Mapping[str, str | None] | None = None,
        args: Sequence[str] = (),
        netns: str | None = None,
    ) -> ServerProc:
        """Start the relay (on a free port unless ``port`` is given, e.g. to restart it where
        the clients expect it); wait with ``wait_ready``."""
        if self.server is not None and self.server.alive():
            raise StackError("this stack already runs a server (stop it first to restart)")
        full_env = self.base_env(env)
        full_env.pop("SYFTBOX_AUTH_ENABLED", None)
        self.server = launch_server(
            self.root / "server.ready.json",
            self.root / "server.log",
            env=full_env,
            host=host,
            port=port,
            args=args,
            netns=netns,
            parent_death=not self.detached,
            python=self.python,
        )
        self._save_state()
        return self.server

    def start_server(self, host: str = "127.0.0.1", timeout: float = 30.0, **kw: Any) -> ServerProc:
        return self.spawn_server(host, **kw).wait_ready(timeout)

    async def astart_server(
        self, host: str = "127.0.0.1", timeout: float = 30.0, **kw: Any
    ) -> ServerProc:
        return await self.spawn_server(host, **kw).await_ready(timeout)

    def client_dir(self, email: str) -> Path:
        return self.root / email.split("@", 1)[0]

    def spawn_client(
        self,
        email: str,
        *,
        server_url: str | None = None,
        env: Mapping[str, str | None] | None = None,
        args: Sequence[str] = (),
        netns: str | None = None,
        data_dir: Path | None = None,
        default_acls: bool = True,
        hotlink: bool = True,
    ) -> ClientProc:
        """Start a client daemon, with SYFTBOX_HOTLINK=1 unless ``hotlink`` is False (wait
        with ``wait_ready``). Its data dir defaults to ``<root>/<name part of the email>``."""
        if server_url is None:
            if self.server is None or not self.server.port:
                raise StackError("start the server first (or pass server_url)")
            server_url = self.server.url
        data_dir = data_dir or self.client_dir(email)
        own = data_dir / "datasites" / email
        if default_acls and not (own / "syft.pub.yaml").exists():
            write_default_acls(own)
        client = launch_client(
            email,
            server_url,
            data_dir,
            env=self.base_env(client_settings(hotlink), env),
            args=args,
            netns=netns,
            parent_death=not self.detached,
            python=self.python,
        )
        old = self.clients.get(email)
        if old is not None and old.alive():
            old.stop()
        self.clients[email] = client
        self._save_state()
        return client

    def start_client(self, email: str, timeout: float = 30.0, **kw: Any) -> ClientProc:
        return self.spawn_client(email, **kw).wait_ready(timeout)

    async def astart_client(self, email: str, timeout: float = 30.0, **kw: Any) -> ClientProc:
        return await self.spawn_client(email, **kw).await_ready(timeout)

    # ------------------------------------------------------------ tunnels

    def channel(
        self,
        from_email: str,
        to_email: str,
        *,
        from_id: int = 0,
        to_id: int = 1,
        ports: Mapping[str, int] | None = None,
        flow: str = DEFAULT_FLOW,
        run: str = "run1",
    ) -> Channel:
        """A channel description with free loopback ports for both parties (not yet written)."""
        if ports is None:
            ports = {from_email: self.free_port(), to_email: self.free_port()}
        return Channel(from_email, to_email, from_id, to_id, dict(ports), flow, run)

    def free_port(self) -> int:
        """A free loopback port this stack has not handed out before: the kernel may offer
        a port again once its probe socket is closed, and two proxies of one scenario on
        one port would collide (one of them could not listen)."""
        while (port := free_port()) in self._ports:
            pass
        self._ports.add(port)
        return port

    def write_channel(self, channel: Channel, trees: Iterable[str] | None = None) -> None:
        """Markers + ACLs (PROTOCOL.md §9.1) into the trees of the channel's parties (or of
        the clients named in ``trees``)."""
        for email in trees if trees is not None else channel.parties:
            client = self.clients.get(email)
            data_dir = client.data_dir if client else self.client_dir(email)
            write_channel_tree(data_dir / "datasites", channel)

    def _parties(self, channel: Channel) -> list[ClientProc]:
        return [c for c in map(self.clients.get, channel.parties) if c is not None]

    def _acl_wait(self, channel: Channel) -> tuple[ClientProc, str] | None:
        # The status endpoint does not list single ACL files: the owner's log line does.
        owner = self.clients.get(channel.owner)
        if owner is None:
            return None
        return owner, r"acl published " + re.escape(channel.acl_rel_path())

    def wait_channel(self, channel: Channel, timeout: float = 30.0) -> None:
        """Both parties' proxies listen (their status, or their logs) and the owner published
        the channel's ACL (its whole log: a channel written before it started counts too)."""
        for client in self._parties(channel):
            client.wait_tunnel(channel.canonical_key, timeout)
        acl = self._acl_wait(channel)
        if acl is not None:
            acl[0].wait_for_log(acl[1], timeout)

    async def await_channel(self, channel: Channel, timeout: float = 30.0) -> None:
        for client in self._parties(channel):
            await client.await_tunnel(channel.canonical_key, timeout)
        acl = self._acl_wait(channel)
        if acl is not None:
            await acl[0].await_log(acl[1], timeout)

    # ------------------------------------------------------------ state and shutdown

    def processes(self) -> list[Proc]:
        procs: list[Proc] = [*self.clients.values(), *self.extra]
        if self.server is not None:
            procs.append(self.server)
        return procs

    def state(self) -> dict[str, Any]:
        """What is running where (written to ``<root>/devstack.json``)."""
        return {
            "root": str(self.root),
            "server": (
                {"pid": self.server.pid, "url": self.server.url, "log": str(self.server.log_path)}
                if self.server is not None
                else None
            ),
            "clients": {
                email: {"pid": c.pid, "data_dir": str(c.data_dir), "log": str(c.log_path)}
                for email, c in self.clients.items()
            },
        }

    def _save_state(self) -> None:
        with contextlib.suppress(OSError):
            (self.root / STATE_FILE).write_text(json.dumps(self.state(), indent=2))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process (clients first, then the server) by pid; remove the temp dir
        unless it is kept. Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        try:
            procs = self.processes()
            # SIGTERM to all at once, then wait: shutdown takes as long as the slowest one.
            for p in procs[:-1] if self.server is not None else procs:
                p.signal(signal.SIGTERM)
            for p in procs:
                p.stop(timeout)
        finally:
            with _live_lock:
                _live.discard(self)
            if self._own_root and not self.keep_root:
                shutil.rmtree(self.root, ignore_errors=True)
