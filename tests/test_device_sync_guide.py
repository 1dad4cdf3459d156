"""docs/coming-from-device-sync.md runs as written: its code blocks, in order, in one namespace,
against a real server in this process (its URL replaces the guide's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.doc_blocks import python_blocks, run_blocks
from tests.helpers.servers import running_server

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "coming-from-device-sync.md"


def test_every_doc_the_guide_links_exists():
    docs = GUIDE.parent
    named = set(re.findall(r"docs/([a-z-]+\.md)", GUIDE.read_text()))
    assert named and all((docs / name).exists() for name in named)


@pytest.mark.slow
def test_the_import_and_a_partition_device_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with running_server(tmp_path / "server") as server:
        namespace = run_blocks(python_blocks(GUIDE.read_text()), filename=GUIDE.name, server_url=server.url)
    assert capsys.readouterr().out.strip().splitlines()[-1] == "['Order parts']"
    # The imported document kept its ObjectId and got a UTC datetime.
    import tidesync

    Task = namespace["Task"]
    with tidesync.open(tmp_path / "import.db", schema=[Task]) as db:  # type: ignore[list-item]
        task = db.get(Task, tidesync.ObjectId("65a1f0c2e4b0a1b2c3d4e5f6"))  # type: ignore[arg-type]
        assert task is not None and task.due.tzinfo is not None and task.due.hour == 9
        assert len(db.objects(Task)) == 2  # type: ignore[arg-type]
