"""Results reuse the parse of a query text: the same results and the same errors as a fresh parse."""

from __future__ import annotations

import pytest

import tidesync
from tests.models import WorkOrder
from tidesync.query import parse_query


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "q.db", schema=[WorkOrder]) as d:
        with d.write():
            for i in range(6):
                d.create(WorkOrder, title=f"t{i}", priority=i % 3)
        yield d


def test_the_same_text_with_other_arguments(db):
    for p in (0, 1, 2, 0):
        got = sorted(w.title for w in db.objects(WorkOrder).filter("priority == $0", p))
        assert got == sorted(f"t{i}" for i in range(6) if i % 3 == p)
    assert len(db.objects(WorkOrder).filter("priority IN $0", [1, 2])) == 4
    assert len(db.objects(WorkOrder).filter("priority >= $0 AND title != $1", 1, "t1")) == 3
    assert len(db.objects(WorkOrder).filter("priority >= 1")) == 4


@pytest.mark.parametrize("text,args", [
    ("priority == $0", ()),
    ("priority == $1", (1,)),
    ("priority IN $0", (1,)),
    ("priority == $0", ([1],)),
    ("title > $0", (object(),)),
    ("priority ==", ()),
])
def test_errors_are_those_of_a_fresh_parse(db, text, args):
    with pytest.raises(tidesync.QueryError) as fresh:
        parse_query(text, args)
    for _ in range(2):  # the second time from the cached parse
        with pytest.raises(tidesync.QueryError) as cached:
            db.objects(WorkOrder).filter(text, *args)
        assert str(cached.value) == str(fresh.value)
        assert cached.value.position == fresh.value.position


_STRING_QUERIES = [
    "title == $0", "title != $0", "title ==[c] $0", "title BEGINSWITH $0", "title CONTAINS[c] $0",
    "title LIKE $0", "title > $0", "status == $0 AND title != $1", "status == $0 OR status == $1",
    "title == $0 OR title == $0", "technician.name == $0", "ANY helpers.name == $0", "tags == $0",
    "site.city ==[c] $0", "extra == $0", "title == $0 SORT(priority DESC) LIMIT(2)", "notes.a == $0",
    "title IN {$0, $1}", "title BETWEEN {$0, $1}",
]
_STRING_ARGS = [("t1", "t2"), ("", "x"), ("T%_*?[\\", "a'b\"c"), ("same", "same"), ("Zq\u00c9", ""), ("t1", "t1")]


@pytest.mark.parametrize("text", _STRING_QUERIES)
def test_a_query_with_string_arguments_compiles_as_a_fresh_one_whatever_the_strings(db, text):
    from tidesync.query import compile_sql
    from tidesync.store.results import _compile, _parse

    n = 2 if "$1" in text else 1
    for args in _STRING_ARGS * 2:  # the second round reads what the first one cached
        args = tuple(a + "" for a in args[:n])
        try:
            fresh = compile_sql(parse_query(text, args), "WorkOrder", db.schema)
        except tidesync.QueryError as exc:
            with pytest.raises(tidesync.QueryError, match=str(exc)[:20]):
                _compile(text, args, _parse(text, args), "WorkOrder", db.schema)
            continue
        assert _compile(text, args, _parse(text, args), "WorkOrder", db.schema) == fresh
        assert db.objects(WorkOrder).filter(text, *args)._compiled[-1] == fresh


def test_results_of_a_cached_compile_are_those_of_a_fresh_query(db):
    for title in ("t1", "t4", "nope", "t1", ""):
        got = [w.title for w in db.objects(WorkOrder).filter("title == $0 OR status == $1", title, "x")]
        assert got == ([title] if title.startswith("t") and title != "nope" else [])
    with pytest.raises(tidesync.QueryError):
        db.objects(WorkOrder).filter("priority > $0", "high")  # a string where a number goes: refused
    with pytest.raises(tidesync.QueryError):
        db.objects(WorkOrder).filter("priority > $0", "low")  # again, after the first try
