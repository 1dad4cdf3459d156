"""server.schemas: the JSON Schema subset, and the learned schema shown by `tidesync schema`."""

from __future__ import annotations

import json

import pytest

from tidesync.cli.main import main
from tidesync.core.operations import CreateDoc, SetContainer, SetValue, ListInsert
from tidesync.server.schemas import SchemaLearner, check_schema, learned_to_json_schema, validate

S = "0" * 18 + "a" * 16
SCHEMA = {
    "bsonType": "object",
    "required": ["title"],
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[a-z]+$"},
        "priority": {"bsonType": "long", "minimum": 0, "maximum": 3},
        "status": {"enum": ["open", "done"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2, "uniqueItems": True},
        "due": {"bsonType": ["date", "null"]},
        "cost": {"bsonType": "decimal", "exclusiveMinimum": 0},
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize("doc, error", [
    ({"_id": 1, "title": "ok"}, None),
    ({"_id": 1, "title": "ok", "due": {"$date": 5}, "cost": {"$decimal": "1.5"}, "tags": ["a"]}, None),
    ({"_id": 1}, "title is required"),
    ({"_id": 1, "title": ""}, "title must be at least 1 characters long"),
    ({"_id": 1, "title": "toolong"}, "title must be at most 5 characters long"),
    ({"_id": 1, "title": "ABC"}, "title must match the pattern"),
    ({"_id": 1, "title": 3}, "title must be of type 'string', not int"),
    ({"_id": 1, "title": "a", "priority": 4}, "priority must be <= 3"),
    ({"_id": 1, "title": "a", "priority": 1.5}, "priority must be of bsonType 'long', not double"),
    ({"_id": 1, "title": "a", "status": "lost"}, "status must be one of"),
    ({"_id": 1, "title": "a", "tags": ["a", "a"]}, "tags must not repeat items"),
    ({"_id": 1, "title": "a", "tags": ["a", 1]}, "tags[1] must be of type 'string'"),
    ({"_id": 1, "title": "a", "tags": ["a", "b", "c"]}, "tags must have at most 2 items"),
    ({"_id": 1, "title": "a", "due": "2024-01-01"}, "due must be of bsonType ['date', 'null']"),
    ({"_id": 1, "title": "a", "cost": {"$decimal": "0"}}, "cost must be > 0"),
    ({"_id": 1, "title": "a", "extra": 1}, "extra is not allowed"),
])
def test_validate(doc, error):
    got = validate(doc, SCHEMA)
    if error is None:
        assert got is None
    else:
        assert got is not None and error in got


@pytest.mark.parametrize("schema, message", [
    ({"oneOf": []}, "unsupported keyword"),
    ({"type": "str"}, "unknown type"),
    ({"properties": {"a": {"minLength": -1}}}, "schema.properties.a.minLength"),
    ({"pattern": "("}, "not a valid regular expression"),
])
def test_schemas_outside_the_subset_are_refused(schema, message):
    with pytest.raises(ValueError, match=message):
        check_schema(schema)
    check_schema(SCHEMA)


def test_the_learned_schema_is_saved_and_shown(tmp_path, capsys):
    learner = SchemaLearner(tmp_path / "schema.json")
    assert learner.observe([
        CreateDoc("Task", 1, S, "", {"_id": 1, "title": "a", "tags": ["x"], "due": None}, {"tags": "list"}),
        SetValue("Task", 1, S, "", ("due",), (), {"$date": 1}),
        SetContainer("Task", 1, S, "", ("labels",), (), "set", S),
        ListInsert("Task", 1, S, "", ("tags",), (S,), S, None, 3),
    ])
    assert not learner.observe([SetValue("Task", 2, S, "", ("title",), (), "b")])  # nothing new
    learned = SchemaLearner(tmp_path / "schema.json").snapshot()  # persisted
    assert learned["Task"]["due"]["kinds"] == ["date", "null"]
    assert learned["Task"]["tags"] == {"kinds": ["list"], "elements": ["int"]}
    assert main(["schema", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Task" in out and "due: date | null" in out and "tags: list of int" in out
    assert main(["schema", "--data", str(tmp_path), "--json-schema"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js == learned_to_json_schema(learned)
    assert js["Task"]["properties"]["due"] == {"bsonType": ["date", "null"]}
    check_schema(js["Task"])
    assert validate({"_id": 1, "title": "a", "due": None, "tags": [1]}, js["Task"]) is None
    assert main(["schema", "--data", str(tmp_path / "none")]) == 1


def test_creates_of_a_known_shape_teach_nothing_new_but_a_new_type_does(tmp_path):
    learner = SchemaLearner(tmp_path / "schema.json")
    assert learner.observe([CreateDoc("Task", 1, S, "", {"_id": 1, "n": 1, "x": "a"}, {})])
    # the same fields, types and kinds: skipped as a whole (nothing new either way)
    assert not learner.observe([CreateDoc("Task", i, S, "", {"_id": i, "n": i, "x": "b"}, {}) for i in range(2, 50)])
    # same field names, another type: learned
    assert learner.observe([CreateDoc("Task", 60, S, "", {"_id": 60, "n": 1.5, "x": "c"}, {})])
    # a tagged map's kind depends on its tag, not its type: never skipped by shape
    assert learner.observe([CreateDoc("Task", 61, S, "", {"_id": 61, "n": {"$date": 1}, "x": "c"}, {})])
    assert learner.observe([CreateDoc("Task", 62, S, "", {"_id": 62, "n": {"$oid": "0" * 24}, "x": "c"}, {})])
    # another collection with the same fields: learned
    assert learner.observe([CreateDoc("Note", 1, S, "", {"_id": 1, "n": 1, "x": "a"}, {})])
    learned = learner.snapshot()
    assert learned["Task"]["n"]["kinds"] == ["date", "double", "int", "objectId"]
    assert learned["Note"]["n"]["kinds"] == ["int"]
