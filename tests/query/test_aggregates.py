"""@min, @max, @sum and @avg of a list of numbers: RQL text, the AST, SQL and the Python
predicate agree; what they cannot take is a QueryError that says so."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from query_harness import SCHEMA, Store

from tidesync.errors import QueryError
from tidesync.query import Aggregate, Compare, Path, Value, node_from_json, node_to_json, parse_query, to_mongo, to_rql
from tidesync.query.semantics import aggregate

TASKS = [
    {"_id": 1, "scores": [1, 2, 3]},
    {"_id": 2, "scores": []},
    {"_id": 3},                                   # no list: empty
    {"_id": 4, "scores": [10]},
    {"_id": 5, "scores": [-4, 4, 0.5]},
    {"_id": 6, "scores": None},
]


@pytest.fixture
def store(store: Store) -> Store:
    """The query harness's empty store (conftest.py), filled with this module's documents."""
    store.put_all("Task", TASKS)
    return store


@pytest.mark.parametrize("text, expected", [
    ("scores.@sum == 6", [1]),
    ("scores.@sum == 0", [2, 3, 6]),              # an empty or missing list sums to 0
    ("scores.@sum > 0.25", [1, 4, 5]),
    ("scores.@avg == 2", [1]),
    ("scores.@avg == nil", [2, 3, 6]),            # the others are null on an empty list
    ("scores.@avg != nil", [1, 4, 5]),
    ("scores.@avg BETWEEN {0, 2}", [1, 5]),
    ("scores.@min == -4", [5]),
    ("scores.@min < 0 OR scores.@max >= 10", [4, 5]),
    ("scores.@max IN {3, 10}", [1, 4]),
    ("scores.@max != 3", [2, 3, 4, 5, 6]),
    ("scores.@min == nil AND scores.@count == 0", [2, 3, 6]),
    ("NOT (scores.@sum < 5)", [1, 4]),
])
def test_each_aggregate_selects_the_same_documents_both_ways(store: Store, text: str, expected: list[int]) -> None:
    assert store.both(text, schema=SCHEMA) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(-40, 40).map(lambda n: n / 8), max_size=5), min_size=1, max_size=5),
       st.sampled_from(["min", "max", "sum", "avg"]), st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
       st.integers(-40, 40).map(lambda n: n / 4))
def test_sql_and_predicate_agree_on_exact_values(lists: list[list[float]], op: str, cmp: str, arg: float) -> None:
    # Eighths add exactly in double precision, whatever the order or algorithm.
    s = Store()
    try:
        s.put_all("Task", [{"_id": i, "scores": [int(v) if v.is_integer() else v for v in xs]}
                           for i, xs in enumerate(lists)])
        s.both(f"scores.@{op} {cmp} $0", arg, schema=SCHEMA)
    finally:
        s.db.close()


def test_the_python_semantics() -> None:
    assert aggregate([1, 2.5, True, "x", None, {"$float": "nan"}], "sum") == 3.5   # numbers only
    assert aggregate([1, 2.5], "avg") == 1.75 and aggregate([], "avg") is None
    assert aggregate([3, 1.0, 2], "min") == 1.0 and aggregate(None, "max") is None
    assert aggregate("not a list", "sum") == 0.0


def test_text_ast_json_and_mongo_forms() -> None:
    q = parse_query("scores.@avg >= 2.5")
    assert q.node == Compare(">=", Aggregate(Path(("scores",)), "avg"), Value(2.5))
    assert to_rql(q.node)[0] == "scores.@avg >= 2.5"
    assert node_from_json(node_to_json(q.node)) == q.node
    assert to_mongo(parse_query("scores.@sum > 3"), "Task", SCHEMA) == {
        "$expr": {"$and": [{"$ne": [{"$sum": "$scores"}, None]}, {"$gt": [{"$sum": "$scores"}, 3]}]}}
    assert to_mongo(parse_query("scores.@max == nil"), "Task", SCHEMA) == {"$expr": {"$eq": [{"$max": "$scores"}, None]}}


@pytest.mark.parametrize("text, args, message", [
    ("tags.@sum > 1", (), "@sum needs a list or set of int or float; tags is a list of str field"),
    ("price.@max > 1", (), "@max needs a list or set of int or float; price is a decimal field"),
    ("extra.@min > 1", (), "@min needs a list or set of int or float"),
    ("scores.@sum == nil", (), "is a number; it cannot be compared with None"),
    ("scores.@avg == 'x'", (), "cannot be compared with 'x'"),
    ("scores.@avg > nil", (), "null can only be compared with == or !="),
    ("visits.@sum.city > 1", (), "@sum needs numbers; city is a str field"),
    ("scores.@median > 1", (), "unsupported @median"),
    ("scores.@avg BEGINSWITH 'a'", (), "string"),
])
def test_what_cannot_be_aggregated_is_a_query_error(store: Store, text: str, args: Any, message: str) -> None:
    with pytest.raises(QueryError) as info:
        store.both(text, *args, schema=SCHEMA)
    assert message in str(info.value)


def test_without_a_schema_aggregates_are_refused(store: Store) -> None:
    with pytest.raises(QueryError, match="the schema does not know"):
        store.sql(parse_query("scores.@sum > 1"), "Task", None)


VISITED = [
    {"_id": 1, "visits": [{"city": "Oslo", "hours": 2}, {"city": "Bergen", "hours": 1.5}]},
    {"_id": 2, "visits": []},
    {"_id": 3},                                                        # no list: nothing
    {"_id": 4, "visits": [{"city": "Oslo"}, {"city": "Molde", "hours": None}, {"city": "x", "hours": 8}]},
    {"_id": 5, "visits": [{"city": "Oslo", "hours": "3"}, {"hours": True}]},   # no numbers there
    {"_id": 6, "site": {"hours": 100}, "visits": None},
]


@pytest.mark.parametrize("text, expected", [
    ("visits.@sum.hours == 3.5", [1]),
    ("visits.@sum.hours == 0", [2, 3, 5, 6]),       # no numbers: 0
    ("visits.@avg.hours == 8", [4]),                  # elements without a number are skipped
    ("visits.@avg.hours == nil", [2, 3, 5, 6]),
    ("visits.@min.hours < 2", [1]),
    ("visits.@max.hours >= 2", [1, 4]),
    ("visits.@max.hours IN {2, 8}", [1, 4]),
    ("visits.@sum.hours BETWEEN {3, 9}", [1, 4]),
    ("NOT (visits.@sum.hours > 1)", [2, 3, 5, 6]),
])
def test_an_aggregate_of_a_property_of_embedded_elements(text: str, expected: list[int]) -> None:
    s = Store()
    try:
        s.put_all("Task", VISITED)
        assert s.both(text, schema=SCHEMA) == expected
        assert s.both(text) == expected           # the server's schema-less compilers too
    finally:
        s.db.close()


def test_an_aggregate_of_a_property_round_trips_and_is_checked() -> None:
    node = parse_query("visits.@sum.hours > 2").node
    assert node == Compare(">", Aggregate(Path(("visits",)), "sum", ("hours",)), Value(2))
    assert parse_query(to_rql(node)[0]).node == node
    assert node_from_json(node_to_json(node)) == node
    assert to_mongo(node, "Task", SCHEMA) == {
        "$expr": {"$and": [{"$ne": [{"$sum": "$visits.hours"}, None]}, {"$gt": [{"$sum": "$visits.hours"}, 2]}]}}
    s = Store()
    try:
        for text, says in [("visits.@sum.city > 1", "needs numbers; city is a str field"),
                           ("scores.@sum.x > 1", "needs a list of embedded objects or of links"),
                           ("tags.@sum.level > 1", "needs a list of embedded objects or of links"),
                           ("helpers.@sum.name > 1", "needs numbers; name is a str field"),
                           ("visits.@sum.nothing > 1", "no field 'nothing'")]:
            with pytest.raises(QueryError, match=says):
                s.sql(parse_query(text), "Task", SCHEMA)
            with pytest.raises(QueryError, match=says):
                s.predicate(parse_query(text), "Task", SCHEMA)
    finally:
        s.db.close()
    with pytest.raises(QueryError, match="ends a key path"):
        parse_query("visits.@count.hours > 1")


LINKED = [
    {"_id": 1, "helpers": ["ann", "bob"]},
    {"_id": 2, "helpers": ["ann", "ann", "gone"]},   # a link twice counts twice; a dangling one has no number
    {"_id": 3, "helpers": ["cy", "old"]},            # no number there; a deleted document
    {"_id": 4},
]


@pytest.mark.parametrize("text, expected", [
    ("helpers.@sum.level == 4", [1]),
    ("helpers.@sum.level == 6", [2]),
    ("helpers.@sum.level == 0", [3, 4]),
    ("helpers.@avg.level == 3", [2]),
    ("helpers.@max.level >= 3", [1, 2]),
    ("helpers.@min.level == nil", [3, 4]),
    ("helpers.@sum.level BETWEEN {4, 5}", [1]),
])
def test_an_aggregate_of_a_property_of_linked_documents(text: str, expected: list[int]) -> None:
    s = Store()
    try:
        s.put_all("Technician", [{"_id": "ann", "name": "Ann", "level": 3}, {"_id": "bob", "name": "Bob", "level": 1},
                                 {"_id": "cy", "name": "Cy", "level": "x"}])
        s.put("Technician", {"_id": "old", "name": "Old", "level": 50}, live=False)
        s.put_all("Task", LINKED)
        assert s.both(text, schema=SCHEMA) == expected
        with pytest.raises(QueryError, match="cannot be translated to a MongoDB filter"):
            to_mongo(parse_query(text).node, "Task", SCHEMA)
    finally:
        s.db.close()
