"""compile_sql on a real SQLite database of plain-form JSON bodies.

Each query runs through ``compile_sql`` inside the store's outer query and through
``to_predicate``; the two must agree and select the expected ``_id`` list. Unless a test
says otherwise it runs with the schema and, where the query does not follow links,
without it as well.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from query_harness import SCHEMA, Store

from tidesync.core.objectid import ObjectId
from tidesync.core.values import datetime_to_micros
from tidesync.errors import QueryError
from tidesync.query import compile_order, compile_sql, parse_query, parse_rql

JAN = datetime(2024, 1, 1, tzinfo=timezone.utc)
JUN = datetime(2024, 6, 1, tzinfo=timezone.utc)
OID1 = ObjectId("65f0aa0000000000000000ff")
OID2 = ObjectId("000000000000000000000001")
UUID1 = UUID("123e4567-e89b-12d3-a456-426614174000")
ODD = "çé'\"\\ \u2028"  # a technician id with quotes, backslash and non-ASCII


def date(d: datetime) -> dict[str, int]:
    return {"$date": datetime_to_micros(d)}


TECHNICIANS = [
    {"_id": "ann", "name": "Ann", "level": 3, "site": {"city": "Oslo"}, "mentor": "bob"},
    {"_id": "bob", "name": "Bob", "level": 5, "site": {"city": "Bergen"}, "mentor": None},
    {"_id": ODD, "name": "Odd", "level": 1},
]
DELETED = {"_id": "del", "name": "Deleted", "level": 9}

TASKS: list[dict[str, Any]] = [
    {"_id": 1, "title": "Fix pump", "status": "open", "priority": 1, "estimate": 1.5,
     "price": {"$decimal": "10.50"}, "done": False, "due": date(JAN), "ref": {"$uuid": str(UUID1)},
     "owner": {"$oid": str(OID1)}, "blob": {"$binary": "YWJj"}, "tags": ["urgent", "pump"], "scores": [1, 5],
     "labels": ["a"], "site": {"city": "Oslo", "zip": "0150"}, "technician": "ann", "helpers": ["bob"],
     "notes": {"a": "x"}, "visits": [{"city": "Oslo"}], "extra": 5, "hits": 3},
    {"_id": 2, "title": "Check valve", "status": "closed", "priority": 3, "estimate": {"$float": "inf"},
     "price": {"$decimal": "2.25"}, "done": True, "due": date(JUN), "owner": {"$oid": str(OID2)},
     "tags": [], "scores": [], "labels": [], "site": {"city": "Bergen"}, "technician": "bob",
     "helpers": ["ann", "bob"], "notes": {}, "visits": [], "extra": "five", "hits": 0},
    {"_id": 3, "title": "Replace filter [x]", "status": "open", "priority": 2, "estimate": None, "price": None,
     "done": False, "due": None, "tags": ["Pump"], "scores": [10], "labels": ["a", "b"], "site": None,
     "technician": None, "helpers": [], "notes": {"a": None, "b": "y"}, "visits": [{"city": "Bergen"}],
     "extra": None, "hits": 1},
    {"_id": 4, "title": "50% off_sale", "status": "OPEN", "priority": 5, "estimate": {"$float": "-inf"},
     "done": False, "tags": ["urgent"], "scores": [3], "labels": [], "technician": "del", "helpers": [ODD],
     "notes": {}, "visits": [], "extra": [1, 2], "hits": 2},
    {"_id": 5, "title": "it's", "status": "open", "priority": 4, "done": False},
    {"_id": 6, "title": "Odd job", "status": "new", "priority": 2, "estimate": {"$float": "nan"},
     "price": {"$decimal": "1E+1"}, "done": True, "technician": ODD, "helpers": ["t9"], "extra": {"x": 1},
     "tags": ["a*b", "a?b"], "hits": 0},
]


@pytest.fixture
def tasks(store: Store) -> Store:
    store.put_all("Technician", TECHNICIANS)
    store.put("Technician", DELETED, live=False)
    store.put_all("Task", TASKS)
    return store


def check(store: Store, text: Any, expected: list[Any], *args: Any, schemaless: bool = True) -> None:
    assert store.both(text, *args, schema=SCHEMA) == expected
    if schemaless:
        assert store.both(text, *args, schema=None) == expected


# -- scalars -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("status == 'open'", [1, 3, 5]),
    ("status = 'open'", [1, 3, 5]),
    ("status != 'open'", [2, 4, 6]),
    ("status ==[c] 'open'", [1, 3, 4, 5]),
    ("status !=[c] 'OPEN'", [2, 6]),
    ("priority > 2", [2, 4, 5]),
    ("priority >= 2", [2, 3, 4, 5, 6]),
    ("priority < 2", [1]),
    ("priority <= 2", [1, 3, 6]),
    ("priority == 2.0", [3, 6]),
    ("priority BETWEEN {2, 4}", [2, 3, 5, 6]),
    ("priority IN {1, 5, 7}", [1, 4]),
    ("status IN {'new', 'closed'}", [2, 6]),
    ("title > 'O'", [3, 5, 6]),
    ("title < 'C'", [4]),
    ("done == true", [2, 6]),
    ("done == false", [1, 3, 4, 5]),
    ("done != true", [1, 3, 4, 5]),
    ("hits == 0", [2, 6]),
    ("_id IN {2, 4}", [2, 4]),
    ("TRUEPREDICATE", [1, 2, 3, 4, 5, 6]),
    ("FALSEPREDICATE", []),
    ("status == 'open' AND priority > 1", [3, 5]),
    ("status == 'new' OR priority == 1", [1, 6]),
    ("NOT status == 'open'", [2, 4, 6]),
    ("NOT (status == 'open' OR done == true)", [4]),
])
def test_scalar_comparisons(tasks: Store, text: str, expected: list[int]) -> None:
    check(tasks, text, expected)


# -- null and missing (Realm: == nil is true for null and for missing) --------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("estimate == nil", [3, 5]),
    ("estimate != nil", [1, 2, 4, 6]),
    ("price == nil", [3, 4, 5]),
    ("due == nil", [3, 4, 5, 6]),
    ("due != nil", [1, 2]),
    ("site == nil", [3, 4, 5, 6]),
    ("site.city == nil", [3, 4, 5, 6]),
    ("site.zip == nil", [2, 3, 4, 5, 6]),
    ("status != nil", [1, 2, 3, 4, 5, 6]),
    ("extra == nil", [3, 5]),
    ("priority IN {nil, 1}", [1]),
    ("estimate IN {nil, 1.5}", [1, 3, 5]),
    ("site.zip != '0150'", [2, 3, 4, 5, 6]),
])
def test_null_and_missing(tasks: Store, text: str, expected: list[int]) -> None:
    check(tasks, text, expected)


# -- typed values ------------------------------------------------------------------------

def test_datetimes_compare_by_their_micros(tasks: Store) -> None:
    check(tasks, "due < $0", [1], JUN)
    check(tasks, "due >= $0", [1, 2], JAN)
    check(tasks, "due == $0", [2], JUN)
    check(tasks, "due != $0", [1, 3, 4, 5, 6], JUN)
    check(tasks, "due BETWEEN {$0, $1}", [1, 2], JAN, JUN)


def test_objectids_and_uuids(tasks: Store) -> None:
    check(tasks, "owner == $0", [1], OID1)
    check(tasks, f"owner == oid({OID1})", [1])
    check(tasks, "owner < $0", [2], OID1)  # byte order: 00..01 < 65f0..
    check(tasks, "ref == $0", [1], UUID1)
    check(tasks, f"ref != uuid({UUID1})", [2, 3, 4, 5, 6])


def test_decimals_compare_numerically(tasks: Store) -> None:
    check(tasks, "price > $0", [1], Decimal("10"))
    check(tasks, "price == 10", [6])  # 1E+1
    check(tasks, "price < 3", [2])
    check(tasks, "price == $0", [1], Decimal("10.5"))
    check(tasks, "price BETWEEN {2, 10}", [2, 6])


def test_bytes_compare_for_equality(tasks: Store) -> None:
    check(tasks, "blob == $0", [1], b"abc")
    check(tasks, "blob != $0", [2, 3, 4, 5, 6], b"abc")


def test_float_infinities_and_nan(tasks: Store) -> None:
    check(tasks, "estimate > 1", [1, 2])
    check(tasks, "estimate < 1", [4])  # -inf; nan is never ordered
    check(tasks, "estimate == $0", [2], float("inf"))
    check(tasks, "estimate < $0", [1, 4], float("inf"))
    check(tasks, "estimate == $0", [6], float("nan"))
    check(tasks, "estimate != $0", [1, 2, 3, 4, 5], float("nan"))
    check(tasks, "estimate >= $0", [1, 2, 4], float("-inf"))


def test_a_mixed_field_matches_only_values_of_the_arguments_type(tasks: Store) -> None:
    check(tasks, "extra == 5", [1])
    check(tasks, "extra > 1", [1, 4])  # 5, and the list [1, 2] fans out to 2
    check(tasks, "extra == 'five'", [2])
    check(tasks, "extra > 'a'", [2])
    check(tasks, "extra.x == 1", [6])
    check(tasks, "extra != 5", [2, 3, 4, 5, 6])


def test_ints_and_floats_are_never_confused_with_bools_or_strings(store: Store) -> None:
    store.put_all("Task", [{"_id": 1, "extra": True}, {"_id": 2, "extra": 1}, {"_id": 3, "extra": "1"},
                           {"_id": 4, "extra": 1.0}, {"_id": 5, "extra": {"$decimal": "1.00"}}])
    check(store, "extra == 1", [2, 4, 5])
    check(store, "extra == true", [1])
    check(store, "extra == '1'", [3])
    check(store, "extra >= 0", [2, 4, 5])
    check(store, "extra < 'z'", [3])


# -- strings -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("title BEGINSWITH 'Fix'", [1]),
    ("title BEGINSWITH 'fix'", []),
    ("title BEGINSWITH[c] 'fix'", [1]),
    ("title ENDSWITH 'valve'", [2]),
    ("title ENDSWITH[c] 'JOB'", [6]),
    ("title CONTAINS 'a'", [2, 3, 4]),
    ("title CONTAINS[c] 'F'", [1, 3, 4]),
    ("title BEGINSWITH ''", [1, 2, 3, 4, 5, 6]),
    ("title ENDSWITH ''", [1, 2, 3, 4, 5, 6]),
    ("title CONTAINS ''", [1, 2, 3, 4, 5, 6]),
    ("title LIKE '*pump'", [1]),
    ("title LIKE 'Fix ????'", [1]),
    ("title LIKE '*[x]'", [3]),
    ("title LIKE '[x]'", []),
    ("title LIKE[c] 'ODD*'", [6]),
    ("title CONTAINS '%'", [4]),
    ("title LIKE '*%*'", [4]),
    ("title CONTAINS '_'", [4]),
    ("title LIKE '*_*'", [4]),
    ("title CONTAINS \"'\"", [5]),
    ("title == \"it's\"", [5]),
    ("site.city BEGINSWITH 'O'", [1]),
    ("extra CONTAINS 'i'", [2]),
    ("tags LIKE 'a?b'", [6]),
    ("tags CONTAINS '*'", [6]),
])
def test_string_operators(tasks: Store, text: str, expected: list[int]) -> None:
    check(tasks, text, expected)


def test_case_folding_is_ascii_only(store: Store) -> None:
    store.put_all("Task", [{"_id": 1, "title": "Élan"}, {"_id": 2, "title": "élan"}, {"_id": 3, "title": "ELAN"}])
    check(store, "title ==[c] 'élan'", [2])
    check(store, "title ==[c] 'elan'", [3])
    check(store, "title BEGINSWITH[c] 'él'", [2])


def test_empty_argument_to_string_operators_matches_every_string(store: Store) -> None:
    # no schema: title 5 is an int (with a schema, bodies are trusted to fit their fields)
    store.put_all("Task", [{"_id": 1, "title": ""}, {"_id": 2, "title": "x"}, {"_id": 3, "title": 5},
                           {"_id": 4}])
    for text, expected in [("title ENDSWITH ''", [1, 2]), ("title BEGINSWITH ''", [1, 2]),
                           ("title CONTAINS ''", [1, 2]), ("title LIKE ''", [1]), ("title LIKE '*'", [1, 2])]:
        assert store.both(text, schema=None) == expected


# -- lists, sets, dictionaries, @count ---------------------------------------------------

@pytest.mark.parametrize(("text", "expected", "schemaless"), [
    ("tags == 'urgent'", [1, 4], None),
    ("ANY tags == 'urgent'", [1, 4], None),
    ("SOME tags == 'urgent'", [1, 4], None),
    ("ALL tags == 'urgent'", [2, 4, 5], [2, 4]),
    ("NONE tags == 'urgent'", [2, 3, 5, 6], None),
    ("tags ==[c] 'pump'", [1, 3], None),
    ("tags != 'urgent'", [1, 3, 6], [1, 3, 5, 6]),
    ("'pump' IN tags", [1], None),
    ("tags IN {'Pump', 'a*b'}", [3, 6], None),
    ("scores > 4", [1, 3], None),
    ("ALL scores > 2", [2, 3, 4, 5, 6], [2, 3, 4]),
    ("scores BETWEEN {2, 4}", [4], None),
    ("labels == 'b'", [3], None),
    ("tags.@count == 0", [2, 5], [2]),
    ("tags.@count > 1", [1, 6], None),
    ("tags.@size >= 1", [1, 3, 4, 6], None),
    ("scores.@count IN {1, 2}", [1, 3, 4], None),
    ("labels.@count == 2", [3], None),
    ("notes.@count == 0", [2, 4, 5, 6], [2, 4]),
    ("notes.@count == 2", [3], None),
    ("title.@size == 4", [5], None),
    ("title.@count < 5", [5], None),
    ("notes.a == 'x'", [1], None),
    ("notes.a == nil", [2, 3, 4, 5, 6], None),
    ("notes.b != nil", [3], None),
    ("visits.city == 'Bergen'", [3], None),
    ("ALL visits.city == 'Oslo'", [1, 2, 4, 5, 6], [1, 2, 4]),
])
def test_collections(tasks: Store, text: str, expected: list[int], schemaless: list[int] | None) -> None:
    # third column: tasks 5 and 6 lack some lists; with the schema those are empty lists,
    # without it they are missing values (None: the same as with the schema)
    assert tasks.both(text, schema=SCHEMA) == expected
    assert tasks.both(text, schema=None) == (expected if schemaless is None else schemaless)


def test_with_a_schema_a_missing_list_is_empty(tasks: Store) -> None:
    # task 5 has no tags at all; the schema says tags is a list, so (as in Realm) it is empty
    assert tasks.both("tags == nil", schema=SCHEMA) == []
    assert tasks.both("tags != 'urgent'", schema=SCHEMA) == [1, 3, 6]
    assert tasks.both("ALL tags == 'urgent'", schema=SCHEMA) == [2, 4, 5]
    assert tasks.both("tags.@count == 0", schema=SCHEMA) == [2, 5]
    assert tasks.both("notes.@count == 0", schema=SCHEMA) == [2, 4, 5, 6]


def test_without_a_schema_a_missing_list_is_a_missing_value(tasks: Store) -> None:
    # the same data without a schema: as in MongoDB, a missing field is null
    assert tasks.both("tags == nil", schema=None) == [5]
    assert tasks.both("tags != 'urgent'", schema=None) == [1, 3, 5, 6]
    assert tasks.both("ALL tags == 'urgent'", schema=None) == [2, 4]
    assert tasks.both("tags.@count == 0", schema=None) == [2]


# -- links -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("technician.name == 'Ann'", [1]),
    ("technician.name != 'Ann'", [2, 3, 4, 5, 6]),  # null, dangling and deleted links count as missing
    ("technician.name == nil", [3, 4, 5]),
    ("technician.level >= 3", [1, 2]),
    ("technician.site.city == 'Oslo'", [1]),
    ("technician.mentor.name == 'Bob'", [1]),
    ("technician.mentor.name == nil", [2, 3, 4, 5, 6]),
    ("technician.name BEGINSWITH 'O'", [6]),
    ("helpers.name == 'Bob'", [1, 2]),
    ("ANY helpers.name == 'Ann'", [2]),
    ("ALL helpers.name == 'Bob'", [1, 3, 5]),  # task 5 has no helpers list: empty
    ("NONE helpers.name == 'Bob'", [3, 4, 5, 6]),
    ("helpers.name == nil", [6]),  # task 6's helper t9 does not exist; task 5 has no helpers
    ("helpers.level > 4", [1, 2]),
    ("helpers.mentor.name == 'Bob'", [2]),
    ("helpers.@count == 2", [2]),
])
def test_paths_through_links(tasks: Store, text: str, expected: list[int]) -> None:
    check(tasks, text, expected, schemaless=False)


def test_comparing_a_link_with_a_primary_key(tasks: Store) -> None:
    check(tasks, "technician == 'ann'", [1], schemaless=False)
    check(tasks, "technician == $0", [6], ODD, schemaless=False)
    check(tasks, "helpers == $0", [4], ODD, schemaless=False)
    check(tasks, "technician == nil", [3, 5], schemaless=False)


def test_links_to_objectid_keys_follow_the_canonical_primary_key(store: Store) -> None:
    schema = _oid_schema()
    owner = ObjectId("65f0aa0000000000000000ff")
    store.put("Person", {"_id": {"$oid": str(owner)}, "name": "Ann"})
    store.put_all("Item", [{"_id": 1, "owner": {"$oid": str(owner)}}, {"_id": 2, "owner": None}])
    assert store.both("owner.name == 'Ann'", collection="Item", schema=schema) == [1]
    assert store.both("owner == $0", owner, collection="Item", schema=schema) == [1]


def _oid_schema() -> Any:
    from tidesync.core.schema import FieldSchema, FieldType, ObjectSchema, Schema

    def obj(name: str, *fields: FieldSchema) -> ObjectSchema:
        return ObjectSchema(name, {f.name: f for f in fields})

    return Schema.of([
        obj("Person", FieldSchema("_id", FieldType("objectid"), primary_key=True), FieldSchema("name", FieldType("str"))),
        obj("Item", FieldSchema("_id", FieldType("int"), primary_key=True),
            FieldSchema("owner", FieldType("link", True, target="Person"))),
    ])


# -- MongoDB filters run the same way -------------------------------------------------

@pytest.mark.parametrize(("flt", "expected"), [
    ({"status": "open"}, [1, 3, 5]),
    ({"priority": {"$gte": 2, "$lt": 5}}, [2, 3, 5, 6]),
    ({"tags": "urgent"}, [1, 4]),
    ({"tags": {"$ne": "urgent"}}, [2, 3, 5, 6]),  # MongoDB: no element is "urgent"
    ({"tags": {"$nin": ["urgent", "Pump"]}}, [2, 5, 6]),
    ({"estimate": None}, [3, 5]),
    ({"price": {"$exists": True}}, [1, 2, 3, 6]),
    ({"price": {"$exists": False}}, [4, 5]),
    ({"site.city": {"$in": ["Oslo", "Bergen"]}}, [1, 2]),
    ({"$or": [{"status": "new"}, {"priority": 1}]}, [1, 6]),
    ({"$nor": [{"status": "open"}, {"done": True}]}, [4]),
    ({"priority": {"$not": {"$gt": 2}}}, [1, 3, 6]),
    ({"tags": {"$size": 2}}, [1, 6]),
    ({"tags": {"$all": ["urgent", "pump"]}}, [1]),
    ({"due": {"$lt": JUN}}, [1]),
    ({"owner": OID2}, [2]),
    ({"price": {"$gt": Decimal("5")}}, [1, 6]),
    ({}, [1, 2, 3, 4, 5, 6]),
])
def test_mongo_filters(tasks: Store, flt: dict[str, Any], expected: list[int]) -> None:
    check(tasks, flt, expected)


# -- ordering ----------------------------------------------------------------------------

def test_order_by_typed_fields(tasks: Store) -> None:
    q = parse_query("TRUEPREDICATE")
    assert tasks.sql(q, schema=SCHEMA, order=[("priority", True)]) == [4, 5, 2, 3, 6, 1]
    assert tasks.sql(q, schema=SCHEMA, order=[("due", False), ("_id", True)]) == [6, 5, 4, 3, 1, 2]
    assert tasks.sql(q, schema=SCHEMA, order=[("price", False), ("_id", False)]) == [3, 4, 5, 2, 6, 1]
    assert tasks.sql(q, schema=SCHEMA, order=[("site.city", False), ("_id", False)]) == [3, 4, 5, 6, 2, 1]
    assert tasks.sql(q, schema=SCHEMA, order=[("technician.name", False), ("_id", False)]) == [3, 4, 5, 1, 2, 6]


def test_order_refuses_lists_and_unknown_fields() -> None:
    with pytest.raises(QueryError, match="cannot sort by tags"):
        compile_order("Task", [("tags", False)], SCHEMA)
    with pytest.raises(QueryError, match="has no field 'nope'"):
        compile_order("Task", [("nope", False)], SCHEMA)
    assert compile_order("Task", [], SCHEMA) == ""


def test_order_expression_is_the_comparable_sub_path() -> None:
    assert compile_order("Task", [("due", True)], SCHEMA) == \
        "json_extract(documents.body, '$.due.\"$date\"') DESC"
    assert compile_order("Task", [("price", False)], SCHEMA) == \
        "CAST(json_extract(documents.body, '$.price.\"$decimal\"') AS REAL) ASC"


# -- what the compiler emits -------------------------------------------------------------

def test_an_equality_on_a_typed_field_is_a_single_indexable_term() -> None:
    sql, params = compile_sql(parse_query("status == $0", ["open"]), "Task", SCHEMA)
    assert (sql, params) == ("json_extract(documents.body, '$.status') = ?", ["open"])
    sql, params = compile_sql(parse_query("due < $0", [JAN]), "Task", SCHEMA)
    assert (sql, params) == ("json_extract(documents.body, '$.due.\"$date\"') < ?", [datetime_to_micros(JAN)])
    sql, params = compile_sql(parse_query("site.city == 'Oslo'"), "Task", SCHEMA)
    assert sql == "json_extract(documents.body, '$.site.city') = ?"


def test_unknown_fields_and_ill_typed_comparisons_are_refused_with_a_schema() -> None:
    with pytest.raises(QueryError, match="Task has no field 'nope'"):
        compile_sql(parse_query("nope == 1"), "Task", SCHEMA)
    with pytest.raises(QueryError, match=r"cannot compare due \(datetime\) with a string"):
        compile_sql(parse_query("due == 'x'"), "Task", SCHEMA)
    with pytest.raises(QueryError, match="needs a string field"):
        compile_sql(parse_query("priority BEGINSWITH 'x'"), "Task", SCHEMA)
    with pytest.raises(QueryError, match="cannot follow 'x' past"):
        compile_sql(parse_query("status.x == 1"), "Task", SCHEMA)
    with pytest.raises(QueryError, match="@count needs a list"):
        compile_sql(parse_query("priority.@count == 1"), "Task", SCHEMA)
    with pytest.raises(QueryError, match="unknown collection"):
        compile_sql(parse_query("a == 1"), "Nope", SCHEMA)
    with pytest.raises(QueryError, match="unbound argument"):
        compile_sql(parse_rql("status == $0", None), "Task", SCHEMA)


def test_non_finite_decimals_never_compare(store: Store) -> None:
    # SQLite would CAST 'NaN' and 'Infinity' to 0.0; they must not pass for zero
    store.put_all("Task", [{"_id": 1, "extra": {"$decimal": "NaN"}}, {"_id": 2, "extra": {"$decimal": "-Infinity"}},
                           {"_id": 3, "extra": {"$decimal": "0"}}, {"_id": 4, "price": {"$decimal": "sNaN"}}])
    check(store, "extra == 0", [3])
    check(store, "extra >= 0", [3])
    check(store, "extra < 1", [3])
    check(store, "extra != 0", [1, 2, 4])
    check(store, "price < 1", [])


def test_a_null_list_is_empty_with_a_schema(store: Store) -> None:
    store.put_all("Task", [{"_id": 1, "tags": None}, {"_id": 2, "tags": ["x"]}, {"_id": 3, "tags": [None]}])
    assert store.both("tags == nil", schema=SCHEMA) == [3]
    assert store.both("ALL tags == 'x'", schema=SCHEMA) == [1, 2]
    assert store.both("tags.@count == 0", schema=SCHEMA) == [1]
    assert store.both("tags == nil", schema=None) == [1, 3]
