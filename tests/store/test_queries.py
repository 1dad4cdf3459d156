"""Queries on the local database: both syntaxes, lazy live results, sorting, index use."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import tidesync
from tests.models import Address, Technician, WorkOrder


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "q.db", schema=[WorkOrder, Technician]) as d:
        with d.write():
            ann = d.create(Technician, _id="t1", name="Ann")
            bo = d.create(Technician, _id="t2", name="Bo")
            d.create(WorkOrder, title="Fix pump", status="open", priority=2, tags=["urgent", "pump"],
                     site=Address(street="Main 1", city="Oslo"), technician=ann,
                     due=datetime(2026, 1, 10, tzinfo=timezone.utc))
            d.create(WorkOrder, title="Paint wall", status="open", priority=1, tags=["paint"],
                     site=Address(street="Side 2", city="Bergen"), technician=bo, helpers=[ann])
            d.create(WorkOrder, title="Replace valve", status="done", priority=3,
                     due=datetime(2026, 2, 1, tzinfo=timezone.utc))
        yield d


def titles(results):
    return [w.title for w in results]


def test_rql_and_mongo_filters_select_the_same(db):
    rql = db.objects(WorkOrder).filter("status == $0 AND priority >= 2", "open")
    mongo = db.objects(WorkOrder).filter({"status": "open", "priority": {"$gte": 2}})
    assert titles(rql) == titles(mongo) == ["Fix pump"]


@pytest.mark.parametrize("query,args,expected", [
    ("priority > 1", (), ["Fix pump", "Replace valve"]),
    ("title BEGINSWITH 'Fix'", (), ["Fix pump"]),
    ("title CONTAINS[c] 'WALL'", (), ["Paint wall"]),
    ("title LIKE '*valve'", (), ["Replace valve"]),
    ("status IN {'done', 'closed'}", (), ["Replace valve"]),
    ("priority BETWEEN {1, 2}", (), ["Fix pump", "Paint wall"]),
    ("tags.@count == 2", (), ["Fix pump"]),
    ("ANY tags == 'paint'", (), ["Paint wall"]),
    ("NONE tags == 'paint'", (), ["Fix pump", "Replace valve"]),
    ("site.city == 'Oslo'", (), ["Fix pump"]),
    ("technician.name == $0", ("Bo",), ["Paint wall"]),
    ("due < $0", (datetime(2026, 1, 20, tzinfo=timezone.utc),), ["Fix pump"]),
    ("NOT status == 'open' OR priority == 1", (), ["Paint wall", "Replace valve"]),
    ("TRUEPREDICATE", (), ["Fix pump", "Paint wall", "Replace valve"]),
    ("FALSEPREDICATE", (), []),
    ("site == nil", (), ["Replace valve"]),
])
def test_rql_operators(db, query, args, expected):
    assert titles(db.objects(WorkOrder).filter(query, *args)) == expected


def test_sort_limit_len_index_first(db):
    r = db.objects(WorkOrder).sort("priority", reverse=True)
    assert titles(r) == ["Replace valve", "Fix pump", "Paint wall"]
    assert len(r) == 3 and r[0].title == "Replace valve" and r[-1].title == "Paint wall"
    assert titles(r.limit(2)) == ["Replace valve", "Fix pump"] and len(r.limit(2)) == 2
    assert r.first().title == "Replace valve"
    assert db.objects(WorkOrder).filter("priority > 10").first() is None
    with pytest.raises(IndexError):
        r[3]


def test_results_are_live(db):
    open_orders = db.objects(WorkOrder).filter("status == 'open'")
    assert len(open_orders) == 2
    with db.write():
        db.create(WorkOrder, title="New", status="open")
    assert len(open_orders) == 3
    with db.write():
        for w in list(open_orders):
            w.status = "done"
    assert len(open_orders) == 0


def test_malformed_query_shows_where_it_failed(db):
    with pytest.raises(tidesync.QueryError) as info:
        db.objects(WorkOrder).filter("status == 'open' AND AND priority > 1")
    assert "^" in str(info.value)
    with pytest.raises(tidesync.QueryError, match="colour"):
        db.objects(WorkOrder).filter("colour == 'red'")
    with pytest.raises(tidesync.QueryError):
        db.objects(WorkOrder).filter({"priority": {"$regexx": 1}})


def test_indexed_equality_uses_the_index(db):
    r = db.objects(WorkOrder).filter("title == $0", "Fix pump")
    where, params = r._where()
    plan = db._engine.query(f"EXPLAIN QUERY PLAN SELECT rowid FROM documents WHERE {where}", params)
    assert any("ix_WorkOrder_title" in str(row) for row in plan), plan


def test_queries_inside_a_write_see_its_own_changes_and_a_rollback_forgets_them(db):
    with db.write():
        db.create(WorkOrder, title="Inside", status="open", priority=9)
        assert "Inside" in titles(db.objects(WorkOrder).filter("priority == 9"))
        db.delete(db.objects(WorkOrder).filter("title == 'Paint wall'"))
        assert "Paint wall" not in titles(db.objects(WorkOrder))
        db.objects(WorkOrder).filter("title == 'Fix pump'").first().priority = 0
        assert titles(db.objects(WorkOrder).filter("priority == 0")) == ["Fix pump"]
    assert len(db.objects(WorkOrder)) == 3
    with pytest.raises(RuntimeError):
        with db.write():
            db.create(WorkOrder, title="Gone", priority=42)
            assert len(db.objects(WorkOrder).filter("priority == 42")) == 1
            raise RuntimeError("roll back")
    assert len(db.objects(WorkOrder).filter("priority == 42")) == 0
