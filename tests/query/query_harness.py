"""Test harness for the query tests: a field-service schema and a real SQLite store.

The store has the layout the query compiler targets (``documents(collection, pk, body,
live)``, bodies written with ``canonical_json``) and runs compiled queries inside the outer
query shape the real store uses.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from tidesync.core.schema import FieldSchema, FieldType, ObjectSchema, Schema
from tidesync.core.values import canonical_json
from tidesync.query import Query, compile_order, compile_sql, parse_query, to_predicate
from tidesync.query.to_sql import SQL_FUNCTIONS


def _field(name: str, kind: str, *, nullable: bool = False, element: FieldType | None = None,
           target: str | None = None, pk: bool = False, indexed: bool = False) -> FieldSchema:
    return FieldSchema(name, FieldType(kind, nullable, element, target), indexed=indexed, primary_key=pk)


def _object(name: str, fields: Iterable[FieldSchema], embedded: bool = False) -> ObjectSchema:
    return ObjectSchema(name, {f.name: f for f in fields}, embedded)


def make_schema() -> Schema:
    """Task (int pk) with every kind of field; Technician (str pk); Site (embedded)."""
    technician = FieldType("link", True, target="Technician")
    return Schema.of([
        _object("Task", [
            _field("_id", "int", pk=True),
            _field("title", "str"),
            _field("status", "str", indexed=True),
            _field("priority", "int", indexed=True),
            _field("estimate", "float", nullable=True),
            _field("price", "decimal", nullable=True),
            _field("done", "bool"),
            _field("due", "datetime", nullable=True, indexed=True),
            _field("ref", "uuid", nullable=True),
            _field("owner", "objectid", nullable=True),
            _field("blob", "bytes", nullable=True),
            _field("tags", "list", element=FieldType("str")),
            _field("scores", "list", element=FieldType("int")),
            _field("labels", "set", element=FieldType("str")),
            _field("site", "object", nullable=True, target="Site"),
            _field("technician", "link", nullable=True, target="Technician"),
            _field("helpers", "list", element=FieldType("link", target="Technician")),
            _field("notes", "dict", element=FieldType("str", nullable=True)),
            _field("visits", "list", element=FieldType("object", target="Site")),
            _field("extra", "mixed", nullable=True),
            _field("hits", "counter"),
        ]),
        _object("Technician", [
            _field("_id", "str", pk=True),
            _field("name", "str"),
            _field("level", "int"),
            _field("site", "object", nullable=True, target="Site"),
            _field("mentor", "link", nullable=True, target="Technician"),
        ]),
        _object("Site", [_field("city", "str"), _field("zip", "str", nullable=True),
                         _field("hours", "float", nullable=True)], embedded=True),
    ])


SCHEMA = make_schema()


class Store:
    """An in-memory SQLite database with tidesync's ``documents`` layout."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")
        for name, (nargs, function) in SQL_FUNCTIONS.items():   # as tidesync's engine does
            self.db.create_function(name, nargs, function, deterministic=True)
        self.db.execute("CREATE TABLE documents (collection TEXT NOT NULL, pk TEXT NOT NULL, body TEXT NOT NULL, "
                        "live INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (collection, pk))")
        self.bodies: dict[tuple[str, str], tuple[dict[str, Any], bool]] = {}

    def put(self, collection: str, body: Mapping[str, Any], live: bool = True) -> None:
        pk = canonical_json(body["_id"])
        self.db.execute("INSERT OR REPLACE INTO documents (collection, pk, body, live) VALUES (?, ?, ?, ?)",
                        (collection, pk, canonical_json(dict(body)), int(live)))
        self.bodies[(collection, pk)] = (dict(body), live)

    def put_all(self, collection: str, bodies: Iterable[Mapping[str, Any]]) -> None:
        for body in bodies:
            self.put(collection, body)

    def live(self, collection: str) -> Iterator[dict[str, Any]]:
        for (coll, _), (body, live) in self.bodies.items():
            if coll == collection and live:
                yield body

    def resolve_link(self, collection: str, pk: Any) -> dict[str, Any] | None:
        hit = self.bodies.get((collection, canonical_json(pk)))
        return hit[0] if hit is not None and hit[1] else None

    def resolve_backlinks(self, origin: str, field: str, pk: Any) -> list[dict[str, Any]]:
        """The live documents of ``origin`` whose link field ``field`` holds ``pk``."""
        key = canonical_json(pk)
        out = []
        for body in self.live(origin):
            held = body.get(field)
            links = held if isinstance(held, list) else [held]
            if any(canonical_json(v) == key for v in links if v is not None):
                out.append(body)
        return out

    def sql(self, query: Query | Any, collection: str = "Task", schema: Schema | None = None,
            order: list[tuple[str, bool]] | None = None) -> list[Any]:
        """``_id`` of each match, via the compiled SQL (sorted by ``_id`` unless ``order``)."""
        fragment, params = compile_sql(query, collection, schema)
        sql = f"SELECT body FROM documents WHERE collection = ? AND live = 1 AND ({fragment})"
        if order:
            sql += " ORDER BY " + compile_order(collection, order, schema) + ", documents.rowid"
        rows = self.db.execute(sql, [collection, *params]).fetchall()
        ids = [_loads(r[0])["_id"] for r in rows]
        return ids if order else sorted(ids, key=canonical_json)

    def predicate(self, query: Query | Any, collection: str = "Task", schema: Schema | None = None) -> list[Any]:
        """``_id`` of each match, via the Python predicate."""
        match = to_predicate(query, collection, schema, resolve_link=self.resolve_link,
                             resolve_backlinks=self.resolve_backlinks)
        return sorted((b["_id"] for b in self.live(collection) if match(b)), key=canonical_json)

    def both(self, text: str | Mapping[str, Any], *args: Any, collection: str = "Task",
             schema: Schema | None = None) -> list[Any]:
        """Run a query both ways, check they agree, return the matching ``_id`` list."""
        query = parse_query(text, args)
        via_sql = self.sql(query, collection, schema)
        via_python = self.predicate(query, collection, schema)
        assert via_sql == via_python, f"SQL {via_sql} != predicate {via_python} for {text!r}"
        return via_sql


def _loads(text: str) -> Any:
    return json.loads(text)
