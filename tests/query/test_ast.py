"""Query nodes: constructors validate, binding replaces params, JSON round-trips."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from tidesync.errors import QueryError
from tidesync.query import (And, Between, Compare, Count, Exists, FalsePredicate, In, Not, Or, Param, Path,
                            Quantified, Query, Size, StringOp, TruePredicate, Value, bind, node_from_json,
                            node_to_json, parse_query)


def test_paths_parse_from_dotted_text_and_print_back() -> None:
    assert Path.parse("site.city") == Path(("site", "city"))
    assert str(Path(("site", "city"))) == "site.city"
    assert Path(["a", "b"]).names == ("a", "b")


@pytest.mark.parametrize("names", [(), ("",), ("a.b",), ("$where",), ('a"b',), ("a\x00",), ("a\n",)])
def test_unsafe_or_empty_field_names_are_refused(names: tuple[str, ...]) -> None:
    with pytest.raises(QueryError):
        Path(names)


def test_a_path_is_not_a_bare_string() -> None:
    with pytest.raises(QueryError, match="sequence of field names"):
        Path("status")  # type: ignore[arg-type]


def test_values_compare_and_hash_by_canonical_json() -> None:
    assert Value({"$date": 1}) == Value({"$date": 1})
    assert hash(Value([1, "a"])) == hash(Value([1, "a"]))
    assert Value(1) != Value(1.0)
    assert Value(True) != Value(1)
    assert len({Compare("==", Path(("a",)), Value(1)), Compare("==", Path(("a",)), Value(1))}) == 1


@pytest.mark.parametrize(("python", "plain"), [
    (datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc), {"$date": 1_000_000}),
    (Decimal("1.50"), {"$decimal": "1.50"}),
    (b"\x01", {"$binary": "AQ=="}),
    (float("inf"), {"$float": "inf"}),
    ((1, 2), [1, 2]),
])
def test_value_of_python_objects(python: Any, plain: Any) -> None:
    assert Value.of(python).plain == plain


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Value({"city": "Oslo"}), "embedded object"),
    (lambda: Value([[1]]), "only allowed after IN"),
    (lambda: Value(float("nan")), "non-finite floats"),
    (lambda: Value(2**64), "64 bits"),
    (lambda: Value({"$date": "x"}), "malformed"),
    (lambda: Value({"$decimal": "NaN"}), "not comparable"),
    (lambda: Value.of(datetime(2024, 1, 1)), "naive datetime"),
    (lambda: Value.of(object()), "cannot use"),
    (lambda: Compare("~", Path(("a",)), Value(1)), "unknown comparison"),  # type: ignore[arg-type]
    (lambda: Compare("==", "a", Value(1)), "expected a key path"),  # type: ignore[arg-type]
    (lambda: Compare("==", Path(("a",)), 1), "expected a Value or Param"),  # type: ignore[arg-type]
    (lambda: Compare("<", Path(("a",)), Value(None)), "null can only"),
    (lambda: Compare("<", Path(("a",)), Value({"$binary": ""})), "have no order"),
    (lambda: Compare("==", Path(("a",)), Value([1])), "only be used with IN"),
    (lambda: Compare("==", Path(("a",)), Value(1), True), "needs a string"),
    (lambda: Compare("==", Count(Path(("a",))), Value("x")), "is a number"),
    (lambda: In(Path(("a",)), Value(1)), "needs a list"),
    (lambda: Between(Path(("a",)), Value(1), Value("z")), "one type"),
    (lambda: StringOp("matches", Path(("a",)), Value("x")), "unknown string operator"),  # type: ignore[arg-type]
    (lambda: StringOp("like", Count(Path(("a",))), Value("x")), "string operators need"),  # type: ignore[arg-type]
    (lambda: Quantified("most", Compare("==", Path(("a",)), Value(1))), "unknown quantifier"),  # type: ignore[arg-type]
    (lambda: Quantified("all", TruePredicate()), "needs a comparison"),  # type: ignore[arg-type]
    (lambda: And((1,)), "expected a predicate"),  # type: ignore[arg-type]
    (lambda: Not("x"), "needs a predicate"),  # type: ignore[arg-type]
    (lambda: Param(-1), "index must be"),
    (lambda: Query("status"), "holds a predicate"),  # type: ignore[arg-type]
])
def test_constructors_refuse_invalid_nodes(make: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        make()


def test_bind_replaces_every_param() -> None:
    node = And((Compare("==", Path(("a",)), Param(0)), In(Path(("b",)), Param(1)),
                Between(Path(("c",)), Param(0), Param(2)),
                Quantified("all", StringOp("contains", Path(("d",)), Param(3))), Not(Compare("!=", Path(("e",)), Param(0)))))
    bound = bind(node, [1, [2, 3], 4, "x"])
    assert bound == And((Compare("==", Path(("a",)), Value(1)), In(Path(("b",)), Value([2, 3])),
                         Between(Path(("c",)), Value(1), Value(4)),
                         Quantified("all", StringOp("contains", Path(("d",)), Value("x"))),
                         Not(Compare("!=", Path(("e",)), Value(1)))))


def test_bind_checks_that_arguments_fit() -> None:
    with pytest.raises(QueryError, match="but only 1 argument"):
        bind(Compare("==", Path(("a",)), Param(1)), [1])
    with pytest.raises(QueryError, match="have no order"):
        bind(Compare("<", Path(("a",)), Param(0)), [True])


def test_query_params_and_bind() -> None:
    from tidesync.query import parse_rql

    q = Query(parse_rql("a == $0 AND b IN $1", None))
    assert q.params == frozenset({0, 1})
    assert q.bind([1, [2]]).params == frozenset()
    assert parse_query(q, [1, [2]]).node == parse_query("a == $0 AND b IN $1", [1, [2]]).node


def test_count_and_size_are_distinct_spellings_of_one_test() -> None:
    assert isinstance(Size(Path(("a",))), Count)
    assert Size(Path(("a",))) != Count(Path(("a",)))
    assert str(Size(Path(("a",)))) == "a.@size"


def test_queries_round_trip_through_json() -> None:
    import json

    q = parse_query("(a == $0 OR b.@count > 2) AND NOT c.@size IN {1} AND ALL d BEGINSWITH[c] 'x' "
                    "AND e BETWEEN {1, 2} AND TRUEPREDICATE AND NOT FALSEPREDICATE",
                    [datetime(2024, 1, 1, tzinfo=timezone.utc)])
    data = json.loads(json.dumps(q.to_json()))
    assert Query.from_json(data) == q
    assert Query.from_json(data).text == q.text
    exists = Exists(Path(("x",)))
    assert node_from_json(node_to_json(exists)) == exists
    unbound = Compare("==", Path(("a",)), Param(2))
    assert node_from_json(node_to_json(unbound)) == unbound


@pytest.mark.parametrize("data", [None, {}, {"kind": "nope"}, {"kind": "compare", "op": "==", "left": {"path": ["a"]}},
                                  {"kind": "compare", "op": "==", "left": {"oops": 1}, "right": {"value": 1}}])
def test_malformed_json_queries_are_refused(data: Any) -> None:
    with pytest.raises(QueryError):
        Query.from_json({"node": data})


def test_empty_and_or_or_are_true_and_false() -> None:
    assert And(()) != Or(())
    assert isinstance(TruePredicate(), TruePredicate) and isinstance(FalsePredicate(), FalsePredicate)
