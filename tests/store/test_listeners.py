"""Change listeners: results and objects, key-path filters, other threads and processes, asyncio."""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import threading

import pytest

import tidesync
from tests.models import Technician, WorkOrder

WAIT = 10


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "l.db", schema=[WorkOrder, Technician]) as d:
        yield d


def collector():
    q: queue.Queue = queue.Queue()
    return q, (lambda subject, changes: q.put(changes))


def test_results_listener_reports_realm_style_indices(db):
    with db.write():
        for i in range(4):
            db.create(WorkOrder, title=f"w{i}", priority=i)
    results = db.objects(WorkOrder).sort("priority")
    q, cb = collector()
    token = results.add_listener(cb)
    with db.write():
        db.delete(results[1])                       # old index 1
        results[2].title = "changed"                # w3, new index 1 after the delete... computed below
        db.create(WorkOrder, title="new", priority=10)
    changes = q.get(timeout=WAIT)
    assert changes.deletions == (1,)
    assert changes.insertions == (3,)
    assert changes.modifications == (1,) or changes.modifications == (2,)
    names = [w.title for w in results]
    assert names[changes.modifications[0]] == "changed"
    token.remove()
    with db.write():
        db.create(WorkOrder, title="unseen")
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)


def test_results_listener_not_called_for_unrelated_changes(db):
    with db.write():
        db.create(WorkOrder, title="a", status="open")
    q, cb = collector()
    db.objects(WorkOrder).filter("status == 'open'").add_listener(cb)
    with db.write():
        db.create(WorkOrder, title="b", status="done")
    with db.write():
        db.create(WorkOrder, title="c", status="open")
    changes = q.get(timeout=WAIT)
    assert changes.insertions == (1,) and not changes.deletions and not changes.modifications
    assert q.empty()


def test_key_path_filter_limits_what_triggers(db):
    with db.write():
        wo = db.create(WorkOrder, title="a")
    q, cb = collector()
    db.objects(WorkOrder).add_listener(cb, key_paths=["status"])
    with db.write():
        wo.priority = 5
    with db.write():
        wo.status = "done"
    changes = q.get(timeout=WAIT)
    assert changes.modifications == (0,)
    assert q.empty()


def test_object_listener_reports_changed_fields_and_deletion(db):
    with db.write():
        wo = db.create(WorkOrder, title="a")
    q, cb = collector()
    token = wo.add_listener(cb)
    with db.write():
        wo.title = "b"
        wo.tags.append("x")
    change = q.get(timeout=WAIT)
    assert not change.deleted and set(change.changed_fields) == {"title", "tags"}
    with db.write():
        db.delete(wo)
    assert q.get(timeout=WAIT).deleted
    token.remove()


def test_commits_from_another_thread_are_reported(tmp_path):
    path = tmp_path / "shared.db"
    with tidesync.open(path, schema=[Technician]) as db:
        q, cb = collector()
        db.objects(Technician).add_listener(cb)

        def writer():
            with tidesync.open(path, schema=[Technician]) as other:
                with other.write():
                    other.create(Technician, _id="t", name="from thread")

        t = threading.Thread(target=writer)
        t.start()
        t.join()
        assert q.get(timeout=WAIT).insertions == (0,)


def test_commits_from_another_process_are_reported(tmp_path):
    path = tmp_path / "shared.db"
    with tidesync.open(path, schema=[Technician]) as db:
        q, cb = collector()
        db.objects(Technician).add_listener(cb)
        code = (
            "import tidesync, sys\n"
            "from tests.models import Technician\n"
            f"db = tidesync.open({str(path)!r}, schema=[Technician])\n"
            "with db.write():\n"
            "    db.create(Technician, _id='p', name='from process')\n"
            "db.close()\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        assert q.get(timeout=WAIT).insertions == (0,)
        assert db.get(Technician, "p").name == "from process"


def test_async_iteration_over_changes(db):
    async def main():
        results = db.objects(WorkOrder)
        it = results.changes()
        waiter = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.1)
        await asyncio.to_thread(_write_one, db)
        changes = await asyncio.wait_for(waiter, WAIT)
        await it.aclose()
        return changes

    changes = asyncio.run(main())
    assert changes.insertions == (0,)


def _write_one(db):
    with db.write():
        db.create(WorkOrder, title="async")
