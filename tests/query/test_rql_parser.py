"""Realm Query Language text → AST: every operator, literal and error position."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidesync.core.objectid import ObjectId
from tidesync.errors import QueryError
from tidesync.query import (And, Between, Compare, Count, FalsePredicate, In, Node, Not, Or, Param, Path,
                            Quantified, Size, StringOp, TruePredicate, Value, bind, parse_query, parse_rql,
                            to_rql)

P = Path.parse


def cmp(op: str, path: str, value: Any, ci: bool = False) -> Compare:
    return Compare(op, P(path), Value(value), ci)  # type: ignore[arg-type]


# -- comparisons -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "op"), [
    ("x == 1", "=="), ("x = 1", "=="), ("x != 1", "!="), ("x <> 1", "!="), ("x < 1", "<"), ("x <= 1", "<="),
    ("x =< 1", "<="), ("x > 1", ">"), ("x >= 1", ">="), ("x => 1", ">="),
])
def test_every_comparison_operator_parses(text: str, op: str) -> None:
    assert parse_rql(text) == cmp(op, "x", 1)


@pytest.mark.parametrize(("text", "expected"), [
    ("5 < x", cmp(">", "x", 5)), ("5 >= x", cmp("<=", "x", 5)), ("'a' == x", cmp("==", "x", "a")),
])
def test_a_value_on_the_left_is_flipped_to_the_right(text: str, expected: Node) -> None:
    assert parse_rql(text) == expected


@pytest.mark.parametrize(("text", "value"), [
    ("x == 42", 42), ("x == -7", -7), ("x == 1.5", 1.5), ("x == -0.25", -0.25), ("x == .5", 0.5),
    ("x == 1e3", 1000.0), ("x == 2.5E-1", 0.25), ("x == 'single'", "single"), ('x == "double"', "double"),
    ("x == true", True), ("x == FALSE", False), ("x == nil", None), ("x == NULL", None),
    ("x == 'it\\'s'", "it's"), ('x == "say \\"hi\\""', 'say "hi"'), ("x == 'a\\\\b'", "a\\b"),
    ("x == 'tab\\there'", "tab\there"), ("x == 'line\\nbreak'", "line\nbreak"), ("x == '\\u00e9'", "é"),
    ("x == 'ünïcödé'", "ünïcödé"), ("x == ''", ""),
    ("x == '\\ud83d\\ude00!'", "\U0001f600!"),   # a surrogate pair, as JSON writes it: one character
    ("x == 'a\\uD800\\uDC00'", "a\U00010000"),
])
def test_literals_parse_to_plain_values(text: str, value: Any) -> None:
    node = parse_rql(text)
    assert isinstance(node, Compare)
    assert node.right == Value(value)


def test_oid_and_uuid_literals_become_tagged_values() -> None:
    hexid = "507f1f77bcf86cd799439011"
    assert parse_rql(f"owner == oid({hexid})") == cmp("==", "owner", {"$oid": hexid})
    assert parse_rql(f"owner == oid('{hexid}')") == cmp("==", "owner", {"$oid": hexid})
    u = "123e4567-e89b-12d3-a456-426614174000"
    assert parse_rql(f"ref == uuid({u})") == cmp("==", "ref", {"$uuid": u})


def test_keywords_are_case_insensitive() -> None:
    assert parse_rql("a == 1 and b == 2 Or NOT c == 3") == parse_rql("a == 1 AND b == 2 OR NOT c == 3")
    assert parse_rql("name beginswith 'x'") == parse_rql("name BEGINSWITH 'x'")
    assert parse_rql("truepredicate") == TruePredicate()


# -- logic -------------------------------------------------------------------------------

def test_and_binds_tighter_than_or() -> None:
    assert parse_rql("a == 1 OR b == 2 AND c == 3") == Or((cmp("==", "a", 1), And((cmp("==", "b", 2), cmp("==", "c", 3)))))


def test_symbolic_logic_operators() -> None:
    assert parse_rql("a == 1 && b == 2 || !(c == 3)") == Or((
        And((cmp("==", "a", 1), cmp("==", "b", 2))), Not(cmp("==", "c", 3))))


def test_parentheses_group_and_chains_flatten() -> None:
    assert parse_rql("(a == 1 OR b == 2) AND c == 3 AND d == 4") == And((
        Or((cmp("==", "a", 1), cmp("==", "b", 2))), cmp("==", "c", 3), cmp("==", "d", 4)))
    assert parse_rql("a == 1 AND (b == 2 AND c == 3)") == And((cmp("==", "a", 1), And((cmp("==", "b", 2), cmp("==", "c", 3)))))


def test_not_applies_to_the_next_condition_only() -> None:
    assert parse_rql("NOT a == 1 AND b == 2") == And((Not(cmp("==", "a", 1)), cmp("==", "b", 2)))
    assert parse_rql("NOT NOT a == 1") == Not(Not(cmp("==", "a", 1)))


def test_true_and_false_predicates() -> None:
    assert parse_rql("TRUEPREDICATE") == TruePredicate()
    assert parse_rql("FALSEPREDICATE OR TRUEPREDICATE") == Or((FalsePredicate(), TruePredicate()))


# -- string operators and [c] ------------------------------------------------------------

@pytest.mark.parametrize("op", ["beginswith", "endswith", "contains", "like"])
def test_string_operators_with_and_without_case_folding(op: str) -> None:
    assert parse_rql(f"name {op.upper()} 'ab'") == StringOp(op, P("name"), Value("ab"))  # type: ignore[arg-type]
    assert parse_rql(f"name {op.upper()}[c] 'ab'") == StringOp(op, P("name"), Value("ab"), True)  # type: ignore[arg-type]


def test_case_insensitive_equality() -> None:
    assert parse_rql("name ==[c] 'Ann'") == cmp("==", "name", "Ann", ci=True)
    assert parse_rql("name !=[c] 'Ann'") == cmp("!=", "name", "Ann", ci=True)
    assert parse_rql("name ==[ c ] 'Ann'") == cmp("==", "name", "Ann", ci=True)


# -- IN, BETWEEN, @count, quantifiers, key paths ----------------------------------------

def test_in_with_a_literal_list() -> None:
    assert parse_rql("status IN {'open', 'new', nil}") == In(P("status"), Value(["open", "new", None]))
    assert parse_rql("status IN {}") == In(P("status"), Value([]))


def test_in_with_a_list_argument() -> None:
    assert parse_rql("priority IN $0", [(1, 2)]) == In(P("priority"), Value([1, 2]))
    assert parse_rql("priority IN $0", [{3}]) == In(P("priority"), Value([3]))


def test_in_list_items_can_be_arguments() -> None:
    assert parse_rql("priority IN {$0, 2, $1}", [1, 3]) == In(P("priority"), Value([1, 2, 3]))


def test_an_unbound_argument_inside_an_in_list_is_refused_with_its_position() -> None:
    with pytest.raises(QueryError, match="argument inside an IN list") as info:
        parse_rql("a IN {1, $0}", None)
    assert info.value.position == 9


def test_value_in_list_field_means_the_list_holds_it() -> None:
    assert parse_rql("'urgent' IN tags") == cmp("==", "tags", "urgent")


def test_between() -> None:
    assert parse_rql("priority BETWEEN {1, 3}") == Between(P("priority"), Value(1), Value(3))


def test_count_and_size() -> None:
    assert parse_rql("tags.@count > 2") == Compare(">", Count(P("tags")), Value(2))
    assert parse_rql("title.@size == 0") == Compare("==", Size(P("title")), Value(0))
    assert parse_rql("tags.@COUNT == 1") == Compare("==", Count(P("tags")), Value(1))


@pytest.mark.parametrize(("word", "quantifier"), [("ANY", "any"), ("SOME", "any"), ("ALL", "all"), ("NONE", "none")])
def test_quantifiers(word: str, quantifier: str) -> None:
    assert parse_rql(f"{word} tags == 'x'") == Quantified(quantifier, cmp("==", "tags", "x"))  # type: ignore[arg-type]
    assert parse_rql(f"{word} helpers.name BEGINSWITH 'A'") == Quantified(
        quantifier, StringOp("beginswith", P("helpers.name"), Value("A")))  # type: ignore[arg-type]


def test_key_paths_through_objects_and_links() -> None:
    assert parse_rql("site.city == 'Oslo'") == cmp("==", "site.city", "Oslo")
    assert parse_rql("technician.site.city == $0", ["Oslo"]) == cmp("==", "technician.site.city", "Oslo")


# -- arguments ---------------------------------------------------------------------------

def test_arguments_of_every_type_bind_to_plain_values() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    oid = ObjectId("65f0aa0000000000000000ff")
    ref = UUID("123e4567-e89b-12d3-a456-426614174000")
    node = parse_rql("a == $0 AND b == $1 AND c == $2 AND d == $3 AND e == $4 AND f == $5 AND g == $6 AND h == $7",
                     [when, Decimal("1.50"), oid, ref, b"\x00\x01", "s", 3, 2.5])
    assert isinstance(node, And)
    values = [n.right for n in node.items if isinstance(n, Compare)]
    assert values == [Value({"$date": 1714564800000000}), Value({"$decimal": "1.50"}),
                      Value({"$oid": "65f0aa0000000000000000ff"}), Value({"$uuid": str(ref)}),
                      Value({"$binary": "AAE="}), Value("s"), Value(3), Value(2.5)]


def test_an_argument_can_be_used_twice() -> None:
    assert parse_rql("a == $0 OR b == $0", ["x"]) == Or((cmp("==", "a", "x"), cmp("==", "b", "x")))


def test_without_args_params_stay_unbound_until_bind() -> None:
    node = parse_rql("status == $0", None)
    assert node == Compare("==", P("status"), Param(0))
    assert bind(node, ["open"]) == cmp("==", "status", "open")


def test_parse_query_keeps_the_text() -> None:
    q = parse_query("status == $0", ["open"])
    assert q.text == "status == $0"
    assert q.node == cmp("==", "status", "open")
    assert not q.params


# -- errors: message says what was expected, caret shows where ---------------------------

@pytest.mark.parametrize(("text", "args", "position", "fragment"), [
    ("", (), 0, "empty query"),
    ("status ==", (), 9, "expected a value after '=='"),
    ("status == 'open' AND", (), 20, "expected a key path or a value"),
    ("(a == 1", (), 7, "expected ')'"),
    ("a == 1)", (), 6, "expected AND, OR, SORT, DISTINCT, LIMIT or the end"),
    ("a == 'x", (), 5, "unterminated string"),
    ("a === 1", (), 4, "expected a value after '=='"),
    ("a == 1 b == 2", (), 7, "expected AND, OR, SORT, DISTINCT, LIMIT or the end"),
    ("a LIKE[x] 'x'", (), 6, "expected [c] (case-insensitive), [d] (diacritic-insensitive) or [cd]"),
    ("a.@median > 1", (), 2, "expected @count, @size, @min, @max, @sum, @avg, @keys, @values, @type or @links"),
    ("a == $", (), 5, "expected an argument number"),
    ("a == $1", ("x",), 5, "uses $1 but only 1 argument"),
    ("a == $0", (), 5, "no arguments were given"),
    ("a IN $0", ("x",), 5, "needs a list argument"),
    ("a == $0", ([1],), 5, "lists can only be used with IN"),
    ("a == $0", (datetime(2024, 1, 1),), 5, "naive datetime"),
    ("a == 'x\\q'", (), 7, "unknown escape"),
    ("a == '\\u12'", (), 6, "4 hex digits"),
    ("a == '\\ud800'", (), 5, "half of a UTF-16 surrogate pair"),
    ("a == 'x\\ude00\\ud83d'", (), 5, "half of a UTF-16 surrogate pair"),  # the halves reversed
    ("a == oid(123)", (), 9, "malformed oid"),
    ("a == uuid(nope)", (), 10, "malformed uuid"),
    ("a == 99999999999999999999", (), 5, "does not fit in 64 bits"),
    ("a == 12abc", (), 5, "malformed number"),
    ("a.@count == b", (), 0, "can only be compared with a value"),
    ("1 == 2", (), 0, "needs a key path"),
    ("a > nil", (), 2, "null can only be compared with == or !="),
    ("a > true", (), 2, "have no order"),
    ("a <[c] 'x'", (), 2, "[c] (case-insensitive) only applies"),
    ("a BEGINSWITH 5", (), 2, "needs a string"),
    ("a BETWEEN {1, 'x'}", (), 2, "bounds must be of one type"),
    ("a BETWEEN {1 2}", (), 13, "expected ','"),
    ("a IN {1, 2", (), 10, "expected '}'"),
    ("a.and == 1", (), 2, "is a keyword"),
    ("a ~ 1", (), 2, "unexpected character '~'"),
    ("a", (), 1, "expected a comparison operator"),
    ("tags.@count == 'x'", (), 12, "is a number"),
    ("ALL TRUEPREDICATE", (), 4, "expected a key path or a value"),
])
def test_malformed_queries_raise_with_position_and_expectation(text: str, args: tuple[Any, ...], position: int,
                                                               fragment: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_query(text, args)
    err = info.value
    assert fragment in str(err)
    assert err.position == position, str(err)
    assert err.query == text
    caret_line = str(err).splitlines()[-1]
    assert caret_line == "  " + " " * position + "^"


def test_a_non_string_query_is_refused() -> None:
    with pytest.raises(QueryError, match="not int"):
        parse_query(42)  # type: ignore[arg-type]


# -- formatting back to text -----------------------------------------------------------

def test_to_rql_passes_values_without_literals_as_arguments() -> None:
    when = datetime(2024, 5, 1, tzinfo=timezone.utc)
    node = parse_rql("due < $0 AND price > $1 AND owner == oid(65f0aa0000000000000000ff)", [when, Decimal("2.5")])
    text, args = to_rql(node)
    # a datetime has a literal (Realm's timestamp form, UTC); a Decimal has none
    assert text == "due < 2024-05-01@00:00:00 AND price > $0 AND owner == oid(65f0aa0000000000000000ff)"
    assert args == [Decimal("2.5")]
    assert parse_rql(text, args) == node


@pytest.mark.parametrize("text, plain", [
    ("due > 2024-01-10@12:30:00", {"$date": 1704889800000000}),
    ("due > 2024-01-10T12:30:00", {"$date": 1704889800000000}),
    ("due > 2024-01-10@12:30:00:5000", {"$date": 1704889800000005}),
    ("due > T1704889800:0", {"$date": 1704889800000000}),
    ("due > T-5:-1000", {"$date": -5000001}),
    ('blob == B64"YWJj"', {"$binary": "YWJj"}),
    ("estimate == inf", {"$float": "inf"}),
    ("estimate > -Infinity", {"$float": "-inf"}),
    ("estimate == NaN", {"$float": "nan"}),
])
def test_realm_timestamp_base64_and_special_float_literals(text: str, plain: Any) -> None:
    node = parse_rql(text)
    assert node.right == Value(plain)  # type: ignore[union-attr]
    formatted, args = to_rql(node)
    assert args == [] and parse_rql(formatted) == node


@pytest.mark.parametrize("text, message", [
    ("due == 2024-13-10@12:30:00", "month must be in 1..12"),
    ("due == 2024-01-10@12:30:00:1", "nanoseconds in whole thousands"),
    ("due > T5:-1000", "the same sign"),
    ('blob == B64"YWJ"', "expected base64 text"),
])
def test_malformed_literals_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_rql(text)


def test_words_that_only_begin_like_a_literal_stay_field_names() -> None:
    assert parse_rql("info == 1").left == Path(("info",))  # type: ignore[union-attr]
    assert parse_rql("nan_count == 1").left == Path(("nan_count",))  # type: ignore[union-attr]
    assert parse_rql("B64 == 'x'").left == Path(("B64",))  # type: ignore[union-attr]
    assert parse_rql("T1 == 2").left == Path(("T1",))  # type: ignore[union-attr]


_names = st.sampled_from(["a", "b", "site", "city", "tags", "x_1", "Ünï"])
_paths = st.lists(_names, min_size=1, max_size=3).map(lambda ns: Path(tuple(ns)))
_values = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=5).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
                    st.booleans(), st.none(),
                    st.sampled_from([{"$oid": "65f0aa0000000000000000ff"},
                                     {"$uuid": "123e4567-e89b-12d3-a456-426614174000"}]))
_ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])


def _try(make: Any) -> Any:
    try:
        return make()
    except QueryError:
        return None


_leaves = st.one_of(
    st.builds(lambda op, p, v, ci: _try(lambda: Compare(op, p, Value(v), ci)), _ops, _paths, _values, st.booleans()),
    st.builds(lambda p, vs: _try(lambda: In(p, Value(vs))), _paths, st.lists(_values, max_size=3)),
    st.builds(lambda p, a, b: _try(lambda: Between(p, Value(a), Value(b))), _paths, st.integers(), st.integers()),
    st.builds(lambda op, p, v, ci: StringOp(op, p, Value(v), ci),
              st.sampled_from(["beginswith", "endswith", "contains", "like"]), _paths, st.text(max_size=4).filter(
                  lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)), st.booleans()),
    st.builds(lambda p, n: Compare("==", Count(p), Value(n)), _paths, st.integers(0, 5)),
).filter(lambda n: n is not None)
_nodes = st.recursive(
    st.one_of(_leaves, st.builds(Quantified, st.sampled_from(["any", "all", "none"]), _leaves),
              st.just(TruePredicate()), st.just(FalsePredicate())),
    lambda inner: st.one_of(st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
                            st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
                            inner.map(Not)), max_leaves=5)


@settings(max_examples=80, deadline=None)
@given(_nodes)
def test_to_rql_round_trips_through_the_parser(node: Node) -> None:
    text, args = to_rql(node)
    assert parse_rql(text, args) == node
