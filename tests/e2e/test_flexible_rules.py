"""Flexible sync with several users, permission rules and a configured server (queryable
fields), over real HTTP and WebSocket on 127.0.0.1: subscriptions intersected with read rules,
documents moving from one user's view to another's, writes outside every subscription, and
sets the server cannot serve (the error state)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import tidesync
from tests.helpers.flexible import T, Device, eventually, flexible_sessions, login
from tidesync.core.clock import HybridClock
from tidesync.core.operations import CreateDoc
from tidesync.core.stamp import ZERO, ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.server import start_server
from tidesync.server.config import load_config

pytestmark = pytest.mark.slow

TOML = """
[app]
id = "default"

[sync.flexible]
queryable_fields = ["assignee", "status"]
writes_outside_subscriptions = "%(outside)s"
[sync.flexible.collections.Job]
queryable_fields = ["priority"]

[auth.custom_data]
collection = "UserData"

[rules.Job]
[[rules.Job.roles]]
name = "dispatcher"
apply_when = { "%%%%user.custom_data.role" = "dispatcher" }
read = true
write = true
[[rules.Job.roles]]
name = "worker"
read = { "$or" = [{ assignee = "%%%%user.id" }, { shared = true }] }
write = { assignee = "%%%%user.id" }
[rules.Job.roles.fields]
salary = { read = false }
"""


class Job(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    assignee: str = ""
    status: str = "open"
    priority: int = 0
    title: str = ""
    shared: bool = False
    salary: int | None = None
    tags: list[str] = tidesync.field(default_factory=list)


def serve(tmp_path: Path, outside: str = "refuse"):
    path = tmp_path / "tidesync.toml"
    path.write_text(TOML % {"outside": outside})
    return start_server(load_config(path, data_dir=tmp_path / "server", port=0))


def make_dispatcher(server, uid: str) -> None:
    """Custom data (role: dispatcher) for a user, written straight into the server's store."""
    backend = server.app.state.tidesync.backend
    rid = ReplicaId("00000000000000aa")
    stamp = HybridClock(rid, lambda: time.time_ns() // 1_000_000).now()
    backend.integrate([Transaction(stamp, rid, stamp, (), (
        CreateDoc("UserData", f"ud-{uid}", stamp, ZERO, {"_id": f"ud-{uid}", "user_id": uid, "role": "dispatcher"},
                  {}),))])


@pytest.fixture
def world(tmp_path):
    server = serve(tmp_path)
    boss_user = login(server.url, tmp_path, "boss")
    make_dispatcher(server, boss_user.id)
    boss = Device(server.url, tmp_path, "boss", [Job], user=boss_user)
    ann = Device(server.url, tmp_path, "ann", [Job])
    bob = Device(server.url, tmp_path, "bob", [Job])
    yield server, boss, ann, bob
    for d in (boss, ann, bob):
        d.close()
    server.stop()


def test_read_rules_intersect_subscriptions_and_documents_move_between_users(world):
    server, boss, ann, bob = world
    boss.subscribe(all=(Job, "TRUEPREDICATE"))
    with boss.db.write():
        for i in range(6):
            who = ann.user.id if i < 3 else bob.user.id
            boss.db.create(Job, _id=f"j{i}", assignee=who, status="open", title=f"secret-{i}", salary=100 + i)
        boss.db.create(Job, _id="shared", assignee="nobody", status="open", shared=True, title="for all")
        boss.db.create(Job, _id="closed", assignee=ann.user.id, status="closed", title="done")
    boss.sync()
    ann.subscribe(open=(Job, "status == 'open'"))
    bob.subscribe(open=(Job, "status == 'open'"))
    assert ann.ids(Job) == {"j0", "j1", "j2", "shared"}
    assert bob.ids(Job) == {"j3", "j4", "j5", "shared"}
    assert all(j.salary is None for j in ann.db.objects(Job))          # a hidden field never arrives
    ann.db.close()
    assert b"secret-3" not in b"".join(p.read_bytes() for p in ann.path.parent.glob("ann.db*"))
    ann.db = ann._open()
    # The dispatcher hands j1 from ann to bob: it leaves ann's device, arrives whole at bob's.
    with boss.db.write():
        boss.db.get(Job, "j1").assignee = bob.user.id
        boss.db.get(Job, "j1").title = "reassigned"
    boss.sync()
    eventually(lambda: "j1" not in ann.ids(Job), what="leaving ann")
    eventually(lambda: "j1" in bob.ids(Job), what="arriving at bob")
    assert bob.db.get(Job, "j1").title == "reassigned"
    assert boss.db.get(Job, "j1") is not None                            # not deleted anywhere
    # Closing a job moves it out of its owner's view, as the owner's own write.
    with bob.db.write():
        bob.db.get(Job, "j3").status = "closed"
    bob.sync()
    eventually(lambda: "j3" not in bob.ids(Job), what="own write leaving")
    eventually(lambda: boss.db.get(Job, "j3").status == "closed", what="upload")


def test_a_write_outside_every_subscription_is_refused_with_a_compensating_write(world):
    server, boss, ann, bob = world
    ann.subscribe(open=(Job, "status == 'open'"))
    with ann.db.write():
        ann.db.create(Job, _id="ok", assignee=ann.user.id, status="open")
        ann.db.create(Job, _id="out", assignee=ann.user.id, status="closed", title="outside")
    writes = ann.compensated()
    assert [(w["id"], w["operation"], w["code"]) for w in writes] == [("out", "create", "outside_subscriptions")]
    assert "outside every subscription" in writes[0]["reason"]
    eventually(lambda: ann.db.get(Job, "out") is None, what="compensation")
    assert ann.db.get(Job, "ok") is not None
    backend = server.app.state.tidesync.backend
    assert backend.get_raw("Job", "out") is None and backend.get_raw("Job", "ok") is not None


def test_the_config_may_accept_writes_outside_subscriptions(tmp_path):
    server = serve(tmp_path, outside="accept")
    ann = Device(server.url, tmp_path, "ann", [Job])
    try:
        ann.subscribe(open=(Job, "status == 'open'"))
        with ann.db.write():
            ann.db.create(Job, _id="out", assignee=ann.user.id, status="closed")
        ann.sync()
        backend = server.app.state.tidesync.backend
        eventually(lambda: backend.get_raw("Job", "out") is not None, what="accepted upload")
        eventually(lambda: ann.db.get(Job, "out") is None, what="leaving the view")
        assert not ann.errors
    finally:
        ann.close()
        server.stop()


def test_a_set_the_server_cannot_serve_is_in_error_and_the_previous_one_keeps_working(world):
    server, boss, ann, bob = world
    boss.subscribe(all=(Job, "TRUEPREDICATE"))
    with boss.db.write():
        boss.db.create(Job, _id="a1", assignee=ann.user.id, priority=5, title="one")
    boss.sync()
    ann.subscribe(mine=(Job, "priority > 1"))                          # priority: queryable for Job
    assert ann.ids(Job) == {"a1"}
    with ann.db.subscriptions.update() as subs:
        subs.add(ann.db.objects(Job).filter("title == 'x'"), name="by-title")
    with pytest.raises(tidesync.SubscriptionError) as info:
        ann.db.subscriptions.wait_for_synchronization(timeout=T)
    assert "'title' is not queryable" in info.value.message and "assignee" in info.value.message
    assert ann.db.subscriptions.state == "error"
    assert "title" in ann.db.subscriptions.error
    assert ann.ids(Job) == {"a1"}                                       # the data stays
    with boss.db.write():                                               # the previous set still syncs
        boss.db.create(Job, _id="a2", assignee=ann.user.id, priority=7)
    boss.sync()
    eventually(lambda: "a2" in ann.ids(Job), what="previous set still served")
    # an operator the server does not run
    with ann.db.subscriptions.update() as subs:
        subs.remove("by-title")
        subs.add(ann.db.objects(Job).filter("tags.@count > 1"), name="counted")
    with pytest.raises(tidesync.SubscriptionError) as info:
        ann.db.subscriptions.wait_for_synchronization(timeout=T)
    assert "@count" in info.value.message
    # the error survives a restart of the app; fixing the set recovers
    ann.reopen()
    assert ann.db.subscriptions.state == "error"
    with ann.db.subscriptions.update() as subs:
        subs.remove("counted")
        subs.add(ann.db.objects(Job).filter("status == 'open'"), name="open")
    ann.db.subscriptions.wait_for_synchronization(timeout=T)
    assert ann.ids(Job) == {"a1", "a2"}
    assert flexible_sessions(server)


def test_flexible_sync_off_and_partition_sync_served_at_the_same_time(tmp_path):
    path = tmp_path / "tidesync.toml"
    path.write_text('[app]\nid = "default"\n')
    server = start_server(load_config(path, data_dir=tmp_path / "server", port=0))
    try:
        dev = Device(server.url, tmp_path, "dev", [Job])
        eventually(lambda: dev.db.sync_session.state == "inactive", what="refusal")
        assert "not enabled" in str(dev.errors[-1])
        dev.close()
    finally:
        server.stop()
    path.write_text('[app]\nid = "default"\n[sync.flexible]\nqueryable_fields = ["status"]\n')
    server = start_server(load_config(path, data_dir=tmp_path / "server2", port=0))
    try:

        class Part(tidesync.Model):
            _id: str = tidesync.field(primary_key=True)
            status: str = "open"

        flex = Device(server.url, tmp_path, "flex", [Part])
        flex.subscribe(open=(Part, "status == 'open'"))
        user = login(server.url, tmp_path, "part")
        part = tidesync.open(tmp_path / "part.db", schema=[Part],
                             sync=tidesync.SyncConfig(user=user, partition="p1"))
        with part.write():
            part.create(Part, _id="x")
        part.sync_session.wait_for_upload_completion(timeout=T)
        eventually(lambda: flex.db.get(Part, "x") is not None, what="partition write reaching a flexible device")
        with flex.db.write():
            flex.db.create(Part, _id="y")                                # no partition: not p1's
        flex.sync()
        eventually(lambda: server.app.state.tidesync.backend.get_raw("Part", "y") is not None, what="upload")
        part.sync_session.wait_for_download_completion(timeout=T)
        assert part.get(Part, "y") is None and part.get(Part, "x") is not None
        part.close()
        flex.close()
    finally:
        server.stop()
