"""to_predicate: the Python matcher the server uses for subscriptions."""

from __future__ import annotations

from typing import Any

import pytest
from query_harness import SCHEMA

from tidesync.core.values import canonical_json
from tidesync.errors import QueryError
from tidesync.query import parse_query, parse_rql, to_predicate

TECHS = {"ann": {"_id": "ann", "name": "Ann", "mentor": "bob"}, "bob": {"_id": "bob", "name": "Bob"}}


def resolve(collection: str, pk: Any) -> dict[str, Any] | None:
    assert collection == "Technician"
    return TECHS.get(pk) if isinstance(pk, str) else None


def match(text: str, body: dict[str, Any], *args: Any, schema: Any = SCHEMA) -> bool:
    return to_predicate(parse_query(text, args), "Task", schema, resolve_link=resolve)(body)


def test_matches_plain_form_bodies() -> None:
    body = {"_id": 1, "status": "open", "priority": 2, "due": {"$date": 5}, "tags": ["a", "b"]}
    assert match("status == 'open' AND priority >= 2", body)
    assert not match("status == 'closed'", body)
    assert match("tags == 'b' AND tags.@count == 2", body)


def test_follows_links_through_the_resolver() -> None:
    body = {"_id": 1, "technician": "ann", "helpers": ["bob", "nobody"]}
    assert match("technician.name == 'Ann'", body)
    assert match("technician.mentor.name == 'Bob'", body)
    assert match("helpers.name == 'Bob'", body)
    assert match("helpers.name == nil", body)  # "nobody" does not resolve: missing
    assert not match("ALL helpers.name == 'Bob'", body)


def test_resolver_is_asked_with_the_target_collection_and_plain_key() -> None:
    calls: list[tuple[str, str]] = []

    def spy(collection: str, pk: Any) -> None:
        calls.append((collection, canonical_json(pk)))
        return None

    to_predicate(parse_query("technician.name == 'x'"), "Task", SCHEMA, resolve_link=spy)(
        {"_id": 1, "technician": "ann"})
    assert calls == [("Technician", '"ann"')]


def test_only_primary_key_shaped_link_values_are_resolved() -> None:
    seen: list[Any] = []

    def spy(collection: str, pk: Any) -> None:
        seen.append(pk)
        return None

    pred = to_predicate(parse_query("technician.name == nil"), "Task", SCHEMA, resolve_link=spy)
    for value in ["a", 1, {"$oid": "65f0aa0000000000000000ff"}, True, 1.5, None, [1], {"x": 1}]:
        assert pred({"_id": 1, "technician": value})
    assert seen == ["a", 1, {"$oid": "65f0aa0000000000000000ff"}]


def test_a_link_path_needs_a_resolver() -> None:
    with pytest.raises(QueryError, match="resolve_link"):
        to_predicate(parse_query("technician.name == 'x'"), "Task", SCHEMA)
    # comparing the link itself (its primary key) needs none
    assert to_predicate(parse_query("technician == 'ann'"), "Task", SCHEMA)({"technician": "ann"})


def test_without_a_schema_links_are_just_embedded_values() -> None:
    pred = to_predicate(parse_query("technician.name == 'Ann'"))
    assert pred({"technician": {"name": "Ann"}})
    assert not pred({"technician": "ann"})


def test_unbound_params_and_bad_fields_are_refused_when_compiling() -> None:
    with pytest.raises(QueryError, match="unbound"):
        to_predicate(parse_rql("a == $0", None))
    with pytest.raises(QueryError, match="no field"):
        to_predicate(parse_query("nope == 1"), "Task", SCHEMA)
    with pytest.raises(QueryError, match="null can only"):
        parse_query("due > $0", [None])


class _Text(str):
    pass


ODD_VALUES: list[Any] = ["x", "X", "", _Text("x"), None, True, False, 0, 1.5, ["x"], ["y", "x"], [], [["x"]],
                         {"x": 1}, {"$date": 5}, {"$decimal": "1"}]


@pytest.mark.parametrize("op", ["==", "!=", "==[c]", ">", "<="])
@pytest.mark.parametrize(("schema", "field", "fans"), [(None, "status", "any"), (SCHEMA, "status", "no"),
                                                       (SCHEMA, "tags", "lists"), (SCHEMA, "extra", "any")])
def test_one_key_string_comparisons_agree_with_compare(op: str, schema: Any, field: str, fans: str) -> None:
    """The shortcut for a top-level key compared with a string gives what compare() gives
    on every value the key may hold, fanning out over a list as the general path does (a
    field of unknown or mixed kind: a list fans out; a list field: only a list has values)."""
    from tidesync.query.semantics import MISSING, compare

    ci = op.endswith("[c]")
    bare = op.removesuffix("[c]")
    for value in [*ODD_VALUES, MISSING]:
        body: dict[str, Any] = {"_id": 1} if value is MISSING else {"_id": 1, field: value}
        got = to_predicate(parse_query(f"{field} {op} $0", ["x"]), "Task", schema)(body)
        if fans == "no":
            items = [value]
        elif isinstance(value, list):
            items = value
        else:
            items = [value] if fans == "any" else []
        expected = any(compare(v, bare, "x", ci) for v in items)
        assert got is expected, (field, op, value)
