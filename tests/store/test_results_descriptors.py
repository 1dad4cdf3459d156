"""RQL's SORT, DISTINCT and LIMIT on live results of a real file, against the same steps
done in Python on the objects (Realm's meaning: applied in the order written)."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

import tidesync
from tests.models import Address, WorkOrder

STATUSES = ["open", "closed", "waiting"]
CITIES = ["Oslo", "Bergen", None]


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "d.db", schema=[WorkOrder]) as db:
        with db.write():
            for i in range(40):
                city = CITIES[(i * 7) % 3]
                db.create(WorkOrder, title=f"wo{i:02}", status=STATUSES[(i * 5) % 3], priority=(i * 13) % 7,
                          cost=Decimal(i % 4) / 2, site=Address(street="s", city=city) if city else None)
        yield db


def rows(results):
    return [o.title for o in results]


def everything(db):
    return [(o.title, o.status, o.priority, o.site.city if o.site else None, o.cost) for o in db.objects(WorkOrder)]


def sort_by(items, key, descending=False):
    return sorted(items, key=key, reverse=descending) if not descending else \
        [x for _, x in sorted(enumerate(items), key=lambda p: (-key(p[1]), p[0]))]


def distinct_by(items, key):
    seen, out = set(), []
    for x in items:
        if key(x) not in seen:
            seen.add(key(x))
            out.append(x)
    return out


def titles(items):
    return [x[0] for x in items]


def test_sort_in_text_is_realms_sort(db):
    base = everything(db)
    assert rows(db.objects(WorkOrder).filter("TRUEPREDICATE SORT(priority DESC)")) == \
        titles(sort_by(base, lambda x: x[2], descending=True))
    # A later SORT is the primary order, the earlier one breaks its ties.
    expected = sort_by(sort_by(base, lambda x: x[1]), lambda x: x[2], descending=True)
    assert rows(db.objects(WorkOrder).filter("TRUEPREDICATE SORT(status ASC) SORT(priority DESC)")) == titles(expected)
    assert rows(db.objects(WorkOrder).filter("TRUEPREDICATE SORT(priority DESC, status ASC)")) == titles(expected)


def test_distinct_keeps_the_first_in_the_order_where_it_is_written(db):
    base = everything(db)
    assert rows(db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(status)")) == \
        titles(distinct_by(base, lambda x: x[1]))
    by_priority = sort_by(base, lambda x: x[2], descending=True)
    assert rows(db.objects(WorkOrder).filter("TRUEPREDICATE SORT(priority DESC) DISTINCT(status)")) == \
        titles(distinct_by(by_priority, lambda x: x[1]))
    assert rows(db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(status) SORT(priority DESC)")) == \
        titles(sort_by(distinct_by(base, lambda x: x[1]), lambda x: x[2], descending=True))
    # Several key paths, an embedded one among them, nulls a group of their own; decimals.
    assert rows(db.objects(WorkOrder).filter("priority > 1 DISTINCT(site.city, status)")) == \
        titles(distinct_by([x for x in base if x[2] > 1], lambda x: (x[3], x[1])))
    assert rows(db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(cost)")) == \
        titles(distinct_by(base, lambda x: x[4]))


def test_limit_in_text_and_with_the_api(db):
    base = everything(db)
    r = db.objects(WorkOrder).filter("status == 'open' SORT(priority DESC) LIMIT(4)")
    expected = titles(sort_by([x for x in base if x[1] == "open"], lambda x: x[2], descending=True)[:4])
    assert rows(r) == expected and len(r) == 4 and r[3].title == expected[3]
    assert len(r.limit(2)) == 2 and len(db.objects(WorkOrder).limit(3).filter("TRUEPREDICATE LIMIT(10)")) == 3
    assert len(db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(status) LIMIT(2)")) == 2


def test_descriptors_combine_with_later_filters_and_the_api(db):
    r = db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(status)").filter("priority >= $0", 0).sort("title")
    assert rows(r) == sorted(rows(db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(status)")))
    with pytest.raises(tidesync.QueryError, match="already have a DISTINCT"):
        db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(status)").filter("TRUEPREDICATE DISTINCT(title)")
    with pytest.raises(tidesync.QueryError):
        db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(tags)")       # a list: no single value
    with pytest.raises(tidesync.QueryError):
        db.objects(WorkOrder).filter("TRUEPREDICATE SORT(nope)")


def test_distinct_results_are_live_and_notify(db):
    r = db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(status)")
    assert len(r) == 3
    fired = threading.Event()
    seen = []
    token = r.add_listener(lambda results, changes: (seen.append(changes), fired.set()))
    with db.write():
        db.create(WorkOrder, title="new", status="new status")
    assert fired.wait(10)
    assert len(r) == 4 and rows(r)[-1] == "new"
    assert any(list(c.insertions) == [3] for c in seen)
    token.remove()


def test_a_subscription_cannot_have_a_distinct(db):
    from tidesync.client.subscriptions import _query_of

    with pytest.raises(tidesync.UsageError, match="cannot have a DISTINCT"):
        _query_of(db.objects(WorkOrder).filter("TRUEPREDICATE DISTINCT(status)"))
    with pytest.raises(tidesync.UsageError, match="cannot have a limit"):
        _query_of(db.objects(WorkOrder).filter("TRUEPREDICATE LIMIT(1)"))
    assert _query_of(db.objects(WorkOrder).filter("status == 'open' SORT(title DESC)"))[0] == "WorkOrder"


class Gauge(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    readings: list[float] = tidesync.field(default_factory=list)


def test_aggregates_on_a_real_file_with_live_results(tmp_path):
    with tidesync.open(tmp_path / "g.db", schema=[Gauge]) as db:
        with db.write():
            db.create(Gauge, _id="a", readings=[1.0, 2.5])
            db.create(Gauge, _id="b", readings=[])
            db.create(Gauge, _id="c", readings=[10.0])
        high = db.objects(Gauge).filter("readings.@max > $0 SORT(_id DESC)", 2)
        assert [g._id for g in high] == ["c", "a"]
        assert [g._id for g in db.objects(Gauge).filter("readings.@avg == nil")] == ["b"]
        with db.write():
            db.get(Gauge, "b").readings.append(7.0)
        assert [g._id for g in high] == ["c", "b", "a"]


def test_results_comparing_two_fields_are_live_and_notify(db):
    over = db.objects(WorkOrder).filter("cost > priority")   # Decimal against int, by value
    expected = sorted(w.title for w in db.objects(WorkOrder) if w.cost is not None and w.cost > w.priority)
    assert expected and sorted(rows(over)) == expected
    fired = threading.Event()
    token = over.add_listener(lambda results, changes: fired.set())
    with db.write():
        db.create(WorkOrder, title="dear", priority=1, cost=Decimal("9.5"))
    assert fired.wait(10)
    assert "dear" in rows(over)
    token.remove()
    assert sorted(rows(db.objects(WorkOrder).filter("title ==[c] status"))) == []
    with db.write():
        db.create(WorkOrder, title="OPEN", status="open")
    assert rows(db.objects(WorkOrder).filter("title ==[c] status")) == ["OPEN"]
    with pytest.raises(tidesync.QueryError, match="different types"):
        db.objects(WorkOrder).filter("title == priority").first()


def test_a_subscription_cannot_compare_two_fields(db):
    from tidesync.client.subscriptions import _query_of
    from tidesync.protocol.messages import SubscriptionQuery
    from tidesync.server.flexible import FlexibleConfig, SubscriptionInvalid, compile_set

    with pytest.raises(tidesync.UsageError, match="cannot compare two fields"):
        _query_of(db.objects(WorkOrder).filter("status == 'open' AND NOT (cost > priority)"))
    # A peer that sends one anyway is told why (the server has no schema to type the fields).
    with pytest.raises(SubscriptionInvalid, match="comparing two fields .* not supported in subscriptions"):
        compile_set([SubscriptionQuery("q", "WorkOrder", "cost > priority")], FlexibleConfig())
