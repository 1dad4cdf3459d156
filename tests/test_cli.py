"""The command line: every command has --help and is documented; errors are clear."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tidesync
from tidesync.cli.main import build_parser, main
from tests.models import Technician

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help_and_is_documented(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert command in capsys.readouterr().out
    assert f"tidesync {command}" in (ROOT / "docs" / "cli.md").read_text()


def test_history_and_revert_on_a_file(tmp_path, capsys):
    path = tmp_path / "h.db"
    with tidesync.open(path, schema=[Technician]) as db:
        with db.write():
            db.create(Technician, _id="t", name="Ann")
        with db.write():
            db.get(Technician, "t").name = "Bea"
        target = db.history(1)[0].id
    assert main(["history", str(path)]) == 0
    out = capsys.readouterr().out
    assert target in out and "update Technician 't' ['name']" in out
    assert main(["revert", str(path), target]) == 0
    assert "restored Technician 't' name" in capsys.readouterr().out
    with tidesync.open(path, schema=[Technician]) as db:
        assert db.get(Technician, "t").name == "Ann"


def test_unknown_transaction_is_a_clear_error(tmp_path):
    path = tmp_path / "h.db"
    with tidesync.open(path, schema=[Technician]):
        pass
    res = subprocess.run([sys.executable, "-m", "tidesync", "revert", str(path), "0" * 34],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "tidesync: no transaction" in res.stderr


def test_compact_keeps_the_newest_entries_of_a_servers_log(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    with tidesync.open(data / "sync.db", schema=[Technician]) as db:
        for i in range(5):
            with db.write():
                db.create(Technician, _id=f"t{i}", name="x")
    assert main(["compact", "--keep", "2", "--data", str(data)]) == 0
    assert "dropped log entries 1 to 3; kept 2 (up to 5)" in capsys.readouterr().out
    assert main(["compact", "--keep", "2", "--data", str(data)]) == 0
    assert "nothing to drop" in capsys.readouterr().out
    with tidesync.open(data / "sync.db", schema=[Technician]) as db:
        assert [e.seq for e in db.history(10)] == [5, 4]
        assert len(db.objects(Technician)) == 5                # documents stay
    assert main(["compact", "--keep", "-1", "--data", str(data)]) == 2
    assert "--keep must be >= 0" in capsys.readouterr().err
    assert main(["compact", "--keep", "1", "--data", str(tmp_path / "none")]) == 1
