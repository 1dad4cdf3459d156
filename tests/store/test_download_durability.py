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


def test_a_refused_download_rolls_back_and_restores_full_sync(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        with a.write():
            a.create(Technician, _id="t1", name="from a")
        with a.write():
            a.create(Technician, _id="t2", name="from a")
        good, second = a.export_transactions(since=0)
        create = second.ops[0]
        # A create whose _id differs from its key: the merge core refuses it.
        broken = dataclasses.replace(second, ops=(dataclasses.replace(create, fields={**create.fields, "_id": "t3"}),))
        with pytest.raises(MergeError):
            b._integrate_download([good, broken], a.replica_id, 2)
        assert b.get(Technician, "t1") is None  # the whole batch rolled back
        assert b.checkpoint(a.replica_id).received == 0
        assert _synchronous(b) == 2
