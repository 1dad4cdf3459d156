"""A small download hands the rows it committed to the cache and to the notifier
(``Database._handed``): object listeners get the same changes as when the notifier reads them
back, without reading; a later commit of another connection is still delivered."""

from __future__ import annotations

import queue
import threading

import pytest

import tidesync
from tests.models import Technician, WorkOrder
from tidesync.store.database import Database

WAIT = 10


def _collect(b, keys, changes):
    tokens = []
    for key in keys:
        obj = b.get(Technician, key)
        assert obj is not None
        tokens.append(obj.add_listener(
            lambda o, c, key=key: changes.put((key, c.deleted, c.changed_fields,
                                               None if c.deleted else o.name))))
    return tokens


@pytest.fixture(params=["handed", "read back"])
def mode(request, monkeypatch):
    if request.param == "read back":
        monkeypatch.setattr(Database, "_HANDED_MAX", 0)
    return request.param


def test_object_listeners_get_the_same_changes(tmp_path, mode):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        with a.write():
            a.create(Technician, _id="t1", name="one")
            a.create(Technician, _id="t2", name="two")
        b._integrate_download(a.export_transactions(since=0), a.replica_id, a.last_seq)
        changes: queue.Queue = queue.Queue()
        tokens = _collect(b, ["t1", "t2"], changes)
        notifier_reads = []
        b._engine._tracer = lambda sql, params: (
            notifier_reads.append(sql) if threading.current_thread() is b._listeners._thread else None)
        since = a.last_seq
        with a.write():
            a.get(Technician, "t1").name = "uno"
            a.delete(a.get(Technician, "t2"))
        b._integrate_download(a.export_transactions(since=since), a.replica_id, a.last_seq)
        got = sorted(changes.get(timeout=WAIT) for _ in range(2))
        assert got == [("t1", False, ("name",), "uno"), ("t2", True, (), None)]
        body_reads = [s for s in notifier_reads if s.startswith("SELECT body FROM documents")]
        # Read back: the notifier reads both documents, and the callback reads t1's name.
        assert len(body_reads) == (0 if mode == "handed" else 3)
        b._engine._tracer = None
        assert b.get(Technician, "t1").name == "uno" and b.get(Technician, "t2") is None
        assert b.get_raw(Technician.__name__, "t1") == a.get_raw(Technician.__name__, "t1")
        for t in tokens:
            t.remove()


def test_another_connections_commit_after_a_download_is_delivered(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        with a.write():
            a.create(Technician, _id="t1", name="one")
        b._integrate_download(a.export_transactions(since=0), a.replica_id, a.last_seq)
        changes: queue.Queue = queue.Queue()
        tokens = _collect(b, ["t1"], changes)
        since = a.last_seq
        with a.write():
            a.get(Technician, "t1").name = "uno"
        b._integrate_download(a.export_transactions(since=since), a.replica_id, a.last_seq)
        assert changes.get(timeout=WAIT) == ("t1", False, ("name",), "uno")
        with tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as other:
            with other.write():
                other.get(Technician, "t1").name = "eins"
        assert changes.get(timeout=WAIT) == ("t1", False, ("name",), "eins")
        assert b.get(Technician, "t1").name == "eins"
        for t in tokens:
            t.remove()
