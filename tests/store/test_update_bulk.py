"""``db.create_many(..., update=...)``'s bulk path for existing documents (the assignment fast
path's pending fields, rows read in one query, stamped at once): the same file, log, history,
revert and listener changes as its general path and as a loop of ``obj.field = value``."""

from __future__ import annotations

import queue

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tidesync
from tidesync.core.merge import canonical_state
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database
from tests.models import Ticket
from tests.store.test_create_bulk import BulkNested, BulkNote, _items, _norm


def _general(monkeypatch):
    monkeypatch.setattr(Database, "_update_plan", lambda self, cls, obj: None)


def _record_uniform(monkeypatch):
    """A list that gets what each call of ``Database._update_uniform`` (the uniform chunk's
    columns path) returns: True when it did the chunk."""
    taken: list[bool] = []
    uniform = Database._update_uniform

    def recorded(self, *a):
        done = uniform(self, *a)
        taken.append(done)
        return done
    monkeypatch.setattr(Database, "_update_uniform", recorded)
    return taken


def _state(db, meta=False):
    """Rows, merge states, log entries (as transactions) and descriptors; the rows' meta text only with ``meta`` (the
    general path writes a document's meta whole, the fast path keeps the overlay form)."""
    sql = (f"SELECT collection, pk, body, {'meta' if meta else 'NULL'}, epoch, live, seq FROM documents "
           "ORDER BY collection, pk")
    rows = db._engine.query(sql)
    states = {(c, pk): canonical_state(db._load_doc(c, None, (c, pk)).state) for c, pk, *_ in rows}
    # Each entry as the transaction it stands for (a bulk update may be stored as columns records).
    entries = db._engine.query("SELECT seq, data FROM log ORDER BY seq")
    log = [(seq, Transaction.from_stored(msgpack.unpackb(data, raw=False)).to_wire()) for seq, data in entries]
    desc = sorted((seq, msgpack.unpackb(data, raw=False)) for seq, data in
                  db._engine.query("SELECT seq, data FROM descriptors"))
    # A descriptor's size is its entry's stored size (smaller for columns records): checked
    # here, then left out of the comparison between paths.
    stored = {seq: len(data) for seq, data in entries}
    for seq, d in desc:
        assert d.pop("size") == stored[seq]
    return rows, states, log, desc


def _outcome(db, revert, schema, meta=False):
    """What a scenario left, for comparing paths: the history, the state before and after
    reverting ``revert`` (a transaction id, or an index into the history) with what the revert
    did, and the documents a peer gets from the log (``export_transactions``/``integrate``)."""
    entries = db.history(20)
    before = _state(db, meta=meta)
    revert = db.revert(entries[revert].id if isinstance(revert, int) else revert)
    after = _state(db, meta=meta)
    with tidesync.open(str(db.path) + ".peer.db", schema=schema) as peer:
        peer.integrate(db.export_transactions())
        docs = peer._engine.query("SELECT collection, pk, body, live FROM documents ORDER BY collection, pk")
    return before, after, entries, revert, docs


def _before_sorted(state):
    """``state`` with each log entry's before-images sorted: their order may differ from the
    general path's, which lists them in the order it loaded the documents (items that change
    nothing load theirs too); the bulk path, as the assignment fast path, in first-change order."""
    for _, wire in state[2]:
        wire["before"].sort(key=repr)
    return state


def _assert_agrees_with_general(fast, general):
    """``fast`` (a fast path's ``_run``) holds what ``general`` does. The general path writes a
    document's meta whole (expanded), the fast paths as an overlay: its first two parts compare
    without their meta text, with before-images sorted; the rest (merge states, log and
    descriptors) as they are."""
    for g, c in ((general[0], fast[0]), (general[1], fast[1])):
        assert _norm(_before_sorted(c)) == _norm(_before_sorted(g))
    assert _norm(fast[2:]) == _norm(general[2:])


def _scenario(db):
    with db.write():
        db.create_many(BulkNote, _items(1200))
        db.create(BulkNote, _id="gone", title="gone")
    with db.write():
        db.delete(db.get(BulkNote, "gone"))
        db.get(BulkNote, "n00001").title = "fast path, an earlier write"  # overlay meta in the row
    with db.write():
        db.get(BulkNote, "n00002").priority = 4                 # pending before the call
        db.get(BulkNote, "n00003").title = "loaded"
        loaded = db.get(BulkNote, "n00004")
        loaded.priority = 1
        _ = loaded.title
        assert db.create_many(BulkNote, [
            {"_id": f"n{i:05d}", "priority": (i + 1) % 5} for i in range(1000)   # more than a row batch
        ] + [
            {"_id": "n00005", "priority": 1},                    # the value it has now: nothing changes
            {"_id": "n00006", "title": "two", "score": 2.5, "flag": True},  # several fields, model order
            {"_id": "n00006", "score": 3},                       # twice in the call, an int for a float
            {"_id": "new", "title": "created in the call"},      # created, as create() does
            {"_id": "gone", "title": "back"},                    # a tombstone: re-created
            {"_id": "n00007", "extra": None},                    # a null
            {"_id": "n00008", "extra": 'é"\\\n'},                # escaped
            {"_id": "n00009"},                                   # nothing but the key
            BulkNote(_id="n00010", title="unmanaged object"),    # every field given: an upsert
            {"_id": "n00011", "status": "x", "title": "t"},      # not in the model's order
        ], update="modified") == 1010
        db.get(BulkNote, "n00012").priority = 3                 # fast path after the call
        db.create_many(BulkNote, [{"_id": "n00012", "priority": 4}, {"_id": "n00013", "priority": 0}],
                       update="all")
        assert db.get(BulkNote, "n00006").score == 3.0
        assert len(db.objects(BulkNote).filter("priority == 4")) > 0  # a query flushes the pending rows
        db.create_many(BulkNote, [{"_id": "n00014", "priority": 1}], update="modified")
        db.create_many(BulkNested, [{"_id": "x", "tags": ["a"]}], update="modified")
    with db.write():
        db.create_many(BulkNote, [{"_id": "n00001", "title": "again"}, {"_id": "n00015", "priority": 2}],
                       update="modified")
    entries = db.history(10)
    before = _state(db)
    revert = db.revert(entries[1].id)
    after = _state(db)
    return before, after, entries, revert


def _run(path, lean, monkeypatch):
    used = []
    if lean:
        apply = Database._apply_updates
        monkeypatch.setattr(Database, "_apply_updates", lambda self, txn, run: (used.append(len(run)),
                                                                                apply(self, txn, run)))
    else:
        _general(monkeypatch)
    with tidesync.open(path, schema=[BulkNote, BulkNested]) as db:
        out = _scenario(db)
    monkeypatch.undo()
    assert (sum(used) > 1000) == lean
    return out


def test_bulk_update_gives_the_general_paths_file_log_history_and_revert(tmp_path, monkeypatch):
    general = _run(tmp_path / "g.db", False, monkeypatch)
    lean = _run(tmp_path / "l.db", True, monkeypatch)
    assert _norm(lean) == _norm(general)
    (_, _, log, _), _, _, _ = lean
    big = log[-2][1]  # the write with the calls
    keys = [op[2] for op in big["ops"]]
    assert keys[:4] == ["n00002", "n00003", "n00004", "n00000"] and keys.count("n00005") == 1
    assert keys.count("n00006") == 5  # priority; title, score, flag; then score again
    assert [b[1] for b in big["before"][:4]] == ["n00002", "n00003", "n00004", "n00000"]


def _loop_or_many(path, many, monkeypatch=None):
    with tidesync.open(path, schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(600))
        with db.write():
            db.get(BulkNote, "n00001").score = 1.5
        values = [(i * 7) % 5 for i in range(600)]
        with db.write():
            if many:
                db.create_many(BulkNote, [{"_id": f"n{i:05d}", "priority": v} for i, v in enumerate(values)],
                               update="all")
            else:
                for o, v in zip(list(db.objects(BulkNote).sort("_id")), values):
                    o.priority = v
        return _state(db, meta=True), db.history(1)


def test_bulk_update_writes_what_a_loop_of_fast_path_assignments_writes(tmp_path):
    loop = _loop_or_many(tmp_path / "loop.db", False)
    many = _loop_or_many(tmp_path / "many.db", True)
    assert _norm(many) == _norm(loop)


def test_a_failed_call_leaves_nothing_of_its_updates(tmp_path):
    with tidesync.open(tmp_path / "f.db", schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(20))
        with db.write():
            db.get(BulkNote, "n00002").priority = 4
            db.get(BulkNote, "n00003").priority = 4
            with pytest.raises(tidesync.ValidationError, match="BulkNote.priority expects int"):
                db.create_many(BulkNote, [{"_id": "n00001", "priority": 3}, {"_id": "n00002", "priority": 0},
                                          {"_id": "n00002", "title": "changed"}]
                               + [{"_id": f"n{i:05d}", "title": "x"} for i in range(5, 20)]
                               + [{"_id": "n00004", "priority": "high"}], update="modified")
            with pytest.raises(tidesync.ValidationError, match="required"):
                db.create_many(BulkNote, [{"_id": "n00001", "priority": 3}, {"_id": "new"}], update="modified")
            assert db.get(BulkNote, "n00001").priority == 1
            assert db.get(BulkNote, "n00002").priority == 4 and db.get(BulkNote, "n00002").title == "note 2"
            assert [o.title for o in db.objects(BulkNote).filter("title == 'x'")] == []
            db.get(BulkNote, "n00005").priority = 0
        t = db.export_transactions()[-1]
        assert [(op.key, op.path, op.value) for op in t.ops] == [
            ("n00002", ("priority",), 4), ("n00003", ("priority",), 4), ("n00005", ("priority",), 0)]
        assert [(b.key, b.fields) for b in t.before] == [
            ("n00002", {"priority": 2}), ("n00003", {"priority": 3}), ("n00005", {"priority": 0})]
        assert db.get(BulkNote, "n00001").priority == 1 and db.get(BulkNote, "n00005").priority == 0


def test_listeners_and_a_peer_see_the_bulk_update(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[BulkNote]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[BulkNote]) as b:
        with a.write():
            a.create_many(BulkNote, _items(50))
        q: queue.Queue = queue.Queue()
        token = a.objects(BulkNote).sort("_id").add_listener(lambda r, c: q.put(c), key_paths=["title"])
        with a.write():
            a.create_many(BulkNote, [{"_id": f"n{i:05d}", "title": f"t{i}"} for i in range(0, 50, 2)],
                          update="modified")
        changes = q.get(timeout=10)
        while not changes.modifications:  # the listener's first call: the initial results
            changes = q.get(timeout=10)
        assert changes.modifications == tuple(range(0, 50, 2)) and not changes.insertions
        token.remove()
        entry = a.history(1)[0]
        assert [(c.id, c.kind, c.fields) for c in entry.changes] == [
            (f"n{i:05d}", "update", ("title",)) for i in range(0, 50, 2)]
        b.integrate(a.export_transactions(), peer=a.replica_id)
        assert _state(b)[:2] == _state(a)[:2]  # rows (meta aside: the fast path's is an overlay) and merge states


_value = {
    "title": st.text(max_size=5),
    "priority": st.integers(-3, 3),
    "score": st.one_of(st.floats(-2, 2, allow_nan=False), st.integers(-2, 2)),
    "flag": st.booleans(),
    "extra": st.one_of(st.none(), st.text(max_size=3)),
}
_item = st.builds(
    lambda i, fields: {"_id": f"n{i:05d}", **fields},
    st.integers(0, 11),
    st.dictionaries(st.sampled_from(sorted(_value)), st.none()).flatmap(
        lambda d: st.fixed_dictionaries({k: _value[k] for k in d})))


def _uniform(names):
    """Items with the same keys, each value of its field's own type (the column-by-column path)."""
    own = {"title": st.text(max_size=3), "priority": st.integers(-2, 2), "score": st.floats(-1, 1, allow_nan=False),
           "flag": st.booleans(), "extra": st.text(max_size=2)}
    return st.lists(st.integers(0, 9), unique=True, max_size=12).flatmap(lambda ids: st.tuples(*[
        st.fixed_dictionaries({"_id": st.just(f"n{i:05d}"), **{n: own[n] for n in names}}) for i in ids]).map(list))


_batch = st.one_of(st.lists(_item, max_size=12),
                   st.lists(st.sampled_from(sorted(_value)), min_size=1, max_size=3, unique=True).flatmap(_uniform))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(_batch, st.sampled_from(["modified", "all"]), st.integers(0, 12)),
                        min_size=1, max_size=4))
def test_random_batches_match_the_general_path(tmp_path_factory, batches):
    out = []
    for lean in (False, True):
        path = tmp_path_factory.mktemp("h") / "h.db"
        with pytest.MonkeyPatch.context() as mp:
            if not lean:
                _general(mp)
            with tidesync.open(path, schema=[BulkNote]) as db:
                with db.write():
                    db.create_many(BulkNote, _items(10))
                errors = []
                with db.write():
                    db.create_many(BulkNote, [{"_id": "n00001", "score": 0.5}, {"_id": "n00003", "score": 0.5}],
                                   update="all")  # an overlay meta in these rows for the next write
                with db.write():
                    for items, update, touch in batches:
                        if touch < 10:
                            db.get(BulkNote, f"n{touch:05d}").priority = 9  # a fast-path write between
                        try:
                            db.create_many(BulkNote, items, update=update)
                        except tidesync.ValidationError as exc:  # a new document without its title
                            errors.append(str(exc))
                out.append((_before_sorted(_state(db)), errors))
    assert _norm(out[1]) == _norm(out[0])


def _uniform_run(path, lean, monkeypatch):
    if lean:
        taken = _record_uniform(monkeypatch)
    else:
        taken = []
        _general(monkeypatch)
    with tidesync.open(path, schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(300))
        with db.write():
            db.get(BulkNote, "n00299").title = "an overlay meta, then the bulk update"
        with db.write():
            db.create_many(BulkNote, [{"_id": f"n{i:05d}", "title": f"note {i}" if i % 3 else "new", "flag": i % 2 == 0,
                                       "priority": i % 4} for i in range(300)], update="modified")
            assert db.get(BulkNote, "n00003").title == "new"  # the rows written by the call (before the commit)
            db.get(BulkNote, "n00003").priority = 9            # then a fast-path write of one of them
            db.get(BulkNote, "n00006").status = "late"
            assert len(db.objects(BulkNote).filter("priority == 9")) == 1
            db.create_many(BulkNote, [{"_id": f"n{i:05d}", "score": 1.0} for i in range(0, 300, 7)], update="all")
        out = _before_sorted(_state(db)), db.history(2)
    monkeypatch.undo()
    assert taken == ([True, False] if lean else [])  # the second call's documents are pending: generic path
    return out


def test_uniform_chunks_of_several_fields_match_the_general_path(tmp_path, monkeypatch):
    general = _uniform_run(tmp_path / "g.db", False, monkeypatch)
    lean = _uniform_run(tmp_path / "l.db", True, monkeypatch)
    assert _norm(lean) == _norm(general)
    ops = lean[0][2][-1][1]["ops"]
    changed = sum((i % 3 == 0) + (i % 2 == 0) + (i % 4 != i % 5) for i in range(300))
    assert len(ops) == changed + 2 + len(range(0, 300, 7))


def _partition_run(path, lean, monkeypatch):
    if not lean:
        _general(monkeypatch)
    with tidesync.open(path, schema=[Ticket]) as db:
        with db.write():
            db.create_many(Ticket, [{"_id": f"t{i}", "text": "a"} for i in range(5)])
            db.create_many(Ticket, [{"_id": "t0", "text": "b"}], update="modified")  # the model's plan made
        db._set_partition("_partition", "p1")
        with db.write():
            db.create_many(Ticket, [{"_id": f"t{i}", "text": "c"} for i in range(1, 4)], update="modified")
            db.create_many(Ticket, [{"_id": "t4", "_partition": "p1"}], update="modified")
        # the general path rewrites the scope column of what it writes: t4's, in both runs
        assert db._engine.query("SELECT scope FROM documents WHERE pk = '\"t4\"'") == [('"p1"',)]
        out = _state(db)
    monkeypatch.undo()
    return out


def test_the_partition_key_is_left_to_the_general_path(tmp_path, monkeypatch):
    """Even when the model's bulk-update fields were worked out before the partition was set.
    (The scope column of the other rows is left out: the assignment fast path leaves it as the
    row had it, the general path rewrites it from the body; these rows predate the partition.)"""
    assert _norm(_partition_run(tmp_path / "l.db", True, monkeypatch)) == \
        _norm(_partition_run(tmp_path / "g.db", False, monkeypatch))
