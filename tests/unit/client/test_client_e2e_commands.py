"""``hotlink e2e fingerprint|peers|trust|forget``: what they print, what they write (only the
pin file), and one clear line for each user error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hotlink.cli import app
from hotlink.client.e2e.keystore import PinFile, key_dir, load_identity
from hotlink.protocol.e2e.pins import PinBook

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
FP1 = "1111-2222-3333-4444-5555-6666-7777-8888"
FP2 = "abcd-0123-4567-89ab-cdef-0123-4567-89ab"
FP3 = "9999-0000-9999-0000-9999-0000-9999-0000"


@pytest.fixture(autouse=True)
def _own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test passes: no user config, no SYFTBOX_* from the environment."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in (
        "SYFTBOX_EMAIL",
        "SYFTBOX_DATA_DIR",
        "SYFTBOX_CONFIG_PATH",
        "SYFTBOX_HOTLINK_CONFIG",
        "SYFTBOX_HOTLINK_E2E",
        "SYFTBOX_HOTLINK_E2E_PEERS",
    ):
        monkeypatch.delenv(name, raising=False)


def e2e(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["e2e", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def one_error(code: int, out: str, err: str, want_code: int, text: str) -> None:
    lines = err.strip().splitlines()
    assert code == want_code, (out, err)
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("error: ") and text in lines[0], err


def test_fingerprint_refuses_before_the_client_made_its_key_and_makes_none(
    tmp_path: Path,
) -> None:
    code, out, err = e2e("fingerprint", "--data-dir", str(tmp_path))
    one_error(code, out, err, 1, "no identity key at")
    assert not key_dir(tmp_path).exists()  # nothing made, not even the folder

    identity = load_identity(tmp_path)  # as the daemon does on its first start
    code, out, err = e2e("fingerprint", "--data-dir", str(tmp_path))
    assert code == 0, err
    assert out.strip() == identity.fingerprint
    code, out, _ = e2e("fingerprint", "--json", "--data-dir", str(tmp_path), "--email", ALICE)
    doc = json.loads(out)
    assert (doc["fingerprint"], doc["email"]) == (identity.fingerprint, ALICE)


def test_fingerprint_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    load_identity(tmp_path)
    (key_dir(tmp_path) / "identity.pem").chmod(0o644)
    code, out, err = e2e("fingerprint", "--data-dir", str(tmp_path))
    one_error(code, out, err, 1, "readable by other users")


def test_trust_pins_then_replaces_a_key_and_a_running_client_sees_it(tmp_path: Path) -> None:
    daemon = PinFile(tmp_path)  # what a running daemon holds, made before the commands ran
    assert daemon.book().pins == {}

    code, out, err = e2e("trust", BOB, FP1.upper().replace("-", " "), "--data-dir", str(tmp_path))
    assert code == 0, err
    assert f"{BOB}: (none) → {FP1}" in out
    assert daemon.book().pins == {BOB: FP1}

    code, out, err = e2e("trust", "Bob@Example.com", FP2, "--data-dir", str(tmp_path))
    assert code == 0, err
    assert f"{FP1} → {FP2}" in out
    assert daemon.book().pins == {BOB: FP2}  # read again: no restart needed
    pins_file = key_dir(tmp_path) / "known_peers.json"
    assert PinBook.from_json(pins_file.read_text()).pins == {BOB: FP2}
    assert pins_file.stat().st_mode & 0o077 == 0

    code, out, err = e2e("trust", BOB, FP2, "--data-dir", str(tmp_path))
    assert code == 0 and "already pinned" in out


def test_peers_lists_pins_and_the_listed_keys_marked_as_such(tmp_path: Path) -> None:
    code, out, err = e2e("peers", "--data-dir", str(tmp_path))
    assert code == 0 and "no peer keys yet" in out, err
    for peer, fp in ((BOB, FP1), (CAROL, FP2)):
        assert e2e("trust", peer, fp, "--data-dir", str(tmp_path))[0] == 0
    env = {"SYFTBOX_HOTLINK_E2E_PEERS": f"{CAROL}={FP3}"}
    code, out, err = e2e("peers", "--data-dir", str(tmp_path), env=env)
    assert code == 0, err
    rows = [line.split(None, 2) for line in out.strip().splitlines()[1:]]
    assert rows == [
        [BOB, FP1, "pinned"],
        [CAROL, FP3, "listed (e2e_peers)"],
        [CAROL, FP2, "pinned, unused (e2e_peers lists this peer)"],
    ]
    code, out, err = e2e("peers", "--json", "--data-dir", str(tmp_path), env=env)
    peers = json.loads(out)["peers"]
    assert {(p["email"], p["fingerprint"], p["source"], p["in_use"]) for p in peers} == {
        (BOB, FP1, "pinned", True),
        (CAROL, FP3, "listed", True),
        (CAROL, FP2, "pinned", False),
    }
    # Trusting a listed peer pins, but says the listed keys are what counts.
    code, out, err = e2e("trust", CAROL, FP1, "--data-dir", str(tmp_path), env=env)
    assert code == 0 and "listed keys win over pins" in err


def test_forget_removes_a_pin(tmp_path: Path) -> None:
    assert e2e("trust", BOB, FP1, "--data-dir", str(tmp_path))[0] == 0
    code, out, err = e2e("forget", BOB, "--data-dir", str(tmp_path))
    assert code == 0 and f"forgot {FP1}" in out, err
    assert PinFile(tmp_path).book().pins == {}
    code, out, err = e2e("forget", BOB, "--data-dir", str(tmp_path))
    one_error(code, out, err, 1, f"no pinned key for {BOB}")


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["fingerprint"], 2, "missing --data-dir"),
        (["peers", "--data-dir", "{tmp}/nowhere"], 2, "does not exist"),
        (["peers", "--data-dir", "{tmp}/file"], 2, "is a file, not a folder"),
        (["trust", BOB, "abcd", "--data-dir", "{tmp}"], 2, "32 hex digits"),
        (["trust", BOB, "g" * 32, "--data-dir", "{tmp}"], 2, "32 hex digits"),
        (["trust", "bob", FP1, "--data-dir", "{tmp}"], 2, "'bob' is not an email address"),
        (
            ["trust", ALICE, FP1, "--data-dir", "{tmp}", "--email", ALICE],
            2,
            "this client's own email",
        ),
        (["forget", CAROL, "--data-dir", "{tmp}"], 1, f"no pinned key for {CAROL}"),
        (["peers", "--data-dir", "{tmp}/broken"], 1, "cannot read the pinned peer keys"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], code: int, text: str) -> None:
    (tmp_path / "file").write_text("")
    broken = key_dir(tmp_path / "broken")
    broken.mkdir(parents=True)
    (broken / "known_peers.json").write_text("{not json")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_error(*e2e(*argv), code, text)


def test_a_bad_e2e_peers_setting_is_one_line(tmp_path: Path) -> None:
    env = {"SYFTBOX_HOTLINK_E2E_PEERS": "carol=1234"}
    one_error(*e2e("peers", "--data-dir", str(tmp_path), env=env), 2, "SYFTBOX_HOTLINK_E2E_PEERS")


def test_the_data_dir_comes_from_the_clients_config_file(tmp_path: Path) -> None:
    identity = load_identity(tmp_path / "data")
    config = tmp_path / "hotlink.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\ne2e_peers = "{BOB}={FP1}"\n')
    code, out, err = e2e("fingerprint", "--config", str(config))
    assert code == 0 and out.strip() == identity.fingerprint, err
    code, out, err = e2e("peers", env={"SYFTBOX_HOTLINK_CONFIG": str(config)})
    assert code == 0 and f"{FP1}  listed (e2e_peers)" in out, err
