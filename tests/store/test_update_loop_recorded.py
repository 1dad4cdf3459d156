"""The assignment loop recorded as columns from its first assignment
(``WriteTransaction.loop_keys``, no ``PendingDoc`` per document, committed by
``Database._loop_as_columns``): the same file (rows with their meta text), merge states, log,
descriptors, history, revert, peer documents and listener notifications as the same writes
through pending documents, and the same documents and log as the general path; reads and
queries inside the write see the new values, anything else in the write turns the loop into
pending documents first, and a write that raises leaves nothing of it."""

from __future__ import annotations

import queue

import pytest

import tidesync
from tidesync.store.database import Database
from tests.store.test_create_bulk import BulkNote, _items, _norm
from tests.store.test_update_bulk import _assert_agrees_with_general, _outcome
from tests.store.test_update_loop_columns import OtherNote

N = 700
WAIT = 5


def _scenario(db, meta):
    with db.write():
        db.create_many(BulkNote, _items(N))
        db.create_many(OtherNote, [{"_id": f"o{i}", "title": "o"} for i in range(5)])
    objs = list(db.objects(BulkNote))
    other = db.get(OtherNote, "o1")
    before = [o.priority for o in objs]
    with db.write():  # the whole loop: one field of every document
        for n, o in enumerate(objs):
            o.priority = (n * 3) % 5
    big = db.history(1)[0]
    with db.write():  # a read inside the write sees the loop's value; one not assigned, the row's
        for o in objs[:100]:
            o.status = "read"
        assert objs[50].status == "read"
        assert objs[150].status != "read"
        for o in objs[100:200]:
            o.status = "read"
        assert objs[199].status == "read"
    with db.write():  # a query inside the write sees the values assigned before it
        for o in objs[:300]:
            o.title = "queried"
        assert len(db.objects(BulkNote).filter("title == 'queried'")) == 300
        for o in objs[300:400]:
            o.title = "queried"
        assert len(db.objects(BulkNote).filter("title == 'queried'")) == 400
    with db.write():  # mixed: a second field of one document in the middle of a loop
        for o in objs[:50]:
            o.priority = 1
        objs[10].flag = True
        for o in objs[50:100]:
            o.priority = 1
    with db.write():  # two loops of one field each over the same documents
        for o in objs[:60]:
            o.score = 2.5
        for o in objs[:60]:
            o.extra = "e\"\\"
    with db.write():  # a document of the loop deleted in the same write
        for o in objs[400:450]:
            o.priority = 2
        db.delete(objs[420])
    with db.write():  # the loop's field assigned again
        for o in objs[450:500]:
            o.priority = 3
        objs[460].priority = 4
    with db.write():  # another collection, then a create
        for o in objs[500:540]:
            o.priority = 4
        other.priority = 4
        db.create(BulkNote, _id="new", title="new")
    with pytest.raises(RuntimeError):
        with db.write():  # rolled back: nothing of it stays
            for o in objs[540:640]:
                o.priority = 0 if o.priority else 1
            assert objs[600].priority in (0, 1)
            raise RuntimeError
    assert [o.priority for o in objs[540:640]] == [(n * 3) % 5 for n in range(540, 640)]
    assert before[:400] != [o.priority for o in objs[:400]]
    with db.write():  # the same documents again after the rollback
        for o in objs[540:640]:
            o.priority = 0
    return _outcome(db, big.id, [BulkNote, OtherNote], meta=meta)


def _run(path, mode, monkeypatch, meta=False):
    taken: list[int] = []
    real = Database._loop_as_columns

    def loop_as_columns(self, txn):
        if mode == "pending":
            return None  # the loop turns into pending documents (WriteTransaction._unloop)
        n = len(txn.loop_keys)
        real(self, txn)
        if n and not txn.loop_keys:
            taken.append(n)
        return None
    if mode == "general":
        monkeypatch.setattr(Database, "_fast_assign", lambda self, *a: False)
    monkeypatch.setattr(Database, "_loop_as_columns", loop_as_columns)
    with tidesync.open(path, schema=[BulkNote, OtherNote]) as db:
        out = _scenario(db, meta)
    monkeypatch.undo()
    if mode == "loop":
        # committed straight from the loop: the whole loop, the loop after the rollback, revert's
        # write (not a loop); every other write did something else too
        assert taken == [N, 100]
    return out


def test_a_recorded_loop_gives_the_pending_documents_file_log_history_revert_and_peer(tmp_path, monkeypatch):
    pending = _run(tmp_path / "p.db", "pending", monkeypatch, meta=True)
    loop = _run(tmp_path / "l.db", "loop", monkeypatch, meta=True)
    assert _norm(loop) == _norm(pending)


def test_a_recorded_loop_gives_the_general_paths_documents_and_log(tmp_path, monkeypatch):
    general = _run(tmp_path / "g.db", "general", monkeypatch)
    loop = _run(tmp_path / "l.db", "loop", monkeypatch)
    _assert_agrees_with_general(loop, general)


def test_a_recorded_loop_makes_no_pending_document(tmp_path):
    with tidesync.open(tmp_path / "n.db", schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(50))
        objs = list(db.objects(BulkNote))
        with db.write():
            for o in objs[:40]:
                o.priority = 4
            txn = db._txn
            assert len(txn.loop_keys) == 40 and not txn._pending and not txn._unstamped
            _ = objs[45].priority  # read, not assigned: the loop stays as it is
            assert len(txn.loop_keys) == 40
            assert objs[1].priority == 4  # assigned: the loop becomes pending documents, flushed
            assert not txn.loop_keys and len(txn._pending) == 40
        assert [o.priority for o in objs[:40]] == [4] * 40


def _listened(path, mode, monkeypatch):
    if mode == "general":
        monkeypatch.setattr(Database, "_fast_assign", lambda self, *a: False)
    with tidesync.open(path, schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(40))
        objs = list(db.objects(BulkNote))
        got: queue.Queue = queue.Queue()
        tokens = [
            objs[3].add_listener(lambda obj, change: got.put(("obj", tuple(sorted(change.changed_fields))))),
            objs[4].add_listener(lambda obj, change: got.put(("obj-title", tuple(change.changed_fields))),
                                 key_paths=["title"]),
            db.objects(BulkNote).filter("priority == 4").add_listener(
                lambda res, change: got.put(("res", len(res), tuple(change.insertions), tuple(change.deletions),
                                             tuple(change.modifications)))),
            db.objects(BulkNote).add_listener(
                lambda res, change: got.put(("res-title", tuple(change.modifications))), key_paths=["title"]),
        ]
        seen = []
        # Each write's notifications are awaited before the next write (the listener thread
        # diffs what changed since its last look, so a late look would merge two writes).
        for step, count in ((0, 2), (0, 4), (1, 2), (1, 3)):
            with db.write():
                if count == 2:
                    for o in objs[:30]:
                        o.priority = 4 if step == 0 else 3
                else:
                    for o in objs[:5]:
                        o.title = f"t{step}"
            batch = [got.get(timeout=WAIT) for _ in range(count)]
            seen.append(sorted(batch, key=repr))
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)
        for t in tokens:
            t.remove()
    monkeypatch.undo()
    return seen


def test_a_recorded_loop_notifies_listeners_as_the_general_path(tmp_path, monkeypatch):
    general = _listened(tmp_path / "g.db", "general", monkeypatch)
    loop = _listened(tmp_path / "l.db", "loop", monkeypatch)
    assert loop == general
    assert ("obj-title", ("title",)) in loop[1] and len(loop[3]) == 3
