"""Queries: one AST, two ways to write it, three ways to run it.

Write a query as Realm Query Language text (``"status == $0 AND priority >= 2"``) or as a
MongoDB filter document (``{"status": "open", "priority": {"$gte": 2}}``);
:func:`parse_query` turns either into a :class:`Query`. Run it as SQL on SQLite
(:func:`compile_sql`, :func:`compile_order`, :func:`index_expression`), as a Python
predicate over plain-form bodies (:func:`to_predicate`), or as a MongoDB filter
(:func:`to_mongo`). The package is pure: no I/O, stdlib only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import QueryError
from .ast import (MAX_DEPTH, Aggregate, And, Between, Compare, CompareFields, Count, Descriptor, DictPart,
                  DistinctDescriptor, Exists,
                  FalsePredicate, In, LimitDescriptor, Node, Not, Or, Param, Path, Quantified, Query, Size,
                  SortDescriptor, StringOp, SubqueryCount, TruePredicate, TypeOf, Value, bind, node_from_json, node_to_json)
from .mongo_filter import parse_mongo
from .rql import parse_rql, parse_rql_query, to_rql
from .to_mongo import to_mongo
from .to_predicate import BacklinkResolver, LinkResolver, Predicate, to_predicate
from .to_sql import compile_distinct, compile_order, compile_sql, index_expression

__all__ = [
    "parse_query",
    "Query",
    "parse_rql",
    "parse_rql_query",
    "parse_mongo",
    "to_rql",
    "compile_sql",
    "compile_order",
    "compile_distinct",
    "index_expression",
    "to_predicate",
    "to_mongo",
    "LinkResolver",
    "BacklinkResolver",
    "Predicate",
    "bind",
    "node_to_json",
    "node_from_json",
    "MAX_DEPTH",
    "Node",
    "Path",
    "Count",
    "Size",
    "Aggregate",
    "SubqueryCount",
    "DictPart",
    "TypeOf",
    "Value",
    "Param",
    "Compare",
    "CompareFields",
    "In",
    "Between",
    "StringOp",
    "Exists",
    "Quantified",
    "And",
    "Or",
    "Not",
    "TruePredicate",
    "FalsePredicate",
    "SortDescriptor",
    "DistinctDescriptor",
    "LimitDescriptor",
    "Descriptor",
]


def parse_query(query: str | Mapping[str, Any] | Query, args: Sequence[Any] = ()) -> Query:
    """Parse a query written either way.

    Args:
        query: RQL text, a MongoDB filter document, or an already parsed :class:`Query`
            (bound with ``args`` if it still has ``$n`` params).
        args: values for RQL's ``$0``, ``$1``, ... (datetime, Decimal, ObjectId, UUID,
            bytes, ..., or a list for ``IN $n``). Not allowed with a filter document.

    Returns:
        A bound :class:`Query`, ready for any compiler.

    Raises:
        QueryError: the query does not parse, or an argument is missing or does not fit.
    """
    if isinstance(query, Query):
        return query.bind(args) if query.params else query
    if isinstance(query, str):
        return parse_rql_query(query, args)
    if isinstance(query, Mapping):
        if args:
            raise QueryError("arguments ($0, $1, ...) are for RQL text; put the values in the filter "
                             "document directly")
        return Query(parse_mongo(query))
    raise QueryError(f"a query is RQL text or a MongoDB filter document, not {type(query).__name__}")
