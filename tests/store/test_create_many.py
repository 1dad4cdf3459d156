"""``db.create_many``: the same result as a loop of ``db.create``, all or nothing."""

from __future__ import annotations

import queue

import msgpack
import pytest

import tidesync
from tests.models import Technician, Ticket, WorkOrder

WAIT = 10


def _docs(path):
    with tidesync.open(path, schema=[Technician, WorkOrder]) as db:
        rows = db._engine.query("SELECT collection, pk, body, meta, epoch, live FROM documents ORDER BY collection, pk")
        log = [msgpack.unpackb(r[0], raw=False) for r in db._engine.query("SELECT data FROM log ORDER BY seq")]
        desc = [msgpack.unpackb(r[0], raw=False) for r in db._engine.query("SELECT data FROM descriptors")]
    return rows, log, desc


def _strip(wire):
    """A log entry without what differs between two runs (stamps, ids, replica)."""
    return [[op[0], op[1], op[2], *op[5:]] for op in wire["ops"]], wire["before"]


def test_equivalent_to_a_loop_of_create(tmp_path):
    items = [{"_id": f"t{i}", "name": f"tech {i}"} for i in range(1200)]
    orders = [{"title": f"o{i}", "priority": i % 4, "tags": ["a", str(i)], "status": "done" if i % 2 else "open"}
              for i in range(30)]
    for name in ("loop", "many"):
        with tidesync.open(tmp_path / f"{name}.db", schema=[Technician, WorkOrder]) as db:
            with db.write():
                db.create(Technician, _id="t5", name="already here")
            with db.write():
                if name == "loop":
                    for it in items:
                        db.create(Technician, it, update="modified")
                    for i, o in enumerate(orders):
                        values = {**o, "_id": tidesync.ObjectId(f"{int(o['title'][1:]):024x}")}
                        # an unmanaged object gives every field, its defaults included
                        db.create(WorkOrder, WorkOrder(**values)._ts_values if i % 2 else values)
                else:
                    assert db.create_many(Technician, iter(items), update="modified") == 1200
                    assert db.create_many(WorkOrder, [
                        WorkOrder(**o, _id=tidesync.ObjectId(f"{int(o['title'][1:]):024x}")) if i % 2 else
                        {**o, "_id": tidesync.ObjectId(f"{int(o['title'][1:]):024x}")}
                        for i, o in enumerate(orders)]) == 30
                # reads inside the write see the new documents
                assert db.get(Technician, "t1199").name == "tech 1199"
                assert len(db.objects(Technician).filter("name == 'tech 7'")) == 1
    loop_rows, loop_log, loop_desc = _docs(tmp_path / "loop.db")
    many_rows, many_log, many_desc = _docs(tmp_path / "many.db")
    strip_stamps = lambda rows: [(c, pk, body, live) for c, pk, body, _meta, _epoch, live in rows]  # noqa: E731
    assert strip_stamps(many_rows) == strip_stamps(loop_rows)
    assert len(many_rows) == 1230
    assert [_strip(w) for w in many_log] == [_strip(w) for w in loop_log]
    assert [len(d["touches"]) for d in many_desc] == [len(d["touches"]) for d in loop_desc]
    last = max(many_desc, key=lambda d: d["stamp"])
    assert last["touches"][:2] == [["Technician", "t0"], ["Technician", "t1"]] and last["ops"] == 1230


def test_an_existing_document_raises_and_leaves_nothing_of_the_call(tmp_path):
    with tidesync.open(tmp_path / "d.db", schema=[Technician]) as db:
        with db.write():
            db.create(Technician, _id="x", name="before")
        with db.write():
            db.create(Technician, _id="kept", name="earlier in the same write")
            with pytest.raises(tidesync.ValidationError, match="already exists"):
                db.create_many(Technician, [{"_id": f"n{i}", "name": "new"} for i in range(700)]
                               + [{"_id": "x", "name": "dup"}])
            assert db.get(Technician, "n0") is None and db.get(Technician, "n699") is None
            assert len(db.objects(Technician)) == 2
            db.create(Technician, _id="after", name="the write goes on")
        assert sorted(t._id for t in db.objects(Technician)) == ["after", "kept", "x"]
        assert db.get(Technician, "x").name == "before"
        # a duplicate inside the call itself
        with db.write():
            with pytest.raises(tidesync.ValidationError, match="already exists"):
                db.create_many(Technician, [{"_id": "d", "name": "1"}, {"_id": "d", "name": "2"}])
        assert db.get(Technician, "d") is None
        assert len(db.history()) == 2  # the write whose only call failed logged nothing


def test_a_validation_error_mid_batch_leaves_nothing(tmp_path):
    with tidesync.open(tmp_path / "v.db", schema=[Technician, WorkOrder]) as db:
        with db.write():
            wo = db.create(WorkOrder, title="kept", priority=1)
            wo.priority = 2
            db.create_many(Technician, [{"_id": "a", "name": "a"}])
            with pytest.raises(tidesync.ValidationError):
                db.create_many(Technician, [{"_id": "b", "name": "b"}, {"_id": "c", "name": 5}, {"_id": "d"}])
            with pytest.raises(tidesync.ValidationError, match="required"):
                db.create_many(Technician, [{"_id": "e", "name": "e"}] * 1 + [{"_id": "f"}])
            with pytest.raises(tidesync.UsageError):
                db.create_many(Technician, [{"_id": "g", "name": "g"}, "not a mapping"])
            # an upsert that changed an existing object in the failed call is undone too
            with pytest.raises(tidesync.ValidationError):
                db.create_many(WorkOrder, [{"_id": wo._id, "title": "changed", "priority": 9},
                                           {"title": "bad", "priority": "high"}], update="modified")
            assert wo.title == "kept" and wo.priority == 2
        assert sorted(t._id for t in db.objects(Technician)) == ["a"]
        assert [w.title for w in db.objects(WorkOrder)] == ["kept"]
        assert db.objects(WorkOrder)[0].priority == 2
        entry = db.history(1)[0]
        assert sorted(c.kind for c in entry.changes) == ["create", "create"]


def test_managed_objects_are_refused(tmp_path):
    with tidesync.open(tmp_path / "m.db", schema=[Technician]) as db:
        with db.write():
            t = db.create(Technician, _id="a", name="a")
            with pytest.raises(tidesync.UsageError):
                db.create_many(Technician, [t])
        with pytest.raises(tidesync.NotInWriteTransaction):
            db.create_many(Technician, [{"_id": "b", "name": "b"}])


def test_partition_is_filled_in_and_other_partitions_refused(tmp_path):
    with tidesync.open(tmp_path / "p.db", schema=[Ticket]) as db:
        db._set_partition("_partition", "p1")
        with db.write():
            db.create_many(Ticket, [{"_id": "a", "text": "x"}, {"_id": "b", "_partition": "p1"}])
            with pytest.raises(tidesync.PartitionError, match="p2"):
                db.create_many(Ticket, [{"_id": "c"}, {"_id": "d", "_partition": "p2"}])
        assert sorted((t._id, t._partition) for t in db.objects(Ticket)) == [("a", "p1"), ("b", "p1")]
        scopes = db._engine.query("SELECT pk, scope FROM documents ORDER BY pk")
        assert scopes == [('"a"', '"p1"'), ('"b"', '"p1"')]


def test_listeners_see_the_created_objects(tmp_path):
    with tidesync.open(tmp_path / "l.db", schema=[Technician]) as db:
        results = db.objects(Technician).sort("_id")
        q: queue.Queue = queue.Queue()
        token = results.add_listener(lambda subject, changes: q.put(changes))
        with db.write():
            db.create_many(Technician, [{"_id": f"t{i}", "name": str(i)} for i in range(3)])
        changes = q.get(timeout=WAIT)
        while not changes.insertions:
            changes = q.get(timeout=WAIT)
        assert changes.insertions == (0, 1, 2)
        token.remove()


@pytest.mark.parametrize("partition", ["p1", "it's \"p\"\x1e"])
def test_a_partitioned_lean_chunk_writes_the_general_paths_rows(tmp_path, monkeypatch, partition):
    # The lean chunk puts the collection, seq and scope in its statement's text: the same rows.
    from tidesync.store import database as database_module

    def rows(path):
        with tidesync.open(path, schema=[Ticket]) as db:
            db._set_partition("_partition", partition)
            with db.write():
                db.create_many(Ticket, [{"_id": f"t{i}", "text": f"x'{i}"} for i in range(50)])
            used = db._bulk_builders.get("Ticket") is not None
            return used, db._engine.query("SELECT collection, pk, body, epoch, live, seq, scope, "
                                          "typeof(seq), typeof(scope) FROM documents ORDER BY pk")
    lean = rows(tmp_path / "lean.db")
    monkeypatch.setattr(database_module, "_make_bulk_builder", lambda cls, obj: None)
    general = rows(tmp_path / "general.db")
    assert lean[0] and not general[0]
    assert lean[1] == general[1] and len(lean[1]) == 50 and lean[1][0][6] is not None
