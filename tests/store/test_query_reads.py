"""Reading objects from query results: the memory map, the per-object path, later changes."""

from __future__ import annotations

import pytest

import tidesync
from tests.models import Technician, WorkOrder


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "q.db", schema=[WorkOrder, Technician]) as d:
        with d.write():
            d.create(WorkOrder, title="Fix pump", status="open", priority=2)
            d.create(WorkOrder, title="Paint wall", status="open", priority=1)
            d.create(WorkOrder, title="Replace valve", status="done", priority=3)
        yield d


def titles(results):
    return [w.title for w in results]


def test_whole_collections_and_large_results_are_read_without_the_memory_map(tmp_path):
    size = 1 << 30
    path = tmp_path / "big.db"
    with tidesync.open(path, schema=[WorkOrder, Technician]) as d:
        with d.write():
            d.create_many(WorkOrder, [{"title": f"w{i:05d}", "status": "open" if i % 2 else "done",
                                       "priority": i % 7} for i in range(2_500)])
    seen: list[str] = []
    with tidesync.open(path, schema=[WorkOrder, Technician], mmap_size=size) as mapped, \
            tidesync.open(path, schema=[WorkOrder, Technician], mmap_size=0) as plain:
        assert mapped._engine.query("PRAGMA mmap_size") == [(size,)]
        assert plain._engine.query("PRAGMA mmap_size") == [(0,)]
        mapped._engine._tracer = lambda sql, params: seen.append(sql)

        def reads(db):
            return (titles(db.objects(WorkOrder)), titles(db.objects(WorkOrder).filter("status == 'open'")),
                    titles(db.objects(WorkOrder).filter("priority == 3")),
                    titles(db.objects(WorkOrder).sort("priority").limit(5)), db.objects(WorkOrder).first().title,
                    len(db.objects(WorkOrder)))

        assert reads(mapped) == reads(plain)
        assert len(reads(mapped)[0]) == 2_500 and len(reads(mapped)[2]) == 357
        assert mapped._engine.query("PRAGMA mmap_size") == [(size,)]
        off, on = "PRAGMA mmap_size = 0", f"PRAGMA mmap_size = {size}"
        bodies = [i for i, sql in enumerate(seen) if "body FROM documents" in sql]
        assert bodies
        for i in bodies:
            toggles = [sql for sql in seen[:i] if sql in (off, on)]
            unmapped = bool(toggles) and toggles[-1] == off
            # Through the map: a filtered query's first page (read before its size is known).
            # Not: a whole collection's, nor the later pages of a result larger than one page.
            filtered = "live = 1 AND (" in seen[i]
            assert unmapped == (not filtered or "rowid IN" in seen[i]), seen[i]


def test_objects_read_from_a_query_follow_later_changes_to_their_documents(db, tmp_path):
    import time

    pump = next(iter(db.objects(WorkOrder).filter("title == 'Fix pump'")))
    wall = next(iter(db.objects(WorkOrder).filter("title == 'Paint wall'")))
    assert (pump.status, wall.priority) == ("open", 1)
    with db.write():
        pump.status = "done"
        assert pump.status == "done"  # the write's own view
        db.delete(wall)
    assert pump.status == "done"
    with pytest.raises(tidesync.InvalidatedObjectError):
        wall.priority
    with tidesync.open(db.path, schema=[WorkOrder, Technician]) as other, other.write():
        other.objects(WorkOrder).filter("title == 'Fix pump'").first().status = "held"
    time.sleep(0.01)  # past the 2 ms in which a read trusts its cache without asking the file
    assert pump.status == "held"


def test_objects_of_a_query_are_bound_as_db_get_binds_them(db):
    from tidesync.store.managed import ObjectBinding

    for w in db.objects(WorkOrder):
        got, want = w._ts_binding, db.get(WorkOrder, w._id)._ts_binding
        assert type(got) is ObjectBinding
        for slot in ObjectBinding.__slots__:  # every slot set, a slot added later included
            assert getattr(got, slot) == getattr(want, slot), slot
        assert w._ts_ref == got.ref and w._ts_values == {}
