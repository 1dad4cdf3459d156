"""MongoDB filter document → query nodes.

Supported::

    {"status": "open"}                       implicit equality ($eq)
    {"site.city": "Oslo"}                    dotted key paths
    {"priority": {"$gte": 2, "$lt": 5}}      $eq $ne $gt $gte $lt $lte (several combine with AND)
    {"status": {"$in": [...]}}, $nin
    {"due": {"$exists": true}}
    {"tags": {"$size": 2}}, {"tags": {"$all": ["a", "b"]}}
    {"extra": {"$type": "string"}}, {"$type": ["int", "double"]}, {"$type": 2}
    {"priority": {"$not": {"$gt": 3}}}
    {"$and": [...]}, {"$or": [...]}, {"$nor": [...]}

Semantics are MongoDB's: equality with a list field matches if any element is equal;
``{"x": None}`` matches null or missing; ``$ne``/``$nin``/``$not`` are the negation of the
positive test (so ``{"tags": {"$ne": "x"}}`` means "no element is 'x'"). Values may be
Python objects (datetime, ObjectId, Decimal, UUID, bytes) or their plain form
(``{"$date": micros}``, ``{"$oid": hex}``, ...). Anything else (``$regex``, ``$elemMatch``,
``$expr``, array-index paths as ``tags.0``) raises
:class:`~tidesync.errors.QueryError` naming the operator.

``$type`` is RQL's ``@type`` (:class:`~tidesync.query.ast.TypeOf`): it tests the value
itself, so an array is ``"array"`` and its elements are not looked at (MongoDB also matches
an array by its elements' types), and a missing field is ``"null"``. ``"binData"`` stands
for binary data and UUIDs; BSON types tidesync does not store (``"timestamp"``, ``"regex"``,
...) are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from ..core.values import TAGS
from ..errors import QueryError
from .ast import (MAX_DEPTH, And, Compare, CompareOp, Count, Exists, FalsePredicate, In, Node, Not, Or,
                  Path, TruePredicate, TypeOf, Value)

__all__ = ["parse_mongo"]

_COMPARE: Final[dict[str, CompareOp]] = {"$eq": "==", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_UNSUPPORTED_HINTS: Final = {
    "$regex": "use an RQL string query with BEGINSWITH, ENDSWITH, CONTAINS or LIKE",
    "$elemMatch": "use an RQL string query with ANY/ALL/NONE",
    "$expr": "compare fields with values instead",
    "$where": "JavaScript is not supported",
    "$text": "text search is not supported",
}


def _unknown(op: str, where: str) -> QueryError:
    hint = _UNSUPPORTED_HINTS.get(op)
    return QueryError(f"unsupported MongoDB operator {op!r} {where}",
                      advice=hint if hint else "supported: $eq $ne $gt $gte $lt $lte $in $nin $exists "
                                               "$not $size $all $type $and $or $nor")


def _is_tagged(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in TAGS


def _value(value: Any, where: str) -> Value:
    if _is_tagged(value):
        return Value(dict(value))
    if isinstance(value, Mapping):
        raise QueryError(f"cannot compare {where} with an embedded document; use dotted key paths "
                         f"(e.g. 'site.city') for its fields")
    if isinstance(value, (list, tuple, set, frozenset)):
        raise QueryError(f"cannot compare {where} with a whole list; use $in, $all or $size")
    return Value.of(value)


def _values(value: Any, op: str, where: str) -> Value:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise QueryError(f"{op} at {where} needs a list, not {type(value).__name__}")
    return Value([_value(v, where).plain for v in value])


def _path(key: str) -> Path:
    if not isinstance(key, str):
        raise QueryError(f"a filter key must be a str, not {key!r}")
    return Path.parse(key)


def _conjunction(items: list[Node]) -> Node:
    if len(items) == 1:
        return items[0]
    return And(tuple(items))


class _Parser:
    def __init__(self) -> None:
        self.depth = 0

    def document(self, doc: Any, where: str = "the filter") -> Node:
        self.depth += 1
        try:
            return self._document(doc, where)
        finally:
            self.depth -= 1

    def _document(self, doc: Any, where: str) -> Node:
        if self.depth > MAX_DEPTH:
            raise QueryError(f"the filter nests deeper than {MAX_DEPTH} levels")
        if not isinstance(doc, Mapping):
            raise QueryError(f"{where} must be a document (a dict), not {type(doc).__name__}")
        items: list[Node] = []
        for key, value in doc.items():
            if isinstance(key, str) and key.startswith("$"):
                items.append(self.logical(key, value))
            else:
                items.append(self.field(_path(key), value))
        if not items:
            return TruePredicate()
        return _conjunction(items)

    def logical(self, op: str, value: Any) -> Node:
        if op not in ("$and", "$or", "$nor"):
            raise _unknown(op, "at the top level of a filter")
        if not isinstance(value, (list, tuple)) or not value:
            raise QueryError(f"{op} needs a non-empty list of filter documents")
        parts = tuple(self.document(d, f"each element of {op}") for d in value)
        if op == "$and":
            return And(parts)
        if op == "$or":
            return Or(parts)
        return Not(Or(parts))

    def field(self, path: Path, value: Any) -> Node:
        where = f"at {str(path)!r}"
        if isinstance(value, Mapping) and not _is_tagged(value) and value \
                and all(isinstance(k, str) and k.startswith("$") for k in value):
            return _conjunction([self.operator(path, op, arg) for op, arg in value.items()])
        if isinstance(value, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in value) \
                and not _is_tagged(value):
            raise QueryError(f"{where}: a document mixes operators and fields; use only operators "
                             f"({{'$gt': 1}}) or dotted key paths")
        return Compare("==", path, _value(value, f"{str(path)!r}"))

    def operator(self, path: Path, op: str, arg: Any) -> Node:
        where = f"{str(path)!r}"
        handler: Callable[[Path, str, Any], Node] | None = _HANDLERS.get(op)
        if handler is None:
            raise _unknown(op, f"at {where}")
        return handler(path, op, arg)


def _compare(path: Path, op: str, arg: Any) -> Node:
    return Compare(_COMPARE[op], path, _value(arg, f"{str(path)!r}"))


def _ne(path: Path, op: str, arg: Any) -> Node:
    return Not(Compare("==", path, _value(arg, f"{str(path)!r}")))


def _in(path: Path, op: str, arg: Any) -> Node:
    node = In(path, _values(arg, op, f"{str(path)!r}"))
    return node if op == "$in" else Not(node)


def _exists(path: Path, op: str, arg: Any) -> Node:
    return Exists(path) if arg else Not(Exists(path))


def _size(path: Path, op: str, arg: Any) -> Node:
    if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
        raise QueryError(f"$size at {str(path)!r} needs a non-negative int, not {arg!r}")
    return Compare("==", Count(path), Value(arg))


def _all(path: Path, op: str, arg: Any) -> Node:
    values = _values(arg, op, f"{str(path)!r}").plain
    if not values:
        return FalsePredicate()  # MongoDB: {$all: []} matches nothing
    return _conjunction([Compare("==", path, Value(v)) for v in values])


#: MongoDB's ``$type`` aliases and numbers, as ``@type`` names.
_BSON_TYPE_NAMES: Final[dict[str | int, tuple[str, ...]]] = {
    "double": ("double",), 1: ("double",), "string": ("string",), 2: ("string",),
    "object": ("dictionary",), 3: ("dictionary",), "array": ("list",), 4: ("list",),
    "binData": ("binary", "uuid"), 5: ("binary", "uuid"), "objectId": ("objectId",), 7: ("objectId",),
    "bool": ("bool",), 8: ("bool",), "date": ("date",), 9: ("date",), "null": ("null",), 10: ("null",),
    "int": ("int",), 16: ("int",), "long": ("int",), 18: ("int",), "decimal": ("decimal",), 19: ("decimal",),
    "number": ("numeric",),
}


def _type(path: Path, op: str, arg: Any) -> Node:
    items = arg if isinstance(arg, list) else [arg]
    names: list[str] = []
    for item in items:
        known = _BSON_TYPE_NAMES.get(item) if isinstance(item, (str, int)) and not isinstance(item, bool) else None
        if known is None:
            raise QueryError(f"$type at {str(path)!r}: {item!r} is not a type tidesync stores",
                             advice="use double, string, object, array, binData, objectId, bool, date, null, "
                                    "int, long, decimal or number (or their numbers)")
        names.extend(n for n in known if n not in names)
    if not names:
        raise QueryError(f"$type at {str(path)!r} needs a type alias, a type number or a list of them")
    return In(TypeOf(path), Value(names))


def _not(path: Path, op: str, arg: Any) -> Node:
    if not isinstance(arg, Mapping) or not arg or _is_tagged(arg) \
            or not all(isinstance(k, str) and k.startswith("$") for k in arg):
        raise QueryError(f"$not at {str(path)!r} needs an operator document such as {{'$gt': 3}}")
    if "$not" in arg:
        raise QueryError(f"$not at {str(path)!r} cannot contain another $not (as in MongoDB)")
    return Not(_Parser().field(path, arg))


_HANDLERS: Final[dict[str, Callable[[Path, str, Any], Node]]] = {
    "$eq": _compare, "$gt": _compare, "$gte": _compare, "$lt": _compare, "$lte": _compare,
    "$ne": _ne, "$in": _in, "$nin": _in, "$exists": _exists, "$size": _size, "$all": _all,
    "$not": _not, "$type": _type,
}


def parse_mongo(filter_doc: Mapping[str, Any]) -> Node:
    """Parse a MongoDB filter document.

    Raises:
        QueryError: an unsupported operator (named in the message), a malformed operand, or
            a value tidesync cannot store.
    """
    return _Parser().document(filter_doc)
