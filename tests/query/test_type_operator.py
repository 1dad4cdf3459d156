"""``x.@type``: the type of a (mostly mixed) value, compared with type names by ``==``, ``!=``
or ``IN``; MongoDB's ``$type`` reads to the same node. RQL text, the AST and its JSON form,
SQL and the Python predicate agree, with and without a schema; what cannot be asked is a
QueryError that says why."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path as FilePath
from uuid import UUID

import pytest
from query_harness import SCHEMA, Store

import tidesync
from tidesync.errors import QueryError
from tidesync.query import (Compare, In, Path, TypeOf, Value, node_from_json, node_to_json, parse_mongo, parse_query,
                            to_mongo, to_rql)
from tidesync.query.semantics import MISSING, type_name

TASKS = [
    {"_id": 1, "extra": 3},
    {"_id": 2, "extra": 2.5},
    {"_id": 3, "extra": {"$decimal": "1.25"}},
    {"_id": 4, "extra": "three"},
    {"_id": 5, "extra": True},
    {"_id": 6, "extra": None},
    {"_id": 7},                                             # missing: null
    {"_id": 8, "extra": [1, "a"]},
    {"_id": 9, "extra": {"x": 1}},
    {"_id": 10, "extra": {"$date": 1_700_000_000_000_000}},
    {"_id": 11, "extra": {"$oid": "65f0aa0000000000000000ff"}},
    {"_id": 12, "extra": {"$uuid": "123e4567-e89b-12d3-a456-426614174000"}},
    {"_id": 13, "extra": {"$binary": "YWJj"}},
    {"_id": 14, "extra": {"$float": "nan"}},
    {"_id": 15, "extra": False, "visits": [{"city": "a", "hours": 1.5}, {"city": "b", "hours": None}]},
]


def both(store: Store, *args: object, **kwargs: object) -> list[int]:
    """The ``_id``s a query selects, checked to be the same through SQL and the predicate."""
    return sorted(store.both(*args, **kwargs))  # type: ignore[arg-type]


@pytest.fixture
def store(store: Store) -> Store:
    """The query harness's empty store (conftest.py), filled with this module's documents."""
    store.put_all("Task", TASKS)
    return store


@pytest.mark.parametrize("text, expected", [
    ("extra.@type == 'int'", [1]),
    ("extra.@type == 'double'", [2, 14]),
    ("extra.@type == 'float'", [2, 14]),                  # Python's float is a double
    ("extra.@type == 'decimal'", [3]),
    ("extra.@type == 'numeric'", [1, 2, 3, 14]),
    ("extra.@type == 'string'", [4]),
    ("extra.@type == 'bool'", [5, 15]),
    ("extra.@type == 'null'", [6, 7]),                    # a missing value is null
    ("extra.@type == 'list'", [8]),                       # a list is not looked into
    ("extra.@type == 'array'", [8]),
    ("extra.@type == 'dictionary'", [9]),
    ("extra.@type == 'object'", [9]),
    ("extra.@type == 'date'", [10]),
    ("extra.@type == 'timestamp'", [10]),
    ("extra.@type == 'objectId'", [11]),
    ("extra.@type == 'uuid'", [12]),
    ("extra.@type == 'binary'", [13]),
    ("extra.@type == 'STRING'", [4]),                     # names match whatever their case
    ("extra.@type == 'ObjectID'", [11]),
    ("extra.@type != 'null'", [1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15]),
    ("extra.@type IN {'string', 'bool'}", [4, 5, 15]),
    ("extra.@type IN {}", []),
    ("NOT extra.@type IN {'numeric', 'null'}", [4, 5, 8, 9, 10, 11, 12, 13, 15]),
    ("visits.hours.@type == 'double'", [15]),             # a list on the way fans out: ANY
    ("title.@type == 'null'", list(range(1, 16))),        # typed fields have a type too
])
def test_each_type_name_selects_the_same_documents_both_ways(store: Store, text: str, expected: list[int]) -> None:
    assert both(store, text, schema=SCHEMA) == expected
    assert both(store, text) == expected                   # the server's schema-less compilers too


def test_quantifiers_over_a_list_on_the_way_follow_the_list_rule(store: Store) -> None:
    # With the schema a missing list of embedded objects is empty (ALL holds, NONE holds);
    # without it, a missing value is just that: one value, of type null.
    no_visits = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert both(store, "ALL visits.hours.@type == 'double'", schema=SCHEMA) == no_visits
    assert both(store, "NONE visits.hours.@type == 'null'", schema=SCHEMA) == no_visits
    assert both(store, "ALL visits.hours.@type == 'double'") == []
    assert both(store, "NONE visits.hours.@type == 'null'") == []
    assert both(store, "ANY visits.hours.@type == 'null'") == [*no_visits, 15]


def test_a_parameter_is_a_type_name_too(store: Store) -> None:
    assert both(store, "extra.@type == $0", "Numeric", schema=SCHEMA) == [1, 2, 3, 14]
    assert both(store, "extra.@type IN $0", ["date", "uuid"], schema=SCHEMA) == [10, 12]
    with pytest.raises(QueryError, match="'money' is not a type name"):
        parse_query("extra.@type == $0", ["money"])


def test_the_python_and_the_sql_type_of_every_stored_shape_are_one(store: Store) -> None:
    names = {t["_id"]: type_name(t.get("extra", MISSING)) for t in TASKS}
    for name in set(names.values()):
        assert both(store, f"extra.@type == '{name}'") == sorted(i for i, n in names.items() if n == name)


def test_text_ast_and_json_forms_round_trip() -> None:
    query = parse_query("extra.@type == 'string' OR extra.@type IN {'int', 'null'}")
    left = TypeOf(Path(("extra",)))
    assert query.node.items == (Compare("==", left, Value("string")), In(left, Value(["int", "null"])))
    text, args = to_rql(query.node)
    assert parse_query(text, args).node == query.node
    assert node_from_json(node_to_json(query.node)) == query.node
    assert node_to_json(query.node)["items"][0]["left"] == {"type": ["extra"]}


@pytest.mark.parametrize("text, message", [
    ("extra.@type == 'money'", "'money' is not a type name"),
    ("extra.@type == 3", "3 is not a type name"),
    ("extra.@type < 'int'", "compared with ==, != or IN, not with '<'"),
    ("extra.@type BETWEEN {'int', 'int'}", "not with '<='"),
    ("extra.@type ==[c] 'int'", "whatever their case: leave out [c]"),
    ("extra.@type BEGINSWITH 'i'", "BEGINSWITH needs a key path"),
    ("extra.@type.x == 'int'", "@type ends a key path"),
    ("extra.@type == title.@type", "can only be compared with a value"),
    ("extra.@typo == 'int'", "unsupported @typo"),
])
def test_what_cannot_be_asked_says_why(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_query(text)


def test_a_link_field_is_refused_with_a_schema(store: Store) -> None:
    with pytest.raises(QueryError, match="is a link"):
        store.sql(parse_query("technician.@type == 'string'").node, "Task", SCHEMA)
    with pytest.raises(QueryError, match="@links stands for objects"):
        store.sql(parse_query("@links.Task.technician.@type == 'int'").node, "Technician", SCHEMA)


def test_mongo_type_reads_to_the_same_node(store: Store) -> None:
    assert parse_mongo({"extra": {"$type": "string"}}) == In(TypeOf(Path(("extra",))), Value(["string"]))
    assert parse_mongo({"extra": {"$type": [16, "double"]}}) == In(TypeOf(Path(("extra",))), Value(["int", "double"]))
    assert parse_mongo({"extra": {"$type": "binData"}}).values.plain == ["binary", "uuid"]
    assert both(store, {"extra": {"$type": "number"}}) == [1, 2, 3, 14]
    assert both(store, {"extra": {"$type": "object"}}, schema=SCHEMA) == [9]
    assert both(store, {"extra": {"$type": "array"}}) == [8]              # not by its elements' types
    assert both(store, {"extra": {"$not": {"$type": ["null", "array"]}}}) == [1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14, 15]


def test_to_mongo_keeps_arrays_and_missing_fields_apart() -> None:
    left = TypeOf(Path(("extra",)))
    assert to_mongo(Compare("==", left, Value("int"))) == \
        {"extra": {"$type": ["int", "long"], "$not": {"$type": "array"}}}
    assert to_mongo(Compare("!=", left, Value("null"))) == \
        {"$nor": [{"$or": [{"extra": {"$type": ["null"], "$not": {"$type": "array"}}}, {"extra": {"$exists": False}}]}]}
    assert to_mongo(In(left, Value(["list"]))) == {"extra": {"$type": "array"}}
    with pytest.raises(QueryError, match="cannot tell binary data from a UUID"):
        to_mongo(Compare("==", left, Value("uuid")))


class Item(tidesync.Model):
    _id: int = tidesync.field(primary_key=True)
    extra: tidesync.Mixed = None
    tags: list[str] = tidesync.field(default_factory=list)


def test_a_database_filters_mixed_values_by_type(tmp_path: FilePath) -> None:
    values = [7, 1.5, Decimal("2.50"), "seven", True, None, [1, 2], {"k": "v"},
              datetime(2025, 1, 2, tzinfo=timezone.utc), tidesync.ObjectId(), UUID(int=5), b"\x00\x01"]
    with tidesync.open(tmp_path / "items.db", schema=[Item]) as db:
        with db.write():
            for i, value in enumerate(values):
                db.create(Item, _id=i, extra=value, tags=["a"] if i % 2 else [])
        by_type = {name: sorted(o._id for o in db.objects(Item).filter(f"extra.@type == '{name}'"))
                   for name in ("int", "double", "decimal", "string", "bool", "null", "list", "dictionary",
                                "date", "objectId", "uuid", "binary")}
        assert by_type == {"int": [0], "double": [1], "decimal": [2], "string": [3], "bool": [4], "null": [5],
                           "list": [6], "dictionary": [7], "date": [8], "objectId": [9], "uuid": [10],
                           "binary": [11]}
        assert sorted(o._id for o in db.objects(Item).filter({"extra": {"$type": "number"}})) == [0, 1, 2]
        numbers = db.objects(Item).filter("extra.@type == 'numeric'").sort("_id")
        with db.write():
            db.get(Item, 3).extra = 3                # a string becomes an int: live results follow
        assert [o._id for o in numbers] == [0, 1, 2, 3]
        assert sorted(o._id for o in db.objects(Item).filter("tags.@type == 'list'")) == list(range(len(values)))


def test_a_flexible_subscription_may_test_a_type() -> None:
    from tidesync.protocol.messages import SubscriptionQuery
    from tidesync.server.flexible import FlexibleConfig, SubscriptionInvalid, compile_set

    config = FlexibleConfig(queryable_fields=("extra",))
    (compiled,) = compile_set([SubscriptionQuery("q", "WorkOrder", "extra.@type IN {'int', 'string'}")], config)
    assert compiled.predicate({"extra": 1}) and compiled.predicate({"extra": "x"})
    assert not compiled.predicate({"extra": 1.5}) and not compiled.predicate({})
    with pytest.raises(SubscriptionInvalid, match="field 'notes' is not queryable"):
        compile_set([SubscriptionQuery("q", "WorkOrder", "notes.@type == 'dictionary'")], config)
