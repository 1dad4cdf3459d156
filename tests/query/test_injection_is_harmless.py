"""Hostile text in arguments and field names never changes the SQL's meaning.

Values always travel as parameters; field names are validated (no quotes, dots, leading
``$`` or control characters) and quoted inside the JSON path literal; string operators
escape the only GLOB wildcard that is not Realm's own.
"""

from __future__ import annotations

import pytest
from query_harness import SCHEMA, Store

from tidesync.errors import QueryError
from tidesync.query import Path, compile_order, compile_sql, index_expression, parse_query

HOSTILE = [
    "' OR 1=1 --",
    "'); DROP TABLE documents; --",
    "\" OR \"\"=\"",
    "%",
    "_",
    "*",
    "?",
    "[a-z]*",
    "\\",
    "$.status",
    "x' || (SELECT body FROM documents) || '",
    "\x00",
]


@pytest.fixture
def filled(store: Store) -> Store:
    store.put_all("Task", [{"_id": 1, "title": "a", "status": "open"}, {"_id": 2, "title": "b", "status": "done"}])
    return store


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("query", ["title == $0", "title != $0", "title BEGINSWITH $0", "title ENDSWITH[c] $0",
                                   "title CONTAINS $0", "title LIKE $0", "title IN {$0}", "title > $0"])
def test_string_arguments_are_only_ever_data(filled: Store, text: str, query: str) -> None:
    fragment, params = compile_sql(parse_query(query, [text]), "Task", SCHEMA)
    assert text not in fragment or text in ("%", "_", "*", "?", "\\")  # never spliced into the SQL text
    got = filled.both(query, text, schema=SCHEMA)
    expected = {"title == $0": [], "title != $0": [1, 2]}.get(query)
    if expected is not None:
        assert got == expected
    assert filled.db.execute("SELECT count(*) FROM documents").fetchone()[0] == 2


def test_wildcards_in_arguments_match_literally_except_in_like(store: Store) -> None:
    store.put_all("Task", [{"_id": 1, "title": "100%"}, {"_id": 2, "title": "100"}, {"_id": 3, "title": "a_b"},
                           {"_id": 4, "title": "axb"}, {"_id": 5, "title": "[x]"}, {"_id": 6, "title": "x"}])
    assert store.both("title ENDSWITH '%'", schema=SCHEMA) == [1]
    assert store.both("title CONTAINS '_'", schema=SCHEMA) == [3]
    assert store.both("title LIKE 'a_b'", schema=SCHEMA) == [3]  # '_' is not a Realm wildcard
    assert store.both("title LIKE 'a?b'", schema=SCHEMA) == [3, 4]
    assert store.both("title LIKE '[x]'", schema=SCHEMA) == [5]  # '[' is not a class
    assert store.both("title BEGINSWITH '['", schema=SCHEMA) == [5]


@pytest.mark.parametrize("name", ["a') OR 1=1 --", "it's", "a b", "x;DROP TABLE documents", "é", "a]"])
def test_odd_field_names_are_quoted_in_the_json_path(store: Store, name: str) -> None:
    store.put_all("Task", [{"_id": 1, name: "v"}, {"_id": 2, "other": "v"}])
    assert store.both({name: "v"}) == [1]
    assert store.both({name: {"$ne": "v"}}) == [2]
    assert store.both({name: {"$exists": True}}) == [1]
    assert store.db.execute("SELECT count(*) FROM documents").fetchone()[0] == 2
    expr = index_expression("Task", (name,), None)
    assert expr.startswith("json_extract(body, '$.\"") and expr.endswith("\"')")
    assert compile_order("Task", [(name, False)], None).startswith("json_extract(documents.body, '$.\"")


@pytest.mark.parametrize("name", ['a"b', "a.b", "$where", "a\x00", "a\nb", ""])
def test_field_names_that_cannot_be_quoted_safely_are_refused(name: str) -> None:
    with pytest.raises(QueryError, match="field name"):
        Path((name,))
    with pytest.raises(QueryError, match="field name"):
        index_expression("Task", (name,), None)


def test_with_a_schema_unknown_field_names_are_refused_before_any_sql() -> None:
    with pytest.raises(QueryError, match="no field"):
        compile_sql(parse_query({"status') OR 1=1 --": 1}), "Task", SCHEMA)
    with pytest.raises(QueryError, match="no field"):
        compile_order("Task", [("x OR 1", False)], SCHEMA)


def test_hostile_collection_names_in_link_targets_and_order_are_quoted() -> None:
    from tidesync.core.schema import FieldSchema, FieldType, ObjectSchema, Schema

    target = "T'); DROP TABLE documents; --"
    schema = Schema.of([
        ObjectSchema("A", {"_id": FieldSchema("_id", FieldType("int"), primary_key=True),
                           "l": FieldSchema("l", FieldType("link", True, target=target))}),
        ObjectSchema(target, {"_id": FieldSchema("_id", FieldType("str"), primary_key=True),
                              "n": FieldSchema("n", FieldType("str"))}),
    ])
    store = Store()
    store.put(target, {"_id": "k", "n": "v"})
    store.put_all("A", [{"_id": 1, "l": "k"}, {"_id": 2, "l": None}])
    assert store.both("l.n == 'v'", collection="A", schema=schema) == [1]
    assert store.sql(parse_query("TRUEPREDICATE"), "A", schema, order=[("l.n", True)]) == [1, 2]
    assert store.db.execute("SELECT count(*) FROM documents").fetchone()[0] == 3
    store.db.close()
