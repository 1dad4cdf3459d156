"""A file of partitioned documents with no partition of its own (a server's store, built with
``partition_key=`` and never given a sync partition) keeps each document's ``scope`` column equal
to its partition value, whichever write path a model write takes: the fast creates, the
assignment fast path and its loop, and ``create_many(update=)`` all leave the partition key to
the paths that write the column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.models import Ticket
from tests.store.test_fast_paths_agree import _general
from tidesync.store.database import Database


def _write_everything(db: Database) -> None:
    with db.write():
        db.create(Ticket, _id="one", text="a", _partition="p1")
        db.create(Ticket, _id="bare", text="no partition given")
        db.create_many(Ticket, [{"_id": f"t{i:02d}", "text": "x", "_partition": f"p{i % 3}"} for i in range(40)])
    with db.write():
        for i, t in enumerate(db.objects(Ticket).sort("_id")):  # the assignment loop
            if i % 2 == 0:
                t._partition = f"q{i % 4}"
        db.objects(Ticket).filter("_id == 'one'").first()._partition = "moved"  # a lone assignment
    with db.write():
        db.create_many(Ticket, [{"_id": f"t{i:02d}", "text": "y", "_partition": "r"} for i in range(0, 40, 5)],
                       update="modified")
        db.create_many(Ticket, [{"_id": f"t{i:02d}", "text": "z"} for i in range(1, 40, 7)], update="all")


def _rows(db: Database) -> list[tuple[str, str, str | None]]:
    return db._engine.query("SELECT pk, body, scope FROM documents ORDER BY pk")


@pytest.mark.parametrize("general", [False, True], ids=["fast paths", "general path"])
def test_every_write_path_keeps_the_scope_column_equal_to_the_partition_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, general: bool) -> None:
    if general:
        _general(monkeypatch)
    db = Database(tmp_path / "server-like.db", [Ticket], partition_key="_partition")
    try:
        _write_everything(db)
        rows = _rows(db)
        assert len(rows) == 42
        moved = 0
        for pk, body, scope in rows:
            partition = json.loads(body).get("_partition")
            assert scope == json.dumps(partition, separators=(",", ":")), (pk, body, scope)
            moved += partition is not None and partition[0] in "qmr"
        assert moved >= 20  # the assignments and updates above did move documents
    finally:
        db.close()


def test_the_fast_paths_and_the_general_path_store_the_same_documents(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fast = Database(tmp_path / "fast.db", [Ticket], partition_key="_partition")
    try:
        _write_everything(fast)
        got_fast = _rows(fast)
    finally:
        fast.close()
    _general(monkeypatch)
    slow = Database(tmp_path / "slow.db", [Ticket], partition_key="_partition")
    try:
        _write_everything(slow)
        assert _rows(slow) == got_fast
    finally:
        slow.close()
