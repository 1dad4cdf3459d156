"""notes.@keys and notes.@values: each key or each value of a dictionary, tested like the
elements of a list (ANY by default, ALL, NONE). RQL text, the AST and its JSON form, SQL and
the Python predicate agree; what cannot be asked is a QueryError that says why."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from query_harness import SCHEMA, Store

import tidesync
from tidesync.errors import QueryError
from tidesync.query import (Compare, DictPart, Path, Quantified, StringOp, Value, node_from_json, node_to_json,
                            parse_query, to_mongo, to_rql)

TASKS = [
    {"_id": 1, "notes": {"a": "x", "b": "y"}},
    {"_id": 2, "notes": {}},
    {"_id": 3},                                        # no dictionary: no members
    {"_id": 4, "notes": {"ab": "Y", "c": None}},
    {"_id": 5, "notes": None},
]


@pytest.fixture
def store(store: Store) -> Store:
    """The query harness's empty store (conftest.py), filled with this module's documents."""
    store.put_all("Task", TASKS)
    return store


@pytest.mark.parametrize("text, expected", [
    ("notes.@keys == 'a'", [1]),
    ("notes.@keys != 'a'", [1, 4]),                      # some key is not 'a'
    ("notes.@keys BEGINSWITH 'a'", [1, 4]),
    ("notes.@keys LIKE '?b'", [4]),
    ("notes.@keys IN {'c', 'zz'}", [4]),
    ("notes.@keys ==[c] 'AB'", [4]),
    ("notes.@values == 'y'", [1]),
    ("notes.@values ==[c] 'y'", [1, 4]),
    ("notes.@values == nil", [4]),
    ("notes.@values IN {'x', nil}", [1, 4]),
    ("notes.@values > 'x'", [1]),
    ("ALL notes.@values != nil", [1, 2, 3, 5]),          # vacuously true without members
    ("ALL notes.@keys BEGINSWITH 'a'", [2, 3, 5]),
    ("NONE notes.@keys == 'c'", [1, 2, 3, 5]),
    ("NOT (notes.@keys == 'a') AND notes.@count > 0", [4]),
    ("notes.@keys == 'a' OR notes.@values == nil", [1, 4]),
])
def test_each_member_test_selects_the_same_documents_both_ways(store: Store, text: str, expected: list[int]) -> None:
    assert store.both(text, schema=SCHEMA) == expected
    assert store.both(text) == expected                 # the server's schema-less compilers too


def test_a_tagged_value_of_unknown_type_is_not_a_dictionary() -> None:
    s = Store()
    try:
        when = {"$date": 1_700_000_000_000_000}
        s.put_all("Task", [{"_id": 1, "extra": when}, {"_id": 2, "extra": {"$x": 1, "k": 2}},
                           {"_id": 3, "extra": {"k": 2}}, {"_id": 4, "extra": [{"k": 2}]}])
        assert s.both("extra.@keys == '$date'", schema=SCHEMA) == []
        assert s.both("extra.@values == 2", schema=SCHEMA) == [3]         # a list is no dictionary either
        assert s.both("ALL extra.@values == 2", schema=SCHEMA) == [1, 2, 3, 4]
        assert s.both("extra.@values == 2") == [3]
    finally:
        s.db.close()


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-3, 3), st.sampled_from(["a", "b", "B"]),
                    st.just({"$date": 5}), st.lists(st.integers(0, 2), max_size=2), st.just({"k": 1}))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "ab", "$t"]), _VALUES, max_size=3),
                          _VALUES), min_size=1, max_size=6),
       st.sampled_from(["notes.@keys == 'a'", "notes.@keys BEGINSWITH 'a'", "notes.@values == 1",
                        "notes.@values > 0", "notes.@values == 'b'", "notes.@values ==[c] 'b'",
                        "notes.@values == nil", "notes.@values != 1", "ALL notes.@values > 0",
                        "NONE notes.@values == true", "notes.@values IN {1, 'a', nil}",
                        "notes.@values CONTAINS 'b'"]))
def test_sql_and_predicate_agree_on_random_values(notes: list[Any], text: str) -> None:
    s = Store()
    try:
        s.put_all("Task", [{"_id": i, "notes": n} for i, n in enumerate(notes)])
        s.both(text)                                     # schema-less: any value, the two must agree
    finally:
        s.db.close()


def test_the_ast_json_form_and_text_round_trip() -> None:
    node = parse_query("notes.@keys BEGINSWITH[c] $0 AND ALL notes.@values != nil", ["a"]).node
    keys = DictPart(Path(("notes",)), "keys")
    assert node.items[0] == StringOp("beginswith", keys, Value("a"), True)
    assert node.items[1] == Quantified("all", Compare("!=", DictPart(Path(("notes",))), Value(None)))
    assert node_from_json(node_to_json(node)) == node
    assert node_to_json(node)["items"][0]["left"] == {"keys": ["notes"]}
    text, args = to_rql(node)
    assert text == 'notes.@keys BEGINSWITH[c] "a" AND ALL notes.@values != nil' and not args
    assert parse_query(text).node == node


@pytest.mark.parametrize("text, says", [
    ("notes.@keys == 1", "the keys of a dictionary are strings"),
    ("notes.@keys.x == 'a'", "@keys ends a key path"),
    ("notes.@values.@count > 1", "@values ends a key path"),
    ("notes.@keys == notes.@values", "can only be compared with a value"),
    ("notes.@vals == 1", "unsupported @vals"),
])
def test_malformed_member_tests_say_why(text: str, says: str) -> None:
    with pytest.raises(QueryError, match=says):
        parse_query(text)


@pytest.mark.parametrize("text, says", [
    ("tags.@keys == 'a'", "@keys needs a dictionary; tags is a list of str"),
    ("title.@values == 'a'", "@values needs a dictionary; title is a str field"),
    ("notes.@values == 1", "cannot compare notes.@values \\(str\\) with a number"),
    ("notes.@values > 1", "cannot compare"),
])
def test_what_the_schema_rules_out_is_a_query_error_both_ways(store: Store, text: str, says: str) -> None:
    with pytest.raises(QueryError, match=says):
        store.sql(parse_query(text), "Task", SCHEMA)
    with pytest.raises(QueryError, match=says):
        store.predicate(parse_query(text), "Task", SCHEMA)


def test_the_mongodb_translation_refuses_rather_than_change_the_meaning() -> None:
    for text in ("notes.@keys == 'a'", "ALL notes.@values == 'x'", "NONE notes.@keys == 'a'"):
        with pytest.raises(QueryError, match="cannot be translated to a MongoDB filter"):
            to_mongo(parse_query(text).node, "Task", SCHEMA)


def test_live_results_of_a_real_file_filter_by_keys_and_values(tmp_path) -> None:
    from tests.models import WorkOrder

    with tidesync.open(tmp_path / "d.db", schema=[WorkOrder]) as db:
        with db.write():
            db.create(WorkOrder, title="a", notes={"gate": "blue", "floor": "2"})
            db.create(WorkOrder, title="b", notes={"gate": "red"})
            db.create(WorkOrder, title="c")
        blue = db.objects(WorkOrder).filter("notes.@values == $0", "blue")
        assert [o.title for o in blue] == ["a"]
        with_floor = db.objects(WorkOrder).filter("notes.@keys == 'floor'")
        assert [o.title for o in with_floor] == ["a"]
        assert sorted(o.title for o in db.objects(WorkOrder).filter("ALL notes.@values != 'red'")) == ["a", "c"]
        with db.write():
            db.objects(WorkOrder).filter("title == 'b'").first().notes["gate"] = "blue"
            del db.objects(WorkOrder).filter("title == 'a'").first().notes["floor"]
        assert sorted(o.title for o in blue) == ["a", "b"] and len(with_floor) == 0


def test_a_flexible_subscription_may_test_members(tmp_path) -> None:
    from tidesync.protocol.messages import SubscriptionQuery
    from tidesync.server.flexible import FlexibleConfig, SubscriptionInvalid, compile_set

    config = FlexibleConfig(queryable_fields=("notes",))
    (compiled,) = compile_set([SubscriptionQuery("q", "WorkOrder", "notes.@keys == 'gate'")], config)
    assert compiled.predicate({"notes": {"gate": "x"}}) and not compiled.predicate({"notes": {"x": "gate"}})
    assert not compiled.predicate({"notes": {"$date": 1}})
    with pytest.raises(SubscriptionInvalid, match="field 'extra' is not queryable"):
        compile_set([SubscriptionQuery("q", "WorkOrder", "extra.@values == 1")], config)
