"""Marker files and channel keys (PROTOCOL.md §4.2, §4.7; DECISIONS.md #8, #9, #10, #13).

Apps and tests drop small files into datasite folders to ask for a hotlink: ``stream.tcp``
(a TCP tunnel between MPC parties), ``stream.accept`` (the receiver agrees to inbound data)
and ``stream.sock`` (a local IPC socket). This module parses them and derives the paths a
tunnel sends on; finding and reading the files is the caller's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

TCP_MARKER = "stream.tcp"
ACCEPT_MARKER = "stream.accept"
SOCK_MARKER = "stream.sock"
PIPE_MARKER = "stream.pipe"
TCP_REQUEST_NAME = "stream.tcp.request"
MPC_DIR = "_mpc"

# Local-only files; never synced (every party writes its own).
MARKER_NAMES = frozenset({TCP_MARKER, ACCEPT_MARKER, SOCK_MARKER, PIPE_MARKER})

_CHANNEL_DIR = re.compile(r"^([0-9]+)_to_([0-9]+)$")


def _basename(p: str) -> str:
    return p.rsplit("/", 1)[-1]


def is_hotlink_path(p: str) -> bool:
    """Eligible for hotlink: a ``.request`` or ``.response`` file (incl. stream.tcp.request)."""
    return p.endswith((".request", ".response"))


def is_tcp_proxy_path(p: str) -> bool:
    """A TCP-tunnel path: its file name is ``stream.tcp.request``."""
    return _basename(p) == TCP_REQUEST_NAME


def session_dir(p: str) -> str:
    """The folder a session covers: the parent of an eligible path, else the path itself."""
    if is_hotlink_path(p):
        return p.rsplit("/", 1)[0] if "/" in p else ""
    return p


def path_owner(p: str) -> str:
    """The datasite a path belongs to: its first segment."""
    return p.lstrip("/").split("/", 1)[0]


def parse_channel_dir(name: str) -> tuple[int, int] | None:
    """``N_to_M`` as the party ids (N, M), or None for any other folder name."""
    match = _CHANNEL_DIR.match(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class TcpMarker:
    from_email: str
    to_email: str
    port: int
    ports: dict[str, int]


def _short(value: Any) -> str:
    """A value for an error message, cut short: a marker may hold anything."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ProtocolError(f"{where} must be a port number 0-65535, got {_short(value)}")
    return value


def parse_tcp_marker(text: str, source: str) -> TcpMarker:
    """The JSON of a ``stream.tcp`` marker; errors name ``source`` (the marker's path).

    Like Go we require JSON (Rust's bare ``port`` / ``host:port`` forms would also match the
    TCP-mode IPC marker of the same name, PROTOCOL.md §11.12).

    Anyone who can drop a file can write a marker, so every failure of the JSON parser
    becomes a ProtocolError: ``[`` repeated 100,000 times raises RecursionError, which must
    not end the caller's discovery loop.
    """
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ProtocolError(f"{source}: TCP marker is nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError(f"{source}: TCP marker is not valid JSON: {exc}") from None
    except Exception as exc:  # whatever else the parser may raise on hostile input
        raise ProtocolError(
            f"{source}: TCP marker could not be parsed ({type(exc).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{source}: TCP marker must be a JSON object")
    emails = []
    for key in ("from", "to"):
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ProtocolError(f"{source}: TCP marker needs a non-empty {key!r} email")
        emails.append(value.strip())
    port = _port(obj.get("port", 0) or 0, f"{source}: 'port'")
    raw_ports = obj.get("ports") or {}
    if not isinstance(raw_ports, dict):
        raise ProtocolError(f"{source}: 'ports' must map emails to port numbers")
    ports = {
        str(k).strip(): _port(v, f"{source}: ports[{_short(k)}]") for k, v in raw_ports.items()
    }
    return TcpMarker(emails[0], emails[1], port, ports)


@dataclass(frozen=True)
class ProxyChannel:
    """One TCP tunnel as seen by ``local_email``: where to listen and which paths to use."""

    marker_path: str
    # The path both parties send on and register writers under (DECISIONS.md #8, #9).
    canonical_key: str
    # The marker's own folder with stream.tcp.request (also a writer key).
    local_key: str
    local_email: str
    peer_email: str
    listen_port: int
    from_id: int
    to_id: int

    @property
    def writer_keys(self) -> tuple[str, ...]:
        """Frame paths whose data goes to this tunnel's local app connection."""
        if self.local_key == self.canonical_key:
            return (self.canonical_key,)
        return (self.canonical_key, self.local_key)


def proxy_channel(marker_rel_path: str, marker: TcpMarker, local_email: str) -> ProxyChannel:
    """The tunnel a marker at datasite-relative ``marker_rel_path`` describes for us.

    ``<owner>/.../_mpc/N_to_M/stream.tcp``: the canonical key puts the email of the party with
    the smaller id first and the folder as ``min_to_max``, so both parties (whichever
    datasite's marker they found) agree on one path.
    """
    rel = marker_rel_path.strip("/")
    segments = rel.split("/")
    if len(segments) < 3 or segments[-1] != TCP_MARKER:
        raise ProtocolError(f"{marker_rel_path}: not a {TCP_MARKER} marker in a channel folder")
    if MPC_DIR not in segments[1:-2]:
        raise ProtocolError(f"{marker_rel_path}: TCP markers must live under a /{MPC_DIR}/ folder")
    ids = parse_channel_dir(segments[-2])
    if ids is None:
        raise ProtocolError(f"{marker_rel_path}: the marker's folder must be named N_to_M")
    from_id, to_id = ids
    if from_id == to_id:
        raise ProtocolError(f"{marker_rel_path}: a channel needs two different party ids")
    if marker.from_email == marker.to_email:
        raise ProtocolError(f"{marker_rel_path}: 'from' and 'to' are the same email")
    if local_email == marker.from_email:
        peer_email = marker.to_email
    elif local_email == marker.to_email:
        peer_email = marker.from_email
    else:
        raise ProtocolError(
            f"{marker_rel_path}: {local_email} is neither party "
            f"({marker.from_email}, {marker.to_email})"
        )
    port = marker.ports.get(local_email, marker.port)
    if port == 0:
        raise ProtocolError(f"{marker_rel_path}: no listen port for {local_email}")
    min_email = marker.to_email if to_id < from_id else marker.from_email
    lo, hi = min(from_id, to_id), max(from_id, to_id)
    middle = segments[1:-2]
    canonical = "/".join([min_email, *middle, f"{lo}_to_{hi}", TCP_REQUEST_NAME])
    local = "/".join([*segments[:-1], TCP_REQUEST_NAME])
    return ProxyChannel(
        marker_path=rel,
        canonical_key=canonical,
        local_key=local,
        local_email=local_email,
        peer_email=peer_email,
        listen_port=port,
        from_id=from_id,
        to_id=to_id,
    )
