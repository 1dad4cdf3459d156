"""tidesync.toml: the [rules], [[default_roles]], [partitions] and [schema] tables."""

from __future__ import annotations

import json

import pytest

from tidesync.errors import UsageError
from tidesync.server.config import load_config


def write(tmp_path, text):
    path = tmp_path / "tidesync.toml"
    path.write_text(text)
    return path


def test_rules_partitions_and_schemas_load(tmp_path):
    (tmp_path / "note.json").write_text(json.dumps({"required": ["text"]}))
    cfg = load_config(write(tmp_path, """
[rules.Task]
[[rules.Task.roles]]
name = "admin"
apply_when = { "%%user.data.role" = "admin" }
read = true
write = true
[[rules.Task.roles]]
name = "owner"
read = { owner_id = "%%user.id" }
write = { owner_id = "%%user.id" }
delete = false
[rules.Task.roles.fields]
salary = { read = false }

[[default_roles]]
name = "reader"
read = true

[partitions]
read = ["%%user.id", "public"]
write = "%%user.id"

[schema.Task]
properties = { title = { type = "string", maxLength = 3 } }
[schema]
Note = "note.json"
"""))
    assert not cfg.development_mode
    rules = cfg.rules
    assert [r.name for r in rules.roles_of("Task")] == ["admin", "owner"]
    assert rules.roles_of("Task")[1].delete is False and not rules.roles_of("Task")[1].fields["salary"].read
    assert [r.name for r in rules.roles_of("Anything")] == ["reader"]
    assert rules.partitions.write == "%%user.id"
    assert cfg.schemas["Note"] == {"required": ["text"]}
    assert cfg.schemas["Task"]["properties"]["title"]["maxLength"] == 3


def test_no_rules_leaves_everything_open(tmp_path):
    cfg = load_config(write(tmp_path, '[app]\nid = "x"\n'))
    assert cfg.rules is None and cfg.schemas == {}
    assert load_config(None).development_mode


@pytest.mark.parametrize("text, message", [
    ("[rule.Task]\nread = true\n", "unknown section"),
    ("[rules.Task]\nread = 'yes'\n", "rules.Task.read"),
    ("[rules.Task]\nread = { owner = { '$where' = 'x' } }\n", "not valid"),
    ("[rules.Task]\nread = { owner = '%%user.name' }\n", "unknown placeholder"),
    ("[partitions]\nread = true\nsomething = 1\n", "partitions"),
    ("[schema.Task]\noneOf = []\n", "unsupported keyword"),
    ("[schema]\nTask = 'missing.json'\n", "cannot read the JSON Schema"),
])
def test_a_malformed_config_stops_the_server_with_a_pointer(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        load_config(write(tmp_path, text))
