"""FileWrite / FileDelete / ACLManifest handling and the ACL store, without sockets."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import hotlink.server.files as files_module
from hotlink.protocol.acl import MAX_ACL_BYTES, MAX_ERROR_CHARS, Access, CompiledACL
from hotlink.protocol.messages import (
    Ack,
    ACLManifest,
    Error,
    FileDelete,
    FileWrite,
    Message,
    Nack,
)
from hotlink.server.acl_store import ACLStore
from hotlink.server.decisions import ConnectionTable, Outcome
from hotlink.server.files import (
    MAX_ACL_PARSES,
    WRITE_DENIED,
    ACLUpload,
    FileHandler,
    hash_principal,
)
from hotlink.server.router import PERMISSION_DENIED

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"

BOB_READS = b"""
rules:
  - pattern: '**'
    access:
      read: ['bob@example.com']
      write: []
"""


@pytest.fixture
def handler() -> FileHandler:
    table = ConnectionTable()
    for conn, user in [("a1", ALICE), ("a2", ALICE), ("b1", BOB), ("c1", CAROL)]:
        table.add(conn, user)
    return FileHandler(ACLStore(), table)


async def write(
    handler: FileHandler, conn: str, path: str, content: bytes, mid: str = "fw0001"
) -> Outcome:
    """What the relay's read loop does: an ACL file is parsed by ``load_acl`` (off the loop)."""
    result = handler.handle(conn, Message(mid, FileWrite(pth=path, con=content, len=len(content))))
    if isinstance(result, ACLUpload):
        return await handler.load_acl(result)
    return result


async def test_own_acl_file_is_loaded_acked_and_sent_to_every_other_user(handler):
    out = await write(handler, "a1", f"{ALICE}/app/syft.pub.yaml", BOB_READS)
    [ack] = out.sends
    assert ack.conn == "a1" and ack.message.payload == Ack(oid="fw0001")
    # One broadcast to every connection but alice's own (expanded by the relay, see
    # test_relay_write_paths): the very message she wrote.
    assert out.fan_out is not None and out.fan_out.exclude_user == ALICE
    assert out.fan_out.message.id == "fw0001"
    assert handler.acls.can_access(f"{ALICE}/app/x.request", BOB, Access.READ)
    assert not handler.acls.can_access(f"{ALICE}/app/x.request", CAROL, Access.READ)


async def test_acl_file_of_another_datasite_is_refused_with_error_and_nack(handler):
    out = await write(handler, "b1", f"{ALICE}/app/syft.pub.yaml", BOB_READS)
    payloads = [s.message.payload for s in out.sends]
    assert [s.conn for s in out.sends] == ["b1", "b1"]
    assert payloads[0] == Error(cod=403, pth=f"{ALICE}/app/syft.pub.yaml", msg=WRITE_DENIED)
    assert isinstance(payloads[1], Nack) and payloads[1].oid == "fw0001"
    assert ALICE in payloads[1].err
    assert out.refusal == PERMISSION_DENIED
    assert len(handler.acls) == 0


async def test_acl_file_that_escapes_its_datasite_is_refused(handler):
    out = await write(handler, "b1", f"{BOB}/../{ALICE}/syft.pub.yaml", BOB_READS)
    assert out.refusal == PERMISSION_DENIED
    assert len(handler.acls) == 0


async def test_invalid_acl_file_gets_a_nack_naming_the_problem(handler):
    out = await write(
        handler, "a1", f"{ALICE}/syft.pub.yaml", b"rules: [{pattern: '', access: {}}]"
    )
    [send] = out.sends
    assert isinstance(send.message.payload, Nack)
    assert "pattern" in send.message.payload.err and "syft.pub.yaml" in send.message.payload.err
    assert len(handler.acls) == 0


async def test_acl_file_that_is_not_utf8_gets_a_nack(handler):
    out = await write(handler, "a1", f"{ALICE}/syft.pub.yaml", b"\xff\xfe\x00")
    [send] = out.sends
    assert isinstance(send.message.payload, Nack) and "UTF-8" in send.message.payload.err


async def test_file_write_without_write_access_gets_error_403_and_nack(handler):
    out = await write(handler, "b1", f"{ALICE}/app/data.request", b"hi")
    payloads = [s.message.payload for s in out.sends]
    assert payloads[0] == Error(cod=403, pth=f"{ALICE}/app/data.request", msg=WRITE_DENIED)
    assert payloads[1] == Nack(oid="fw0001", err=WRITE_DENIED)
    assert len(out.sends) == 2


async def test_file_write_is_acked_and_sent_only_to_readers_of_other_users(handler):
    await write(handler, "a1", f"{ALICE}/app/syft.pub.yaml", BOB_READS)
    out = await write(handler, "a1", f"{ALICE}/app/data.request", b"hi", mid="fw0002")
    assert out.sends[0].message.payload == Ack(oid="fw0002")
    assert [s.conn for s in out.sends[1:]] == ["b1"]


async def test_file_write_with_a_path_escaping_the_root_gets_a_nack(handler):
    out = await write(handler, "a1", "../../etc/passwd", b"x")
    [send] = out.sends
    assert isinstance(send.message.payload, Nack)


async def test_deleting_own_acl_file_removes_its_rules(handler):
    await write(handler, "a1", f"{ALICE}/app/syft.pub.yaml", BOB_READS)
    handler.handle("b1", Message("del001", FileDelete(pth=f"{ALICE}/app/syft.pub.yaml")))
    assert len(handler.acls) == 1  # not bob's to delete
    handler.handle("a1", Message("del002", FileDelete(pth=f"{ALICE}/app/syft.pub.yaml")))
    assert len(handler.acls) == 0
    assert not handler.acls.can_access(f"{ALICE}/app/x", BOB, Access.READ)


def test_acl_manifest_is_relayed_to_the_principal_it_is_for(handler):
    manifest = ACLManifest(datasite=ALICE, for_=BOB, for_hash=hash_principal(BOB))
    out = handler.handle("a1", Message("mf0001", manifest))
    assert [s.conn for s in out.sends] == ["b1"]
    public = ACLManifest(datasite=ALICE, for_="*", for_hash="public")
    assert [s.conn for s in handler.handle("a1", Message("mf2", public)).sends] == ["b1", "c1"]


def test_acl_manifest_for_another_datasite_is_dropped(handler):
    out = handler.handle("b1", Message("mf0002", ACLManifest(datasite=ALICE, for_hash="public")))
    assert out.sends == [] and out.refusal == PERMISSION_DENIED


def test_hash_principal_matches_the_reference_rule():
    assert hash_principal("*") == "public"
    assert hash_principal(BOB) == __import__("hashlib").sha256(BOB.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- ACL store


def test_owner_rule_is_an_exact_first_segment_not_a_prefix():
    """DECISIONS.md #21: 'alice@example.co' does not own 'alice@example.com/...'."""
    store = ACLStore()
    assert store.can_access(f"{ALICE}/x", ALICE, Access.WRITE)
    assert not store.can_access(f"{ALICE}/x", "alice@example.co", Access.READ)


def test_unnormalisable_paths_are_denied():
    assert not ACLStore().can_access("../../etc", ALICE, Access.READ)


def test_preload_loads_datasite_relative_trees_and_reports_bad_files(tmp_path: Path):
    (tmp_path / ALICE / "app").mkdir(parents=True)
    (tmp_path / ALICE / "app" / "syft.pub.yaml").write_bytes(BOB_READS)
    (tmp_path / BOB).mkdir()
    (tmp_path / BOB / "syft.pub.yaml").write_text("rules: 5\n")
    (tmp_path / "syft.pub.yaml").write_text("rules: []\n")
    store = ACLStore()
    result = store.preload(tmp_path)
    assert result.loaded == [f"{ALICE}/app/syft.pub.yaml"]
    assert len(result.errors) == 2
    assert any("rules" in e and BOB in e for e in result.errors)
    assert store.can_access(f"{ALICE}/app/f.request", BOB, Access.READ)


def test_acl_files_per_datasite_are_bounded():
    store = ACLStore(max_files_per_datasite=2)
    store.load(f"{ALICE}/a/syft.pub.yaml", "")
    store.load(f"{ALICE}/b/syft.pub.yaml", "")
    store.load(f"{ALICE}/b/syft.pub.yaml", "")  # reloading is not a new file
    with pytest.raises(ValueError, match="already has 2 ACL files"):
        store.load(f"{ALICE}/c/syft.pub.yaml", "")


# ---------------------------------------------------------------- hostile ACL files (D3, D4)


def _laughs(levels: int = 9) -> bytes:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]")
    lines.append(f"rules: [{{pattern: '**', access: {{read: [*a{levels - 1}]}}}}]")
    return ("\n".join(lines) + "\n").encode()


def _nack(out: Outcome) -> str:
    [send] = out.sends
    assert isinstance(send.message.payload, Nack) and send.message.payload.oid == "fw0001"
    return send.message.payload.err


@pytest.mark.parametrize("levels", [5, 9])
async def test_a_billion_laughs_acl_gets_a_short_nack_and_loads_nothing(handler, levels):
    out = await write(handler, "a1", f"{ALICE}/syft.pub.yaml", _laughs(levels))
    err = _nack(out)
    assert len(err) <= MAX_ERROR_CHARS and "lol" not in err and "alias" in err
    assert len(out.detail) <= 2 * MAX_ERROR_CHARS and "lol" not in out.detail
    assert len(handler.acls) == 0


async def test_an_oversized_acl_is_refused_before_it_is_decoded_or_parsed(handler, monkeypatch):
    def never(*args: object) -> None:
        raise AssertionError("an oversized ACL must not be parsed")

    monkeypatch.setattr(files_module, "prepare_acl", never)
    content = b"rules: []\n# " + b"\xff" * (7 * 1024 * 1024)  # not even UTF-8
    out = await write(handler, "a1", f"{ALICE}/syft.pub.yaml", content)
    err = _nack(out)
    assert f"larger than {MAX_ACL_BYTES} bytes" in err and len(err) <= MAX_ERROR_CHARS
    assert len(handler.acls) == 0


async def test_a_valid_acl_near_the_limit_still_loads(handler):
    content = b"#" * (MAX_ACL_BYTES - len(BOB_READS) - 1) + b"\n" + BOB_READS
    out = await write(handler, "a1", f"{ALICE}/app/syft.pub.yaml", content)
    assert out.sends[0].message.payload == Ack(oid="fw0001")


async def test_the_nack_never_repeats_the_file(handler):
    content = b"terminal: [" + b"'SECRET', " * 5000 + b"]\n"
    err = _nack(await write(handler, "a1", f"{ALICE}/syft.pub.yaml", content))
    assert "SECRET" not in err and "terminal" in err


async def test_an_acl_under_a_long_foreign_owner_gets_a_short_nack(handler):
    owner = "x" * 100_000 + "@example.com"
    out = await write(handler, "b1", f"{owner}/syft.pub.yaml", BOB_READS)
    nack = out.sends[1].message.payload
    assert isinstance(nack, Nack) and len(nack.err) < 300
    assert len(out.detail) < 300


async def test_an_acl_file_write_is_parsed_on_a_worker_thread_not_in_handle(handler, monkeypatch):
    threads: list[threading.Thread] = []
    real = files_module.prepare_acl

    def spy(text: str, path: str) -> CompiledACL:
        threads.append(threading.current_thread())
        return real(text, path)

    monkeypatch.setattr(files_module, "prepare_acl", spy)
    message = Message("fw0001", FileWrite(pth=f"{ALICE}/syft.pub.yaml", con=BOB_READS, len=0))
    upload = handler.handle("a1", message)
    assert isinstance(upload, ACLUpload) and threads == []  # handle() only checks
    out = await handler.load_acl(upload)
    assert out.sends[0].message.payload == Ack(oid="fw0001")
    assert threads and threads[0] is not threading.main_thread()


async def test_at_most_max_acl_parses_run_at_once(handler, monkeypatch):
    running, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()
    real = files_module.prepare_acl

    def slow(text: str, path: str) -> CompiledACL:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(30)
        with lock:
            running -= 1
        return real(text, path)

    monkeypatch.setattr(files_module, "prepare_acl", slow)
    uploads = []
    for i in range(MAX_ACL_PARSES + 3):
        message = Message(f"fw{i:04d}", FileWrite(pth=f"{ALICE}/d{i}/syft.pub.yaml", con=BOB_READS))
        upload = handler.handle("a1", message)
        assert isinstance(upload, ACLUpload)
        uploads.append(upload)
    tasks = [asyncio.create_task(handler.load_acl(u)) for u in uploads]
    for _ in range(3000):  # until the first parses run (the bound only guards a failure)
        if most >= MAX_ACL_PARSES:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # room for any parse beyond the limit to start (it must not)
    assert most == MAX_ACL_PARSES
    release.set()
    outcomes = await asyncio.gather(*tasks)
    assert all(
        o.sends[0].message.payload == Ack(oid=u.message.id)
        for o, u in zip(outcomes, uploads, strict=True)
    )
    assert most == MAX_ACL_PARSES and len(handler.acls) == len(uploads)


async def test_the_file_count_is_checked_again_when_the_parse_is_done():
    table = ConnectionTable()
    table.add("a1", ALICE)
    handler = FileHandler(ACLStore(max_files_per_datasite=1), table)
    first = handler.handle("a1", Message("fw0001", FileWrite(pth=f"{ALICE}/a/syft.pub.yaml")))
    second = handler.handle("a1", Message("fw0002", FileWrite(pth=f"{ALICE}/b/syft.pub.yaml")))
    assert isinstance(first, ACLUpload) and isinstance(second, ACLUpload)
    assert (await handler.load_acl(first)).sends[0].message.payload == Ack(oid="fw0001")
    out = await handler.load_acl(second)
    assert "already has 1 ACL files" in _nack_of(out, "fw0002")
    assert len(handler.acls) == 1


def _nack_of(out: Outcome, oid: str) -> str:
    [send] = out.sends
    assert isinstance(send.message.payload, Nack) and send.message.payload.oid == oid
    return send.message.payload.err
