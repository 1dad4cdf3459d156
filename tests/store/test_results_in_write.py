"""Results iterated inside a write transaction read no bodies (their managed objects read
through the transaction, and nothing read there is cached: see ``Results._managed_page``);
outside one they read and cache them. Objects made either way read the same values, also when
an iteration crosses the start or the end of a write."""

from __future__ import annotations

from typing import Any

import pytest

import tidesync
from tidesync.store import results


class Pump(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    name: str
    level: int = 0


N = 25


def _open(tmp_path: Any) -> Any:
    db = tidesync.open(tmp_path / "r.db", schema=[Pump])
    with db.write():
        db.create_many(Pump, [{"_id": f"p{i:03d}", "name": f"pump {i}", "level": i} for i in range(N)])
    return db


def _spy(db: Any, monkeypatch: Any) -> list[str]:
    """The SQL of the statements that read result pages (with or without the bodies)."""
    seen: list[str] = []
    for method in ("query", "execute", "query_within"):
        inner = getattr(db._engine, method)

        def spied(sql: str, *a: Any, _inner: Any = inner, **k: Any) -> Any:
            if sql.startswith(("SELECT documents.rowid, documents.pk", "SELECT rowid, pk")):
                seen.append(sql)
            return _inner(sql, *a, **k)
        monkeypatch.setattr(db._engine, method, spied)
    return seen


@pytest.mark.parametrize("page", [1000, 4])
def test_results_inside_a_write_read_no_bodies_and_see_the_write(tmp_path, monkeypatch, page):
    monkeypatch.setattr(results, "_PAGE", page)  # 4: many pages, each read by rowid
    db = _open(tmp_path)
    db._cache.clear()
    seen = _spy(db, monkeypatch)
    with db.write():
        db.get(Pump, "p003").level = 300  # the general path (a read first), and a create
        db.create(Pump, _id="p999", name="new", level=999)
        got = [(o._id, o.name, o.level) for o in db.objects(Pump)]
        assert not db._cache
        for o in db.objects(Pump):  # the assignment loop over them
            o.level += 1
    assert seen and not any("body" in sql for sql in seen)
    want = [(f"p{i:03d}", f"pump {i}", 300 if i == 3 else i) for i in range(N)] + [("p999", "new", 999)]
    assert got == want
    seen.clear()
    after = [(o._id, o.name, o.level) for o in db.objects(Pump)]  # outside: bodies read, cached
    assert after == [(k, n, lv + 1) for k, n, lv in want]
    assert seen and all("body" in sql for sql in seen) and len(db._cache) == N + 1
    db.close()


def test_an_iteration_across_the_start_and_the_end_of_a_write_reads_the_same_values(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "_PAGE", 4)
    db = _open(tmp_path)
    db._cache.clear()
    seen = _spy(db, monkeypatch)
    it = iter(db.objects(Pump))
    first = [next(it) for _ in range(6)]  # pages read before the write: bodies, cached
    assert all("body" in sql for sql in seen) and len(db._cache) >= 6
    seen.clear()
    w = db.write()
    w.__enter__()
    inside = [next(it) for _ in range(8)]  # pages read inside it: no bodies
    assert seen and not any("body" in sql for sql in seen)
    for o in inside:
        o.level = -1
    w.__exit__(None, None, None)
    seen.clear()
    rest = list(it)  # after it: bodies again, cached
    assert seen and all("body" in sql for sql in seen)
    # (p014 and p015 came with the page read inside the write)
    assert [o._id for o in rest if db._cache.get(o._ts_ref) is None] == ["p014", "p015"]
    objs = first + inside + rest
    assert [o._id for o in objs] == [f"p{i:03d}" for i in range(N)]
    assert [o.level for o in objs] == [i if not 6 <= i < 14 else -1 for i in range(N)]
    db.close()


def test_pages_of_consecutive_rowids_are_read_by_a_range_and_others_by_a_list(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "_PAGE", 4)
    db = _open(tmp_path)
    with db.write():  # p005 and p011 deleted: the pages around them hold gaps in their rowids
        db.delete(db.get(Pump, "p005"))
        db.delete(db.get(Pump, "p011"))
    seen = _spy(db, monkeypatch)
    it = iter(db.objects(Pump))
    got = [next(it)._id for _ in range(13)]
    with db.write():  # deleted after the rowids were read, before its page: not given
        db.delete(db.get(Pump, "p018"))
    got += [o._id for o in it]
    assert got == [f"p{i:03d}" for i in range(N) if i not in (5, 11, 18)]
    pages = [sql for sql in seen if "WHERE rowid" in sql]
    assert any("BETWEEN" in sql for sql in pages) and any(" IN (" in sql for sql in pages)
    # sorted: not in rowid order, read by a list
    seen.clear()
    assert [o._id for o in db.objects(Pump).sort("_id", reverse=True)] == got[::-1]
    assert [sql for sql in seen if "WHERE rowid" in sql] and not any("BETWEEN" in sql for sql in seen)
    db.close()
