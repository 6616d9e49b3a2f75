"""FileWrite / FileDelete / ACLManifest handling and the ACL store, without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotlink.protocol.acl import Access
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
from hotlink.server.decisions import ConnectionTable
from hotlink.server.files import WRITE_DENIED, FileHandler, hash_principal
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


def write(handler: FileHandler, conn: str, path: str, content: bytes, mid: str = "fw0001"):
    return handler.handle(conn, Message(mid, FileWrite(pth=path, con=content, len=len(content))))


def test_own_acl_file_is_loaded_acked_and_sent_to_every_other_user(handler):
    out = write(handler, "a1", f"{ALICE}/app/syft.pub.yaml", BOB_READS)
    assert out.sends[0].conn == "a1" and out.sends[0].message.payload == Ack(oid="fw0001")
    assert [s.conn for s in out.sends[1:]] == ["b1", "c1"]
    assert all(s.message.id == "fw0001" and s.broadcast for s in out.sends[1:])
    assert handler.acls.can_access(f"{ALICE}/app/x.request", BOB, Access.READ)
    assert not handler.acls.can_access(f"{ALICE}/app/x.request", CAROL, Access.READ)


def test_acl_file_of_another_datasite_is_refused_with_error_and_nack(handler):
    out = write(handler, "b1", f"{ALICE}/app/syft.pub.yaml", BOB_READS)
    payloads = [s.message.payload for s in out.sends]
    assert [s.conn for s in out.sends] == ["b1", "b1"]
    assert payloads[0] == Error(cod=403, pth=f"{ALICE}/app/syft.pub.yaml", msg=WRITE_DENIED)
    assert isinstance(payloads[1], Nack) and payloads[1].oid == "fw0001"
    assert ALICE in payloads[1].err
    assert out.refusal == PERMISSION_DENIED
    assert len(handler.acls) == 0


def test_acl_file_that_escapes_its_datasite_is_refused(handler):
    out = write(handler, "b1", f"{BOB}/../{ALICE}/syft.pub.yaml", BOB_READS)
    assert out.refusal == PERMISSION_DENIED
    assert len(handler.acls) == 0


def test_invalid_acl_file_gets_a_nack_naming_the_problem(handler):
    out = write(handler, "a1", f"{ALICE}/syft.pub.yaml", b"rules: [{pattern: '', access: {}}]")
    [send] = out.sends
    assert isinstance(send.message.payload, Nack)
    assert "pattern" in send.message.payload.err and "syft.pub.yaml" in send.message.payload.err
    assert len(handler.acls) == 0


def test_acl_file_that_is_not_utf8_gets_a_nack(handler):
    out = write(handler, "a1", f"{ALICE}/syft.pub.yaml", b"\xff\xfe\x00")
    [send] = out.sends
    assert isinstance(send.message.payload, Nack) and "UTF-8" in send.message.payload.err


def test_file_write_without_write_access_gets_error_403_and_nack(handler):
    out = write(handler, "b1", f"{ALICE}/app/data.request", b"hi")
    payloads = [s.message.payload for s in out.sends]
    assert payloads[0] == Error(cod=403, pth=f"{ALICE}/app/data.request", msg=WRITE_DENIED)
    assert payloads[1] == Nack(oid="fw0001", err=WRITE_DENIED)
    assert len(out.sends) == 2


def test_file_write_is_acked_and_sent_only_to_readers_of_other_users(handler):
    write(handler, "a1", f"{ALICE}/app/syft.pub.yaml", BOB_READS)
    out = write(handler, "a1", f"{ALICE}/app/data.request", b"hi", mid="fw0002")
    assert out.sends[0].message.payload == Ack(oid="fw0002")
    assert [s.conn for s in out.sends[1:]] == ["b1"]


def test_file_write_with_a_path_escaping_the_root_gets_a_nack(handler):
    out = write(handler, "a1", "../../etc/passwd", b"x")
    [send] = out.sends
    assert isinstance(send.message.payload, Nack)


def test_deleting_own_acl_file_removes_its_rules(handler):
    write(handler, "a1", f"{ALICE}/app/syft.pub.yaml", BOB_READS)
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
