"""db.compact() gives a file's free pages back (plain and encrypted), keeps every document;
compact_on_open decides from the sizes, as Realm's should_compact_on_launch."""

from __future__ import annotations

import os

import pytest

import tidesync
from tests.models import Technician

KEY = bytes(range(64))


def fill_and_delete(db, n=3000):
    """Free pages: the log entries of a large write dropped, its documents deleted."""
    with db.write():
        db.create_many(Technician, ({"_id": f"t{i}", "name": "x" * 200} for i in range(n)))
    with db.write():
        db.delete(db.objects(Technician).filter("_id != 't0'"))
    db.compact_log(0)


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_compact_shrinks_the_file_and_keeps_the_data(tmp_path, key):
    path = tmp_path / "d.db"
    with tidesync.open(path, schema=[Technician], encryption_key=key) as db:
        fill_and_delete(db)
        total, used = db._file_bytes()
        assert used < total
        saved = db.compact()
        assert saved > 0 and db._file_bytes()[0] == total - saved == os.path.getsize(path)
        assert [t._id for t in db.objects(Technician)] == ["t0"]
        with db.write():
            db.create(Technician, _id="after", name="y")
    with tidesync.open(path, schema=[Technician], encryption_key=key) as db:
        assert sorted(t._id for t in db.objects(Technician)) == ["after", "t0"]


def test_compact_is_refused_inside_a_write(tmp_path):
    with tidesync.open(tmp_path / "d.db", schema=[Technician]) as db:
        with db.write():
            with pytest.raises(tidesync.UsageError, match="inside a write"):
                db.compact()


def test_compact_on_open_is_asked_with_the_sizes(tmp_path):
    path = tmp_path / "d.db"
    with tidesync.open(path, schema=[Technician]) as db:
        fill_and_delete(db)
    asked = []
    with tidesync.open(path, schema=[Technician], compact_on_open=lambda t, u: asked.append((t, u)) or False):
        pass
    (total, used), = asked
    assert used < total == os.path.getsize(path)
    with tidesync.open(path, schema=[Technician], compact_on_open=lambda t, u: u < t // 2) as db:
        assert db._file_bytes()[0] < total
        assert len(db.objects(Technician)) == 1

    def boom(total: int, used: int) -> bool:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        tidesync.open(path, schema=[Technician], compact_on_open=boom)
