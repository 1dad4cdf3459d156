"""A results listener whose query reads one collection is not re-run for a sync download that
changed only other collections (``ListenerHub._changed``): the same callbacks as re-running it,
fewer queries. Queries that follow links, and deliveries covering more than one commit, are
re-run as before."""

from __future__ import annotations

import queue
import threading
import time

import tidesync
from tests.models import Technician, WorkOrder
from tidesync.store.results import Results

WAIT = 10


def _pair(tmp_path):
    return (tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]),
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]))


def _download(a, b, since: int) -> int:
    b._integrate_download(a.export_transactions(since=since), a.replica_id, a.last_seq)
    return a.last_seq


def _count_queries(monkeypatch, b) -> list[str]:
    """The collections whose listened results the notifier thread re-ran."""
    ran: list[str] = []
    snapshot = Results._snapshot_keys

    def spy(self):
        if threading.current_thread() is b._listeners._thread:
            ran.append(self._cls.__name__)
        return snapshot(self)

    monkeypatch.setattr(Results, "_snapshot_keys", spy)
    return ran


def test_a_download_of_another_collection_does_not_rerun_the_query(tmp_path, monkeypatch):
    a, b = _pair(tmp_path)
    with a, b:
        with a.write():
            a.create(Technician, _id="t1", name="one")
            a.create(WorkOrder, title="first")
        since = _download(a, b, 0)
        got: queue.Queue = queue.Queue()
        token = b.objects(WorkOrder).add_listener(lambda res, changes: got.put(("orders", changes)))
        techs = b.objects(Technician).add_listener(lambda res, changes: got.put(("techs", changes)))
        ran = _count_queries(monkeypatch, b)
        with a.write():
            a.get(Technician, "t1").name = "uno"
        since = _download(a, b, since)
        name, changes = got.get(timeout=WAIT)
        assert name == "techs" and changes.modifications == (0,)
        with a.write():
            a.create(WorkOrder, title="second")
        since = _download(a, b, since)
        name, changes = got.get(timeout=WAIT)
        assert name == "orders" and changes.insertions == (1,)
        assert ran == ["Technician", "WorkOrder"]  # each query only for its own collection's download
        assert got.empty()
        token.remove()
        techs.remove()


def test_a_query_through_a_link_is_rerun_for_the_linked_collection(tmp_path, monkeypatch):
    a, b = _pair(tmp_path)
    with a, b:
        with a.write():
            tech = a.create(Technician, _id="t1", name="one")
            a.create(WorkOrder, title="first", technician=tech)
        since = _download(a, b, 0)
        got: queue.Queue = queue.Queue()
        token = b.objects(WorkOrder).filter("technician.name == 'uno'").add_listener(
            lambda res, changes: got.put(changes))
        with a.write():
            a.get(Technician, "t1").name = "uno"
        _download(a, b, since)
        assert got.get(timeout=WAIT).insertions == (0,)
        token.remove()


class _Held:
    """Stands in for the notifier's wake-up event: its thread waits until ``gate`` opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.gate.wait()
        return True

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


def test_two_commits_in_one_delivery_rerun_every_query(tmp_path):
    a, b = _pair(tmp_path)
    with a, b:
        with a.write():
            a.create(Technician, _id="t1", name="one")
        since = _download(a, b, 0)
        got: queue.Queue = queue.Queue()
        token = b.objects(WorkOrder).add_listener(lambda res, changes: got.put(changes))
        hub = b._listeners
        real, held = hub._wake, _Held()
        hub._wake = held
        time.sleep(0.3)  # the notifier's current wait (50 ms) ends; the next one waits on the gate
        with a.write():
            a.create(WorkOrder, title="new")
        since = _download(a, b, since)
        with a.write():
            a.get(Technician, "t1").name = "uno"   # the last commit: another collection
        _download(a, b, since)
        hub._wake = real
        held.gate.set()
        assert got.get(timeout=WAIT).insertions == (0,)
        token.remove()
