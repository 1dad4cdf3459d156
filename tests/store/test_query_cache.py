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
