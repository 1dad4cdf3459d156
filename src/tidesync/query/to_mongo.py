"""Query → MongoDB filter document, for the MongoDB backend.

Best effort: what MongoDB can say with the same meaning is translated; what it cannot is a
:class:`~tidesync.errors.QueryError` (never a silently different filter):

* Key paths through links cannot be followed in a filter.
* Comparing two fields (:class:`~tidesync.query.ast.CompareFields`) is refused: ``$expr``
  orders values of different BSON types where tidesync says they never compare.
* Where the key path can fan out over a list *before* its last step (known from the
  schema), ``!=``, ``BETWEEN``, ``ALL`` and ``@count`` other than ``== n`` are refused,
  because MongoDB would pair up conditions across different elements.

Known differences that remain:

* ``[c]`` becomes a regex with the ``i`` option, which folds all of Unicode (tidesync's SQL
  folds ASCII only).
* ``@type`` with ``'binary'`` or ``'uuid'`` is refused (both are ``binData``), as is one
  on a key path through a list; a missing field has the type ``null``, as in tidesync.
* ``@count == n`` becomes ``$size``, which counts array elements only (tidesync also
  counts string characters and dictionary keys).
* MongoDB stores datetimes to the millisecond.
* Without a schema, a dotted path is assumed not to cross a list before its last step.

Values are passed through ``encode`` (by default
:func:`tidesync.core.values.from_plain`, giving datetime, Decimal, UUID, bytes and
tidesync's ObjectId); the MongoDB backend passes an encoder producing BSON types
(``bson.ObjectId``, ``Decimal128``, ``Binary``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from ..core.schema import Schema
from ..core.values import Plain, from_plain
from ..errors import QueryError
from .ast import (Aggregate, And, Between, Compare, CompareFields, Count, DictPart, Exists, Path, FalsePredicate, In, Node, Not, Or,
                  Quantified, Query, StringOp, SubqueryCount, TruePredicate, TypeOf, bound_plain, type_test)
from .paths import BACKLINKS, Step, check_leaf, resolve, subquery_elements

__all__ = ["to_mongo"]

_OPS: Final = {"==": "$eq", "!=": "$ne", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
_NOT_ARRAY: Final = {"$not": {"$type": "array"}}
#: What each ``@type`` type is stored as in MongoDB (``$type`` aliases; list is "array").
_BSON_TYPES: Final = {"null": ("null",), "bool": ("bool",), "int": ("int", "long"), "double": ("double",),
                      "decimal": ("decimal",), "string": ("string",), "date": ("date",),
                      "objectId": ("objectId",), "dictionary": ("object",)}


def _like(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


class _Translator:
    def __init__(self, collection: str | None, schema: Schema | None, encode: Callable[[Plain], Any]) -> None:
        self.collection = collection
        self.schema = schema
        self.encode = encode

    def node(self, node: Node) -> dict[str, Any]:
        if isinstance(node, TruePredicate):
            return {}
        if isinstance(node, FalsePredicate):
            return {"_id": {"$exists": False}}
        if isinstance(node, And):
            return {"$and": [self.node(i) for i in node.items]} if node.items else {}
        if isinstance(node, Or):
            return {"$or": [self.node(i) for i in node.items]} if node.items else {"_id": {"$exists": False}}
        if isinstance(node, Not):
            return {"$nor": [self.node(node.item)]}
        if isinstance(node, Quantified):
            return self.quantified(node)
        if isinstance(node, Exists):
            path, _ = self.path(node, node.path.names)
            return {path: {"$exists": True}}
        if isinstance(node, CompareFields):
            # $expr compares BSON values across types by MongoDB's type order, unlike
            # tidesync's families; no filter says the same yet.
            raise QueryError(f"comparing two fields ({node.left} {node.op} {node.right}) cannot be translated "
                             f"to a MongoDB filter yet")
        return self.leaf(node)

    def path(self, node: Compare | In | Between | StringOp | Exists, names: tuple[str, ...]) -> tuple[str, tuple[Step, ...]]:
        if names[0] == BACKLINKS:
            raise QueryError(f"{'.'.join(names)}: @links cannot be translated to a MongoDB filter (it would need a "
                             f"$lookup)")
        steps = resolve(self.collection, self.schema, names)
        check_leaf(node, steps, self.collection, self.schema)
        if any(s.is_link for s in steps[:-1]):
            raise QueryError(f"{'.'.join(names)} follows a link, which a MongoDB filter cannot do")
        return ".".join(names), steps

    def refuse_inner_fan_out(self, steps: tuple[Step, ...], what: str) -> None:
        if any(s.kind in ("list", "set") for s in steps[:-1]):
            raise QueryError(f"{what} on a key path through a list cannot be translated to a MongoDB filter")

    def element_ops(self, node: Compare | In | Between | StringOp) -> dict[str, Any]:
        """The operator document testing one value, e.g. ``{"$gte": 1, "$lte": 5}``."""
        if isinstance(node, (Compare, StringOp)) and node.diacritic_insensitive:
            # Only a collation folds diacritics in MongoDB, and a filter cannot carry one.
            raise QueryError("[d] (diacritic-insensitive) cannot be translated to a MongoDB filter")
        if isinstance(node, Compare):
            value = bound_plain(node.right)
            if node.case_insensitive:
                regex = {"$regex": r"\A" + re.escape(value) + r"\z", "$options": "i"}
                return regex if node.op == "==" else {"$not": regex}
            return {_OPS[node.op]: self.encode(value)}
        if isinstance(node, In):
            return {"$in": [self.encode(v) for v in bound_plain(node.values)]}
        if isinstance(node, Between):
            return {"$gte": self.encode(bound_plain(node.low)), "$lte": self.encode(bound_plain(node.high))}
        needle = bound_plain(node.right)
        body = _like(needle) if node.op == "like" else re.escape(needle)
        if node.op in ("beginswith", "like"):
            body = r"\A" + body
        if node.op in ("endswith", "like"):
            body = body + r"\z"
        options = ("i" if node.case_insensitive else "") + ("s" if node.op == "like" else "")
        return {"$regex": body, "$options": options} if options else {"$regex": body}

    def leaf(self, node: Compare | In | Between | StringOp) -> dict[str, Any]:
        if isinstance(node.left, DictPart):
            # A filter cannot iterate an object's keys or values ($objectToArray needs $expr,
            # which orders values across BSON types where tidesync never compares them).
            raise QueryError(f"{node.left} cannot be translated to a MongoDB filter yet")
        if isinstance(node.left, SubqueryCount):
            assert not isinstance(node, StringOp)
            return self.subquery(node, node.left)
        if isinstance(node.left, Aggregate):
            assert not isinstance(node, StringOp)
            return self.aggregate(node, node.left)
        if isinstance(node.left, Count):
            return self.count(node)
        if isinstance(node.left, TypeOf):
            assert not isinstance(node, StringOp)
            return self.type_of(node, node.left)
        path, steps = self.path(node, node.left.names)
        ops = self.element_ops(node)
        per_element = isinstance(node, Between) or (isinstance(node, Compare) and node.op == "!=")
        if not per_element:
            # MongoDB already matches a list if any element matches: the same as tidesync.
            return {path: ops}
        self.refuse_inner_fan_out(steps, "!=" if isinstance(node, Compare) else "BETWEEN")
        if not steps[-1].may_fan_out:
            return {path: ops}
        # Both conditions must hold on one element: $elemMatch for lists, plain otherwise.
        return {"$or": [{path: {**_NOT_ARRAY, **ops}}, {path: {"$elemMatch": ops}}]}

    def aggregate(self, node: Compare | In | Between, agg: Aggregate) -> dict[str, Any]:
        """``$expr`` with the aggregation operator of the same name (numbers only, a missing
        list counts as empty: ``$sum`` 0, the others null), null never ordered."""
        path, steps = self.path(node, agg.path.names)
        self.refuse_inner_fan_out(steps, f"@{agg.op}")
        if agg.of and steps[-1].item_kind == "link":
            raise QueryError(f"{agg}: an aggregate of linked documents cannot be translated to a MongoDB filter "
                             f"(it would need a $lookup)")
        # "$items.price" is the array of each element's price (elements without one left out)
        value = {"$" + agg.op: "$" + ".".join((path, *agg.of))}

        def test(op: str, arg: Any) -> dict[str, Any]:
            if arg is None:
                return {"$expr": {_OPS[op]: [value, None]}}
            expr: dict[str, Any] = {_OPS[op]: [value, self.encode(arg)]}
            if op not in ("==", "!="):  # in MongoDB's order null is below every number
                expr = {"$and": [{"$ne": [value, None]}, expr]}
            return {"$expr": expr}

        if isinstance(node, Compare):
            return test(node.op, bound_plain(node.right))
        if isinstance(node, In):
            return {"$or": [test("==", n) for n in bound_plain(node.values)]}
        return {"$and": [test(">=", bound_plain(node.low)), test("<=", bound_plain(node.high))]}

    def type_of(self, node: Compare | In | Between, left: TypeOf) -> dict[str, Any]:
        """``x.@type == 'int'`` as ``$type``, kept from matching inside arrays (MongoDB's
        ``$type`` also matches an array by its elements); a missing field is ``null``."""
        names, negate = type_test(node)
        path, steps = self.path(node, left.path.names)
        self.refuse_inner_fan_out(steps, "@type")
        if names & {"binary", "uuid"}:
            raise QueryError(f"{left}: MongoDB's $type cannot tell binary data from a UUID (both are binData)")
        scalar = sorted(t for n in sorted(names - {"list"}) for t in _BSON_TYPES[n])
        tests: list[dict[str, Any]] = []
        if scalar:
            tests.append({path: {"$type": scalar, "$not": {"$type": "array"}}})
        if "null" in names:
            tests.append({path: {"$exists": False}})
        if "list" in names:
            tests.append({path: {"$type": "array"}})
        match = tests[0] if len(tests) == 1 else {"$or": tests}
        return {"$nor": [match]} if negate else match

    def count(self, node: Compare | In | Between) -> dict[str, Any]:
        assert isinstance(node.left, Count)
        path, steps = self.path(node, node.left.path.names)
        if isinstance(node, Compare) and node.op == "==":
            size = bound_plain(node.right)
            if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                return {path: {"$size": size}}
        self.refuse_inner_fan_out(steps, "@count")
        field = f"${path}"

        def test(op: str, n: Any) -> dict[str, Any]:
            return {"$expr": {"$and": [{"$isArray": field}, {op: [{"$size": field}, self.encode(n)]}]}}

        if isinstance(node, Compare):
            if node.op == "!=":
                return {"$nor": [test("$eq", bound_plain(node.right))]}
            return test(_OPS[node.op], bound_plain(node.right))
        if isinstance(node, In):
            return {"$or": [test("$eq", n) for n in bound_plain(node.values)]}
        return {"$and": [test("$gte", bound_plain(node.low)), test("$lte", bound_plain(node.high))]}

    def subquery(self, node: Compare | In | Between, subquery: SubqueryCount) -> dict[str, Any]:
        """``SUBQUERY(...).@count > 0`` (or ``>= 1``, ``!= 0``) over a list of embedded objects is
        ``$elemMatch`` of the translated predicate, ``== 0`` (or ``< 1``, ``<= 0``) its negation;
        other counts, and lists of links, are refused."""
        path, steps = self.path(node, subquery.path.names)
        self.refuse_inner_fan_out(steps, "SUBQUERY")
        collection, link = subquery_elements(steps[-1])
        some = {(">", 0), (">=", 1), ("!=", 0)}
        none = {("==", 0), ("<", 1), ("<=", 0)}
        arg = bound_plain(node.right) if isinstance(node, Compare) else None
        test = (node.op, arg) if isinstance(node, Compare) and type(arg) in (int, float) else None
        if link is not None or test is None or test not in some | none:
            raise QueryError(f"{subquery} {'over links ' if link is not None else ''}cannot be translated to a "
                             f"MongoDB filter: only a count compared with 0 (> 0, >= 1, != 0, == 0, < 1, <= 0) "
                             f"over a list of embedded objects")
        inner = _Translator(collection, self.schema if collection is not None else None, self.encode)
        match = {path: {"$elemMatch": inner.node(subquery.predicate)}}
        return match if test in some else {"$nor": [match]}

    def quantified(self, node: Quantified) -> dict[str, Any]:
        pred = node.predicate
        inner = self.leaf(pred)   # refuses @keys / @values first
        if node.quantifier == "any":
            return inner
        if node.quantifier == "none":
            return {"$nor": [inner]}
        if isinstance(pred.left, Count):
            raise QueryError(f"ALL with {pred.left} cannot be translated to a MongoDB filter")
        assert isinstance(pred.left, Path)
        path, steps = self.path(pred, pred.left.names)
        self.refuse_inner_fan_out(steps, "ALL")
        ops = self.element_ops(pred)
        # every element passes = no element fails; a non-list value must pass itself
        return {"$or": [{path: {"$type": "array", "$not": {"$elemMatch": {"$not": ops}}}},
                        {"$and": [{path: _NOT_ARRAY}, {path: ops}]}]}


def to_mongo(query: Query | Node, collection: str | None = None, schema: Schema | None = None, *,
             encode: Callable[[Plain], Any] = from_plain) -> dict[str, Any]:
    """Translate a bound query into a MongoDB filter document.

    Args:
        query: a bound :class:`Query` or node.
        collection: the queried collection (with ``schema``).
        schema: lets the translation know where lists are, and check field names.
        encode: turns a plain-form value into what the MongoDB driver should see.

    Raises:
        QueryError: the query cannot be expressed as a MongoDB filter with the same meaning
            (see the module docstring), or has an unbound ``$n``.
    """
    node = query.node if isinstance(query, Query) else query
    return _Translator(collection, schema, encode).node(node)
