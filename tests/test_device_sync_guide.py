"""docs/coming-from-device-sync.md runs as written: its code blocks, in order, in one namespace,
against a real server in this process (its URL replaces the guide's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.servers import running_server

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "coming-from-device-sync.md"


def guide_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


def test_every_doc_the_guide_links_exists():
    docs = GUIDE.parent
    named = set(re.findall(r"docs/([a-z-]+\.md)", GUIDE.read_text()))
    assert named and all((docs / name).exists() for name in named)


@pytest.mark.slow
def test_the_import_and_a_partition_device_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with running_server(tmp_path / "server") as server:
        namespace: dict[str, object] = {"__name__": "device_sync_guide"}
        for block in guide_blocks():
            code = block.replace("http://127.0.0.1:8765", server.url)
            exec(compile(code, GUIDE.name, "exec", dont_inherit=True), namespace)  # noqa: S102 - our own docs
    assert capsys.readouterr().out.strip().splitlines()[-1] == "['Order parts']"
    # The imported document kept its ObjectId and got a UTC datetime.
    import tidesync

    Task = namespace["Task"]
    with tidesync.open(tmp_path / "import.db", schema=[Task]) as db:  # type: ignore[list-item]
        task = db.get(Task, tidesync.ObjectId("65a1f0c2e4b0a1b2c3d4e5f6"))  # type: ignore[arg-type]
        assert task is not None and task.due.tzinfo is not None and task.due.hour == 9
        assert len(db.objects(Task)) == 2  # type: ignore[arg-type]
