"""The first rows of a whole collection in the default order: the same whichever plan reads them."""

from __future__ import annotations

import pytest

import tidesync
from tests.models import Technician, WorkOrder
from tidesync.store import results as results_module


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "f.db", schema=[WorkOrder, Technician]) as d:
        with d.write():
            # Interleaved: a big collection and a small one, some documents deleted.
            for i in range(3_000):
                d.create(WorkOrder, title=f"w{i:05d}", priority=i % 7)
                if i % 300 == 0:
                    d.create(Technician, _id=f"t{i:05d}", name=f"tech {i}")
        with d.write():
            for w in list(d.objects(WorkOrder).filter("priority == 0"))[:50]:
                d.delete(w)
            d.delete(d.get(Technician, "t00000"))
        yield d


def expected(db, model, offset=0, count=None):
    """The collection's live documents in rowid order, read without either plan's shortcut."""
    rows = db._engine.query("SELECT pk, rowid FROM documents WHERE collection = ? AND live = 1", [model.__name__])
    keys = [pk for pk, _ in sorted(rows, key=lambda r: r[1])]
    return keys[offset:None if count is None else offset + count]


def key(obj):
    return obj._ts_ref[1]


@pytest.mark.parametrize("budget", [10_000, 200_000, 10**9])
def test_first_index_bool_and_first_page_read_the_same_rows_with_any_budget(db, monkeypatch, budget):
    monkeypatch.setattr(results_module, "_PLAN_BUDGET", budget)
    for _ in range(3):  # the plan that worked last time goes first the next time: same rows
        for model in (WorkOrder, Technician):
            results = db.objects(model)
            assert key(results.first()) == expected(db, model, 0, 1)[0]
            assert [key(results[i]) for i in (0, 1, 7)] == [expected(db, model, i, 1)[0] for i in (0, 1, 7)]
            assert key(results[-1]) == expected(db, model)[-1]
            assert bool(results)
            assert [key(o) for o in results] == expected(db, model)
            assert [key(o) for o in results.limit(20)] == expected(db, model, 0, 20)
            assert [key(o) for o in results[3:9]] == expected(db, model, 3, 6)


def test_a_small_budget_moves_the_big_collection_to_the_scan_and_back(db, monkeypatch):
    from tidesync.store import engine

    monkeypatch.setattr(engine, "_STEP_ROUND", 100)
    monkeypatch.setattr(results_module, "_PLAN_BUDGET", 1_000)
    seen: list[str] = []
    db._engine._tracer = lambda sql, params: seen.append(sql)
    assert key(db.objects(WorkOrder).first()) == expected(db, WorkOrder, 0, 1)[0]
    assert "WorkOrder" in db._collection_scans  # the indexed plan ran out; the scan answered
    assert [("NOT INDEXED" in s) for s in seen if "body FROM documents" in s] == [False, True]
    seen.clear()
    assert key(db.objects(WorkOrder).first()) == expected(db, WorkOrder, 0, 1)[0]
    assert [("NOT INDEXED" in s) for s in seen if "body FROM documents" in s] == [True]
    # Deep in the collection the scan runs out: the indexed plan answers, and goes first again.
    seen.clear()
    assert key(db.objects(WorkOrder)[2_900]) == expected(db, WorkOrder, 2_900, 1)[0]
    assert "WorkOrder" not in db._collection_scans
    assert [("NOT INDEXED" in s) for s in seen if "body FROM documents" in s] == [True, False]


def test_inside_a_write_the_rows_are_the_writes_own_view(db, monkeypatch):
    monkeypatch.setattr(results_module, "_PLAN_BUDGET", 10_000)
    first = expected(db, WorkOrder, 0, 1)[0]
    with db.write():
        db.delete(db.objects(WorkOrder).first())
        assert key(db.objects(WorkOrder).first()) == expected(db, WorkOrder, 0, 1)[0] != first
    assert key(db.objects(WorkOrder).first()) != first


def test_an_empty_collection_has_no_first(tmp_path, monkeypatch):
    monkeypatch.setattr(results_module, "_PLAN_BUDGET", 10_000)
    with tidesync.open(tmp_path / "e.db", schema=[WorkOrder, Technician]) as d:
        with d.write():
            for i in range(2_000):
                d.create(WorkOrder, title=f"w{i}")
        assert d.objects(Technician).first() is None
        assert not d.objects(Technician)
        with pytest.raises(IndexError):
            d.objects(Technician)[0]
