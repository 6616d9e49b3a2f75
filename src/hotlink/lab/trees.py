"""Test trees: the reference test's tunnel layout and default ACLs, written with the
product's writer (:mod:`hotlink.tunnels`).

The reference test (PROTOCOL.md §9.1) writes a tunnel into *both* datasite folders of
*both* clients' trees, with one more ACL at the flow root; a person sets up a tunnel with
``hotlink tunnel open``, which writes only into its own datasite. Both go through
:func:`hotlink.tunnels.write_channel`.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..client.localfs import write_file_within
from ..protocol.acl import ACL_FILE
from ..protocol.markers import TCP_MARKER
from ..tunnels import (
    Channel,
    acl_text,
    channel_acl_text,
    tcp_marker_text,
    write_channel,
    write_in_tree,
)

__all__ = [
    "Channel",
    "acl_text",
    "free_port",
    "tcp_marker_text",
    "write_acl",
    "write_channel_tree",
    "write_default_acls",
    "write_tcp_channel",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (bound to 0, then released, like the reference test)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_acl(
    folder: Path,
    *,
    read: Sequence[str] = (),
    write: Sequence[str] = (),
    pattern: str = "**",
    terminal: bool = False,
) -> Path:
    """Write ``folder/syft.pub.yaml`` with one rule (``pattern``: read/write lists)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ACL_FILE
    text = acl_text([(pattern, read, write)], terminal=terminal)
    write_file_within(folder, path, text.encode())
    return path


def write_default_acls(datasite: Path) -> None:
    """The reference devstack's defaults: a private root and a public ``public/`` folder."""
    write_acl(datasite)
    write_acl(datasite / "public", read=["*"], write=["*"])


def write_tcp_channel(
    datasites: Path,
    owner: str,
    channel_dir: str,
    *,
    from_email: str,
    to_email: str,
    ports: Mapping[str, int],
    parties: Sequence[str] | None = None,
    acl_roots: Sequence[str] = (),
) -> Path:
    """A tunnel marker in any folder (ids, parties and layout as the caller wants them, for
    tests of odd layouts), in one client's copy of ``owner``'s datasite.

    Writes ``syft.pub.yaml`` (read/write for ``parties``, default from and to) into
    ``<datasites>/<owner>/<channel_dir>`` and each folder of ``acl_roots`` (e.g.
    ``shared/flows/tcp-test``), then ``stream.tcp`` there. Returns the folder.
    """
    acl = channel_acl_text(list(parties if parties is not None else (from_email, to_email)))
    for folder in (channel_dir, *acl_roots):
        write_in_tree(datasites, f"{owner}/{folder}/{ACL_FILE}", acl)
    marker = write_in_tree(
        datasites,
        f"{owner}/{channel_dir}/{TCP_MARKER}",
        tcp_marker_text(from_email, to_email, ports),
    )
    return marker.parent


def write_channel_tree(datasites: Path, channel: Channel) -> None:
    """The reference layout in one client's tree: under BOTH parties' datasite folders, the
    ACLs (channel folder and flow root) of both first and the ``stream.tcp`` markers last, so
    that no proxy starts before every ACL exists."""
    write_channel(datasites, channel, owners=channel.parties, acl_roots=[channel.flow])
