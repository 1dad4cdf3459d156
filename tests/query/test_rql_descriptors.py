"""RQL's SORT, DISTINCT and LIMIT after the predicate: parsed as descriptors, in order; bad
ones are QueryErrors that point at the problem."""

from __future__ import annotations

import pytest

from tidesync.errors import QueryError
from tidesync.query import (Compare, DistinctDescriptor, LimitDescriptor, Path, SortDescriptor, TruePredicate,
                            Value, parse_query, parse_rql, parse_rql_query)


def test_descriptors_follow_the_predicate_in_the_order_written() -> None:
    q = parse_rql_query("status == 'open' SORT(priority DESC, title ASC) DISTINCT(site.city) LIMIT(5)")
    assert q.node == Compare("==", Path(("status",)), Value("open"))
    assert q.descriptors == (
        SortDescriptor(((Path(("priority",)), True), (Path(("title",)), False))),
        DistinctDescriptor((Path(("site", "city")),)),
        LimitDescriptor(5),
    )


@pytest.mark.parametrize("text, descending", [
    ("TRUEPREDICATE SORT(a)", False), ("TRUEPREDICATE sort(a asc)", False),
    ("TRUEPREDICATE SORT(a ASCENDING)", False), ("TRUEPREDICATE SORT(a DESC)", True),
    ("TRUEPREDICATE Sort(a descending)", True),
])
def test_sort_directions_and_case(text: str, descending: bool) -> None:
    q = parse_query(text)
    assert q.node == TruePredicate() and q.descriptors == (SortDescriptor(((Path(("a",)), descending),)),)


def test_fields_named_like_descriptors_still_work() -> None:
    q = parse_rql_query("sort == 1 AND limit > 2 SORT(sort DESC) LIMIT(3)")
    assert q.descriptors == (SortDescriptor(((Path(("sort",)), True),)), LimitDescriptor(3))
    assert parse_rql("distinct == $0", ["x"]) == Compare("==", Path(("distinct",)), Value("x"))


def test_bound_queries_keep_their_descriptors() -> None:
    template = parse_rql_query("priority > $0 LIMIT(2)", None)
    assert template.bind([3]).descriptors == (LimitDescriptor(2),)


@pytest.mark.parametrize("text, message", [
    ("a == 1 LIMIT(2) SORT(a)", "SORT after LIMIT is not supported"),
    ("a == 1 LIMIT(2) DISTINCT(a)", "DISTINCT after LIMIT is not supported"),
    ("a == 1 DISTINCT(a) DISTINCT(b)", "one DISTINCT per query"),
    ("a == 1 LIMIT(-1)", "expected a whole number >= 0"),
    ("a == 1 LIMIT(1.5)", "expected a whole number >= 0"),
    ("a == 1 LIMIT($0)", "expected a whole number >= 0"),
    ("a == 1 SORT()", "expected a key path"),
    ("a == 1 SORT(a.@count)", "SORT takes key paths"),
    ("a == 1 SORT(a DESC", "expected ')'"),
    ("a == 1 SORT(a, )", "expected a key path"),
    ("a == 1 LIMIT(2) b == 1", "expected AND, OR, SORT, DISTINCT, LIMIT or the end"),
])
def test_bad_descriptors_are_query_errors_at_their_position(text: str, message: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_rql_query(text, [1])
    assert message in str(info.value)
    assert info.value.position is not None


def test_parse_rql_returns_a_predicate_and_refuses_descriptors() -> None:
    with pytest.raises(QueryError, match="SORT, DISTINCT and LIMIT shape results"):
        parse_rql("a == 1 LIMIT(1)")
