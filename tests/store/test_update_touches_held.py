"""The documents of bulk updates kept as columns are held as columns in the transaction's
touches (no ``touched`` entry per document) until something else reads or extends them: the
descriptors (their touches in order), rows, merge states, log, revert and peer documents are
those of the general path, through several chunks of one call, a failed call rolled back
after held chunks, other changes before and after held ones, and a loop committed as columns."""

from __future__ import annotations

import msgpack
import pytest

import tidesync
from tidesync.errors import ValidationError
from tidesync.store import database as database_module
from tidesync.store import writer
from tests.store.test_create_bulk import BulkNote, _norm
from tests.store.test_update_bulk import _before_sorted, _general, _outcome, _record_uniform, _state

N = 200


def _key(i):
    return f"k{i:04d}"


def _scenario(db):
    with db.write():
        db.create_many(BulkNote, [{"_id": _key(i), "title": f"t{i}"} for i in range(N)])
    with db.write():  # several chunks of one call
        db.create_many(BulkNote, [{"_id": _key(i), "priority": i % 7 + 1} for i in range(N)], update="modified")
    with db.write():
        # a call that fails after a held chunk and is rolled back, then another call, then a third
        with pytest.raises(ValidationError):
            db.create_many(BulkNote, [{"_id": _key(i), "status": "done"} for i in range(N // 2)]
                           + [{"_id": _key(N // 2), "status": 5}], update="modified")
        db.create_many(BulkNote, [{"_id": _key(i), "score": i / 4} for i in range(N // 2, N)], update="all")
    with db.write():
        db.create_many(BulkNote, [{"_id": _key(i), "status": "done"} for i in range(N // 2)], update="modified")
        db.create_many(BulkNote, [{"_id": _key(i), "extra": f"x{i}"} for i in range(N // 2, N)], update="all")
    with db.write():
        # held chunks, then a create and an assignment: the columns' documents come first
        db.create_many(BulkNote, [{"_id": _key(i), "title": f"u{i}"} for i in range(0, N, 2)], update="modified")
        db.create(BulkNote, _id="new", title="new")
        db.get(BulkNote, _key(1)).title = "one"
    with db.write():
        # a change first: the chunk's documents go into ``touched`` after it
        db.get(BulkNote, _key(3)).title = "three"
        db.create_many(BulkNote, [{"_id": _key(i), "flag": True} for i in range(5, N, 3)], update="modified")
    objs = sorted((o for o in db.objects(BulkNote) if o._id != "new"), key=lambda o: o._id)
    with db.write():
        for i, obj in enumerate(objs):
            obj.priority = i % 5  # a loop committed as columns
    for (data,) in db._engine.query("SELECT data FROM descriptors"):  # as packb packs the map it holds
        assert msgpack.packb(msgpack.unpackb(data, raw=False), use_bin_type=True) == data
    before, after, entries, revert, docs = _outcome(db, 4, [BulkNote])
    return _before_sorted(before), _before_sorted(after), entries, revert, docs


def test_held_touches_give_the_general_paths_descriptors_and_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "_BULK_CHUNK", 64)
    monkeypatch.setattr(writer, "COLUMNS_MIN_DOCS", 16)
    held = []
    touches = writer.WriteTransaction.touches

    def counted(self):
        held.append((len(self._touched_columns), len(self._touched)))
        return touches(self)
    monkeypatch.setattr(writer.WriteTransaction, "touches", counted)
    with tidesync.open(tmp_path / "c.db", schema=[BulkNote]) as db:
        columns = _scenario(db)
    # one call of four chunks: held; the failed call's chunk rolled back, the next call's two
    # chunks held; two calls: the second call's savepoint entered the first's (it reads
    # ``touched``), and its own went in after them; with other changes: entered; the loop: held.
    assert held[1:7] == [(4, 0), (2, 0), (0, N), (0, N // 2 + 2), (0, 1 + len(range(5, N, 3))), (1, 0)]
    uniform = _record_uniform(monkeypatch)
    monkeypatch.setattr(writer.WriteTransaction, "touches", touches)
    _general(monkeypatch)
    with tidesync.open(tmp_path / "g.db", schema=[BulkNote]) as db:
        general = _scenario(db)
    assert uniform == []  # the general path took none of it
    for a, b in ((columns[0], general[0]), (columns[1], general[1])):
        rows_a, states_a, log_a, desc_a = a
        rows_b, states_b, log_b, desc_b = b
        assert _norm(rows_a) == _norm(rows_b)
        assert _norm(states_a) == _norm(states_b)
        assert _norm(log_a) == _norm(log_b)
        # the descriptors, their touches in first-change order
        assert _norm(desc_a) == _norm(desc_b)
    assert _norm(columns[3]) == _norm(general[3])
    assert _norm(columns[4]) == _norm(general[4])

