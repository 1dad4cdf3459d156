"""@links: Realm's backlink queries. `@links.Task.technician` stands for the tasks whose
`technician` link points at the queried technician; a key path after it reads them, `.@count`
counts them, `@links.@count` counts the objects linking by any field. SQL and the Python
predicate agree; what cannot be asked is a QueryError that says why."""

from __future__ import annotations

import threading

import pytest
from query_harness import SCHEMA, Store

import tidesync
from tidesync.errors import QueryError
from tidesync.query import Compare, Count, Path, Value, node_from_json, node_to_json, parse_query, to_mongo, to_rql
from tidesync.query import to_predicate

TECHNICIANS = [
    {"_id": "ann", "name": "Ann", "level": 3},
    {"_id": "bob", "name": "Bob", "level": 1, "mentor": "ann"},
    {"_id": "cy", "name": "Cy", "level": 2},
    {"_id": "dee", "name": "Dee", "level": 2},
]
TASKS = [
    {"_id": 1, "technician": "ann", "helpers": ["bob"], "status": "open"},
    {"_id": 2, "technician": "ann", "helpers": ["ann", "ann"], "status": "done"},
    {"_id": 3, "helpers": ["cy"], "status": "open"},
]


@pytest.fixture
def store(store: Store) -> Store:
    """The query harness's empty store (conftest.py), filled with this module's documents."""
    store.put_all("Technician", TECHNICIANS)
    store.put_all("Task", TASKS)
    store.put("Task", {"_id": 4, "technician": "dee", "status": "open"}, live=False)   # deleted: no backlink
    return store


@pytest.mark.parametrize("text, expected", [
    ("@links.Task.technician.@count == 2", ["ann"]),
    ("@links.Task.technician.@count == 0", ["bob", "cy", "dee"]),
    ("@links.Task.helpers.@count == 1", ["ann", "bob", "cy"]),      # objects, not links: Task 2 holds ann twice
    ("@links.@count == 0", ["dee"]),                                  # by any link field of any model
    ("@links.@count >= 3", ["ann"]),                                  # two tasks, one task's helpers, bob's mentor
    ("@links.Task.technician.status == 'done'", ["ann"]),
    ("ANY @links.Task.helpers.status == 'open'", ["bob", "cy"]),
    ("ALL @links.Task.helpers.status == 'open'", ["bob", "cy", "dee"]),   # dee: none link, vacuously
    ("NONE @links.Task.technician.status == 'open'", ["bob", "cy", "dee"]),
    ("@links.Technician.mentor.name == 'Bob'", ["ann"]),
    ("@links.Task.helpers.technician.name BEGINSWITH 'A'", ["ann", "bob"]),   # then through a link
    ("@links.Task.helpers.@count > 0 AND level > 1", ["ann", "cy"]),
    ("NOT (@links.Task.technician.@count BETWEEN {1, 5})", ["bob", "cy", "dee"]),
])
def test_each_backlink_query_selects_the_same_objects_both_ways(store: Store, text: str, expected: list[str]) -> None:
    assert store.both(text, collection="Technician", schema=SCHEMA) == expected


def test_the_text_and_json_forms_round_trip() -> None:
    node = parse_query("@links.Task.technician.@count > $0", [1]).node
    assert node == Compare(">", Count(Path(("@links", "Task", "technician"))), Value(1))
    for text in ("@links.@count == 0", "ANY @links.Task.helpers.status == \"open\"", "@LINKS.Task.technician.@size > 1"):
        n = parse_query(text).node
        assert parse_query(to_rql(n)[0]).node == n
        assert node_from_json(node_to_json(n)) == n
    assert to_rql(parse_query("@Links.Task.technician.@count == 0").node)[0] == "@links.Task.technician.@count == 0"


@pytest.mark.parametrize("text, says", [
    ("@links.Task.technician == 'x'", "@links stands for objects"),
    ("@links == 1", "@links stands for objects"),
    ("@links.Task.@count > 0", r"write @links.Model.field"),
    ("@links.Nope.technician.@count > 0", "'Nope' is not a model of the schema"),
    ("@links.Site.city.@count > 0", "'Site' is not a model of the schema"),   # embedded
    ("@links.Task.status.@count > 0", "Task.status is not a link"),
    ("@links.Task.technician.nothing == 1", "Task has no field 'nothing'"),
    ("@links.Task.technician.@sum > 1", "needs a list or set of int or float"),
])
def test_what_the_schema_rules_out_is_a_query_error_both_ways(store: Store, text: str, says: str) -> None:
    query = parse_query(text)
    with pytest.raises(QueryError, match=says):
        store.sql(query, "Technician", SCHEMA)
    with pytest.raises(QueryError, match=says):
        store.predicate(query, "Technician", SCHEMA)


def test_without_a_schema_or_a_resolver_it_is_refused(store: Store) -> None:
    query = parse_query("@links.Task.technician.@count > 0")
    with pytest.raises(QueryError, match="needs the models' schema"):
        store.sql(query, "Technician", None)
    with pytest.raises(QueryError, match="pass resolve_backlinks="):
        to_predicate(query, "Technician", SCHEMA)
    with pytest.raises(QueryError, match="not to an embedded object|not to 'Site'"):
        store.sql(parse_query("@links.@count > 0"), "Site", SCHEMA)
    with pytest.raises(QueryError, match="cannot be translated to a MongoDB filter"):
        to_mongo(query.node, "Technician", SCHEMA)
    with pytest.raises(QueryError, match="@links starts a key path"):
        parse_query("name.@links.Task.technician.@count > 0")


def test_live_results_of_a_real_file_follow_the_linking_objects(tmp_path) -> None:
    from tests.models import Technician, WorkOrder

    with tidesync.open(tmp_path / "d.db", schema=[WorkOrder, Technician]) as db:
        with db.write():
            ann, bob = db.create(Technician, _id="ann", name="Ann"), db.create(Technician, _id="bob", name="Bob")
            db.create(WorkOrder, title="pump", technician=ann, status="open")
            db.create(WorkOrder, title="hose", helpers=[ann, bob], status="closed")
        idle = db.objects(Technician).filter("@links.WorkOrder.technician.@count == 0").sort("_id")
        assert [t._id for t in idle] == ["bob"]
        busy = db.objects(Technician).filter("ANY @links.WorkOrder.helpers.status == $0", "closed").sort("_id")
        assert [t._id for t in busy] == ["ann", "bob"]
        changed = threading.Event()
        token = idle.add_listener(lambda results, changes: changed.set())
        try:
            with db.write():
                db.objects(WorkOrder).filter("title == 'pump'").first().technician = bob   # only a work order changes
            assert changed.wait(10)
            assert [t._id for t in idle] == ["ann"]
        finally:
            token.remove()
        with pytest.raises(tidesync.UsageError, match="cannot follow links"):
            from tidesync.client.subscriptions import _query_of
            _query_of(db.objects(Technician).filter("@links.WorkOrder.technician.@count == 0"))
