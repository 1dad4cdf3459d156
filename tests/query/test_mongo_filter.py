"""MongoDB filter documents → AST: every supported operator, and clear refusals."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from tidesync.core.objectid import ObjectId
from tidesync.errors import QueryError
from tidesync.query import (And, Compare, Count, Exists, FalsePredicate, In, Node, Not, Or, Path, TruePredicate,
                            Value, parse_mongo, parse_query)

P = Path.parse


def eq(path: str, value: Any) -> Compare:
    return Compare("==", P(path), Value(value))


@pytest.mark.parametrize(("flt", "node"), [
    ({}, TruePredicate()),
    ({"status": "open"}, eq("status", "open")),
    ({"status": None}, eq("status", None)),
    ({"site.city": "Oslo"}, eq("site.city", "Oslo")),
    ({"a": 1, "b": 2}, And((eq("a", 1), eq("b", 2)))),
    ({"a": {"$eq": 1}}, eq("a", 1)),
    ({"a": {"$ne": 1}}, Not(eq("a", 1))),
    ({"a": {"$gt": 1}}, Compare(">", P("a"), Value(1))),
    ({"a": {"$gte": 1}}, Compare(">=", P("a"), Value(1))),
    ({"a": {"$lt": 1}}, Compare("<", P("a"), Value(1))),
    ({"a": {"$lte": 1}}, Compare("<=", P("a"), Value(1))),
    ({"a": {"$gte": 1, "$lt": 5}}, And((Compare(">=", P("a"), Value(1)), Compare("<", P("a"), Value(5))))),
    ({"a": {"$in": [1, "x", None]}}, In(P("a"), Value([1, "x", None]))),
    ({"a": {"$nin": [1]}}, Not(In(P("a"), Value([1])))),
    ({"a": {"$exists": True}}, Exists(P("a"))),
    ({"a": {"$exists": 0}}, Not(Exists(P("a")))),
    ({"a": {"$not": {"$gt": 3}}}, Not(Compare(">", P("a"), Value(3)))),
    ({"tags": {"$size": 2}}, Compare("==", Count(P("tags")), Value(2))),
    ({"tags": {"$all": ["a", "b"]}}, And((eq("tags", "a"), eq("tags", "b")))),
    ({"tags": {"$all": []}}, FalsePredicate()),
    ({"$and": [{"a": 1}, {"b": 2}]}, And((eq("a", 1), eq("b", 2)))),
    ({"$or": [{"a": 1}, {"b": 2}]}, Or((eq("a", 1), eq("b", 2)))),
    ({"$nor": [{"a": 1}, {"b": 2}]}, Not(Or((eq("a", 1), eq("b", 2))))),
])
def test_operators(flt: dict[str, Any], node: Node) -> None:
    assert parse_mongo(flt) == node


def test_typed_python_values_and_plain_tagged_values_are_accepted() -> None:
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    oid = ObjectId("65f0aa0000000000000000ff")
    ref = UUID("123e4567-e89b-12d3-a456-426614174000")
    assert parse_mongo({"due": when}) == parse_mongo({"due": {"$date": 1704067200000000}})
    assert parse_mongo({"owner": oid}) == eq("owner", {"$oid": str(oid)})
    assert parse_mongo({"owner": {"$oid": str(oid)}}) == eq("owner", {"$oid": str(oid)})
    assert parse_mongo({"price": {"$gt": Decimal("1.5")}}) == Compare(">", P("price"), Value({"$decimal": "1.5"}))
    assert parse_mongo({"ref": {"$in": [ref]}}) == In(P("ref"), Value([{"$uuid": str(ref)}]))
    assert parse_mongo({"blob": b"ab"}) == eq("blob", {"$binary": "YWI="})


@pytest.mark.parametrize(("flt", "message"), [
    ({"a": {"$regex": "x"}}, "'$regex'"),
    ({"a": {"$elemMatch": {"b": 1}}}, "'$elemMatch'"),
    ({"a": {"$type": "timestamp"}}, "'timestamp' is not a type tidesync stores"),
    ({"a": {"$type": []}}, "needs a type alias"),
    ({"a": {"$type": True}}, "True is not a type"),
    ({"$where": "this.a"}, "'$where'"),
    ({"$expr": {}}, "'$expr'"),
    ({"$text": {"$search": "x"}}, "'$text'"),
    ({"a": {"$foo": 1}}, "'$foo'"),
    ({"a": {"$in": 1}}, "needs a list"),
    ({"a": {"$size": -1}}, "non-negative int"),
    ({"a": {"$not": 3}}, "needs an operator document"),
    ({"a": {"city": "Oslo"}}, "embedded document"),
    ({"a": [1, 2]}, "whole list"),
    ({"a": {"$gt": 1, "b": 2}}, "mixes operators and fields"),
    ({"a": {"$gt": None}}, "null can only"),
    ({"$or": []}, "non-empty list"),
    ({"$or": [1]}, "must be a document"),
    ({"a.$b": 1}, "invalid field name"),
    ({"a": datetime(2024, 1, 1)}, "naive datetime"),
])
def test_unsupported_or_malformed_filters_name_the_problem(flt: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_mongo(flt)
    assert message in str(info.value)


def test_parse_query_takes_a_mapping_and_refuses_args_with_it() -> None:
    assert parse_query({"a": 1}).node == eq("a", 1)
    with pytest.raises(QueryError, match="arguments"):
        parse_query({"a": 1}, [1])
    with pytest.raises(QueryError, match="not list"):
        parse_query([("a", 1)])  # type: ignore[arg-type]
