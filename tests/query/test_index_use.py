"""Indexes made from index_expression() are used by the SQL compile_sql() emits.

Checked with EXPLAIN QUERY PLAN on a real SQLite database, using the outer query shape
and the index DDL the store uses.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from query_harness import SCHEMA

from tidesync.core.objectid import ObjectId
from tidesync.core.values import canonical_json, to_plain
from tidesync.errors import QueryError
from tidesync.query import compile_sql, index_expression, parse_query


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE documents (collection TEXT NOT NULL, pk TEXT NOT NULL, body TEXT NOT NULL, "
                 "live INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (collection, pk))")
    for name, path in [("status", "status"), ("priority", "priority"), ("due", "due"), ("city", "site.city"),
                       ("price", "price"), ("owner", "owner"), ("tech", "technician")]:
        expr = index_expression("Task", path, SCHEMA)
        conn.execute(f"CREATE INDEX ix_task_{name} ON documents (collection, {expr}) "
                     f"WHERE collection = 'Task' AND live = 1")
    for i in range(200):
        body = {"_id": i, "status": f"s{i % 7}", "priority": i % 5, "site": {"city": f"c{i % 11}"},
                "due": to_plain(datetime(2024, 1, 1 + i % 28, tzinfo=timezone.utc)),
                "price": {"$decimal": str(i)}, "owner": {"$oid": f"{i:024x}"}, "technician": f"t{i % 3}"}
        conn.execute("INSERT INTO documents VALUES ('Task', ?, ?, 1)", (canonical_json(i), canonical_json(body)))
    conn.execute("ANALYZE")
    yield conn
    conn.close()


def plan(db: sqlite3.Connection, text: str, *args: Any) -> str:
    fragment, params = compile_sql(parse_query(text, args), "Task", SCHEMA)
    sql = f"SELECT body FROM documents WHERE collection = ? AND live = 1 AND ({fragment})"
    rows = db.execute("EXPLAIN QUERY PLAN " + sql, ["Task", *params]).fetchall()
    return " | ".join(r[-1] for r in rows)


@pytest.mark.parametrize(("text", "args", "index"), [
    ("status == $0", ("s1",), "ix_task_status"),
    ("status == 's1' AND done == false", (), "ix_task_status"),
    ("priority == 3", (), "ix_task_priority"),
    ("priority > 3", (), "ix_task_priority"),
    ("priority BETWEEN {1, 2}", (), "ix_task_priority"),
    ("priority IN {1, 2}", (), "ix_task_priority"),
    ("status IN $0", (["s1", "s2"],), "ix_task_status"),
    ("due < $0", (datetime(2024, 1, 3, tzinfo=timezone.utc),), "ix_task_due"),
    ("due == nil", (), "ix_task_due"),
    ("site.city == 'c3'", (), "ix_task_city"),
    ("price == $0", (Decimal("3"),), "ix_task_price"),
    ("owner == $0", (ObjectId(f"{5:024x}"),), "ix_task_owner"),
    ("technician == 't1'", (), "ix_task_tech"),
])
def test_indexed_fields_are_searched_through_their_index(db: sqlite3.Connection, text: str, args: tuple[Any, ...],
                                                         index: str) -> None:
    got = plan(db, text, *args)
    assert f"USING INDEX {index}" in got, got


def test_the_index_expression_is_the_compilers_expression_with_a_bare_body() -> None:
    assert index_expression("Task", "status", SCHEMA) == "json_extract(body, '$.status')"
    assert index_expression("Task", "due", SCHEMA) == "json_extract(body, '$.due.\"$date\"')"
    assert index_expression("Task", "owner", SCHEMA) == "json_extract(body, '$.owner.\"$oid\"')"
    assert index_expression("Task", "ref", SCHEMA) == "json_extract(body, '$.ref.\"$uuid\"')"
    assert index_expression("Task", "price", SCHEMA) == "CAST(json_extract(body, '$.price.\"$decimal\"') AS REAL)"
    assert index_expression("Task", ("site", "city"), SCHEMA) == "json_extract(body, '$.site.city')"
    assert index_expression("Task", "notes.a", SCHEMA) == "json_extract(body, '$.notes.a')"
    fragment, _ = compile_sql(parse_query("status == 'x'"), "Task", SCHEMA)
    assert fragment == index_expression("Task", "status", SCHEMA).replace("(body,", "(documents.body,") + " = ?"


def test_unusual_field_names_are_quoted_in_the_json_path() -> None:
    assert index_expression("Anything", "a b", None) == "json_extract(body, '$.\"a b\"')"
    assert index_expression("Anything", "it's", None) == "json_extract(body, '$.\"it''s\"')"


@pytest.mark.parametrize("path", ["tags", "helpers", "technician.name", "site", "notes", "visits.city"])
def test_lists_links_and_objects_cannot_be_indexed(path: str) -> None:
    with pytest.raises(QueryError, match="cannot index"):
        index_expression("Task", path, SCHEMA)
