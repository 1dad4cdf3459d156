"""Comparing two fields of one document (``priority > hits``): RQL, SQL and the Python
predicate agree on numbers of every kind, nan, infinities, nulls, strings with [c], tagged
values; what cannot be compared is refused the same way everywhere."""

from __future__ import annotations

from typing import Any

import pytest
from query_harness import SCHEMA, Store

from tidesync.errors import QueryError
from tidesync.query import (CompareFields, Path, node_from_json, node_to_json, parse_query, parse_rql, to_mongo,
                            to_predicate, to_rql)

INF, MINUS_INF, NAN = {"$float": "inf"}, {"$float": "-inf"}, {"$float": "nan"}


def ids(store: Store, text: str) -> list[Any]:
    return store.both(text, schema=SCHEMA)


def test_numbers_of_every_kind_compare_by_value(store: Store) -> None:
    store.put_all("Task", [
        {"_id": 1, "priority": 2, "hits": 2, "estimate": 2.0, "price": {"$decimal": "2.00"}},
        {"_id": 2, "priority": 3, "hits": 1, "estimate": 2.5, "price": {"$decimal": "-1"}},
        {"_id": 3, "priority": -5, "hits": 7, "estimate": INF, "price": {"$decimal": "1E+1"}},
        {"_id": 4, "priority": 0, "hits": 0, "estimate": MINUS_INF},
    ])
    assert ids(store, "priority == hits") == [1, 4]
    assert ids(store, "priority == estimate") == [1]
    assert ids(store, "priority == price") == [1]
    assert ids(store, "estimate > priority") == [3]
    assert ids(store, "estimate < hits") == [4]  # 2.0 < 2 is false
    assert ids(store, "estimate <= hits") == [1, 4]
    assert ids(store, "price > hits") == [3]
    assert ids(store, "priority != hits") == [2, 3]
    assert ids(store, "NOT (priority >= hits)") == [3]


def test_nan_equals_nan_and_has_no_order(store: Store) -> None:
    store.put_all("Task", [{"_id": 1, "estimate": NAN, "priority": 1}, {"_id": 2, "estimate": 1.5, "priority": 1}])
    assert ids(store, "estimate == estimate") == [1, 2]
    assert ids(store, "estimate != estimate") == []
    assert ids(store, "estimate > priority") == [2]
    assert ids(store, "estimate <= priority OR estimate >= priority") == [2]
    assert ids(store, "estimate != priority") == [1, 2]


def test_null_equals_null_and_nothing_else(store: Store) -> None:
    store.put_all("Task", [
        {"_id": 1, "site": {"city": "Oslo"}},                    # zip missing
        {"_id": 2, "site": {"city": "Oslo", "zip": None}},       # zip null
        {"_id": 3, "site": {"city": "Oslo", "zip": "Oslo"}},
        {"_id": 4},                                              # no site: both missing
        {"_id": 5, "title": "x", "estimate": None, "price": None},
    ])
    assert ids(store, "site.zip == site.city") == [3, 4, 5]
    assert ids(store, "site.zip != site.city") == [1, 2]
    assert ids(store, "site.zip < site.city") == []
    assert ids(store, "estimate == price") == [1, 2, 3, 4, 5]   # null (or missing) on both sides
    assert ids(store, "title == site.city") == [4]


def test_strings_order_by_code_point_and_fold_ascii_case_with_c(store: Store) -> None:
    store.put_all("Task", [
        {"_id": 1, "title": "Pump", "status": "pump"},
        {"_id": 2, "title": "a", "status": "b"},
        {"_id": 3, "title": "É", "status": "é"},   # only ASCII letters fold
        {"_id": 4, "title": "pump", "status": "pump"},
    ])
    assert ids(store, "title == status") == [4]
    assert ids(store, "title ==[c] status") == [1, 4]
    assert ids(store, "title !=[c] status") == [2, 3]
    assert ids(store, "title < status") == [1, 2, 3]


def test_tagged_values_compare_within_their_kind(store: Store) -> None:
    store.put_all("Task", [
        {"_id": 1, "due": {"$date": 10}, "done": True},
        {"_id": 2, "due": {"$date": -1}, "done": False},
    ])
    assert ids(store, "due == due") == [1, 2]
    assert ids(store, "done == done") == [1, 2]
    assert ids(store, "NOT (due > due)") == [1, 2]


@pytest.mark.parametrize("text, says", [
    ("title == priority", "different types"),
    ("estimate == due", "different types"),
    ("tags == title", "list field"),
    ("technician.name == title", "link field"),
    ("title == technician", "link field"),
    ("extra == title", "no fixed type"),
    ("site == title", "object field"),
    ("done < done", "no order"),
    ("blob > blob", "no order"),
    ("priority ==[c] hits", "needs string fields"),
    ("nothing == title", "no field 'nothing'"),
])
def test_fields_that_cannot_be_compared_are_refused_by_both_compilers(store: Store, text: str, says: str) -> None:
    query = parse_query(text)
    with pytest.raises(QueryError, match=says):
        store.sql(query, "Task", SCHEMA)
    with pytest.raises(QueryError, match=says):
        store.predicate(query, "Task", SCHEMA)


def test_without_a_schema_both_compilers_refuse(store: Store) -> None:
    query = parse_query("priority > hits")
    with pytest.raises(QueryError, match="needs the model's schema"):
        store.sql(query, "Task", None)
    with pytest.raises(QueryError, match="needs the model's schema"):
        to_predicate(query, "Task", None)


def test_a_count_or_a_quantifier_is_refused_when_parsing() -> None:
    with pytest.raises(QueryError, match="can only be compared with a value"):
        parse_rql("tags.@count == priority")
    with pytest.raises(QueryError, match="can only be compared with a value"):
        parse_rql("priority < tags.@size")
    with pytest.raises(QueryError, match="ANY needs a comparison on a key path"):
        parse_rql("ANY tags == title")


def test_the_node_round_trips_through_rql_and_json() -> None:
    for text in ("priority > hits", "site.zip !=[c] title", "NOT (estimate == price) AND status == 'open'"):
        node = parse_rql(text)
        assert parse_rql(to_rql(node)[0]) == node
        assert node_from_json(node_to_json(node)) == node
    assert parse_rql("priority >= hits") == CompareFields(">=", Path(("priority",)), Path(("hits",)))
    with pytest.raises(QueryError, match="unknown comparison"):
        node_from_json({"kind": "compare_fields", "op": "~", "left": {"path": ["a"]}, "right": {"path": ["b"]}})
    with pytest.raises(QueryError):
        node_from_json({"kind": "compare_fields", "op": "==", "left": {"path": ["a"]}, "right": {"value": 1}})


def test_the_mongodb_compiler_says_it_cannot() -> None:
    with pytest.raises(QueryError, match="cannot be translated to a MongoDB filter"):
        to_mongo(parse_query("priority > hits"), "Task", SCHEMA)
