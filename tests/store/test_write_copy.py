"""db.write_copy(): a compacted copy of the committed state in a new file (Realm's writeCopy),
plain or encrypted with a key of its own, that is a new replica; on real files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import tidesync
from tidesync.errors import EncryptionError, UsageError
from tidesync.store.engine import KEY_SIZE
from tests.helpers.extras import needs_sqlcipher
from tests.models import Technician, WorkOrder

KEY = bytes(range(KEY_SIZE))
OTHER_KEY = bytes(reversed(KEY))
MARKER = "TIDESYNC-PLAINTEXT-MARKER"


def fill(db: tidesync.Database, n: int = 300) -> None:
    with db.write():
        ann = db.create(Technician, _id="ann", name=MARKER)
        for i in range(n):
            db.create(WorkOrder, title=f"order {i}", priority=i % 5, technician=ann, tags=["a", str(i)])
    with db.write():
        db.delete(db.objects(WorkOrder).filter("priority == 0"))   # free pages for the copy to leave out


def state(db: tidesync.Database) -> list[tuple]:
    return sorted((o.title, o.priority, list(o.tags), o.technician._id) for o in db.objects(WorkOrder))


def replica_of(path: Path, key: bytes | None = None) -> str:
    with tidesync.open(path, schema=[WorkOrder, Technician], encryption_key=key) as db:
        return str(db.replica_id)


def test_a_copy_holds_the_same_objects_and_history_in_a_smaller_file_as_a_new_replica(tmp_path: Path) -> None:
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as db:
        fill(db)
        db.write_copy(tmp_path / "copy.db")
        expected, history = state(db), [t.id for t in db.history(limit=10)]
        source_replica = str(db.replica_id)
        with db.write():
            db.create(WorkOrder, title="after the copy")             # not in the copy
        source_bytes = db._file_bytes()[0]
    with tidesync.open(tmp_path / "copy.db", schema=[WorkOrder, Technician]) as copy:
        assert state(copy) == expected
        assert [t.id for t in copy.history(limit=10)] == history
        assert str(copy.replica_id) != source_replica
        assert copy._file_bytes()[1] == copy._file_bytes()[0]         # no free pages
        assert copy._file_bytes()[0] < source_bytes
        with copy.write():
            copy.create(WorkOrder, title="in the copy")
        assert copy.history(limit=1)[0].origin == copy.replica_id
    assert replica_of(tmp_path / "a.db") == source_replica              # the source keeps its own


def test_two_copies_are_two_replicas_whose_writes_merge(tmp_path: Path) -> None:
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as db:
        fill(db, 20)
        db.write_copy(tmp_path / "one.db")
        db.write_copy(tmp_path / "two.db")
    with tidesync.open(tmp_path / "one.db", schema=[WorkOrder, Technician]) as one, \
            tidesync.open(tmp_path / "two.db", schema=[WorkOrder, Technician]) as two:
        assert one.replica_id != two.replica_id
        target = one.objects(WorkOrder).filter("title == 'order 3'").first()
        with one.write():
            target.priority = 10
        with two.write():
            two.objects(WorkOrder).filter("title == 'order 3'").first().tags.append("two")
        two.integrate(one.export_transactions(since=0))
        one.integrate(two.export_transactions(since=0))
        assert state(one) == state(two)
        merged = one.objects(WorkOrder).filter("title == 'order 3'").first()
        assert merged.priority == 10 and list(merged.tags) == ["a", "3", "two"]


@needs_sqlcipher
def test_a_copy_can_be_encrypted_rekeyed_and_decrypted(tmp_path: Path) -> None:
    with tidesync.open(tmp_path / "plain.db", schema=[WorkOrder, Technician]) as db:
        fill(db, 50)
        expected = state(db)
        db.write_copy(tmp_path / "secret.db", encryption_key=KEY)
    assert MARKER.encode() not in (tmp_path / "secret.db").read_bytes()
    with pytest.raises(EncryptionError):
        tidesync.open(tmp_path / "secret.db", schema=[WorkOrder, Technician])
    with tidesync.open(tmp_path / "secret.db", schema=[WorkOrder, Technician], encryption_key=KEY) as secret:
        assert state(secret) == expected
        secret.write_copy(tmp_path / "rekeyed.db", encryption_key=OTHER_KEY)
        secret.write_copy(tmp_path / "same-key.db", encryption_key=KEY)
        secret.write_copy(tmp_path / "clear.db")
    with pytest.raises(EncryptionError):
        tidesync.open(tmp_path / "rekeyed.db", schema=[WorkOrder, Technician], encryption_key=KEY)
    for path, key in (("rekeyed.db", OTHER_KEY), ("same-key.db", KEY), ("clear.db", None)):
        with tidesync.open(tmp_path / path, schema=[WorkOrder, Technician], encryption_key=key) as copy:
            assert state(copy) == expected
    assert MARKER.encode() in (tmp_path / "clear.db").read_bytes()
    assert len({replica_of(tmp_path / p, k) for p, k in (("plain.db", None), ("secret.db", KEY),
                                                           ("rekeyed.db", OTHER_KEY), ("clear.db", None))}) == 4


def test_what_write_copy_refuses_changes_nothing(tmp_path: Path) -> None:
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as db:
        fill(db, 10)
        (tmp_path / "taken.db").write_bytes(b"mine")
        with pytest.raises(UsageError, match="already exists"):
            db.write_copy(tmp_path / "taken.db")
        assert (tmp_path / "taken.db").read_bytes() == b"mine"
        with db.write():
            db.create(WorkOrder, title="pending")
            with pytest.raises(UsageError, match="outside db.write"):
                db.write_copy(tmp_path / "inside.db")
        assert not (tmp_path / "inside.db").exists()
        with pytest.raises(UsageError, match="64 bytes"):
            db.write_copy(tmp_path / "short-key.db", encryption_key=b"short")
        assert not (tmp_path / "short-key.db").exists()
        assert db.objects(WorkOrder).filter("title == 'pending'").first() is not None
    db.close()
    with pytest.raises(tidesync.TidesyncError, match="closed"):
        db.write_copy(tmp_path / "closed.db")


def test_a_copy_is_a_plain_sqlite_file_with_its_own_replica_setting(tmp_path: Path) -> None:
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as db:
        fill(db, 5)
        db.write_copy(tmp_path / "copy.db")
        replica = str(db.replica_id)
    raw = sqlite3.connect(tmp_path / "copy.db")
    try:
        (copied,) = raw.execute("SELECT value FROM settings WHERE key = 'replica_id'").fetchone()
        assert copied != replica and len(copied) == len(replica)
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        raw.close()
