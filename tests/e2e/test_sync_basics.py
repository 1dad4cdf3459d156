"""Two devices and a server over real HTTP and WebSocket on 127.0.0.1."""

from __future__ import annotations

import threading

import pytest

import tidesync
from tests.helpers.servers import running_server, synced_db
from tests.models import Technician, Ticket, WorkOrder

pytestmark = pytest.mark.slow
T = 20


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "server") as s:
        yield s


def test_the_issue_example_works_as_written(server, tmp_path):
    app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "users")
    user = app.log_in(tidesync.Credentials.anonymous())
    db = tidesync.open(tmp_path / "orders.db", schema=[WorkOrder],
                       sync=tidesync.SyncConfig(user=user, partition="store-42"))
    with db.write():
        db.create(WorkOrder, title="Fix pump")       # _partition filled in when omitted
    db.sync_session.wait_for_upload_completion(timeout=10)
    raw = db._engine.query("SELECT json_extract(body, '$._partition') FROM documents")
    assert raw == [("store-42",)]
    db.close()


def test_changes_flow_both_ways_and_listeners_fire(server, tmp_path):
    a = synced_db(tmp_path / "a.db", server.url, [WorkOrder, Technician])
    b = synced_db(tmp_path / "b.db", server.url, [WorkOrder, Technician])
    try:
        fired = threading.Event()
        b.objects(WorkOrder).add_listener(lambda r, c: c.insertions and fired.set())
        with a.write():
            wo = a.create(WorkOrder, title="from a", tags=["x"])
        assert fired.wait(T)
        assert b.get(WorkOrder, wo._id).title == "from a"
        with b.write():
            b.get(WorkOrder, wo._id).tags.append("y")
        b.sync_session.wait_for_upload_completion(timeout=T)
        a.sync_session.wait_for_download_completion(timeout=T)
        assert list(a.get(WorkOrder, wo._id).tags) == ["x", "y"]
    finally:
        a.close()
        b.close()


def test_a_client_syncs_only_its_partition(server, tmp_path):
    a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p1")
    b = synced_db(tmp_path / "b.db", server.url, [Technician], partition="p2")
    c = synced_db(tmp_path / "c.db", server.url, [Technician], partition="p1")
    try:
        with a.write():
            a.create(Technician, _id="a", name="in p1")
        with b.write():
            b.create(Technician, _id="b", name="in p2")
        for db in (a, b):
            db.sync_session.wait_for_upload_completion(timeout=T)
        for db in (a, b, c):
            db.sync_session.wait_for_download_completion(timeout=T)
        assert [t._id for t in c.objects(Technician)] == ["a"]
        assert [t._id for t in b.objects(Technician)] == ["b"]
    finally:
        for db in (a, b, c):
            db.close()


def test_writing_another_partition_raises_before_anything_is_uploaded(server, tmp_path):
    a = synced_db(tmp_path / "a.db", server.url, [Ticket], partition="p1")
    try:
        with a.write():
            t = a.create(Ticket, _id="t1", text="mine")
        assert t._partition == "p1"
        seq = a.last_seq
        with pytest.raises(tidesync.PartitionError, match="p2"):
            with a.write():
                a.create(Ticket, _id="t2", _partition="p2")
        with pytest.raises(tidesync.PartitionError):
            with a.write():
                t._partition = "p2"
        assert a.last_seq == seq and t._partition == "p1"
    finally:
        a.close()


def test_writes_while_offline_upload_after_reconnect(tmp_path):
    from tests.helpers.servers import free_port
    from tidesync.server import ServerConfig, start_server

    port = free_port()
    server = start_server(ServerConfig(data_dir=tmp_path / "s", port=port))
    a = synced_db(tmp_path / "a.db", server.url, [Technician])
    try:
        a.sync_session.wait_for_download_completion(timeout=T)
        server.stop()
        with a.write():
            a.create(Technician, _id="offline", name="written offline")
        with pytest.raises(tidesync.TimeoutError):
            a.sync_session.wait_for_upload_completion(timeout=0.5)
        server = start_server(ServerConfig(data_dir=tmp_path / "s", port=port))
        a.sync_session.wait_for_upload_completion(timeout=T)
        b = synced_db(tmp_path / "b.db", server.url, [Technician])
        b.sync_session.wait_for_download_completion(timeout=T)
        assert b.get(Technician, "offline").name == "written offline"
        b.close()
    finally:
        a.close()
        server.stop()


def test_pause_and_resume(server, tmp_path):
    a = synced_db(tmp_path / "a.db", server.url, [Technician])
    b = synced_db(tmp_path / "b.db", server.url, [Technician])
    try:
        a.sync_session.wait_for_download_completion(timeout=T)
        a.sync_session.pause()
        assert a.sync_session.state == "paused"
        with a.write():
            a.create(Technician, _id="p", name="while paused")
        with pytest.raises(tidesync.TimeoutError):
            a.sync_session.wait_for_upload_completion(timeout=0.5)
        assert a.sync_session.connection_state == "disconnected"
        a.sync_session.resume()
        a.sync_session.wait_for_upload_completion(timeout=T)
        b.sync_session.wait_for_download_completion(timeout=T)
        assert b.get(Technician, "p") is not None
    finally:
        a.close()
        b.close()


def test_progress_notifications(server, tmp_path):
    a = synced_db(tmp_path / "a.db", server.url, [Technician], batch_limit=10)
    seen = []
    a.sync_session.add_progress_notifier(seen.append, "upload")
    try:
        with a.write():
            for i in range(50):
                a.create(Technician, _id=f"t{i}", name="x")
        for i in range(20):
            with a.write():
                a.create(Technician, _id=f"u{i}", name="y")
        a.sync_session.wait_for_upload_completion(timeout=T)
        assert seen and seen[-1].estimate == 1.0
        assert all(p.transferred <= p.transferable for p in seen)
    finally:
        a.close()
