"""TCP tunnels in a data dir: the ``stream.tcp`` marker and the ACL file each side writes.

A tunnel between two datasites is a folder ``<flow>/<run>/_mpc/<N>_to_<M>`` holding a
``stream.tcp`` marker (PROTOCOL.md §4.7: who the parties are, and each party's local proxy
port) and a ``syft.pub.yaml`` granting both parties read and write. Markers are never
synced: each party writes its own, in its own tree. Both daemons derive the path they send
on (the canonical key) from the marker: the channel folder, with the datasite of the party
with the smaller id first. The relay checks that path against the ACL of that datasite.

Our rule, so that two people set up one tunnel without talking to each other first:

- **Party ids come from the emails:** the smaller email (plain string order) is party 0 and
  ``from``, the other party 1 and ``to``. Both sides compute the same, so both markers are
  identical and the channel folder is ``0_to_1``; the canonical key lies in party 0's
  datasite.
- **Each side writes into its own datasite only**: the ACL, then the marker, in
  ``<own datasite>/<channel folder>``. The ACL that the relay checks is party 0's, written
  by party 0 (the relay takes a datasite's ACL files only from its owner); party 1's ACL
  covers its local key, which reference clients of the Rust line send on. Nothing is written
  into the copy of the peer's datasite: that folder belongs to the sync client.
- **The folder names the pair**: ``--flow`` names the service (default ``tunnel``, folder
  ``shared/flows/<flow>``) and the run defaults to both emails in order, so tunnels to
  different peers never share a folder and the peer's mirror command needs no extra flag.

The test lab writes the reference test's layout (PROTOCOL.md §9.1: markers and ACLs under
both datasite folders of both trees, plus an ACL at the flow root) with the same writer,
:func:`write_channel`.

Every write goes through :mod:`hotlink.client.localfs`: folders are made one segment at a
time and refused when a segment is a symlink, and files are replaced atomically, so the
daemon's marker scan never reads half a marker and a planted link is never written through.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .client.localfs import (
    MARKER_MAX_BYTES,
    make_folder_within,
    read_regular_file,
    remove_empty_folders_within,
    remove_file_within,
    write_file_within,
)
from .protocol.acl import ACL_FILE, ACLError, identity_problem, parse_acl
from .protocol.errors import ProtocolError
from .protocol.markers import (
    MPC_DIR,
    TCP_MARKER,
    ProxyChannel,
    TcpMarker,
    parse_channel_dir,
    parse_tcp_marker,
    proxy_channel,
)

FLOWS_ROOT = "shared/flows"
DEFAULT_FLOW = "tunnel"
DEFAULT_RUN = "run1"
# A folder name may be 255 bytes; a run named after two long emails falls back to a hash.
_MAX_RUN_NAME = 200
# Folders the client keeps its own state in: no tunnel lives there.
_SKIP_DIRS = frozenset({".syftbox"})


class TunnelError(ValueError):
    """A tunnel that cannot be written as asked; the message says why in one line."""


# ---------------------------------------------------------------- the channel


@dataclass(frozen=True)
class Channel:
    """A tunnel between party ``from_id`` and party ``to_id`` (PROTOCOL.md §4.7, §9.1).

    The channel folder is ``<flow>/<run>/_mpc/<from_id>_to_<to_id>`` under a datasite
    (``flow`` is datasite-relative); ``ports`` maps each party's email to the port its
    client listens on for that party's app.
    """

    from_email: str
    to_email: str
    from_id: int
    to_id: int
    ports: Mapping[str, int]
    flow: str = f"{FLOWS_ROOT}/{DEFAULT_FLOW}"
    run: str = DEFAULT_RUN

    @property
    def channel_dir(self) -> str:
        return f"{self.flow}/{self.run}/{MPC_DIR}/{self.from_id}_to_{self.to_id}"

    @property
    def parties(self) -> tuple[str, str]:
        return (self.from_email, self.to_email)

    def port(self, email: str) -> int:
        """The local proxy port of ``email``'s client: that party's app dials it."""
        return int(self.ports[email])

    def peer_of(self, email: str) -> str:
        if email == self.from_email:
            return self.to_email
        if email == self.to_email:
            return self.from_email
        raise TunnelError(f"{email} is not a party of this tunnel")

    def marker(self) -> TcpMarker:
        return TcpMarker(self.from_email, self.to_email, 0, dict(self.ports))

    def marker_text(self) -> str:
        return tcp_marker_text(self.from_email, self.to_email, self.ports)

    def proxy_channel(self, local_email: str) -> ProxyChannel:
        """The tunnel as ``local_email``'s daemon will see it (raises ProtocolError where the
        daemon would skip the marker)."""
        rel = f"{local_email}/{self.channel_dir}/{TCP_MARKER}"
        return proxy_channel(rel, self.marker(), local_email)

    @property
    def canonical_key(self) -> str:
        """The path both directions are sent on (the smaller party id's datasite)."""
        return self.proxy_channel(self.from_email).canonical_key

    @property
    def owner(self) -> str:
        """Whose datasite holds the canonical key, so whose ACL the relay checks."""
        return self.canonical_key.split("/", 1)[0]

    def acl_rel_path(self, owner: str | None = None) -> str:
        """The channel ACL in ``owner``'s datasite (default: the one the relay checks)."""
        return f"{owner or self.owner}/{self.channel_dir}/{ACL_FILE}"


def flow_folder(flow: str) -> str:
    """The datasite-relative folder of ``--flow``: a bare name lives in ``shared/flows/``,
    a value with a ``/`` is taken as the folder itself (e.g. ``shared/flows/tcp-test``)."""
    flow = flow.strip().strip("/")
    segments = flow.split("/") if "/" in flow else [*FLOWS_ROOT.split("/"), flow]
    for segment in segments:
        _check_name(segment, "--flow")
        if segment == MPC_DIR:
            raise TunnelError(f"--flow {flow!r}: {MPC_DIR} is the channel level, not a flow")
    return "/".join(segments)


def pair_run(email_a: str, email_b: str) -> str:
    """The default run folder: both emails in order, so each pair of peers gets its own
    folder and both sides name it alike (a hash where the names would be too long)."""
    first, second = sorted((email_a, email_b))
    name = f"{first}+{second}"
    if len(name.encode()) <= _MAX_RUN_NAME:
        return name
    return "pair-" + hashlib.sha256(f"{first}\n{second}".encode()).hexdigest()[:24]


def _check_name(segment: str, what: str) -> None:
    if segment in ("", ".", "..") or "\x00" in segment or "/" in segment:
        raise TunnelError(f"{what}: {segment!r} is not a usable folder name")
    if segment.startswith("."):
        raise TunnelError(f"{what}: {segment!r} starts with a dot (hidden folders are skipped)")


def check_email(email: str, what: str) -> str:
    """``email`` stripped, or a :class:`TunnelError` saying why it cannot name a party."""
    email = email.strip()
    if "@" not in email or email.startswith("@") or email.endswith("@") or " " in email:
        raise TunnelError(f"{what}: {email!r} is not an email address")
    _check_name(email, what)
    problem = identity_problem(email)
    if problem is not None:
        raise TunnelError(f"{what}: {email!r} {problem}")
    return email


def check_port(port: int, what: str) -> int:
    if not 1 <= port <= 65535:
        raise TunnelError(f"{what}: {port} is not a port number (1-65535)")
    return port


def tunnel_channel(
    me: str,
    peer: str,
    port: int,
    peer_port: int,
    *,
    flow: str = DEFAULT_FLOW,
    run: str | None = None,
) -> Channel:
    """The tunnel ``me`` opens to ``peer`` (our app dials ``port``, the peer's app dials
    ``peer_port`` on the peer's machine), with party ids from the email order."""
    me = check_email(me, "--email")
    peer = check_email(peer, "--peer")
    if me == peer:
        raise TunnelError(f"--peer {peer}: a tunnel needs two different datasites")
    ports = {me: check_port(port, "--port"), peer: check_port(peer_port, "--peer-port")}
    folder = flow_folder(flow)
    run_name = pair_run(me, peer) if run is None else run.strip()
    _check_name(run_name, "--run")
    if run_name == MPC_DIR:
        raise TunnelError(f"--run {run_name!r}: {MPC_DIR} is the channel level, not a run")
    first, second = sorted((me, peer))
    return Channel(
        first, second, 0, 1, {first: ports[first], second: ports[second]}, folder, run_name
    )


def mirror_command(channel: Channel, me: str, *, flow: str | None, run: str | None) -> str:
    """The ``hotlink tunnel open`` the peer runs on its machine for the same tunnel (``flow``
    and ``run``: what we were given, repeated only when not the default)."""
    peer = channel.peer_of(me)
    argv = [
        "hotlink", "tunnel", "open", "--peer", me,
        "--port", str(channel.port(peer)), "--peer-port", str(channel.port(me)),
    ]  # fmt: skip
    if flow is not None:
        argv += ["--flow", flow]
    if run is not None:
        argv += ["--run", run]
    return shlex.join(argv)


# ---------------------------------------------------------------- file contents


def _yaml_str(value: str) -> str:
    """A single-quoted YAML scalar (a quote inside is doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _yaml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_yaml_str(i) for i in items) + "]"


def acl_text(
    rules: Sequence[tuple[str, Sequence[str], Sequence[str]]],
    *,
    admin: Sequence[str] = (),
    terminal: bool = False,
) -> str:
    """``syft.pub.yaml`` text; ``rules`` are (pattern, read, write)."""
    lines = [f"terminal: {'true' if terminal else 'false'}", "rules:"]
    for pattern, read, write in rules:
        lines += [
            f"  - pattern: {_yaml_str(pattern)}",
            "    access:",
            f"      admin: {_yaml_list(admin)}",
            f"      write: {_yaml_list(write)}",
            f"      read: {_yaml_list(read)}",
        ]
    return "\n".join(lines) + "\n"


def channel_acl_text(parties: Sequence[str]) -> str:
    """The channel folder's ACL: every party reads and writes everything in it."""
    return acl_text([("**", list(parties), list(parties))])


def tcp_marker_text(from_email: str, to_email: str, ports: Mapping[str, int]) -> str:
    """A ``stream.tcp`` marker (PROTOCOL.md §4.7): per-party proxy ports, ``port`` unused."""
    return json.dumps({"from": from_email, "to": to_email, "port": 0, "ports": dict(ports)})


# ---------------------------------------------------------------- writing


def _segments(rel: str) -> list[str]:
    return [s for s in rel.strip("/").split("/") if s]


def write_in_tree(datasites: Path, rel_file: str, text: str) -> Path:
    """``<datasites>/<rel_file>``, its folders made one at a time and the file replaced
    atomically; a symlink on the way is refused (:class:`~hotlink.client.localfs.UnsafePath`).
    """
    segments = _segments(rel_file)
    datasites.mkdir(parents=True, exist_ok=True)
    if len(segments) > 1:
        make_folder_within(datasites, segments[:-1])
    path = datasites.joinpath(*segments)
    write_file_within(datasites, path, text.encode())
    return path


def write_channel(
    datasites: Path,
    channel: Channel,
    *,
    owners: Sequence[str],
    acl_roots: Sequence[str] = (),
    parties: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``channel`` into one tree (``<data dir>/datasites``) under each datasite folder
    of ``owners``: the ACLs first (the channel folder's and one in each datasite-relative
    folder of ``acl_roots``, granting ``parties``, default both), the markers last, so that
    no proxy starts before its ACL exists. Returns the files written, in order."""
    who = list(parties if parties is not None else channel.parties)
    acl = channel_acl_text(who)
    written = []
    for owner in owners:
        for folder in (channel.channel_dir, *acl_roots):
            written.append(write_in_tree(datasites, f"{owner}/{folder}/{ACL_FILE}", acl))
    for owner in owners:
        rel = f"{owner}/{channel.channel_dir}/{TCP_MARKER}"
        written.append(write_in_tree(datasites, rel, channel.marker_text()))
    return written


def open_tunnel(datasites: Path, me: str, channel: Channel) -> list[Path]:
    """Our side of ``channel``: its ACL and marker in our own datasite (see the module
    docstring). Refuses a folder that holds another pair's tunnel, and a port that another
    of our tunnels listens on."""
    peer = channel.peer_of(me)
    my_port = channel.port(me)
    for entry in find_tunnels(datasites, me):
        if entry.channel is None:
            continue
        if entry.channel.canonical_key == channel.canonical_key:
            if entry.channel.peer_email == peer:
                continue  # this tunnel itself, written before: updated in place
            # The daemon runs one tunnel per key (the key names no peer when we are party 0).
            raise TunnelError(
                f"{entry.folder} already holds a tunnel with {entry.channel.peer_email}; "
                "choose another --flow or --run"
            )
        if entry.folder == f"{me}/{channel.channel_dir}":
            raise TunnelError(
                f"{entry.folder} already holds a tunnel with {entry.channel.peer_email}; "
                "choose another --flow or --run"
            )
        if entry.channel.listen_port == my_port:
            raise TunnelError(
                f"port {my_port} is taken by the tunnel with {entry.channel.peer_email} "
                f"({entry.rel_path}); choose another --port"
            )
    return write_channel(datasites, channel, owners=[me])


def terminal_acl_above(datasites: Path, me: str, channel: Channel) -> str | None:
    """The datasite-relative path of an ACL file above the channel folder that says
    ``terminal: true``: it stops the relay's search, so the channel's ACL would not count."""
    parts = _segments(channel.channel_dir)
    for depth in range(len(parts)):
        rel = "/".join([me, *parts[:depth], ACL_FILE])
        try:
            text = read_regular_file(datasites / rel, MARKER_MAX_BYTES, root=datasites)
            if parse_acl(text.decode(), rel).terminal:
                return rel
        except (OSError, UnicodeDecodeError, ACLError):
            continue
    return None


# ---------------------------------------------------------------- listing and closing


@dataclass(frozen=True)
class TunnelEntry:
    """A ``stream.tcp`` marker found in a tree: the tunnel it describes for us, or why the
    daemon skips it (``problem``)."""

    rel_path: str  # datasite-relative, starts with the owner's email
    channel: ProxyChannel | None = None
    marker: TcpMarker | None = None
    problem: str | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return self.rel_path.rsplit("/", 1)[0]

    @property
    def owner(self) -> str:
        return self.rel_path.split("/", 1)[0]

    @property
    def peer_port(self) -> int | None:
        if self.channel is None:
            return None
        return self.ports.get(self.channel.peer_email)

    @property
    def flow_path(self) -> str:
        """The folder above ``<run>/_mpc/N_to_M`` (datasite-relative, without the owner)."""
        segments = self.rel_path.split("/")[1:-1]
        if MPC_DIR in segments:
            segments = segments[: len(segments) - 1 - segments[::-1].index(MPC_DIR)]
        return "/".join(segments[:-1])


def _walk_markers(datasites: Path) -> Iterator[str]:
    """Datasite-relative paths of every ``stream.tcp`` regular file; no link is followed
    (a symlinked folder is not entered, a symlinked marker not listed)."""
    for top, dirs, files in os.walk(datasites, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        if TCP_MARKER in files:
            full = os.path.join(top, TCP_MARKER)
            try:
                if not stat.S_ISREG(os.lstat(full).st_mode):
                    continue
            except OSError:
                continue
            yield Path(os.path.relpath(full, datasites)).as_posix()


def _entry(datasites: Path, rel: str, me: str) -> TunnelEntry | None:
    segments = rel.split("/")
    tunnel_path = MPC_DIR in segments[1:-2] and parse_channel_dir(segments[-2]) is not None
    try:
        data = read_regular_file(datasites / rel, MARKER_MAX_BYTES, root=datasites)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return TunnelEntry(rel, problem=f"unreadable: {exc}") if tunnel_path else None
    try:
        marker = parse_tcp_marker(text, rel)
    except ProtocolError as exc:
        # An IPC marker in TCP mode has the same name (PROTOCOL.md §11.12): only a marker
        # in a channel folder is a tunnel that went wrong.
        return TunnelEntry(rel, problem=str(exc)) if tunnel_path else None
    try:
        channel = proxy_channel(rel, marker, me)
    except ProtocolError as exc:
        return TunnelEntry(rel, marker=marker, problem=str(exc), ports=dict(marker.ports))
    return TunnelEntry(rel, channel, marker, ports=dict(marker.ports))


def find_tunnels(datasites: Path, me: str) -> list[TunnelEntry]:
    """Every tunnel marker in the tree (``<data dir>/datasites``) as ``me`` sees it, in
    path order; markers the daemon would skip come with their ``problem``."""
    if not datasites.is_dir():
        return []
    entries = []
    for rel in _walk_markers(datasites):
        entry = _entry(datasites, rel, me)
        if entry is not None:
            entries.append(entry)
    return entries


def close_tunnels(
    datasites: Path,
    me: str,
    peer: str,
    *,
    flow: str | None = None,
    acls: bool = False,
) -> list[Path]:
    """Remove our markers of tunnels with ``peer`` (only those in ``--flow`` when given) so
    the daemon stops their proxies; with ``acls`` also the ACL file beside each marker, and
    the channel folders left empty. Returns the files removed."""
    folder = flow_folder(flow) if flow is not None else None
    removed: list[Path] = []
    for entry in find_tunnels(datasites, me):
        if entry.channel is None or entry.channel.peer_email != peer:
            continue
        if folder is not None and entry.flow_path != folder:
            continue
        marker = datasites / entry.rel_path
        if remove_file_within(datasites, marker):
            removed.append(marker)
        if acls:
            acl = datasites / entry.folder / ACL_FILE
            if remove_file_within(datasites, acl):
                removed.append(acl)
            segments = _segments(entry.folder)
            # The channel folder, _mpc and the run folder, while empty.
            chain = [
                datasites.joinpath(*segments[:n])
                for n in range(len(segments) - 2, len(segments) + 1)
            ]
            remove_empty_folders_within(datasites, chain)
    return removed
