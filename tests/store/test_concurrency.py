"""Several threads and processes on one file; a process killed mid-write leaves it consistent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import tidesync
from tests.models import Technician, WorkOrder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_writes_from_threads_serialize_and_none_are_lost(tmp_path):
    path = tmp_path / "c.db"
    with tidesync.open(path, schema=[WorkOrder]) as db:
        with db.write():
            wo = db.create(WorkOrder, title="counter")
        pk = wo._id

    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with tidesync.open(path, schema=[WorkOrder]) as mine:
                for _ in range(n):
                    with mine.write():
                        mine.get(WorkOrder, pk).visits.increment(1)
                        mine.create(WorkOrder, title="row")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with tidesync.open(path, schema=[WorkOrder]) as db:
        assert db.get(WorkOrder, pk).visits == 100
        assert len(db.objects(WorkOrder)) == 101
        ids = [e.id for e in db.history(limit=1000)]
        assert len(ids) == len(set(ids)) == 101  # unique transaction ids across connections


def test_one_database_object_shared_by_threads(tmp_path):
    with tidesync.open(tmp_path / "s.db", schema=[Technician]) as db:
        def work(i: int) -> None:
            for j in range(20):
                with db.write():
                    db.create(Technician, _id=f"{i}-{j}", name="x")
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(db.objects(Technician)) == 80


_KILL_SCRIPT = r"""
import sys, tidesync
from tests.models import WorkOrder
db = tidesync.open(sys.argv[1], schema=[WorkOrder])
print("ready", flush=True)
batch = 0
while True:
    with db.write():
        for i in range(2000):
            db.create(WorkOrder, title=f"b{batch}", priority=batch)
    batch += 1
    print(batch, flush=True)
"""


def test_sigkill_mid_write_leaves_whole_transactions_only(tmp_path):
    path = tmp_path / "k.db"
    with tidesync.open(path, schema=[WorkOrder]):
        pass
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    committed = 0
    deadline = time.monotonic() + 60
    while committed < 3 and time.monotonic() < deadline:
        committed = int(proc.stdout.readline())
    time.sleep(0.05)  # somewhere inside the next write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    with tidesync.open(path, schema=[WorkOrder]) as db:
        assert db._engine.query("PRAGMA integrity_check")[0][0] == "ok"
        n = len(db.objects(WorkOrder))
        assert n % 2000 == 0 and n >= committed * 2000
        batches = n // 2000
        for b in range(batches):
            assert len(db.objects(WorkOrder).filter("priority == $0", b)) == 2000
        assert len(db.history(limit=10_000)) == batches
        assert db._engine.query("SELECT count(*) FROM documents")[0][0] == n


def test_reads_inside_a_write_see_what_another_connection_committed_just_before(tmp_path):
    """A write transaction holds the file's write lock: what it reads is the file's current
    state, even right after another connection's commit (no body read before it served from
    the cache), so a read-modify-write loses no update."""
    path = tmp_path / "rmw.db"
    with tidesync.open(path, schema=[WorkOrder]) as a, tidesync.open(path, schema=[WorkOrder]) as b:
        with a.write():
            pk = a.create(WorkOrder, title="old", priority=1)._id
        mine = b.get(WorkOrder, pk)
        assert (mine.title, mine.priority) == ("old", 1)  # read (and cached) before the other commit
        assert len(b.objects(WorkOrder).filter("priority == 1")) == 1
        for n in range(3):
            with a.write():
                theirs = a.get(WorkOrder, pk)
                theirs.priority += 1
                theirs.title = f"theirs {n}"
            with b.write():
                assert mine.title == f"theirs {n}"
                assert len(b.objects(WorkOrder).filter("priority == $0", mine.priority)) == 1
                mine.priority = mine.priority + 10
            assert a.get(WorkOrder, pk).priority == b.get(WorkOrder, pk).priority
        assert b.get(WorkOrder, pk).priority == 1 + 3 * 11
