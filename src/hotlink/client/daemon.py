"""The client daemon: wires the connection, ACL publisher, manager, TCP proxy, IPC, telemetry.

Tasks the daemon owns: the connection loop, the telemetry writer, the file watcher (one for
the datasites tree; it drives the ACL publisher and the TCP-proxy and IPC discovery loops),
and those discovery loops. On SIGTERM/SIGINT it stops them in reverse order of data flow: no new app
connections, then sessions (peers are told), then the peer transport, then the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from pathlib import Path

from .. import logs
from ..event_loop import loop_name
from ..event_loop import run as run_on_loop
from ..loop_errors import accept_error_handler
from ..protocol.messages import Error, Message, MsgType, System
from ..settings import ClientSettings
from .acl_publisher import AclPublisher
from .connection import ConnectOptions, RelayRefused, ServerConnection
from .control import control_for
from .e2e.context import E2EContext
from .edges.ipc import IpcHub
from .edges.tcp_proxy import TcpProxy
from .edges.watcher import TreeWatcher
from .manager import HotlinkManager, ManagerConfig
from .p2p.transport import NullPeerTransport, PeerTransport
from .session.base import FlowConfig
from .telemetry import Telemetry

log = logging.getLogger("hotlink.client")

TELEMETRY_FILE = "hotlink_telemetry.json"


def setup_logging(settings: ClientSettings) -> None:
    # One format for every hotlink process (hotlink.logs); library chatter stays quiet.
    logs.setup_logging(
        settings.effective_log_level, settings.effective_log_format, quiet=logs.CLIENT_QUIET
    )


def build_peer_transport(settings: ClientSettings) -> PeerTransport:
    """The P2P transport for this process: WebRTC unless SYFTBOX_HOTLINK_WEBRTC=0 (issue 5)."""
    if not settings.webrtc:
        return NullPeerTransport()
    # Imported here: the WebRTC stack is only loaded by clients that use it.
    from .p2p.webrtc_transport import WebRTCPeerTransport

    return WebRTCPeerTransport(settings)


def telemetry_path(settings: ClientSettings) -> Path:
    return Path(settings.data_dir) / "datasites" / settings.email / ".syftbox" / TELEMETRY_FILE


class ClientDaemon:
    def __init__(self, settings: ClientSettings, transport: PeerTransport | None = None) -> None:
        self.settings = settings
        self.datasites = Path(settings.data_dir) / "datasites"
        self.own = self.datasites / settings.email
        self.telemetry = Telemetry(
            telemetry_path(settings) if settings.hotlink else None,
            enabled=settings.hotlink,
            bench_strict=settings.bench_strict,
        )
        # A token we were given is always sent (a dev-mode server ignores it), unless
        # SYFTBOX_AUTH_ENABLED=0 says explicitly not to.
        token = settings.access_token if settings.auth_enabled is not False else ""
        self.connection = ServerConnection(
            ConnectOptions(server_url=settings.server_url, email=settings.email, token=token),
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
        )
        # One watcher for the tree: the publisher, the proxy and the IPC hub scan on its events.
        self.watcher = TreeWatcher(self.datasites)
        self.acl = AclPublisher(
            self.datasites, settings.email, self.connection.send, watcher=self.watcher
        )
        self.manager: HotlinkManager | None = None
        self.proxy: TcpProxy | None = None
        self.ipc: IpcHub | None = None
        self.transport: PeerTransport | None = None
        # Raises KeyFileError for unusable key files (the command says why in one line).
        self.e2e = E2EContext.from_settings(settings) if settings.hotlink else None
        if settings.hotlink:
            self.transport = transport or build_peer_transport(settings)
            self.manager = HotlinkManager(
                local_email=settings.email,
                datasites=self.datasites,
                wire=self.connection,
                telemetry=self.telemetry,
                transport=self.transport,
                config=ManagerConfig(
                    debug=settings.debug,
                    flow=FlowConfig(settings.flow_control, settings.flow_window),
                ),
                ready=self._wait_ready,
                e2e=self.e2e,
            )
            if settings.tcp_proxy:
                self.proxy = TcpProxy(
                    datasites=self.datasites,
                    local_email=settings.email,
                    bind_host=settings.tcp_proxy_addr,
                    chunk_size=settings.tcp_proxy_chunk_size,
                    opener=self.manager,
                    watcher=self.watcher,
                )
                self.manager.tunnels = self.proxy
                self.telemetry.proxies_source = self.proxy.snapshot
            self.ipc = IpcHub(
                datasites=self.datasites,
                local_email=settings.email,
                mode=settings.ipc_mode,
                tcp_addr=settings.tcp_addr,
                send=self.manager.send,
                watcher=self.watcher,
            )
            self.manager.ipc = self.ipc
        self._tasks: list[asyncio.Task[None]] = []
        # GET /status and /metrics on an owner-only UNIX socket (hotlink status).
        self.control = control_for(self)

    # ------------------------------------------------------------ connection events

    async def _on_connected(self, headers: Mapping[str, str]) -> None:
        self.control.on_connected()
        self.acl.start()
        if self.transport is not None:
            try:
                self.transport.on_server_connected(headers)
            except Exception:
                log.exception("peer transport failed to take the server's hints")

    async def _wait_ready(self, within: float) -> bool:
        """Connected, and our ACLs re-published to this connection (waiting for them at most
        ``within`` s in all): a restarted server must know them before it allows our Open."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        if not await self.connection.wait_connected(within):
            return False
        await self.acl.wait_published(max(0.0, deadline - loop.time()))
        return self.connection.connected

    async def _on_disconnected(self) -> None:
        self.control.on_disconnected()
        await self.acl.stop()
        if self.manager is not None:
            await self.manager.on_disconnected()

    async def _on_message(self, message: Message) -> None:
        payload = message.payload
        if message.typ >= MsgType.HOTLINK_OPEN:
            if self.manager is not None:
                await self.manager.handle_message(message)
            return
        if self.acl.handle_reply(message):
            return
        if isinstance(payload, System):
            log.debug("server greeting: version %s %s", payload.ver, payload.msg)
        elif isinstance(payload, Error):
            log.warning("server error %d for %s: %s", payload.cod, payload.pth, payload.msg)
        else:
            log.debug("ignoring %s from server", message.typ.name)

    # ------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event) -> int:
        s = self.settings
        self.own.mkdir(parents=True, exist_ok=True)
        await self.control.start()
        log.info(
            "hotlink client %s, data dir %s, server %s, %s loop",
            s.email,
            s.data_dir,
            s.server_url,
            loop_name(asyncio.get_running_loop()),
        )
        if s.hotlink:
            parts = ["ws relay"]
            if s.tcp_proxy:
                parts.append("tcp proxy")
            parts.append(f"ipc ({s.ipc_mode})")
            log.info("hotlink enabled: %s", " + ".join(parts))
            if self.e2e is None:
                log.warning(
                    "end-to-end encryption is off (SYFTBOX_HOTLINK_E2E=0): the relay can read "
                    "every stream it carries"
                )
            else:
                log.info(
                    "end-to-end encryption %s, identity key %s",
                    "required" if self.e2e.required else "on",
                    self.e2e.identity.fingerprint,
                )
        else:
            log.info("hotlink disabled (set SYFTBOX_HOTLINK=1 to enable)")
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.watcher.run(), name="watcher"))
        self._tasks.append(loop.create_task(self.connection.run(), name="connection"))
        if s.hotlink:
            self._tasks.append(loop.create_task(self.telemetry.run(), name="telemetry"))
        if self.proxy is not None:
            self._tasks.append(loop.create_task(self.proxy.run(), name="tcp-proxy"))
        if self.ipc is not None:
            self._tasks.append(loop.create_task(self.ipc.run(), name="ipc"))
        stopper = loop.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait(
                [stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED
            )
            failed = [t for t in done if t is not stopper and t.exception() is not None]
            for task in failed:
                exc = task.exception()
                if isinstance(exc, RelayRefused):
                    raise exc  # a user error: the command says why in one line, after shutdown
                log.error("%s stopped unexpectedly", task.get_name(), exc_info=exc)
            return 1 if failed else 0
        finally:
            stopper.cancel()
            await self.shutdown()

    async def shutdown(self) -> None:
        log.info("shutting down")
        by_name = {t.get_name(): t for t in self._tasks}
        for name in ("tcp-proxy", "ipc", "watcher"):
            await _cancel(by_name.get(name))
        if self.manager is not None:
            await self.manager.close()
        if self.transport is not None:
            with contextlib.suppress(Exception):
                await self.transport.close()
        await self.acl.stop()
        # Let the Close messages of the sessions leave before the socket goes.
        await asyncio.sleep(0.1)
        await self.connection.stop()
        await _cancel(by_name.get("connection"))
        await _cancel(by_name.get("telemetry"))
        await self.control.close()
        log.info("stopped")


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def run_client(settings: ClientSettings) -> int:
    """Run until SIGTERM or SIGINT; the exit code is 0 on a clean stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Out of descriptors (a hostile peer's markers, many app connections): one line per
    # interval, not a traceback for every failed accept on every listener.
    loop.set_exception_handler(accept_error_handler(log))
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return await ClientDaemon(settings).run(stop)


def main(settings: ClientSettings) -> int:
    """Run the daemon; raises :class:`RelayRefused` when the relay refuses who we are."""
    setup_logging(settings)
    return run_on_loop(run_client(settings), settings.event_loop)
