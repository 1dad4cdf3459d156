"""File-format migrations: a file written in an older format opens, is migrated in place, and
keeps working (reads, writes, partition-filtered sync reads, integration of its log)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tidesync.core.operations import CreateDoc, SetValue
from tidesync.core.transaction import Transaction
from tidesync.errors import SchemaMismatchError
from tidesync.store.database import Database
from tidesync.store.tables import FORMAT_VERSION, MIGRATIONS

ORIGIN = "a1b2c3d4e5f60718"
SCOPE = {"partition": {"key": "_partition", "value": "p1"}}


def _stamp(i: int) -> str:
    return f"{0x18f000000000 + i:012x}000000{ORIGIN}"


def _create(i: int, key: str, partition: str | None) -> CreateDoc:
    fields: dict[str, object] = {"_id": key, "n": i}
    if partition is not None:
        fields["_partition"] = partition
    return CreateDoc("Job", key, _stamp(i), "", fields, {})


def _txn(i: int, *ops: CreateDoc | SetValue) -> Transaction:
    return Transaction(_stamp(i), ORIGIN, _stamp(i), (), tuple(ops))


def _indexes(path: object) -> dict[str, str]:
    con = sqlite3.connect(str(path))
    try:
        return {name: sql for name, sql in con.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'documents' AND sql IS NOT NULL")}
    finally:
        con.close()


def _make_version_1(path: object) -> None:
    """A file with two documents, laid out as format 1 left it: the tables are the same, the
    indexes are format 1's own statements, and the recorded version is 1."""
    with _open(path) as db:
        db.integrate([_txn(1, _create(1, "a", "p1")), _txn(2, _create(2, "b", "p2"))])
    con = sqlite3.connect(str(path))
    try:
        con.execute("DROP INDEX documents_scope")
        for stmt in MIGRATIONS[0]:
            if stmt.startswith("CREATE INDEX") or stmt.startswith("CREATE UNIQUE INDEX"):
                con.execute(stmt)
        con.execute("UPDATE settings SET value = '1' WHERE key = 'format_version'")
        con.execute("UPDATE settings SET value = 'feedfacefeedface' WHERE key = 'replica_id'")
        con.commit()
    finally:
        con.close()


@contextmanager
def _open(path: object) -> Iterator[Database]:
    """``path`` opened as a server-side store (schema-less, partitioned by ``_partition``)."""
    db = Database(path, (), partition_key="_partition")
    try:
        yield db
    finally:
        db.close()


def test_new_file_has_the_current_format_and_no_seq_index(tmp_path):
    with _open(tmp_path / "new.db") as db:
        assert db._setting("format_version") == str(FORMAT_VERSION) == "3"
    idx = _indexes(tmp_path / "new.db")
    assert "documents_seq" not in idx
    assert "WHERE scope IS NOT NULL" in idx["documents_scope"]
    assert "documents_key" in idx


def test_version_1_file_opens_migrates_and_syncs(tmp_path):
    path = tmp_path / "v1.db"
    _make_version_1(path)
    old = _indexes(path)
    assert "documents_seq" in old and "WHERE" not in old["documents_scope"]

    with _open(path) as db:
        assert db._setting("format_version") == "3"
        assert db._setting("replica_id") == "feedfacefeedface"  # the file keeps its identity
        # partition lookups still use the (now partial) scope index
        plan = db._engine.query("EXPLAIN QUERY PLAN SELECT count(*) FROM documents WHERE scope = ?", ['"p1"'])
        assert any("documents_scope" in str(row) for row in plan)
        # the old log and documents are intact and served filtered by partition
        batch = db.read_log(0, limit=100, max_bytes=1 << 20, scope=SCOPE, exclude_origin=None)
        assert [[op.key for op in t.ops] for _, t in batch.entries] == [["a"]]
        page = db.read_snapshot(SCOPE, cursor=None, limit=10, max_bytes=1 << 20)
        assert [d.key for d in page.docs] == ["a"]
        # new transactions integrate and are read back
        db.integrate([_txn(3, SetValue("Job", "a", _stamp(3), "", ("n",), (), 9)), _txn(4, _create(4, "c", "p1"))])
        batch = db.read_log(0, limit=100, max_bytes=1 << 20, scope=SCOPE, exclude_origin=None)
        assert [[op.key for op in t.ops] for _, t in batch.entries] == [["a"], ["a"], ["c"]]
        page = db.read_snapshot(SCOPE, cursor=None, limit=10, max_bytes=1 << 20)
        assert {d.key: d.state["body"]["n"] for d in page.docs} == {"a": 9, "c": 4}
        log = db.export_transactions()

    new = _indexes(path)
    assert "documents_seq" not in new and "WHERE scope IS NOT NULL" in new["documents_scope"]

    # a peer receiving the migrated file's log agrees with it
    with _open(tmp_path / "peer.db") as peer:
        peer.integrate(log)
        page = peer.read_snapshot(SCOPE, cursor=None, limit=10, max_bytes=1 << 20)
        assert {d.key: d.state["body"]["n"] for d in page.docs} == {"a": 9, "c": 4}

    # reopening a migrated file changes nothing
    with _open(path) as db:
        assert db._setting("format_version") == "3"
    assert _indexes(path) == new


def test_file_of_a_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.db"
    with _open(path):
        pass
    con = sqlite3.connect(str(path))
    con.execute("UPDATE settings SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(SchemaMismatchError):
        Database(path, (), partition_key="_partition")
