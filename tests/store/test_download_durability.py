"""A sync session's download (``Database._integrate_download``): committed without an fsync,
listeners woken, then the WAL flushed before it returns (the Ack that follows still means
"durably integrated"). See docs/sync.md, "Durability of downloads"."""

from __future__ import annotations

import dataclasses
import threading

import pytest

import tidesync
from tests.models import Technician, WorkOrder
from tidesync.errors import MergeError
from tidesync.store.engine import Engine


def _synchronous(db: tidesync.Database) -> int:
    with db._lock:
        return int(db._engine.query("PRAGMA synchronous")[0][0])


def test_listeners_are_woken_before_the_fsync_and_it_returns_after(tmp_path, monkeypatch):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        with a.write():
            a.create(Technician, _id="t1", name="from a")
        seen = threading.Event()
        token = b.objects(Technician).add_listener(lambda res, changes: seen.set())
        events: list[str] = []
        synced = threading.Event()
        original = Engine.sync_wal

        def sync_wal(engine: Engine) -> None:
            # The notifier can read (no lock held) and is woken before the fsync ends.
            assert seen.wait(10), "the listener was not called while the download was being synced"
            events.append("fsync")
            original(engine)
            synced.set()

        monkeypatch.setattr(Engine, "sync_wal", sync_wal)
        result = b._integrate_download(a.export_transactions(since=0), a.replica_id, 1)
        token.remove()
        assert synced.is_set() and events == ["fsync"]  # returned only after the fsync
        assert result.applied == 1
        assert b.get(Technician, "t1").name == "from a"
        assert b.checkpoint(a.replica_id).received == 1  # data and checkpoint in one transaction
        assert _synchronous(b) == 2  # FULL again for everything else


def _good_and_refused(a):
    """Two of ``a``'s transactions: one that integrates, then one the merge core refuses (a
    create whose _id differs from its key)."""
    with a.write():
        a.create(Technician, _id="t1", name="from a")
    with a.write():
        a.create(Technician, _id="t2", name="from a")
    good, second = a.export_transactions(since=0)
    create = second.ops[0]
    return good, dataclasses.replace(second, ops=(dataclasses.replace(create, fields={**create.fields, "_id": "t3"}),))


def test_a_refused_download_rolls_back_and_restores_full_sync(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        good, broken = _good_and_refused(a)
        with pytest.raises(MergeError):
            b._integrate_download([good, broken], a.replica_id, 2)
        assert b.get(Technician, "t1") is None  # the whole batch rolled back
        assert b.checkpoint(a.replica_id).received == 0
        assert _synchronous(b) == 2


def _traced(db: tidesync.Database) -> list[str]:
    seen: list[str] = []
    db._engine._tracer = lambda sql, params: seen.append(sql)
    return seen


def test_downloads_in_a_row_toggle_synchronous_once_and_a_local_write_is_full_again(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        since = 0
        for i in range(3):
            with a.write():
                a.create(Technician, _id=f"t{i}", name="from a")
        seen = _traced(b)
        for t in a.export_transactions(since=since):
            b._integrate_download([t], a.replica_id, a.last_seq)
        b._record_sync_checkpoint(a.replica_id, a.last_seq, None)
        pragmas = [s for s in seen if s.startswith("PRAGMA synchronous")]
        assert pragmas == ["PRAGMA synchronous = NORMAL"]  # lowered once, kept for the next downloads
        assert seen.count("COMMIT") == 4
        seen.clear()
        with b.write():
            # Inside the write's transaction: FULL, set back before its BEGIN.
            assert b._engine.query("PRAGMA synchronous") == [(2,)]
            b.create(Technician, _id="local", name="from b")
        assert seen.index("PRAGMA synchronous = FULL") < seen.index("BEGIN IMMEDIATE")
        b._engine._tracer = None
        assert [b.get(Technician, f"t{i}").name for i in range(3)] == ["from a"] * 3


def test_an_autocommit_statement_after_a_download_runs_with_full_sync(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        with a.write():
            a.create(Technician, _id="t1", name="from a")
        b._integrate_download(a.export_transactions(since=0), a.replica_id, 1)
        seen = _traced(b)
        with b._lock:
            b._engine.run("INSERT INTO settings (key, value) VALUES ('probe', '1')")
        assert seen == ["PRAGMA synchronous = FULL", "INSERT INTO settings (key, value) VALUES ('probe', '1')"]
        b._engine._tracer = None


def test_a_write_after_a_refused_download_is_full_again(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        good, broken = _good_and_refused(a)
        with pytest.raises(MergeError):
            b._integrate_download([good, broken], a.replica_id, 2)
        with b.write():
            assert b._engine.query("PRAGMA synchronous") == [(2,)]
            b.create(Technician, _id="local", name="from b")


def test_an_unsynced_block_without_checkpoint_keeps_it_off_until_synchronous_comes_back(tmp_path):
    # Bootstrap pages (Engine.unsynced(checkpoint=False)) skip SQLite's inline checkpoint; the
    # setting stays off for the next page (no pragma round trip per page) and comes back with
    # synchronous = FULL before the next statement outside such a block.
    engine = Engine(tmp_path / "e.db")
    try:
        engine.run("CREATE TABLE t (x)")
        seen: list[str] = []
        engine._tracer = lambda sql, params: seen.append(sql)
        for i in range(3):
            with engine.unsynced(checkpoint=False), engine.atomic():
                engine.run("INSERT INTO t VALUES (?)", [i])
        assert [s for s in seen if s.startswith("PRAGMA")] == ["PRAGMA synchronous = NORMAL",
                                                              "PRAGMA wal_autocheckpoint = 0"]
        assert engine.query("PRAGMA wal_autocheckpoint") == [(1000,)]  # the query restored it
        assert engine.query("PRAGMA synchronous") == [(2,)]
        seen.clear()
        with engine.unsynced(checkpoint=False), engine.atomic():
            engine.run("INSERT INTO t VALUES (3)")
        with engine.unsynced(), engine.atomic():  # a download that checkpoints as usual
            assert engine.query("PRAGMA wal_autocheckpoint") == [(1000,)]
            engine.run("INSERT INTO t VALUES (4)")
        assert engine.query("SELECT count(*) FROM t") == [(5,)]
    finally:
        engine._tracer = None
        engine.close()
