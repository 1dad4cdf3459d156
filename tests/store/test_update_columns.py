"""A uniform chunk of ``db.create_many(..., update=...)`` kept as columns (``ColumnUpdate``):
the same file (rows with their meta text), log, history, revert and peer as the per-document
bulk path (``PendingDoc`` per document) and the general path, also when something later in the
write touches its documents (they then become pending documents) or a savepoint rolls it back."""

from __future__ import annotations

import pytest

import tidesync
from tidesync.store.database import Database
from tests.store.test_create_bulk import BulkNote, _items, _norm
from tests.store.test_update_bulk import _assert_agrees_with_general, _before_sorted, _general, _outcome, _state

N = 5000  # more than one chunk of 4,096


def _ids(n):
    return [f"n{i:05d}" for i in range(n)]


def _scenario(db, meta):
    with db.write():
        db.create_many(BulkNote, _items(N))
        db.create(BulkNote, _id='odd "id" \\ é', title="escaped key")
    with db.write():
        db.get(BulkNote, "n00002").title = "an overlay meta before"  # not the compact meta of a create
    with db.write():
        db.create_many(BulkNote, [{"_id": i, "priority": 4} for i in _ids(N)], update="modified")
        db.create_many(BulkNote, [{"_id": i, "score": 0.1 + 0.2 if n % 2 else 1e300, "flag": n % 3 == 0}
                                  for n, i in enumerate(_ids(300)[::-1])], update="modified")
        db.create_many(BulkNote, [{"_id": 'odd "id" \\ é', "priority": 3}], update="all")
    big = db.history(1)[0]
    with db.write():
        db.create_many(BulkNote, [{"_id": i, "title": f"t{n}"} for n, i in enumerate(_ids(N))], update="all")
        db.get(BulkNote, "n00010").priority = 1           # a fast-path write of one of its documents
        loaded = db.get(BulkNote, "n00011")
        loaded.status = "loaded"                         # loaded whole
        _ = loaded.title
        db.delete(db.get(BulkNote, "n04998"))  # a later chunk then re-creates it: title required
        assert len(db.objects(BulkNote).filter("status == 'loaded'")) == 1
    with db.write():
        db.create_many(BulkNote, [{"_id": i, "extra": "kept"} for i in _ids(100)], update="all")
        with pytest.raises(tidesync.ValidationError):
            # a first chunk made as columns, then a failing one: the call leaves nothing
            db.create_many(BulkNote, [{"_id": i, "extra": "gone"} for i in _ids(N)] + [{"_id": "x", "extra": 1}],
                           update="all")
        with pytest.raises(tidesync.ValidationError):
            db.create_many(BulkNote, [{"_id": i, "priority": 0} for i in _ids(50)] + [{"_id": "n00001", "priority": "no"}],
                           update="all")
        db.get(BulkNote, "n00020").flag = True
    assert db.get(BulkNote, "n00001").extra == "kept" and db.get(BulkNote, "n00200").extra != "gone"
    return _outcome(db, big.id, [BulkNote], meta=meta)


def _run(path, mode, monkeypatch, meta=False):
    used = [] if mode != "general" else None
    if mode == "general":
        _general(monkeypatch)
    else:
        uniform = Database._update_uniform

        def counted(self, *a):
            if mode == "pending":
                return False
            done = uniform(self, *a)
            used.append(done)
            return done
        monkeypatch.setattr(Database, "_update_uniform", counted)
    with tidesync.open(path, schema=[BulkNote]) as db:
        out = _scenario(db, meta)
    monkeypatch.undo()
    if mode == "columns":
        assert used.count(True) >= 6
    return out


def test_columns_give_the_pending_paths_file_with_metas_log_history_revert_and_peer(tmp_path, monkeypatch):
    pending = _run(tmp_path / "p.db", "pending", monkeypatch, meta=True)
    columns = _run(tmp_path / "c.db", "columns", monkeypatch, meta=True)
    assert _norm(columns) == _norm(pending)


def test_columns_give_the_general_paths_documents_and_log(tmp_path, monkeypatch):
    general = _run(tmp_path / "g.db", "general", monkeypatch)
    columns = _run(tmp_path / "c.db", "columns", monkeypatch)
    _assert_agrees_with_general(columns, general)


def test_a_write_of_columns_only_never_makes_pending_documents(tmp_path, monkeypatch):
    made = []
    real = Database._commit_ops

    def commit(self, txn, meta):
        made.append((len(txn.columns), len(txn.pending), len(txn.column_refs)))
        return real(self, txn, meta)
    monkeypatch.setattr(Database, "_commit_ops", commit)
    with tidesync.open(tmp_path / "a.db", schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(N))
        with db.write():
            db.create_many(BulkNote, [{"_id": i, "priority": 4} for i in _ids(N)], update="modified")
        assert made[-1] == (2, 0, N - N // 5)  # items already at 4 change nothing
        assert db.get(BulkNote, "n00003").priority == 4


def _range_scenario(db):
    with db.write():
        db.create_many(BulkNote, _items(300))
    with db.write():
        db.delete(db.get(BulkNote, "n00150"))
    with db.write():
        # a whole range of the key index (read as one range)
        db.create_many(BulkNote, [{"_id": i, "priority": 4} for i in _ids(100)], update="modified")
        # in order with other documents between them (a seek per key)
        db.create_many(BulkNote, [{"_id": i, "priority": 3} for i in _ids(150)[100::2]], update="modified")
        # a range holding as many documents as items, one item naming no document (created): n00258
        # is in the range, n00257a is not in the file
        db.create_many(BulkNote, [{"_id": i, "priority": 2, "title": "t"} for i in
                                  [*_ids(258)[250:], "n00257a", "n00259"]], update="modified")
        # a range with a deleted document among the items (it is created again)
        db.create_many(BulkNote, [{"_id": i, "priority": 1, "title": "again"} for i in _ids(170)[150:170]],
                       update="all")
    return _state(db)


def test_a_chunk_read_as_a_range_of_the_key_index_gives_the_general_paths_documents_and_log(tmp_path, monkeypatch):
    from tidesync.store.engine import Engine
    ranges = []
    real = Engine.query

    def query(self, sql, *a, **kw):
        rows = real(self, sql, *a, **kw)
        if "AND d.pk <= ?" in sql:
            ranges.append(rows[0][0])  # the range is read as one row of columns: its count of documents
        return rows
    monkeypatch.setattr(Engine, "query", query)
    with tidesync.open(tmp_path / "r.db", schema=[BulkNote]) as db:
        fast = _range_scenario(db)
    # the first chunk; the one with a missing key and the one with a deleted document (both then
    # take the per-item path); not the one with other documents between its keys
    assert ranges == [100, 10, 20]
    monkeypatch.undo()
    _general(monkeypatch)
    with tidesync.open(tmp_path / "g.db", schema=[BulkNote]) as db:
        general = _range_scenario(db)
    assert _norm(_before_sorted(fast)) == _norm(_before_sorted(general))
