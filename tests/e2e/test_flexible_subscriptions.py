"""Flexible sync, the client API end to end: subscription sets, states, waits, persistence,
initial subscriptions, ``results.subscribe`` and incremental changes, against a real server on
127.0.0.1 (development mode: every field queryable)."""

from __future__ import annotations

import pytest

import tidesync
from tests.helpers.flexible import T, Device, eventually, login
from tests.helpers.servers import running_server
from tests.models import Technician, WorkOrder

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "server") as s:
        yield s


def writer(server, tmp_path, name="writer"):
    """An unrestricted device (development mode allows the empty scope: everything)."""
    user = login(server.url, tmp_path, name)
    return tidesync.open(tmp_path / f"{name}.db", schema=[WorkOrder, Technician],
                         sync=tidesync.SyncConfig(user=user))


def seed(db, n=20):
    with db.write():
        for i in range(n):
            db.create(WorkOrder, title=f"wo{i}", status="open" if i % 2 else "closed", priority=i)
    db.sync_session.wait_for_upload_completion(timeout=T)


def priorities(db):
    return sorted(o.priority for o in db.objects(WorkOrder))


def test_the_issue_example_works_as_written(server, tmp_path):
    w = writer(server, tmp_path)
    seed(w)
    user = login(server.url, tmp_path, "tech")
    db = tidesync.open(tmp_path / "orders.db", schema=[WorkOrder],
                       sync=tidesync.SyncConfig(user=user, flexible=True))
    with db.subscriptions.update() as subs:
        subs.add(db.objects(WorkOrder).filter("status == $0", "open"), name="open-orders")
    db.subscriptions.wait_for_synchronization(timeout=10)
    assert db.subscriptions.state == "complete"
    assert priorities(db) == list(range(1, 20, 2))
    assert {o.status for o in db.objects(WorkOrder)} == {"open"}
    db.close()
    w.close()


def test_the_set_api_add_update_remove_find_iterate(server, tmp_path):
    dev = Device(server.url, tmp_path, "dev", [WorkOrder, Technician])
    db = dev.db
    subs = db.subscriptions
    assert len(subs) == 0 and subs.version == 0 and subs.state == "complete"
    open_q = db.objects(WorkOrder).filter("status == 'open'")
    with subs.update() as s:
        a = s.add(open_q, name="open")
        assert s.add(open_q, name="open") is a                      # same name, same query: no change
        s.add(db.objects(WorkOrder).filter("priority > 10"))         # unnamed
        s.add(db.objects(WorkOrder).filter("priority > 10"))         # the same unnamed query: kept once
        s.add(db.objects(Technician))                                # a whole collection
        with pytest.raises(tidesync.UsageError):
            s.add(db.objects(WorkOrder).filter("priority == 1"), name="open")   # the name is taken
        s.add(db.objects(WorkOrder).filter("priority == 1"), name="one")
    assert len(subs) == 4 and subs.version == 1
    assert [x.name for x in subs] == ["open", None, None, "one"]
    assert subs.find("open").query_string.startswith("status ==")
    assert subs.find(db.objects(WorkOrder).filter("priority > 10")) is not None
    assert subs.find(db.objects(WorkOrder).filter("priority > 11")) is None
    assert subs.find(open_q).name == "open"
    with subs.update() as s:
        s.add(db.objects(WorkOrder).filter("priority == 2"), name="one", update_existing=True)
        assert s.remove(db.objects(WorkOrder).filter("priority > 10"))
        assert not s.remove("no-such-name")
    assert subs.version == 2 and len(subs) == 3
    assert subs.find("one").query_string == "priority == 2"
    with subs.update() as s:
        assert s.remove_by_model(Technician) == 1
        assert s.remove("open")
    assert [x.name for x in subs] == ["one"]
    with subs.update() as s:
        assert s.remove_all() == 1
    assert len(subs) == 0 and subs.version == 4
    with subs.update() as s:                                         # nothing changed: no version
        s.remove_all()
    assert subs.version == 4
    with pytest.raises(tidesync.UsageError):
        with subs.update() as s:
            s.add(db.objects(WorkOrder).filter("technician.name == 'ann'"))   # through a link
    with pytest.raises(tidesync.UsageError):
        with subs.update() as s:
            s.add(db.objects(WorkOrder).limit(3))
    assert subs.version == 4                                         # a failed block commits nothing
    subs.wait_for_synchronization(timeout=T)
    dev.close()


def test_views_grow_shrink_and_follow_changes_and_only_the_difference_is_sent(server, tmp_path):
    w = writer(server, tmp_path)
    seed(w, 40)
    dev = Device(server.url, tmp_path, "dev", [WorkOrder])
    db, stats = dev.db, dev.db.subscriptions.stats
    dev.subscribe(open=(WorkOrder, "status == 'open'"))
    assert priorities(db) == list(range(1, 40, 2))
    assert stats["docs_received"] == 20
    # grow: only the new matches come
    with db.subscriptions.update() as s:
        s.add(db.objects(WorkOrder).filter("priority >= 30"), name="high")
    assert db.subscriptions.state in ("pending", "bootstrapping", "complete")
    db.subscriptions.wait_for_synchronization(timeout=T)
    assert priorities(db) == sorted(set(range(1, 40, 2)) | set(range(30, 40)))
    assert stats["docs_received"] == 25 and stats["docs_removed"] == 0
    # shrink: only the non-matches leave, removed from the device, not deleted anywhere
    with db.subscriptions.update() as s:
        s.remove("open")
    db.subscriptions.wait_for_synchronization(timeout=T)
    assert priorities(db) == list(range(30, 40))
    assert stats["docs_received"] == 25 and stats["docs_removed"] == 15
    assert len(w.objects(WorkOrder)) == 40
    assert db._engine.query("SELECT count(*) FROM log")[0][0] == 0    # nothing logged, nothing uploaded
    assert server.app.state.tidesync.backend._engine.query(
        "SELECT count(*) FROM documents WHERE live = 1")[0][0] == 40
    # changes on another device: one enters, one leaves, one stays and changes
    with w.write():
        w.objects(WorkOrder).filter("priority == 5").first().priority = 35      # enters, whole
        w.objects(WorkOrder).filter("priority == 31").first().priority = 3      # leaves
        w.objects(WorkOrder).filter("priority == 32").first().title = "changed"  # stays
    w.sync_session.wait_for_upload_completion(timeout=T)
    eventually(lambda: db.objects(WorkOrder).filter("title == 'changed'").first() is not None, what="change")
    eventually(lambda: sorted(o.title for o in db.objects(WorkOrder).filter("priority == 35")) == ["wo35", "wo5"],
               what="enter")
    eventually(lambda: db.objects(WorkOrder).filter("title == 'wo31'").first() is None, what="leave")
    assert stats["docs_received"] == 26 and stats["docs_removed"] == 16
    # documents written here move in and out of the view as well
    with db.write():
        db.objects(WorkOrder).filter("priority == 33").first().priority = 1     # moves itself out
        db.create(WorkOrder, title="mine", priority=99)                            # created in view
    dev.sync()
    eventually(lambda: db.objects(WorkOrder).filter("title == 'wo33'").first() is None, what="own leave")
    assert db.objects(WorkOrder).filter("title == 'mine'").first() is not None
    assert stats["docs_received"] == 26                                            # nothing echoed back
    eventually(lambda: w.objects(WorkOrder).filter("title == 'mine'").first() is not None, what="upload")
    dev.close()
    w.close()


def test_states_persisted_sets_and_restarts(tmp_path):
    with running_server(tmp_path / "server") as server:
        w = writer(server, tmp_path)
        seed(w)
        dev = Device(server.url, tmp_path, "dev", [WorkOrder])
        dev.subscribe(open=(WorkOrder, "status == 'open'"))
        first = dev.db.subscriptions.version
        with dev.db.subscriptions.update() as older:
            older.add(dev.db.objects(WorkOrder).filter("priority == 0"), name="zero")
        with dev.db.subscriptions.update() as newer:
            newer.remove("zero")
        newer.wait_for_synchronization(timeout=T)
        assert older.state == "superseded" and dev.db.subscriptions.state_of(first) == "superseded"
        older.wait_for_synchronization(timeout=T)                      # superseded by a complete one: done
        assert newer.state == "complete"
        dev.close()
        w.close()
    with running_server(tmp_path / "server") as server:                 # the server restarted too
        dev = Device(server.url, tmp_path, "dev", [WorkOrder])
        subs = dev.db.subscriptions
        assert [s.name for s in subs] == ["open"] and subs.state == "complete"
        assert len(dev.db.objects(WorkOrder)) == 10                     # the data stayed in the file
        received = subs.stats["docs_received"]
        dev.sync()
        subs.wait_for_synchronization(timeout=T)
        assert subs.stats["docs_received"] == received == 0             # nothing was sent again
        dev.close()


def test_initial_subscriptions_run_once_or_on_every_open(server, tmp_path):
    w = writer(server, tmp_path)
    seed(w)
    calls = []

    def initial(subs, db):                      # Realm's form: the set and the database
        calls.append(1)
        subs.add(db.objects(WorkOrder).filter("priority < $0", 3), name="low")

    user = login(server.url, tmp_path, "dev")
    for rerun, expected_calls in ((False, 1), (False, 1), (True, 2)):
        db = tidesync.open(tmp_path / "dev.db", schema=[WorkOrder], sync=tidesync.SyncConfig(
            user=user, flexible=True, initial_subscriptions=initial, rerun_initial_subscriptions=rerun))
        assert len(calls) == expected_calls
        db.subscriptions.wait_for_synchronization(timeout=T)
        assert [s.name for s in db.subscriptions] == ["low"]
        assert db.subscriptions.version == 1                          # a rerun that changes nothing
        assert priorities(db) == [0, 1, 2]
        db.close()
    w.close()


def test_results_subscribe_wait_modes(server, tmp_path):
    w = writer(server, tmp_path)
    seed(w)
    dev = Device(server.url, tmp_path, "dev", [WorkOrder])
    db = dev.db
    low = db.objects(WorkOrder).filter("priority < 3")
    got = low.subscribe(name="low")                                  # first_time: waits
    assert got is low and len(low) == 3 and db.subscriptions.state == "complete"
    version = db.subscriptions.version
    assert len(low.subscribe(name="low")) == 3                        # exists: no new version, no wait
    assert db.subscriptions.version == version
    high = db.objects(WorkOrder).filter("priority >= 17")
    high.subscribe(wait_for="never")                                 # returns at once
    assert db.subscriptions.state in ("pending", "bootstrapping", "complete")
    db.subscriptions.wait_for_synchronization(timeout=T)
    assert len(high) == 3
    with w.write():
        w.create(WorkOrder, title="late", priority=18)
    w.sync_session.wait_for_upload_completion(timeout=T)
    high.subscribe(wait_for="always", timeout=T)                      # waits for the download too
    assert len(high) == 4
    with pytest.raises(tidesync.UsageError):
        high.subscribe(wait_for="sometimes")
    plain = tidesync.open(tmp_path / "plain.db", schema=[WorkOrder])
    with pytest.raises(tidesync.UsageError):
        plain.objects(WorkOrder).subscribe()
    plain.close()
    dev.close()
    w.close()


def test_a_wait_times_out_while_offline(server, tmp_path):
    dev = Device(server.url, tmp_path, "dev", [WorkOrder])
    dev.db.sync_session.pause()
    with dev.db.subscriptions.update() as s:
        s.add(dev.db.objects(WorkOrder), name="all")
    assert dev.db.subscriptions.state == "pending"
    with pytest.raises(tidesync.TimeoutError):
        dev.db.subscriptions.wait_for_synchronization(timeout=0.3)
    dev.db.sync_session.resume()
    dev.db.subscriptions.wait_for_synchronization(timeout=T)
    dev.close()
