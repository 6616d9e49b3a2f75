"""The key files: made once with owner-only modes, refused with a clear error when broken or
readable by others, and the pin book read again when another process changed it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotlink.client.e2e.context import E2EContext
from hotlink.client.e2e.keystore import (
    IDENTITY_FILE,
    PINS_FILE,
    KeyFileError,
    PinFile,
    key_dir,
    load_identity,
)
from hotlink.protocol.e2e.identity import Identity
from hotlink.settings import ClientSettings

BOB_FP = Identity.generate().fingerprint


def test_the_identity_is_made_once_owner_only_and_kept(tmp_path: Path) -> None:
    first = load_identity(tmp_path)
    path = key_dir(tmp_path) / IDENTITY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert key_dir(tmp_path).stat().st_mode & 0o777 == 0o700
    assert load_identity(tmp_path).fingerprint == first.fingerprint


def test_no_identity_without_create_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no identity key"):
        load_identity(tmp_path, create=False)


def test_an_identity_others_can_read_is_refused(tmp_path: Path) -> None:
    load_identity(tmp_path)
    path = key_dir(tmp_path) / IDENTITY_FILE
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(tmp_path)


def test_a_broken_identity_is_refused(tmp_path: Path) -> None:
    key_dir(tmp_path).mkdir(mode=0o700)
    path = key_dir(tmp_path) / IDENTITY_FILE
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="cannot read the identity key"):
        load_identity(tmp_path)


def test_pins_are_saved_and_read_again_when_the_file_changes(tmp_path: Path) -> None:
    pins = PinFile(tmp_path)
    pins.book().admit("bob@example.com", BOB_FP)
    pins.save()
    path = key_dir(tmp_path) / PINS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert PinFile(tmp_path).book().pins == {"bob@example.com": BOB_FP}
    # Another process (hotlink e2e trust) replaces the file.
    other = PinFile(tmp_path)
    other.book().forget("bob@example.com")
    other.save()
    os.utime(path, ns=(1, 1))  # a different stamp even within one clock tick
    assert not pins.book().knows("bob@example.com")


def test_a_broken_pin_file_is_an_error_at_start(tmp_path: Path) -> None:
    key_dir(tmp_path).mkdir()
    (key_dir(tmp_path) / PINS_FILE).write_text("{")
    with pytest.raises(KeyFileError, match=r"known_peers\.json"):
        PinFile(tmp_path)


def test_the_context_follows_the_settings(tmp_path: Path) -> None:
    base = {"SYFTBOX_DATA_DIR": str(tmp_path), "SYFTBOX_EMAIL": "alice@example.com"}
    assert (
        E2EContext.from_settings(ClientSettings.from_env({**base, "SYFTBOX_HOTLINK_E2E": "0"}))
        is None
    )
    ctx = E2EContext.from_settings(
        ClientSettings.from_env({**base, "SYFTBOX_HOTLINK_E2E_PEERS": f"bob@example.com={BOB_FP}"})
    )
    assert ctx is not None and not ctx.required
    # No named peer: no exchange is possible, the session goes plaintext.
    assert ctx.outbound("s", "p", "alice@example.com", "") is None
    out = ctx.outbound("s", "p", "alice@example.com", "Bob@Example.com")
    assert out is not None and out.refuse_plaintext  # a listed peer must seal
    assert out.params.acceptor == "bob@example.com"
    inbound = ctx.inbound("s", "p", "carol@example.com", "alice@example.com", "alice@example.com")
    assert not inbound.refuse_plaintext  # an unknown peer may be a reference client


class _Sealed:
    """What E2EContext.sealed reads of a session that completed its exchange."""

    def __init__(self, pins: object, peer_email: str, peer_fingerprint: str) -> None:
        self.pins = pins
        self.peer_email = peer_email
        self.peer_fingerprint = peer_fingerprint


@pytest.mark.parametrize("file_changed", [False, True])
def test_a_new_pin_is_saved_even_when_the_file_changed_during_the_session(
    tmp_path: Path, file_changed: bool
) -> None:
    ctx = E2EContext(mode="on", identity=Identity.generate(), pins=PinFile(tmp_path))
    book = ctx.pins.book()  # what the session started with
    carol_fp = Identity.generate().fingerprint
    if file_changed:
        # Meanwhile another process (hotlink e2e trust) pins carol.
        other = PinFile(tmp_path)
        other.book().pin("carol@example.com", carol_fp)
        other.save()
        os.utime(key_dir(tmp_path) / PINS_FILE, ns=(1, 1))
    book.admit("bob@example.com", BOB_FP)  # first use: the session pins bob
    ctx.sealed(_Sealed(book, "bob@example.com", BOB_FP))  # type: ignore[arg-type]
    saved = PinFile(tmp_path).book().pins
    expected = {"bob@example.com": BOB_FP}
    if file_changed:
        expected["carol@example.com"] = carol_fp
    assert saved == expected
    # Nothing new: nothing is written again.
    stamp = (key_dir(tmp_path) / PINS_FILE).stat().st_mtime_ns
    ctx.sealed(_Sealed(ctx.pins.book(), "bob@example.com", BOB_FP))  # type: ignore[arg-type]
    assert (key_dir(tmp_path) / PINS_FILE).stat().st_mtime_ns == stamp
