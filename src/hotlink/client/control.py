"""The client daemon's control endpoint: ``GET /status`` and ``GET /metrics`` on a UNIX socket.

Only the daemon's owner can reach it: the socket lives in a folder of mode 0700 owned by us
and is itself mode 0600 (where the socket is: :mod:`.control_client`). It only reads; nothing
on it changes the daemon. A stale socket from a daemon that died is replaced; a path held by
a live daemon, or by something that is not a socket, is left alone and the daemon runs
without a control endpoint (one WARNING says why).

``/status`` is the document of :mod:`.status`; ``/metrics`` is Prometheus text from a registry
of our own (several daemons in one test process must not share one), read from the same
document and the telemetry counters at scrape time, so nothing is counted twice.

The daemon owns one :class:`ControlServer`: :meth:`~ControlServer.start` in its run,
:meth:`~ControlServer.close` at shutdown (which removes the socket). The server also runs
the status builder's rate sampler, once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .control_client import control_socket_path, pointer_path, primary_socket_path
from .status import StatusBuilder

if TYPE_CHECKING:
    from .daemon import ClientDaemon

log = logging.getLogger("hotlink.control")

SAMPLE_INTERVAL = 1.0
DIR_MODE = 0o700
SOCKET_MODE = 0o600
# Telemetry events shown as gauges (the transport keeps them equal to a level).
GAUGE_EVENTS = {
    "p2p_peers": "WebRTC peer connections open now",
    "p2p_tasks": "Tasks the WebRTC transport runs now",
}
# Telemetry events with a metric of their own name.
NAMED_EVENTS = {
    "flow_waits": "Times a sender used up its credit and waited for the receiving app",
    "p2p_failed": "Sessions whose peer connection failed (they use the WebSocket)",
    "ws_fallbacks": "Sessions that sent frames over the WebSocket while P2P was not ready",
    "p2p_offers": "WebRTC offers made",
}


class ControlUnavailableHere(Exception):
    """The control socket cannot be made (the reason is the message)."""


# ---------------------------------------------------------------- metrics


class ClientCollector(Collector):
    """Reads the status document and telemetry at each scrape (a custom collector)."""

    def __init__(self, builder: StatusBuilder) -> None:
        self.builder = builder

    def describe(self) -> list[Metric]:
        return []  # no fixed set to check at registration: families depend on the state

    def collect(self) -> Iterator[Metric]:
        doc = self.builder.build()
        t = self.builder.telemetry
        conn = doc["connection"]
        p = "hotlink_client"

        info = GaugeMetricFamily(
            f"{p}_info", "This client", labels=["email", "version", "webrtc_backend"]
        )
        info.add_metric([doc["email"], doc["version"], doc["webrtc"]["backend"] or "none"], 1)
        yield info
        yield _gauge(
            f"{p}_connected", "1 while connected to the relay", conn["state"] == "connected"
        )
        yield _counter(f"{p}_connects", "Connections made to the relay", conn["connects"])
        yield _counter(f"{p}_reconnects", "Connections after the first", conn["reconnects"])
        if conn["rtt_ms"] is not None:
            yield _gauge(
                f"{p}_relay_rtt_seconds", "Round trip of the TCP connection to the relay",
                conn["rtt_ms"] / 1000.0,
            )  # fmt: skip
        yield _gauge(f"{p}_uptime_seconds", "Seconds since the daemon started", doc["uptime_s"])

        frames = CounterMetricFamily(f"{p}_sent_frames", "Frames sent, by path", labels=["path"])
        sent = CounterMetricFamily(
            f"{p}_sent_bytes", "Payload bytes sent, by path", labels=["path"]
        )
        frames.add_metric(["p2p"], t.tx_p2p_packets)
        frames.add_metric(["ws"], t.tx_ws_packets)
        sent.add_metric(["p2p"], t.tx_p2p_bytes)
        sent.add_metric(["ws"], t.tx_ws_bytes)
        yield frames
        yield sent
        arrived_frames = CounterMetricFamily(
            f"{p}_received_frames",
            "Frames of live sessions received from the network, by path (duplicates included)",
            labels=["path"],
        )
        arrived_bytes = CounterMetricFamily(
            f"{p}_received_bytes",
            "Payload bytes of live sessions received from the network, by path",
            labels=["path"],
        )
        for path in ("p2p", "ws"):
            arrived_frames.add_metric([path], t.arrived_frames.get(path, 0))
            arrived_bytes.add_metric([path], t.arrived_bytes.get(path, 0))
        yield arrived_frames
        yield arrived_bytes
        yield _counter(f"{p}_delivered_frames", "Frames written to local apps", t.rx_packets)
        yield _counter(f"{p}_delivered_bytes", "Payload bytes written to local apps", t.rx_bytes)

        sessions = GaugeMetricFamily(
            f"{p}_sessions", "Live sessions", labels=["direction", "transport"]
        )
        counts: dict[tuple[str, str], int] = {}
        for s in doc["sessions"]:
            key = (s["direction"], s["transport"])
            counts[key] = counts.get(key, 0) + 1
        for (direction, transport), n in sorted(counts.items()):
            sessions.add_metric([direction, transport], n)
        yield sessions
        yield _gauge(
            f"{p}_tunnels", "Tunnels listening", sum(x["listening"] for x in doc["tunnels"])
        )
        yield _gauge(
            f"{p}_app_connections", "App connections to tunnel ports",
            sum(x["app_connections"] for x in doc["tunnels"]),
        )  # fmt: skip

        events = dict(t.events)
        for name, doc_text in NAMED_EVENTS.items():
            yield _counter(f"{p}_{name}", doc_text, events.pop(name, 0))
        for name, doc_text in GAUGE_EVENTS.items():
            yield _gauge(f"{p}_{name}", doc_text, events.pop(name, 0))
        other = CounterMetricFamily(
            f"{p}_events", "Other telemetry counters, by name", labels=["event"]
        )
        for name, value in sorted(events.items()):
            other.add_metric([name], value)
        yield other


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))


def client_registry(builder: StatusBuilder) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClientCollector(builder))
    return registry


# ---------------------------------------------------------------- the socket's place


def private_dir(path: Path) -> None:
    """Make ``path`` a folder only we can enter (0700), or raise ControlUnavailableHere."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE, parents=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlUnavailableHere(f"{path} is not a folder")
    if st.st_uid != os.getuid():
        raise ControlUnavailableHere(f"{path} belongs to another user")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a daemon that died; raise if the path is in use or not ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlUnavailableHere(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as exc:
        raise ControlUnavailableHere(f"{path}: {exc}") from None
    finally:
        probe.close()
    raise ControlUnavailableHere(f"another client already serves {path}")


# ---------------------------------------------------------------- the server


class ControlServer:
    """The aiohttp app on the control socket, and the rate sampler."""

    def __init__(self, builder: StatusBuilder, path: Path, pointer: Path | None = None) -> None:
        self.builder = builder
        self.path = path
        # Where a fallback socket's path is written down for people (None: not a fallback).
        self.pointer = pointer
        self.registry = client_registry(builder)
        self._runner: web.AppRunner | None = None
        self._inode: tuple[int, int] | None = None
        self._sampler: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return self._runner is not None

    # ------------------------------------------------------------ connection events

    def on_connected(self) -> None:
        self.builder.tracker.on_connected()

    def on_disconnected(self) -> None:
        self.builder.tracker.on_disconnected()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> bool:
        """Listen on the socket; False (one WARNING) when it cannot be made: the daemon runs
        on without a control endpoint."""
        self.builder.tracker.watch()
        self._sampler = asyncio.get_running_loop().create_task(self._sample(), name="status")
        try:
            private_dir(self.path.parent)
            clear_stale_socket(self.path)
            app = web.Application()
            app.router.add_get("/status", self._status)
            app.router.add_get("/metrics", self._metrics)
            app.router.add_get("/", self._index)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            try:
                await web.UnixSite(runner, str(self.path)).start()
                # The folder already keeps others out; the mode says so on the socket too.
                os.chmod(self.path, SOCKET_MODE)
                st = os.lstat(self.path)
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
            self._inode = (st.st_dev, st.st_ino)
        except (ControlUnavailableHere, OSError) as exc:
            log.warning("no control socket (hotlink status will not find this client): %s", exc)
            return False
        self._write_pointer()
        log.info("control socket: %s", self.path)
        return True

    def _write_pointer(self) -> None:
        if self.pointer is None:
            return
        try:
            private_dir(self.pointer.parent)
            self.pointer.write_text(f"{self.path}\n")
        except (ControlUnavailableHere, OSError) as exc:
            log.debug("control socket pointer not written: %s", exc)

    async def close(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            self._remove_socket()
            if self.pointer is not None:
                with contextlib.suppress(OSError):
                    self.pointer.unlink()
        self.builder.close()

    def _remove_socket(self) -> None:
        # Only our own socket: a newer daemon may have replaced a path it found stale.
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._inode:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def _sample(self) -> None:
        while True:
            try:
                self.builder.sample()
            except Exception:
                log.exception("status sampling failed")
            await asyncio.sleep(SAMPLE_INTERVAL)

    # ------------------------------------------------------------ handlers

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.builder.build())

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _index(self, request: web.Request) -> web.Response:
        return web.json_response({"endpoints": ["/status", "/metrics"]})


def control_for(daemon: ClientDaemon) -> ControlServer:
    """The control server of a daemon, built from its parts (see :class:`StatusBuilder`)."""
    settings = daemon.settings
    builder = StatusBuilder(
        settings=settings,
        connection=daemon.connection,
        telemetry=daemon.telemetry,
        manager=daemon.manager,
        transport=daemon.transport,
        proxy=daemon.proxy,
        acl=daemon.acl,
    )
    path = control_socket_path(settings.data_dir, settings.email)
    primary = primary_socket_path(settings.data_dir, settings.email)
    pointer = pointer_path(settings.data_dir, settings.email) if path != primary else None
    return ControlServer(builder, path, pointer)
