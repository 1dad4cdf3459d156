"""Hostile or pathological queries from a peer fail with QueryError and bounded cost."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from query_harness import SCHEMA, Store

from tidesync.errors import QueryError
from tidesync.query import MAX_DEPTH, Query, compile_sql, parse_query


@pytest.mark.parametrize("text", ["(" * 1000 + "a == 1" + ")" * 1000, "NOT " * 1000 + "a == 1",
                                  "!" * 1000 + "a == 1"])
def test_deeply_nested_rql_is_a_query_error_not_a_recursion_error(text: str) -> None:
    with pytest.raises(QueryError, match="nests deeper"):
        parse_query(text)


def test_nesting_up_to_the_limit_parses() -> None:
    depth = MAX_DEPTH
    parse_query("(" * depth + "a == 1" + ")" * depth)


def test_deeply_nested_mongo_filters_are_refused() -> None:
    flt: dict[str, Any] = {"a": 1}
    for _ in range(1000):
        flt = {"$and": [flt]}
    with pytest.raises(QueryError, match="nests deeper"):
        parse_query(flt)
    with pytest.raises(QueryError, match="another \\$not"):
        parse_query({"a": {"$not": {"$not": {"$gt": 1}}}})


def test_deeply_nested_serialized_queries_are_refused() -> None:
    node: dict[str, Any] = {"kind": "true"}
    for _ in range(1000):
        node = {"kind": "not", "item": node}
    with pytest.raises(QueryError, match="nests deeper"):
        Query.from_json({"node": node})


def test_sql_grows_linearly_with_an_unknown_key_path(store: Store) -> None:
    # without a schema every step may be a list; the SQL must not double per step
    sizes = [len(compile_sql(parse_query(".".join(["a"] * k) + " == 1"), "T")[0]) for k in (2, 4, 6)]
    assert sizes[2] - sizes[1] <= (sizes[1] - sizes[0]) * 1.1
    deep: dict[str, Any] = {"v": 1}
    for i in range(5):  # 5 levels of "a", every other one a list
        deep = {"a": [deep]} if i % 2 == 0 else {"a": deep}
    store.put("T", {"_id": 1, **deep})
    store.put("T", {"_id": 2, "a": 1})
    assert store.both("a.a.a.a.a.v == 1", collection="T") == [1]
    assert store.both("a.a.a.a.a.v == nil", collection="T") == [2]


def test_a_very_long_key_path_is_refused_not_crashed() -> None:
    with pytest.raises(QueryError, match="nests too deeply"):
        compile_sql(parse_query(".".join(["a"] * 40) + " == 1"), "T")


# SQLite's parser has a fixed stack; compile_sql estimates how deep its SQL nests and
# refuses what SQLite could not parse (a QueryError rather than "parser stack overflow").

_PATHS = ["status", "tags", "visits.city", "technician.mentor.mentor.level", "helpers.mentor.level",
          "technician.name", "a.b.c.d.e.f", "a.b", "extra.x.y"]
_LEAVES = ["{p} == 1", "{p} == nil", "{p} != 'x'", "{p}.@count > 1", "{p} IN {1, 2.5, nil, 'x'}",
           "{p} BEGINSWITH[c] 'x'", "{p} BETWEEN {1, 2}", "{p} LIKE 'a*'"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["not", "and", "or"]), max_size=20), st.sampled_from(_PATHS),
       st.sampled_from(_LEAVES), st.sampled_from(["", "ANY ", "ALL ", "NONE "]), st.booleans())
def test_compiled_sql_never_overflows_sqlites_parser(wrappers: list[str], path: str, leaf: str, quantifier: str,
                                                     with_schema: bool) -> None:
    text = quantifier + leaf.replace("{p}", path)
    for wrapper in wrappers:
        text = f"NOT ({text})" if wrapper == "not" else f"(done == true {wrapper.upper()} {text})"
    try:
        fragment, params = compile_sql(parse_query(text), "Task", SCHEMA if with_schema else None)
    except QueryError:
        return  # too deep, or (with the schema) a test that does not fit the field
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE documents (collection TEXT, pk TEXT, body TEXT, live INTEGER)")
        db.execute(f"SELECT 1 FROM documents WHERE collection = ? AND live = 1 AND ({fragment})", ["Task", *params])
    finally:
        db.close()


def test_realistic_complex_queries_are_well_within_the_limit() -> None:
    text = ("NOT (technician.mentor.name == $0 AND ALL helpers.site.city ==[c] 'oslo') "
            "OR (status IN {'open', 'new'} AND tags.@count > 2 AND NOT (due < $1 OR price BETWEEN {1, 9})) "
            "OR NONE visits.city BEGINSWITH 'B' OR (NOT (NOT (priority > 3)) AND site.zip != nil)")
    from datetime import datetime, timezone

    compile_sql(parse_query(text, ["Ann", datetime(2024, 1, 1, tzinfo=timezone.utc)]), "Task", SCHEMA)
    compile_sql(parse_query("NOT (" * 10 + "status == 'x'" + ")" * 10), "Task", SCHEMA)
    compile_sql(parse_query("a.b.c.d.e == 1 AND NOT (x.y.z == 2)"), "Task", None)


def test_too_deep_for_sqlite_is_a_query_error_with_advice() -> None:
    with pytest.raises(QueryError, match="nests too deeply for SQLite") as info:
        compile_sql(parse_query("NOT (" * 30 + "status == 'x'" + ")" * 30), "Task", SCHEMA)
    assert "fewer nested NOTs" in str(info.value)
