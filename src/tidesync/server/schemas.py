"""Collection schemas on the server: learned from the data that flows, enforced when configured.

**Learning.** The server is schema-flexible: every field a client sends is accepted. As
transactions are integrated, :class:`SchemaLearner` records, per collection and top-level
field, the kinds of value seen (``string``, ``int``, ``double``, ``bool``, ``null``, ``date``,
``objectId``, ``decimal``, ``uuid``, ``binary``, ``object``, ``list``, ``set``, ``dictionary``,
``counter``), from the operations alone (no document is read). It is kept in
``data_dir/schema.json`` and shown by ``tidesync schema --data DIR``, which can also print it
as a JSON Schema to paste into ``tidesync.toml``.

**Enforcing.** ``[schema.<Collection>]`` in ``tidesync.toml`` holds a JSON Schema (or the
path of a ``.json`` file). A write whose resulting document does not validate is refused
with a compensating write whose message is the validation error. :func:`validate` implements
this subset of JSON Schema (draft 2020-12 meanings), chosen to need no extra dependency:

* ``type`` (``"string"``, ``"integer"``, ``"number"``, ``"boolean"``, ``"null"``, ``"array"``,
  ``"object"``, or a list of them) and ``bsonType`` (Atlas App Services' names: ``"string"``,
  ``"int"``, ``"long"``, ``"double"``, ``"decimal"``, ``"bool"``, ``"date"``, ``"objectId"``,
  ``"uuid"``, ``"binData"``, ``"array"``, ``"object"``, ``"null"``). With ``type``, tagged
  values (dates, ObjectIds...) are none of the JSON types: use ``bsonType`` for them;
* ``properties``, ``required``, ``additionalProperties`` (a boolean or a schema);
* ``enum``, ``const``;
* ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``;
* ``minLength``, ``maxLength``, ``pattern``;
* ``items`` (one schema for every element), ``minItems``, ``maxItems``, ``uniqueItems``.

Any other keyword is refused when the config is loaded, so a schema never silently means less
than it says. Values are checked in their plain form (:mod:`tidesync.core.values`): a set is
an array, a dictionary an object, a counter an integer.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from ..core.operations import (
    CounterAdd, CreateDoc, DictPut, ListInsert, ListSet, Op, SetAdd, SetContainer, SetValue,
)
from ..core.transaction import Transaction
from ..core.values import canonical_json
from ..query.semantics import type_name

__all__ = ["validate", "check_schema", "SchemaLearner", "kind_of", "learned_to_json_schema", "SUPPORTED_KEYWORDS"]

SUPPORTED_KEYWORDS = frozenset({
    "type", "bsonType", "properties", "required", "additionalProperties", "enum", "const", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "items",
    "minItems", "maxItems", "uniqueItems",
    # annotations, ignored when validating
    "title", "description", "$schema", "$comment", "default", "examples", "format",
})

#: Where :func:`kind_of` names a type as JSON Schema does rather than as ``@type``.
_JSON_KIND = {"list": "array", "dictionary": "object"}
_BSON_ALIASES = {"int": {"int"}, "long": {"int"}, "double": {"double", "int"}, "number": {"double", "int"},
                 "decimal": {"decimal"}, "bool": {"bool"}, "string": {"string"}, "date": {"date"},
                 "objectId": {"objectId"}, "uuid": {"uuid"}, "binData": {"binary", "uuid"},
                 "array": {"array"}, "object": {"object"}, "null": {"null"}}
_JSON_TYPES = {"string": {"string"}, "integer": {"int"}, "number": {"int", "double"}, "boolean": {"bool"},
               "null": {"null"}, "array": {"array"}, "object": {"object"}}


def kind_of(value: Any) -> str:
    """The kind of a plain value: ``null``, ``bool``, ``int``, ``double``, ``string``, ``array``,
    ``object``, or a tag kind (``date``, ``objectId``, ``decimal``, ``uuid``, ``binary``): the
    query's :func:`~tidesync.query.semantics.type_name` with JSON Schema's names for lists and
    maps. Something that is no plain value at all is named by its Python type."""
    if value is not None and not isinstance(value, (bool, int, float, str, list, dict)):
        return type(value).__name__
    name = type_name(value)
    return _JSON_KIND.get(name, name)


# ----------------------------------------------------------------------------- validation


def check_schema(schema: Any, where: str = "schema") -> None:
    """Check that ``schema`` uses only the supported subset, with well-typed keywords.

    Raises:
        ValueError: the message says where and what.
    """
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where} must be a JSON Schema object (a table)")
    unknown = set(schema) - SUPPORTED_KEYWORDS
    if unknown:
        raise ValueError(f"{where} uses unsupported keyword(s) {sorted(unknown)}; supported: "
                         f"{sorted(SUPPORTED_KEYWORDS - {'title', 'description', '$schema', '$comment', 'default', 'examples', 'format'})}")
    for key in ("type", "bsonType"):
        if key in schema:
            names = schema[key] if isinstance(schema[key], list) else [schema[key]]
            table = _JSON_TYPES if key == "type" else _BSON_ALIASES
            bad = [n for n in names if n not in table]
            if bad:
                raise ValueError(f"{where}.{key}: unknown type(s) {bad}; known: {sorted(table)}")
    if "properties" in schema:
        props = schema["properties"]
        if not isinstance(props, Mapping):
            raise ValueError(f"{where}.properties must be a table")
        for name, sub in props.items():
            check_schema(sub, f"{where}.properties.{name}")
    if "required" in schema and (not isinstance(schema["required"], list)
                                 or not all(isinstance(r, str) for r in schema["required"])):
        raise ValueError(f"{where}.required must be a list of field names")
    extra = schema.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool):
        check_schema(extra, f"{where}.additionalProperties")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema and (isinstance(schema[key], bool) or not isinstance(schema[key], (int, float))):
            raise ValueError(f"{where}.{key} must be a number")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in schema and (isinstance(schema[key], bool) or not isinstance(schema[key], int) or schema[key] < 0):
            raise ValueError(f"{where}.{key} must be a non-negative integer")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise ValueError(f"{where}.enum must be a list")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as exc:
            raise ValueError(f"{where}.pattern is not a valid regular expression: {exc}") from exc


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, dict) and len(value) == 1 and "$decimal" in value:
        try:
            return float(value["$decimal"])
        except ValueError:
            return None
    return None


def validate(value: Any, schema: Mapping[str, Any], path: str = "") -> str | None:
    """Validate a plain value against a schema of the supported subset.

    Returns:
        None when it is valid, else a message naming the first failing field and keyword.
    """
    where = path or "the document"
    kind = kind_of(value)
    for key, table in (("type", _JSON_TYPES), ("bsonType", _BSON_ALIASES)):
        if key in schema:
            names = schema[key] if isinstance(schema[key], list) else [schema[key]]
            if not any(kind in table.get(n, set()) for n in names):
                shown = names[0] if len(names) == 1 else names
                return f"{where} must be of {key} {shown!r}, not {kind}"
    if "const" in schema and canonical_json(value) != canonical_json(schema["const"]):
        return f"{where} must be {schema['const']!r}"
    if "enum" in schema and canonical_json(value) not in {canonical_json(v) for v in schema["enum"]}:
        return f"{where} must be one of {schema['enum']!r}, not {value!r}"
    num = _number(value)
    if num is not None:
        if "minimum" in schema and num < schema["minimum"]:
            return f"{where} must be >= {schema['minimum']}, not {num}"
        if "maximum" in schema and num > schema["maximum"]:
            return f"{where} must be <= {schema['maximum']}, not {num}"
        if "exclusiveMinimum" in schema and num <= schema["exclusiveMinimum"]:
            return f"{where} must be > {schema['exclusiveMinimum']}, not {num}"
        if "exclusiveMaximum" in schema and num >= schema["exclusiveMaximum"]:
            return f"{where} must be < {schema['exclusiveMaximum']}, not {num}"
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"{where} must be at least {schema['minLength']} characters long"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{where} must be at most {schema['maxLength']} characters long"
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            return f"{where} must match the pattern {schema['pattern']!r}"
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{where} must have at least {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{where} must have at most {schema['maxItems']} items"
        if schema.get("uniqueItems") and len({canonical_json(v) for v in value}) != len(value):
            return f"{where} must not repeat items"
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                error = validate(item, items, f"{path}[{i}]" if path else f"[{i}]")
                if error:
                    return error
    if kind == "object":
        assert isinstance(value, dict)
        for name in schema.get("required", ()):
            if name not in value:
                return f"{_join(path, name)} is required"
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, sub in value.items():
            sub_schema = props.get(name)
            if sub_schema is None:
                if extra is False and not (not path and name == "_id"):
                    return f"{_join(path, name)} is not allowed (additionalProperties is false)"
                if isinstance(extra, Mapping):
                    sub_schema = extra
            if sub_schema is not None:
                error = validate(sub, sub_schema, _join(path, name))
                if error:
                    return error
    return None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# ----------------------------------------------------------------------------- learning


def _op_kinds(op: Op) -> Iterable[tuple[str, str]]:
    """(top-level field, kind) pairs an operation shows."""
    if isinstance(op, CreateDoc):
        for name, value in op.fields.items():
            if name == "_id":
                continue
            kind = op.kinds.get(name)
            if kind is not None and value is not None:
                yield name, {"list": "list", "set": "set", "dict": "dictionary"}.get(kind, kind)
            else:
                yield name, kind_of(value)
    elif isinstance(op, SetValue) and len(op.path) == 1:
        yield op.path[0], kind_of(op.value)
    elif isinstance(op, SetContainer) and len(op.path) == 1:
        yield op.path[0], {"list": "list", "set": "set", "dict": "dictionary"}.get(op.kind, op.kind)
    elif isinstance(op, CounterAdd) and len(op.path) == 1:
        yield op.path[0], "counter"


_MAX_SHAPES = 10_000


def _create_shape(op: Op) -> tuple[Any, ...] | None:
    """What :func:`_op_kinds` of a ``CreateDoc`` depends on, when that is cheap to tell: its
    collection, field names, exact value types and declared kinds (None: not a create, or a
    value whose kind depends on more than its type, such as a tagged map)."""
    if type(op) is not CreateDoc:
        return None
    types = tuple(map(type, op.fields.values()))
    if dict in types:
        return None
    return (op.collection, tuple(op.fields), types, tuple(op.kinds.items()) if op.kinds else ())


#: Value types whose :func:`kind_of` is the type's alone (a map's depends on its tag).
_PLAIN_TYPES = frozenset((type(None), bool, int, float, str, list))


def _update_sig(op: Op) -> tuple[Any, ...] | None:
    """What :meth:`SchemaLearner.observe` learns from an operation other than a create depends
    on, when that is cheap to tell: a ``SetValue`` of a value whose kind is its type's, or a
    ``CounterAdd``: its class, collection, path and value type (None: anything else)."""
    t = type(op)
    if t is SetValue:
        sv = cast(SetValue, op)
        v = type(sv.value)
        return (t, sv.collection, sv.path, v) if v in _PLAIN_TYPES else None
    if t is CounterAdd:
        return (t, op.collection, cast(CounterAdd, op).path)
    return None


def _until_learned(ops: Iterable[Op], known: tuple[tuple[Any, ...], ...],
                   shapes: set[tuple[Any, ...]]) -> Iterator[Op]:
    """``ops`` (a transaction's, whose creates have the shapes ``known``) until every one of
    ``known`` is in ``shapes`` (which :meth:`SchemaLearner.observe` fills as it goes): the
    rest would all be skipped as known shapes. A first upload of 10,000 documents of one
    shape is learned from its first one instead of 10,000 shape tuples."""
    pending = [s for s in known if s not in shapes]
    for op in ops:
        if not pending:
            return
        yield op
        pending = [s for s in pending if s not in shapes]


def _element_kind(op: Op) -> tuple[str, str] | None:
    if isinstance(op, (ListInsert, ListSet, SetAdd, DictPut)) and len(op.path) == 1:
        return op.path[0], kind_of(op.value)
    return None


class SchemaLearner:
    """The schema the server has seen, per collection: field -> kinds (and element kinds).

    Persisted as JSON in ``path`` whenever something new is seen (rare after warm-up).
    Thread-safe.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._schema: dict[str, dict[str, dict[str, list[str]]]] = {}
        #: Shapes of creates already learned from (see _create_shape).
        self._shapes: set[tuple[Any, ...]] = set()
        #: The same for updates (see _update_sig): a device's stream of edits of a few fields.
        self._updates: set[tuple[Any, ...]] = set()
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict):
                    self._schema = loaded
            except (OSError, ValueError):
                self._schema = {}

    def observe_transactions(self, txns: Iterable[Transaction]) -> bool:
        """:meth:`observe` of every operation of ``txns``; a transaction whose creates' shapes
        (:meth:`Transaction.create_shapes`, found while parsing it) are all learned already is
        skipped without a look at its operations."""
        shapes = self._shapes
        rest: list[Iterable[Op]] = []
        with self._lock:
            for t in txns:
                known = t.create_shapes()
                if known is None:
                    rest.append(t.ops)
                    continue
                for shape in known:
                    if shape not in shapes:
                        rest.append(_until_learned(t.ops, known, shapes))
                        break
        return self.observe(op for ops in rest for op in ops) if rest else False

    def observe(self, ops: Iterable[Op]) -> bool:
        """Record what ``ops`` show; returns True when something new was learned (and saved)."""
        new = False
        shapes = self._shapes
        updates = self._updates
        with self._lock:
            for op in ops:
                if type(op) is not CreateDoc:
                    sig = _update_sig(op)
                    if sig is not None:
                        if sig in updates:
                            continue  # the same field, kind and operation: nothing new
                        if len(updates) < _MAX_SHAPES:
                            updates.add(sig)
                shape = _create_shape(op)
                if shape is not None:
                    if shape in shapes:
                        continue  # a create of the same fields, types and kinds: nothing new
                    if len(shapes) < _MAX_SHAPES:
                        shapes.add(shape)
                coll = self._schema.get(op.collection)
                for name, kind in _op_kinds(op):
                    if coll is None:
                        coll = self._schema.setdefault(op.collection, {})
                    entry = coll.setdefault(name, {"kinds": []})
                    if kind not in entry["kinds"]:
                        entry["kinds"].append(kind)
                        entry["kinds"].sort()
                        new = True
                el = _element_kind(op)
                if el is not None:
                    name, kind = el
                    if coll is None:
                        coll = self._schema.setdefault(op.collection, {})
                    entry = coll.setdefault(name, {"kinds": []})
                    elements = entry.setdefault("elements", [])
                    if kind not in elements:
                        elements.append(kind)
                        elements.sort()
                        new = True
            if new:
                self._save()
        return new

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._schema, indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    def snapshot(self) -> dict[str, dict[str, dict[str, list[str]]]]:
        """A copy of what was learned: ``{collection: {field: {"kinds": [...], "elements": [...]}}}``."""
        with self._lock:
            return json.loads(json.dumps(self._schema))  # type: ignore[no-any-return]


_TO_BSON = {"string": "string", "int": "long", "double": "double", "bool": "bool", "null": "null", "date": "date",
            "objectId": "objectId", "decimal": "decimal", "uuid": "uuid", "binary": "binData", "object": "object",
            "array": "array", "list": "array", "set": "array", "dictionary": "object", "counter": "long"}


def learned_to_json_schema(learned: Mapping[str, Mapping[str, Mapping[str, list[str]]]]) -> dict[str, Any]:
    """A JSON Schema per collection (``bsonType`` form) from a learned schema."""
    out: dict[str, Any] = {}
    for coll, fields in sorted(learned.items()):
        props: dict[str, Any] = {}
        for name, entry in sorted(fields.items()):
            types = sorted({_TO_BSON.get(k, "object") for k in entry.get("kinds", [])})
            prop: dict[str, Any] = {"bsonType": types[0] if len(types) == 1 else types}
            elements = sorted({_TO_BSON.get(k, "object") for k in entry.get("elements", [])})
            if elements and "array" in types:
                prop["items"] = {"bsonType": elements[0] if len(elements) == 1 else elements}
            props[name] = prop
        out[coll] = {"bsonType": "object", "properties": props}
    return out
