"""A write of fast-path assignments only (a loop of ``obj.f = v``) committed as one
``ColumnUpdate`` (``Database._pending_as_columns``): the same file (rows with their meta text),
merge states, log, descriptors, history, revert and peer documents as the per-document commit
(``_write_pending``), and the same documents as the general path; writes it must not take
(assignments of one document apart, a field assigned twice, two collections, anything else in
the write) still commit as before."""

from __future__ import annotations

import msgpack
import pytest

import tidesync
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database
from tests.store.test_create_bulk import BulkNote, _items, _norm
from tests.store.test_update_bulk import _assert_agrees_with_general, _outcome, _state
from tests.store.test_update_columns import _ids

N = 1500


class OtherNote(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    title: str
    priority: int = 0


def _scenario(db, meta):
    with db.write():
        db.create_many(BulkNote, _items(N))
        db.create(BulkNote, _id='odd "id" \\ é', title="escaped key")
        db.create_many(OtherNote, [{"_id": i, "title": i} for i in _ids(20)])
    with db.write():
        db.get(BulkNote, "n00002").title = "an overlay meta before"  # not the compact meta of a create
    objs = list(db.objects(BulkNote))
    by_id = {o._id: o for o in objs}
    with db.write():  # one field of every document, values of every plain kind
        for n, o in enumerate(objs):
            o.priority = (n * 7) % 5
    big = db.history(1)[0]
    with db.write():  # several fields of each document, in one run each
        for n, o in enumerate(objs[:300]):
            o.score = 0.1 + 0.2 if n % 2 else 1e300
            o.flag = n % 3 == 0
            o.extra = None if n % 4 else f'x"\\{n}'
            o.status = "done"
    with db.write():  # assignments of one document apart: the per-document commit
        for i in ("n00010", "n00011", "n00010"):
            by_id[i].title = f"apart {i}"
    with db.write():  # a field assigned twice
        by_id["n00020"].priority = 1
        by_id["n00020"].priority = 2
    with db.write():  # two collections
        by_id["n00021"].priority = 3
        db.get(OtherNote, "n00001").priority = 3
    with db.write():  # something else in the same write
        by_id["n00022"].priority = 3
        db.create(BulkNote, _id="new", title="new")
    with db.write():  # a query flushes the assignments before the commit
        by_id["n00023"].priority = 4
        assert len(db.objects(BulkNote).filter("priority == 4 AND _id == 'n00023'")) == 1
        by_id["n00024"].priority = 4
    with db.write():
        by_id['odd "id" \\ é'].status = "escaped"
        by_id["n00002"].status = "overlay"
    with pytest.raises(RuntimeError):
        with db.write():  # rolled back: nothing of it stays
            by_id["n00030"].priority = 4
            raise RuntimeError
    assert by_id["n00030"].priority == (30 * 7) % 5
    return _outcome(db, big.id, [BulkNote, OtherNote], meta=meta)


def _run(path, mode, monkeypatch, meta=False):
    used = []
    real = Database._pending_as_columns

    def counted(self, txn):
        if mode == "pending":
            return None
        real(self, txn)
        used.append(bool(txn.columns))
        return None
    if mode == "general":
        monkeypatch.setattr(Database, "_fast_assign", lambda self, *a: False)
    if mode == "pending":  # a loop recorded as columns commits as pending documents too
        monkeypatch.setattr(Database, "_loop_as_columns", lambda self, txn: None)
    monkeypatch.setattr(Database, "_pending_as_columns", counted)
    with tidesync.open(path, schema=[BulkNote, OtherNote]) as db:
        out = _scenario(db, meta)
    monkeypatch.undo()
    if mode == "columns":
        # the create, one assignment, the loop of one field, of several fields, apart, twice, two
        # collections, with a create, flushed by a query, the escaped key and overlay meta, the revert
        assert used == [False, True, True, True, False, False, False, False, False, True, False]
    return out


def test_a_loop_of_assignments_as_columns_gives_the_per_document_commits_file_log_history_revert_and_peer(
        tmp_path, monkeypatch):
    pending = _run(tmp_path / "p.db", "pending", monkeypatch, meta=True)
    columns = _run(tmp_path / "c.db", "columns", monkeypatch, meta=True)
    assert _norm(columns) == _norm(pending)


def test_a_loop_of_assignments_as_columns_gives_the_general_paths_documents_and_log(tmp_path, monkeypatch):
    general = _run(tmp_path / "g.db", "general", monkeypatch)
    columns = _run(tmp_path / "c.db", "columns", monkeypatch)
    _assert_agrees_with_general(columns, general)


def test_a_loop_committed_as_columns_makes_no_pending_document_at_commit(tmp_path, monkeypatch):
    seen = []
    real = Database._commit_ops

    def commit(self, txn, meta):
        seen.append((len(txn.columns), len(txn.pending), len(txn.ops)))
        return real(self, txn, meta)
    monkeypatch.setattr(Database, "_commit_ops", commit)
    with tidesync.open(tmp_path / "a.db", schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(50))
        objs = list(db.objects(BulkNote))
        with db.write():
            for o in objs:
                o.priority = 9
        assert seen[-1] == (1, 0, 0)
        assert [o.priority for o in db.objects(BulkNote)] == [9] * 50
        (data,), = db._engine.query("SELECT data FROM log ORDER BY seq DESC LIMIT 1")
        wire = Transaction.from_stored(msgpack.unpackb(data, raw=False)).to_wire()
        assert [op[7] for op in wire["ops"]] == [9] * 50 and len(wire["before"]) == 50
