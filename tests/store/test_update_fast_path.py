"""The update fast path (``obj.field = v`` on a top-level scalar field, without loading the
document) against the general path: same documents, same merge state, same log, same errors."""

from __future__ import annotations

import json
import queue
import re

import msgpack
import pytest

import tidesync
from tidesync.core.merge import canonical_state
from tidesync.core.values import canonical_json
from tidesync.errors import InvalidatedObjectError, ValidationError
from tidesync.store.database import Database
from tests.models import Technician, WorkOrder

WAIT = 10


@pytest.fixture(params=["fast", "general"])
def mode(request, monkeypatch):
    if request.param == "general":
        monkeypatch.setattr(Database, "_fast_assign", lambda self, *a: False)
    return request.param


def _log(db):
    """The log without what differs between two runs (stamps, ids, replica)."""
    out = []
    for (data,) in db._engine.query("SELECT data FROM log ORDER BY seq"):
        wire = msgpack.unpackb(data, raw=False)
        out.append(([[op[0], op[1], op[2], *op[5:]] for op in wire["ops"]], wire["before"]))
    return out


def _scenario(path, fast: bool, monkeypatch):
    if not fast:
        monkeypatch.setattr(Database, "_fast_assign", lambda self, *a: False)
    with tidesync.open(path, schema=[WorkOrder, Technician]) as db:
        with db.write():
            for i in range(40):
                db.create(WorkOrder, _id=tidesync.ObjectId(f"{i:024x}"), title=f"w{i}", priority=i % 3,
                          tags=["a"])
            db.create(Technician, _id="t", name="n")
        objs = list(db.objects(WorkOrder).sort("_id"))
        with db.write():
            for o in objs[:30]:
                o.priority = 7                      # a register, explicit at create
                o.status = "done"                   # a default at create
            objs[1].title = "again"
            objs[1].title = "twice"                 # twice in one write
            objs[2].tags.append("x")                # then a general-path change of the same document
            objs[3].priority = 8
            db.delete(objs[3])                      # deleted after a fast write
            objs[4].cost = None
        with db.write():
            objs[5].title = "third"                 # the overlay grows in a later write
            objs[5].priority = 1
            objs[6].tags.append("y")                # an overlay document through the general path
        rows = db._engine.query("SELECT pk, body, live, epoch FROM documents ORDER BY collection, pk")
        full = {}
        for pk, in db._engine.query("SELECT pk FROM documents WHERE collection = 'WorkOrder'"):
            d = db._load_doc("WorkOrder", None, ("WorkOrder", pk))
            full[pk] = canonical_state(d.state)
        return rows, full, _log(db)


def test_same_documents_merge_state_and_log_as_the_general_path(tmp_path, monkeypatch):
    fast = _scenario(tmp_path / "f.db", True, monkeypatch)
    general = _scenario(tmp_path / "g.db", False, monkeypatch)
    assert [(pk, json.loads(b), live) for pk, b, live, _ in fast[0]] == \
        [(pk, json.loads(b), live) for pk, b, live, _ in general[0]]
    # Canonical states differ only by stamps: compare their shape with stamps blanked.
    def blank(s):  # a write key is "0" or "1" and a stamp (34 hex digits)
        return re.sub(r"(?<![0-9a-f])([01]?)[0-9a-f]{34}(?![0-9a-f])", r"\1S", json.dumps(s, sort_keys=True))
    assert blank(fast[1]) == blank(general[1])
    assert blank(fast[2]) == blank(general[2])  # list element ids are stamps too


def test_the_fast_path_is_taken_and_keeps_meta_compact(tmp_path):
    with tidesync.open(tmp_path / "c.db", schema=[WorkOrder, Technician]) as db:
        with db.write():
            wo = db.create(WorkOrder, title="a")
        with db.write():
            wo.title = "b"
            assert db._txn.pending and not db._txn.docs
        (meta,) = db._engine.query("SELECT meta FROM documents WHERE collection = 'WorkOrder'")[0]
        m = json.loads(meta)
        assert "*" in m and set(m["r"]) == {"title"}
        assert wo.title == "b"


def test_deleted_object_raises_at_assignment(tmp_path, mode):
    with tidesync.open(tmp_path / "d.db", schema=[WorkOrder, Technician]) as db:
        with db.write():
            a = db.create(WorkOrder, title="a")
            b = db.create(WorkOrder, title="b")
        same, b_id = db.get(WorkOrder, a._id), b._id
        with db.write():
            db.delete(same)
        with db.write():
            with pytest.raises(InvalidatedObjectError):
                a.title = "x"
            b.title = "y"
            db.delete(b)
            with pytest.raises(InvalidatedObjectError):
                b.title = "z"
        assert db.get(WorkOrder, b_id) is None


def test_reads_and_queries_inside_the_write_see_the_new_value(tmp_path, mode):
    with tidesync.open(tmp_path / "r.db", schema=[WorkOrder, Technician]) as db:
        with db.write():
            wos = [db.create(WorkOrder, title=f"w{i}", priority=1) for i in range(5)]
        with db.write():
            wos[0].priority = 9
            assert wos[0].priority == 9
            assert db.get(WorkOrder, wos[0]._id).priority == 9
            wos[1].priority = 9
            assert len(db.objects(WorkOrder).filter("priority == 9")) == 2
            wos[2].priority = 9                     # after a flush: pending again
            assert [w.title for w in db.objects(WorkOrder).filter("priority == 9").sort("title")] == \
                ["w0", "w1", "w2"]
            with pytest.raises(ValidationError):
                wos[3].priority = "not a number"
            assert wos[3].priority == 1
        assert [w.priority for w in wos] == [9, 9, 9, 1, 1]
        with pytest.raises(RuntimeError):
            with db.write():
                wos[4].priority = 5
                raise RuntimeError
        assert wos[4].priority == 1


def test_revert_restores_the_values_exactly(tmp_path, mode):
    with tidesync.open(tmp_path / "v.db", schema=[WorkOrder, Technician]) as db:
        with db.write():
            a = db.create(WorkOrder, title="a", priority=2)
            b = db.create(WorkOrder, title="b")
        with db.write():
            a.priority = 5
            a.title = "A"
            b.cost = None
            b.status = "done"
        txn = db.history(1)[0].id
        res = db.revert(txn)
        assert sorted(r[2] for r in res.restored) == ["cost", "priority", "status", "title"]
        assert (a.title, a.priority, b.status, b.cost) == ("a", 2, "open", None)


def test_listener_reports_the_modified_field(tmp_path, mode):
    with tidesync.open(tmp_path / "l.db", schema=[WorkOrder, Technician]) as db:
        with db.write():
            wo = db.create(WorkOrder, title="a")
        q: queue.Queue = queue.Queue()
        token = wo.add_listener(lambda obj, change: q.put(change))
        with db.write():
            wo.title = "b"
        change = q.get(timeout=WAIT)
        assert not change.deleted and set(change.changed_fields) == {"title"}
        token.remove()


def test_a_peer_integrating_the_log_holds_the_same_state(tmp_path, mode):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        with a.write():
            wos = [a.create(WorkOrder, title=f"w{i}") for i in range(3)]
        b.integrate(a.export_transactions())
        with a.write():
            wos[0].title = "x"
            wos[1].priority = 4
        with b.write():
            b.get(WorkOrder, wos[1]._id).priority = 3   # concurrent, loses or wins by stamp
        b.integrate(a.export_transactions())
        a.integrate(b.export_transactions())
        for w in wos:
            sa = a.document_state("WorkOrder", tidesync.core.values.to_plain(w._id))
            sb = b.document_state("WorkOrder", tidesync.core.values.to_plain(w._id))
            assert canonical_state(sa) == canonical_state(sb)
        assert a.get(WorkOrder, wos[0]._id).title == b.get(WorkOrder, wos[0]._id).title == "x"


def test_rows_read_ahead_stay_exact(tmp_path, mode):
    import random

    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as db:
        with db.write():
            wos = [db.create(WorkOrder, _id=tidesync.ObjectId(f"{i:024x}"), title=f"w{i}", priority=0)
                   for i in range(300)]
        gone = {i for i in range(0, 300, 7)}
        with db.write():
            for i in gone:
                db.delete(db.get(WorkOrder, wos[i]._id))
        with db.write():
            for i, w in enumerate(wos[:100]):             # in key order: rows are read ahead
                if i in gone:
                    with pytest.raises(InvalidatedObjectError):
                        w.priority = 1
                else:
                    w.priority = 1
            db.delete(wos[150])                           # read ahead above, deleted here
            with pytest.raises(InvalidatedObjectError):
                wos[150].priority = 1
            wos[151].tags.append("x")                     # read ahead, then changed by the general path
            wos[151].priority = 1
            order = list(range(152, 300))
            random.Random(3).shuffle(order)
            for i in order:                               # random order
                if i not in gone:
                    wos[i].priority = 2
        seen = {w["_id"]: w["priority"] for w in (db.get_raw("WorkOrder", wos[i]._id) for i in range(300)
                                                 if i not in gone and i != 150) if w}
        assert all(seen[wos[i]._id] == 1 for i in range(100) if i not in gone)
        assert seen[wos[151]._id] == 1
        assert all(seen[wos[i]._id] == 2 for i in range(152, 300) if i not in gone)
        assert all(seen[wos[i]._id] == 0 for i in range(100, 150) if i not in gone)


def test_stamps_follow_the_order_of_the_changes_and_are_the_write_keys(tmp_path):
    """Fast-path writes are stamped at the next other change (or the commit): every
    operation of the log still carries a later stamp than the one before it, and each field's
    write key is the stamp of its last write."""
    with tidesync.open(tmp_path / "o.db", schema=[WorkOrder, Technician]) as db:
        with db.write():
            wos = [db.create(WorkOrder, title=f"w{i}", priority=1) for i in range(4)]
        with db.write():
            wos[0].priority = 2                     # fast
            wos[1].priority = 2                     # fast
            wos[2].tags.append("x")                 # general: stamps the two above first
            wos[0].status = "done"                  # fast again
            wos[3].priority = 3
            assert wos[3].priority == 3             # a read: stamped and flushed
            wos[1].priority = 5                     # the same field again, later
        (data,) = db._engine.query("SELECT data FROM log ORDER BY seq DESC LIMIT 1")[0]
        ops = msgpack.unpackb(data, raw=False)["ops"]
        assert [(op[0], op[5]) for op in ops] == [
            ("S", ["priority"]), ("S", ["priority"]), ("I", ["tags"]), ("S", ["status"]),
            ("S", ["priority"]), ("S", ["priority"])]
        stamps = [op[3] for op in ops]
        assert stamps == sorted(set(stamps))
        meta = {pk: json.loads(m) for pk, m in db._engine.query(
            "SELECT pk, meta FROM documents WHERE collection = 'WorkOrder'")}
        last: dict[tuple[str, str], str] = {}
        for op in ops:
            if op[0] == "S":
                last[(canonical_json(op[2]), op[5][0])] = "1" + op[3]
        for (pk, name), key in last.items():
            assert meta[pk]["r"][name] == key
        assert [w.priority for w in wos] == [2, 5, 1, 3]
        with db.write():                            # fast path only: before-images in change order
            wos[3].priority = 9
            wos[0].priority = 9
            wos[3].status = "x"
            wos[1].status = "x"
        (data,) = db._engine.query("SELECT data FROM log ORDER BY seq DESC LIMIT 1")[0]
        before = msgpack.unpackb(data, raw=False)["before"]
        order = [op[2] for op in msgpack.unpackb(data, raw=False)["ops"]]
        assert [b[1] for b in before] == [order[0], order[1], order[3]]
        assert [b[2] for b in before] == [{"priority": 3, "status": "open"}, {"priority": 2}, {"status": "open"}]


def test_a_row_key_ahead_of_the_clock_still_loses_to_a_fast_write(tmp_path):
    """A field whose write key is later than anything the clock has seen (a stamp the clock
    never observed) is still overwritten: the stamp of the fast write comes after it."""
    with tidesync.open(tmp_path / "k.db", schema=[WorkOrder, Technician]) as db:
        with db.write():
            wo = db.create(WorkOrder, title="a", priority=1)
        ahead = "ffff00000000000000" + db.replica_id
        db._engine.execute("UPDATE documents SET meta = ? WHERE collection = 'WorkOrder'",
                           (json.dumps({"*": ahead}, separators=(",", ":")),))
        with db.write():
            wo.priority = 2
        assert wo.priority == 2
        (meta,) = db._engine.query("SELECT meta FROM documents WHERE collection = 'WorkOrder'")[0]
        assert json.loads(meta)["r"]["priority"] > "1" + ahead
        d = db._load_doc("WorkOrder", None, ("WorkOrder", db._engine.query(
            "SELECT pk FROM documents WHERE collection = 'WorkOrder'")[0][0]))
        assert d.state.body["priority"] == 2
