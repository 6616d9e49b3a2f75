"""``hotlink tunnel open|list|close`` and the tree writer behind them (hotlink.tunnels)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hotlink.cli import app
from hotlink.client.localfs import UnsafePath
from hotlink.protocol.acl import parse_acl
from hotlink.protocol.markers import parse_tcp_marker, proxy_channel
from hotlink.tunnels import (
    Channel,
    TunnelError,
    close_tunnels,
    find_tunnels,
    mirror_command,
    open_tunnel,
    pair_run,
    terminal_acl_above,
    tunnel_channel,
    write_in_tree,
)

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


def tree_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def daemon_view(datasites: Path, rel: str, me: str) -> tuple[str, int, str]:
    """What the daemon makes of a marker: (canonical key, listen port, peer)."""
    marker = parse_tcp_marker((datasites / rel).read_text(), rel)
    channel = proxy_channel(rel, marker, me)
    return channel.canonical_key, channel.listen_port, channel.peer_email


# ---------------------------------------------------------------- party ids and paths


def test_both_sides_compute_the_same_tunnel_without_talking() -> None:
    ours = tunnel_channel(BOB, ALICE, 9001, 9000)
    theirs = tunnel_channel(ALICE, BOB, 9000, 9001)
    assert ours == theirs
    # The smaller email is party 0 and owns the canonical key.
    assert (ours.from_email, ours.from_id, ours.to_email, ours.to_id) == (ALICE, 0, BOB, 1)
    assert ours.channel_dir == f"shared/flows/tunnel/{ALICE}+{BOB}/_mpc/0_to_1"
    assert ours.canonical_key == f"{ALICE}/{ours.channel_dir}/stream.tcp.request"
    assert ours.owner == ALICE
    assert ours.ports == {ALICE: 9000, BOB: 9001}


def test_tunnels_to_different_peers_never_share_a_folder() -> None:
    with_bob = tunnel_channel(ALICE, BOB, 9000, 9001)
    with_carol = tunnel_channel(ALICE, CAROL, 9002, 9003)
    assert with_bob.channel_dir != with_carol.channel_dir
    named = tunnel_channel(ALICE, BOB, 9004, 9005, flow="ssh")
    assert named.channel_dir.startswith("shared/flows/ssh/")
    assert named.channel_dir != with_bob.channel_dir


def test_flow_with_a_slash_is_a_datasite_folder_and_run_is_kept() -> None:
    ch = tunnel_channel(BOB, ALICE, 1, 2, flow="shared/flows/tcp-test", run="run1")
    assert ch.channel_dir == "shared/flows/tcp-test/run1/_mpc/0_to_1"


def test_long_emails_give_a_short_run_name() -> None:
    a, b = "a" * 120 + "@example.com", "b" * 120 + "@example.com"
    name = pair_run(b, a)
    assert name == pair_run(a, b)
    assert len(name.encode()) <= 255 and "/" not in name


@pytest.mark.parametrize(
    ("me", "peer", "port", "peer_port", "flow", "run", "says"),
    [
        (ALICE, ALICE, 1, 2, "tunnel", None, "two different"),
        (ALICE, "bob", 1, 2, "tunnel", None, "not an email"),
        (ALICE, "b*b@example.com", 1, 2, "tunnel", None, "'*'"),
        (ALICE, BOB, 0, 2, "tunnel", None, "--port"),
        (ALICE, BOB, 1, 70000, "tunnel", None, "--peer-port"),
        (ALICE, BOB, 1, 2, "../x", None, "not a usable folder name"),
        (ALICE, BOB, 1, 2, "a/_mpc", None, "_mpc"),
        (ALICE, BOB, 1, 2, ".hidden", None, "dot"),
        (ALICE, BOB, 1, 2, "tunnel", "..", "not a usable folder name"),
    ],
)
def test_bad_input_is_refused_with_a_reason(
    me: str, peer: str, port: int, peer_port: int, flow: str, run: str | None, says: str
) -> None:
    with pytest.raises(TunnelError, match=says.replace("*", r"\*")):
        tunnel_channel(me, peer, port, peer_port, flow=flow, run=run)


# ---------------------------------------------------------------- what is written where


def test_each_side_writes_acl_then_marker_into_its_own_datasite_only(tmp_path: Path) -> None:
    ds_alice, ds_bob = tmp_path / "alice", tmp_path / "bob"
    ch = tunnel_channel(ALICE, BOB, 9000, 9001)
    written = open_tunnel(ds_alice, ALICE, ch)
    assert [p.relative_to(ds_alice).as_posix() for p in written] == [
        f"{ALICE}/{ch.channel_dir}/syft.pub.yaml",
        f"{ALICE}/{ch.channel_dir}/stream.tcp",
    ]
    open_tunnel(ds_bob, BOB, tunnel_channel(BOB, ALICE, 9001, 9000))
    assert tree_files(ds_bob) == [
        f"{BOB}/{ch.channel_dir}/stream.tcp",
        f"{BOB}/{ch.channel_dir}/syft.pub.yaml",
    ]
    # Both daemons agree on the key, each listens on its own port for the other.
    assert daemon_view(ds_alice, f"{ALICE}/{ch.channel_dir}/stream.tcp", ALICE) == (
        ch.canonical_key,
        9000,
        BOB,
    )
    assert daemon_view(ds_bob, f"{BOB}/{ch.channel_dir}/stream.tcp", BOB) == (
        ch.canonical_key,
        9001,
        ALICE,
    )
    # The ACL the relay checks (alice's, party 0) lets both parties read and write.
    acl = ds_alice / ch.acl_rel_path()
    [rule] = parse_acl(acl.read_text(), str(acl)).rules
    assert rule.pattern == "**"
    assert set(rule.read) == {ALICE, BOB} and set(rule.write) == {ALICE, BOB}
    assert not parse_acl(acl.read_text(), str(acl)).terminal
    assert not [p for p in ds_alice.rglob("*") if p.name.endswith(".tmp")]


def test_open_again_updates_the_ports_in_place(tmp_path: Path) -> None:
    open_tunnel(tmp_path, ALICE, tunnel_channel(ALICE, BOB, 9000, 9001))
    ch = tunnel_channel(ALICE, BOB, 9100, 9101)
    open_tunnel(tmp_path, ALICE, ch)
    [entry] = find_tunnels(tmp_path, ALICE)
    assert entry.channel is not None and entry.channel.listen_port == 9100
    assert entry.peer_port == 9101


def test_a_port_used_by_another_tunnel_is_refused(tmp_path: Path) -> None:
    open_tunnel(tmp_path, ALICE, tunnel_channel(ALICE, BOB, 9000, 9001))
    with pytest.raises(TunnelError, match="port 9000 is taken by the tunnel with bob"):
        open_tunnel(tmp_path, ALICE, tunnel_channel(ALICE, CAROL, 9000, 9001))


def test_a_folder_holding_another_pair_is_refused(tmp_path: Path) -> None:
    open_tunnel(tmp_path, ALICE, tunnel_channel(ALICE, BOB, 9000, 9001, run="shared"))
    with pytest.raises(TunnelError, match="already holds a tunnel with bob"):
        open_tunnel(tmp_path, ALICE, tunnel_channel(ALICE, CAROL, 9002, 9003, run="shared"))


def test_a_symlinked_folder_on_the_way_is_refused(tmp_path: Path) -> None:
    datasites, outside = tmp_path / "datasites", tmp_path / "outside"
    (datasites / ALICE / "shared").mkdir(parents=True)
    outside.mkdir()
    (datasites / ALICE / "shared" / "flows").symlink_to(outside)
    with pytest.raises(UnsafePath):
        open_tunnel(datasites, ALICE, tunnel_channel(ALICE, BOB, 9000, 9001))
    assert list(outside.iterdir()) == []


def test_a_symlink_at_the_marker_is_replaced_not_written_through(tmp_path: Path) -> None:
    ch = tunnel_channel(ALICE, BOB, 9000, 9001)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = tmp_path / "datasites" / ALICE / ch.channel_dir
    folder.mkdir(parents=True)
    (folder / "stream.tcp").symlink_to(victim)
    open_tunnel(tmp_path / "datasites", ALICE, ch)
    assert victim.read_text() == "keep me"
    assert not (folder / "stream.tcp").is_symlink()
    assert json.loads((folder / "stream.tcp").read_text())["from"] == ALICE


def test_a_terminal_acl_above_the_channel_is_found(tmp_path: Path) -> None:
    ch = tunnel_channel(ALICE, BOB, 9000, 9001)
    assert terminal_acl_above(tmp_path, ALICE, ch) is None
    write_in_tree(tmp_path, f"{ALICE}/shared/syft.pub.yaml", "terminal: true\nrules: []\n")
    assert terminal_acl_above(tmp_path, ALICE, ch) == f"{ALICE}/shared/syft.pub.yaml"


# ---------------------------------------------------------------- mirror command


def test_mirror_command_sets_up_the_same_tunnel_on_the_peer() -> None:
    ch = tunnel_channel(BOB, ALICE, 9001, 9000, flow="my db", run="r 1")
    argv = shlex.split(mirror_command(ch, BOB, flow="my db", run="r 1"))
    assert argv[:3] == ["hotlink", "tunnel", "open"]
    opts = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert opts == {
        "--peer": BOB,
        "--port": "9000",
        "--peer-port": "9001",
        "--flow": "my db",
        "--run": "r 1",
    }
    mirrored = tunnel_channel(
        ALICE,
        opts["--peer"],
        int(opts["--port"]),
        int(opts["--peer-port"]),
        flow=opts["--flow"],
        run=opts["--run"],
    )
    assert mirrored == ch


def test_mirror_command_leaves_defaults_out() -> None:
    ch = tunnel_channel(ALICE, BOB, 9000, 9001)
    assert mirror_command(ch, ALICE, flow=None, run=None) == (
        f"hotlink tunnel open --peer {ALICE} --port 9001 --peer-port 9000"
    )


# ---------------------------------------------------------------- listing and closing


def test_list_shows_tunnels_and_why_a_near_miss_is_ignored(tmp_path: Path) -> None:
    open_tunnel(tmp_path, ALICE, tunnel_channel(ALICE, BOB, 9000, 9001))
    good = Channel(ALICE, BOB, 0, 1, {ALICE: 1, BOB: 2})
    # A tunnel marker outside an _mpc folder, and an IPC marker (TCP mode) of the same name.
    write_in_tree(tmp_path, f"{ALICE}/apps/x/0_to_1/stream.tcp", good.marker_text())
    write_in_tree(tmp_path, f"{ALICE}/app_data/rpc/stream.tcp", "127.0.0.1:40000")
    # A marker whose folder is not N_to_M.
    write_in_tree(tmp_path, f"{ALICE}/f/r/_mpc/zero_to_one/stream.tcp", good.marker_text())
    entries = {e.rel_path: e for e in find_tunnels(tmp_path, ALICE)}
    assert len(entries) == 3
    ok = [e for e in entries.values() if e.problem is None]
    assert len(ok) == 1 and ok[0].channel is not None and ok[0].channel.peer_email == BOB
    assert "_mpc" in (entries[f"{ALICE}/apps/x/0_to_1/stream.tcp"].problem or "")
    assert "N_to_M" in (entries[f"{ALICE}/f/r/_mpc/zero_to_one/stream.tcp"].problem or "")


def test_close_removes_markers_of_that_peer_and_keeps_acls(tmp_path: Path) -> None:
    open_tunnel(tmp_path, ALICE, tunnel_channel(ALICE, BOB, 9000, 9001))
    open_tunnel(tmp_path, ALICE, tunnel_channel(ALICE, BOB, 9002, 9003, flow="ssh"))
    open_tunnel(tmp_path, ALICE, tunnel_channel(ALICE, CAROL, 9004, 9005))
    removed = close_tunnels(tmp_path, ALICE, BOB, flow="ssh")
    assert [p.name for p in removed] == ["stream.tcp"]
    peers = sorted(
        (e.channel.peer_email, e.flow_path) for e in find_tunnels(tmp_path, ALICE) if e.channel
    )
    assert peers == [(BOB, "shared/flows/tunnel"), (CAROL, "shared/flows/tunnel")]
    assert len(list(tmp_path.rglob("syft.pub.yaml"))) == 3
    assert close_tunnels(tmp_path, ALICE, BOB) and close_tunnels(tmp_path, ALICE, BOB) == []


def test_close_with_acls_removes_the_channel_folder(tmp_path: Path) -> None:
    ch = tunnel_channel(ALICE, BOB, 9000, 9001)
    open_tunnel(tmp_path, ALICE, ch)
    removed = close_tunnels(tmp_path, ALICE, BOB, acls=True)
    assert sorted(p.name for p in removed) == ["stream.tcp", "syft.pub.yaml"]
    assert not (tmp_path / ALICE / ch.flow / ch.run).exists()
    assert (tmp_path / ALICE / ch.flow).is_dir()


# ---------------------------------------------------------------- the commands


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_cli_open_prints_what_it_wrote_and_the_mirror_command(tmp_path: Path) -> None:
    code, out, err = run_cli(
        "tunnel", "open", "--peer", BOB, "--port", "9000", "--peer-port", "9001",
        "--data-dir", str(tmp_path), "--email", ALICE,
    )  # fmt: skip
    assert code == 0, err
    assert "stream.tcp" in out and "syft.pub.yaml" in out
    assert f"hotlink tunnel open --peer {ALICE} --port 9001 --peer-port 9000" in out
    code, out, _ = run_cli(
        "tunnel", "list", "--json", "--data-dir", str(tmp_path), "--email", ALICE
    )
    assert code == 0
    [tunnel] = json.loads(out)["tunnels"]
    assert (tunnel["peer"], tunnel["port"], tunnel["peer_port"]) == (BOB, 9000, 9001)


def test_cli_errors_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    env = {
        "SYFTBOX_EMAIL": "",
        "SYFTBOX_DATA_DIR": "",
        "SYFTBOX_CONFIG_PATH": str(tmp_path / "none.json"),
        "SYFTBOX_HOTLINK_CONFIG": "",
    }
    cases = [
        (["tunnel", "list"], "missing --email"),
        (["tunnel", "list", "--email", ALICE, "--data-dir", str(a_file)], "is a file"),
        (
            ["tunnel", "open", "--peer", ALICE, "--port", "1", "--peer-port", "2",
             "--email", ALICE, "--data-dir", str(tmp_path)],
            "two different datasites",
        ),
        (["tunnel", "close", "--peer", BOB, "--email", ALICE, "--data-dir", str(tmp_path)],
         "no tunnel with"),
    ]  # fmt: skip
    for args, says in cases:
        code, _, err = run_cli(*args, env=env)
        assert code != 0
        assert err.startswith("error: ") and says in err, err
        assert len(err.strip().splitlines()) == 1


def test_cli_finds_the_client_in_the_environment(tmp_path: Path) -> None:
    env = {"SYFTBOX_EMAIL": ALICE, "SYFTBOX_DATA_DIR": str(tmp_path)}
    code, _, err = run_cli(
        "tunnel", "open", "--peer", BOB, "--port", "9000", "--peer-port", "9001", env=env
    )
    assert code == 0, err
    assert os.path.isfile(tmp_path / "datasites" / ALICE / "shared" / "flows" / "tunnel" /
                          f"{ALICE}+{BOB}" / "_mpc" / "0_to_1" / "stream.tcp")  # fmt: skip


def test_cli_reads_email_and_data_dir_from_the_syftbox_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"email": BOB, "data_dir": str(tmp_path / "box")}))
    env = {"SYFTBOX_EMAIL": "", "SYFTBOX_DATA_DIR": "", "SYFTBOX_CONFIG_PATH": str(config)}
    code, _, err = run_cli(
        "tunnel", "open", "--peer", ALICE, "--port", "9001", "--peer-port", "9000", env=env
    )
    assert code == 0, err
    [entry] = find_tunnels(tmp_path / "box" / "datasites", BOB)
    assert entry.owner == BOB and entry.channel is not None
    assert entry.channel.peer_email == ALICE
