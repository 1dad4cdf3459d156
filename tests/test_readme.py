"""The README's five-minute tour runs as written, block after block, in one namespace (the sync
part against a real server in this process: its URL replaces the README's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.doc_blocks import python_blocks, run_blocks
from tests.helpers.servers import running_server

ROOT = Path(__file__).resolve().parents[1]


def tour_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return python_blocks(text[text.index("## A five-minute tour"):text.index("## Documentation")])


def test_the_tour_has_every_part():
    blocks = "\n".join(tour_blocks())
    for part in ("class WorkOrder(tidesync.Model)", "db.write()", "add_listener", "db.history(",
                 "encryption_key=key", "tidesync.SyncConfig("):
        assert part in blocks


@pytest.mark.slow
def test_the_tour_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with running_server(tmp_path / "server") as server:
        run_blocks(tour_blocks(), filename="README.md", server_url=server.url)
    out = capsys.readouterr().out
    assert "Fix pump" in out and "Fix pump Ann" in out
    assert "1 1" in out.splitlines()  # backlinks and the query with an object agree
    assert "['pump', 'valve', 'urgent'] 998" in out.splitlines()   # a move; @links in a query
    assert os.path.exists(tmp_path / "synced.db") and os.path.exists(tmp_path / "secret.db")
