"""SUBQUERY(list, $x, predicate).@count: Realm's test of several conditions on one element of a
list of embedded objects or links. RQL text, the AST and its JSON form, SQL and the Python
predicate agree; what cannot be asked is a QueryError (or, in a subscription, a UsageError)
that says why."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from query_harness import SCHEMA, Store

import tidesync
from tidesync.errors import QueryError
from tidesync.query import (And, Compare, Path, Query, SubqueryCount, Value, node_from_json, node_to_json, parse_query,
                            to_mongo, to_rql)

TECHNICIANS = [
    {"_id": "ann", "name": "Ann", "level": 3},
    {"_id": "bob", "name": "Bob", "level": 1},
    {"_id": "cy", "name": "Cy", "level": 2, "site": {"city": "Oslo"}},
]

TASKS = [
    {"_id": 1, "visits": [{"city": "Oslo", "hours": 2}, {"city": "Bergen", "hours": 5}], "helpers": ["ann", "bob"]},
    {"_id": 2, "visits": [{"city": "Oslo", "hours": 6}], "helpers": ["bob", "gone"]},   # a dangling link
    {"_id": 3, "visits": [], "helpers": []},
    {"_id": 4},                                                                          # no lists: empty
    {"_id": 5, "visits": [{"city": "Oslo", "zip": "0150", "hours": 4}, {"city": "Oslo", "hours": 1}],
     "helpers": ["cy", "cy", "ann"]},                                                    # one link twice
    {"_id": 6, "visits": None, "helpers": None},
]


@pytest.fixture
def store(store: Store) -> Store:
    """The query harness's empty store (conftest.py), filled with this module's documents."""
    store.put_all("Technician", TECHNICIANS)
    store.put_all("Task", TASKS)
    store.put("Technician", {"_id": "old", "name": "Old", "level": 9}, live=False)
    store.put("Task", {"_id": 7, "helpers": ["old"]})                                     # a deleted document
    return store


@pytest.mark.parametrize("text, expected", [
    # two conditions on the same element: what ANY ... AND ANY ... cannot say
    ("SUBQUERY(visits, $v, $v.city == 'Oslo' AND $v.hours > 3).@count > 0", [2, 5]),
    ("ANY visits.city == 'Oslo' AND ANY visits.hours > 3", [1, 2, 5]),
    ("SUBQUERY(visits, $v, $v.city == 'Oslo' AND $v.hours > 3).@count == 0", [1, 3, 4, 6, 7]),
    ("SUBQUERY(visits, $v, $v.city == 'Oslo').@count == 2", [5]),
    ("SUBQUERY(visits, $v, $v.hours > 1).@size >= 1", [1, 2, 5]),
    ("SUBQUERY(visits, $v, $v.zip == nil).@count IN {1, 2}", [1, 2, 5]),
    ("SUBQUERY(visits, $v, TRUEPREDICATE).@count == visits.@count", None),   # compared with a value only
    ("SUBQUERY(visits, $v, NOT ($v.city BEGINSWITH 'O')).@count BETWEEN {1, 1}", [1]),
    ("SUBQUERY(visits, $v, $v.city == $v.zip OR $v.zip == '0150').@count > 0", [5]),   # two fields of one element
    ("NOT (SUBQUERY(visits, $v, $v.hours < 3).@count > 0)", [2, 3, 4, 6, 7]),
    # links: each element is the linked document; dangling and deleted ones are no elements
    ("SUBQUERY(helpers, $h, $h.level >= 1).@count == 2", [1]),
    ("SUBQUERY(helpers, $h, $h.level > 1).@count == 3", [5]),                 # a link held twice counts twice
    ("SUBQUERY(helpers, $h, $h.name BEGINSWITH 'B').@count > 0", [1, 2]),
    ("SUBQUERY(helpers, $h, $h.site.city == 'Oslo').@count > 0", [5]),
    ("SUBQUERY(helpers, $h, NOT ($h.level == 9)).@count == 0", [3, 4, 6, 7]),
    ("SUBQUERY(helpers, $h, $h.level > 1).@count > 0 AND SUBQUERY(visits, $v, $v.hours > 3).@count > 0", [1, 5]),
])
def test_each_subquery_selects_the_same_documents_both_ways(store: Store, text: str, expected: list[int] | None) -> None:
    if expected is None:
        with pytest.raises(QueryError, match="only be compared with a value"):
            parse_query(text)
        return
    assert store.both(text, schema=SCHEMA) == expected


@pytest.mark.parametrize("text, expected", [
    ("SUBQUERY(visits, $v, $v.city == 'Oslo' AND $v.hours > 3).@count > 0", [2, 5]),
    ("SUBQUERY(visits, $v, $v.city == 'Oslo').@count == 2", [5]),
    ("SUBQUERY(visits, $v, $v.zip == nil).@count == 0", [3, 4, 6, 7]),
])
def test_without_a_schema_the_elements_are_read_as_embedded_objects(store: Store, text: str,
                                                                    expected: list[int]) -> None:
    assert store.both(text) == expected


def test_a_subquery_inside_a_subquery_tests_its_own_elements() -> None:
    s = Store()
    try:
        s.put_all("Route", [
            {"_id": 1, "legs": [{"stops": [{"n": 1}, {"n": 5}]}, {"stops": []}]},
            {"_id": 2, "legs": [{"stops": [{"n": 2}, {"n": 9}]}, {"stops": [{"n": 9}, {"n": 4}]}]},
            {"_id": 3, "legs": "not a list"},
        ])
        text = "SUBQUERY(legs, $leg, SUBQUERY($leg.stops, $s, $s.n > 1 AND $s.n < 9).@count >= 1).@count"
        assert s.both(text + " == 1", collection="Route") == [1]
        assert s.both(text + " == 2", collection="Route") == [2]
        assert s.both(text + " == 0", collection="Route") == [3]
        node = parse_query(text + " > 0").node
        assert parse_query(to_rql(node)[0]).node == node
        assert "SUBQUERY($leg.stops, $s, $s.n > 1 AND $s.n < 9).@count >= 1" in to_rql(node)[0]
    finally:
        s.db.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.fixed_dictionaries({}, optional={
    "city": st.sampled_from(["Oslo", "Bergen", None]),
    "hours": st.one_of(st.integers(-2, 8), st.floats(-2, 8), st.none(), st.just("3"))}), max_size=4),
    min_size=1, max_size=6),
    st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), st.integers(0, 3), st.integers(0, 5))
def test_sql_and_predicate_agree_on_random_lists(lists: list[list[dict[str, Any]]], op: str, count: int,
                                                 hours: int) -> None:
    s = Store()
    try:
        s.put_all("Task", [{"_id": i, "visits": visits} for i, visits in enumerate(lists)])
        text = f"SUBQUERY(visits, $v, $v.city == 'Oslo' OR $v.hours >= $0).@count {op} $1"
        expected = [i for i, visits in enumerate(lists)
                    if _compare(sum(1 for v in visits if v.get("city") == "Oslo"
                                    or (type(v.get("hours")) in (int, float) and v["hours"] >= hours)), op, count)]
        assert s.both(text, hours, count, schema=SCHEMA) == expected
        assert s.both(text, hours, count) == expected
    finally:
        s.db.close()


def _compare(a: int, op: str, b: int) -> bool:
    return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def test_the_ast_json_form_and_text_round_trip() -> None:
    node = parse_query("SUBQUERY(visits, $visit, $visit.city == $0 AND $visit.hours > 2).@count > $1",
                       None).node
    assert isinstance(node, Compare) and isinstance(node.left, SubqueryCount)
    assert node.left.path == Path(("visits",)) and node.left.variable == "visit"
    assert parse_query("SUBQUERY(visits, $x, $x.city == $0 AND $x.hours > 2).@count > $1", None).node == node
    bound = parse_query("SUBQUERY(visits, $visit, $visit.city == $0 AND $visit.hours > 2).@count > $1",
                        ["Oslo", 0]).node
    assert bound == Compare(">", SubqueryCount(Path(("visits",)), And((
        Compare("==", Path(("city",)), Value("Oslo")), Compare(">", Path(("hours",)), Value(2)))), "v"), Value(0))
    for n in (node, bound):
        assert node_from_json(node_to_json(n)) == n
    assert Query(node).params == frozenset({0, 1})
    assert Query(node).bind(["Oslo", 0]).node == bound
    text, args = to_rql(bound)
    assert text == 'SUBQUERY(visits, $visit, $visit.city == "Oslo" AND $visit.hours > 2).@count > 0' and not args
    assert parse_query(text, args).node == bound
    assert node_to_json(bound)["left"]["subquery"][2] == "visit"


@pytest.mark.parametrize("text, says", [
    ("SUBQUERY(visits, $v, city == 'Oslo').@count > 0", r"key paths start with its variable: \$v.city"),
    ("SUBQUERY(visits, $v, $w.city == 'Oslo').@count > 0", r"\$w is not this SUBQUERY's variable"),
    ("$v.city == 'Oslo'", r"\$v is not defined here"),
    ("SUBQUERY(visits, $v, $v == 'Oslo').@count > 0", r"expected '.' and a field of the element"),
    ("SUBQUERY(visits, $v, $v.city == 'Oslo') > 0", "expected .@count"),
    ("SUBQUERY(visits, $v, $v.city == 'Oslo').@sum > 0", "expected @count or @size"),
    ("SUBQUERY(visits, v, v.city == 'Oslo').@count > 0", "expected a variable for the elements"),
    ("SUBQUERY(visits.@count, $v, $v.city == 'Oslo').@count > 0", "first argument is the key path of a list"),
    ("SUBQUERY(visits, $v, $v.city == 'Oslo').@count == 'two'", "is a number"),
    ("SUBQUERY(visits, $v, $v.city == 'Oslo').@count BEGINSWITH 'x'", "BEGINSWITH needs a key path on its left"),
    ("SUBQUERY(visits, $v, $v.city == 'Oslo'", r"expected '\)'"),
    ("$1x == 2", r"expected an argument number after '\$'"),
])
def test_malformed_subqueries_say_where_and_why(text: str, says: str) -> None:
    with pytest.raises(QueryError, match=says) as info:
        parse_query(text)
    assert info.value.position is not None or "number" in says


@pytest.mark.parametrize("text, says", [
    ("SUBQUERY(tags, $t, $t.x == 'a').@count > 0", "needs a list of embedded objects or of links; tags is a list of str"),
    ("SUBQUERY(site, $s, $s.city == 'a').@count > 0", "needs a list of embedded objects or of links; site is a object"),
    ("SUBQUERY(visits, $v, $v.nothing == 1).@count > 0", "Site has no field 'nothing'"),
    ("SUBQUERY(visits, $v, $v.city == 1).@count > 0", "cannot compare city"),
    ("SUBQUERY(helpers, $h, $h.level == 'x').@count > 0", "cannot compare level"),
])
def test_what_the_schema_rules_out_is_a_query_error_both_ways(store: Store, text: str, says: str) -> None:
    with pytest.raises(QueryError, match=says):
        store.sql(parse_query(text), "Task", SCHEMA)
    with pytest.raises(QueryError, match=says):
        store.predicate(parse_query(text), "Task", SCHEMA)


def test_the_mongodb_translation_is_elem_match_for_some_or_none_only() -> None:
    some = parse_query("SUBQUERY(visits, $v, $v.city == 'Oslo' AND $v.hours > 3).@count > 0").node
    match = {"visits": {"$elemMatch": {"$and": [{"city": {"$eq": "Oslo"}}, {"hours": {"$gt": 3}}]}}}
    assert to_mongo(some, "Task", SCHEMA) == match
    none = parse_query("SUBQUERY(visits, $v, $v.city == 'Oslo' AND $v.hours > 3).@count == 0").node
    assert to_mongo(none, "Task", SCHEMA) == {"$nor": [match]}
    for text in ("SUBQUERY(visits, $v, $v.city == 'Oslo').@count == 2",
                 "SUBQUERY(helpers, $h, $h.level > 1).@count > 0",
                 "SUBQUERY(visits, $v, $v.city == 'Oslo').@count IN {0, 1}"):
        with pytest.raises(QueryError, match="cannot be translated to a MongoDB filter"):
            to_mongo(parse_query(text).node, "Task", SCHEMA)


class SqLine(tidesync.EmbeddedModel):
    product: str
    qty: int = 1
    price: float = 0.0


class SqPerson(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    name: str
    senior: bool = False


class SqOrder(tidesync.Model):
    _id: int = tidesync.field(primary_key=True)
    lines: list[SqLine] = tidesync.field(default_factory=list)
    reviewers: list[SqPerson] = tidesync.field(default_factory=list)


def test_live_results_of_a_real_file_filter_and_notify_by_subquery(tmp_path) -> None:
    with tidesync.open(tmp_path / "orders.db", schema=[SqOrder, SqPerson]) as db:
        with db.write():
            ann = db.create(SqPerson, _id="ann", name="Ann", senior=True)
            assert ann.senior
            bob = db.create(SqPerson, _id="bob", name="Bob")
            db.create(SqOrder, _id=1, lines=[SqLine(product="pump", qty=1, price=90.0),
                                             SqLine(product="hose", qty=10, price=2.0)], reviewers=[bob])
            db.create(SqOrder, _id=2, lines=[SqLine(product="pump", qty=3, price=80.0)], reviewers=[ann, bob])
            db.create(SqOrder, _id=3)
        bulk = db.objects(SqOrder).filter("SUBQUERY(lines, $l, $l.qty >= $0 AND $l.price > $1).@count > 0", 3, 50)
        assert [o._id for o in bulk] == [2]
        assert [o._id for o in db.objects(SqOrder).filter(
            "SUBQUERY(reviewers, $r, $r.senior == true).@count == 0").sort("_id")] == [1, 3]
        seen: list[Any] = []
        token = bulk.add_listener(lambda results, changes: seen.append(sorted(o._id for o in results)))
        with db.write():
            order = db.get(SqOrder, 1)
            order.lines.append(SqLine(product="valve", qty=4, price=60.0))
        deadline = time.monotonic() + 10
        while [1, 2] not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [1, 2] in seen
        token.remove()
        # A change to a linked object alone moves an order in or out (the listener follows it).
        no_senior = db.objects(SqOrder).filter("SUBQUERY(reviewers, $r, $r.senior == true).@count == 0").sort("_id")
        after: list[Any] = []
        token = no_senior.add_listener(lambda results, changes: after.append([o._id for o in results]))
        with db.write():
            db.get(SqPerson, "ann").senior = False
        deadline = time.monotonic() + 10
        while [1, 2, 3] not in after and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [1, 2, 3] in after
        token.remove()
        with db.write():
            db.get(SqPerson, "ann").senior = True
        assert [o._id for o in no_senior] == [1, 3]
        with db.write():
            db.delete(db.get(SqPerson, "ann"))
        assert [o._id for o in no_senior] == [1, 2, 3]
        with pytest.raises(tidesync.QueryError, match="SqLine has no field 'cost'"):
            db.objects(SqOrder).filter("SUBQUERY(lines, $l, $l.cost > 1).@count > 0").first()


def test_a_subscription_cannot_use_a_subquery(tmp_path) -> None:
    from tidesync.client.subscriptions import _query_of
    from tidesync.protocol.messages import SubscriptionQuery
    from tidesync.server.flexible import FlexibleConfig, SubscriptionInvalid, compile_set

    with tidesync.open(tmp_path / "s.db", schema=[SqOrder, SqPerson]) as db:
        with pytest.raises(tidesync.UsageError, match="cannot use SUBQUERY"):
            _query_of(db.objects(SqOrder).filter("_id > 1 AND SUBQUERY(lines, $l, $l.qty > 1).@count > 0"))
    with pytest.raises(SubscriptionInvalid, match="SUBQUERY.* is not supported in subscriptions"):
        compile_set([SubscriptionQuery("q", "SqOrder", "SUBQUERY(lines, $l, $l.qty > 1).@count > 0")],
                     FlexibleConfig())


def _nested(levels: int) -> str:
    text = f"$v{levels}.a == 1"
    for i in range(levels, 0, -1):
        text = f"SUBQUERY({'legs' if i == 1 else f'$v{i - 1}.legs'}, $v{i}, {text}).@count > 0"
    return text


@pytest.mark.parametrize("levels", [2, 3, 6, 70])
def test_deeply_nested_subqueries_run_or_are_refused_never_crash_sqlite(levels: int) -> None:
    s = Store()
    try:
        s.put("Route", {"_id": 1, "legs": [{"legs": [{"a": 1}]}]})
        try:
            found = s.both(_nested(levels), collection="Route")
        except QueryError as exc:
            assert levels > 2 and "nests" in str(exc)
        else:
            assert levels == 2 and found == [1]
    finally:
        s.db.close()
