"""Initial sync is state-based and streamed; long offline periods and compaction lose nothing."""

from __future__ import annotations

import time

import pytest

from tests.helpers.servers import running_server, synced_db
from tests.models import Technician, WorkOrder

pytestmark = pytest.mark.slow
T = 30


def test_initial_sync_is_a_streamed_snapshot_and_local_work_goes_on_meanwhile(tmp_path):
    with running_server(tmp_path / "s") as server:
        seed = synced_db(tmp_path / "seed.db", server.url, [Technician])
        with seed.write():
            for i in range(1200):
                seed.create(Technician, _id=f"t{i:04}", name="v0")
        for round_ in range(1, 4):              # history three times longer than the state
            with seed.write():
                for t in seed.objects(Technician):
                    t.name = f"v{round_}"
        seed.sync_session.wait_for_upload_completion(timeout=T)
        seed.close()
        backend = server.app.state.tidesync.backend
        assert backend.head_seq() == 4

        fresh = synced_db(tmp_path / "fresh.db", server.url, [Technician])
        seen = []
        fresh.sync_session.add_progress_notifier(seen.append, "download")
        with fresh.write():                      # works before the bootstrap finished
            fresh.create(Technician, _id="local", name="written during bootstrap")
        assert fresh.get(Technician, "local") is not None
        fresh.sync_session.wait_for_download_completion(timeout=T)
        fresh.sync_session.wait_for_upload_completion(timeout=T)
        assert len(fresh.objects(Technician)) == 1201
        assert {t.name for t in fresh.objects(Technician).filter("_id != 'local'")} == {"v3"}
        # state-based: the server's four transactions were not replayed into the fresh log
        assert fresh._engine.query("SELECT count(*) FROM log WHERE via IS NOT NULL")[0][0] == 0
        pages = [p for p in seen if p.transferable >= 1200]
        assert len(pages) >= 3, seen          # streamed in several batches with progress
        assert pages[-1].transferred == pages[-1].transferable
        assert backend.get_raw("Technician", "local") is not None
        fresh.close()


def test_offline_writes_merge_after_the_server_compacted_its_log(tmp_path):
    with running_server(tmp_path / "s") as server:
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        b = synced_db(tmp_path / "b.db", server.url, [WorkOrder])
        with a.write():
            wo = a.create(WorkOrder, title="shared", tags=["x"])
        a.sync_session.wait_for_upload_completion(timeout=T)
        b.sync_session.wait_for_download_completion(timeout=T)
        b.sync_session.pause()                  # b goes offline "for days"
        with b.write():
            b.get(WorkOrder, wo._id).tags.append("from-b-offline")
            b.create(WorkOrder, title="created offline by b")
        for i in range(30):                     # a keeps working; the server's log grows
            with a.write():
                a.get(WorkOrder, wo._id).priority = i
        a.sync_session.wait_for_upload_completion(timeout=T)
        backend = server.app.state.tidesync.backend
        floor = backend.compact_log(keep_last=2)
        assert floor > b.checkpoint(backend.replica_id).received   # b fell behind the history
        b.sync_session.resume()                 # no client reset: bootstrap, keep, upload
        b.sync_session.wait_for_upload_completion(timeout=T)
        b.sync_session.wait_for_download_completion(timeout=T)
        a.sync_session.wait_for_download_completion(timeout=T)
        for db in (a, b):
            w = db.get(WorkOrder, wo._id)
            assert w.priority == 29 and sorted(w.tags) == ["from-b-offline", "x"]
            assert len(db.objects(WorkOrder).filter("title == 'created offline by b'")) == 1
        a.close()
        b.close()


def test_a_device_that_uploads_to_an_empty_server_gets_no_snapshot_of_its_own_documents(tmp_path):
    # Connected while the server's log was empty, the device's checkpoint stays 0; after its
    # upload the server must go on with its log (nothing to send), not bootstrap it with a
    # snapshot of the documents it just uploaded. A fresh device still bootstraps.
    with running_server(tmp_path / "s") as server:
        backend = server.app.state.tidesync.backend
        snapshots: list[object] = []
        read_log = backend.read_log

        def spy(after, **kw):
            batch = read_log(after, **kw)
            if batch.snapshot_required:
                snapshots.append(kw.get("exclude_origin"))
            return batch

        backend.read_log = spy
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        a.sync_session.wait_for_download_completion(timeout=T)
        for batch in range(3):
            with a.write():
                for i in range(20):
                    a.create(WorkOrder, title=f"w{batch}-{i}")
            a.sync_session.wait_for_upload_completion(timeout=T)
        a.sync_session.wait_for_download_completion(timeout=T)
        assert backend.head_seq() == 3
        assert snapshots == []
        a.close()
        fresh = synced_db(tmp_path / "fresh.db", server.url, [WorkOrder])
        fresh.sync_session.wait_for_download_completion(timeout=T)
        assert len(fresh.objects(WorkOrder)) == 60
        assert snapshots == [fresh.replica_id]
        fresh.close()


def test_the_server_compacts_its_log_to_log_keep_by_itself(tmp_path, monkeypatch):
    from tidesync.server import sync_endpoint

    # No compaction while the uploads arrive (under load they can take longer than a tick, and one
    # compaction in their middle leaves fewer than the 100 entries the next one waits for).
    monkeypatch.setattr(sync_endpoint._Shared, "COMPACT_TICKS", 10**9)
    with running_server(tmp_path / "s", log_keep=5) as server:
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        b = synced_db(tmp_path / "b.db", server.url, [WorkOrder])
        with a.write():
            wo = a.create(WorkOrder, title="shared")
        a.sync_session.wait_for_upload_completion(timeout=T)
        b.sync_session.wait_for_download_completion(timeout=T)
        b.sync_session.pause()
        with b.write():
            b.create(WorkOrder, title="offline on b")
        for i in range(120):                     # more than log_keep + the 100 a compaction waits for
            with a.write():
                a.get(WorkOrder, wo._id).priority = i
        a.sync_session.wait_for_upload_completion(timeout=T)
        backend = server.app.state.tidesync.backend
        monkeypatch.setattr(sync_endpoint._Shared, "COMPACT_TICKS", 1)   # now check every second
        deadline = time.monotonic() + T
        while backend.log_floor() != backend.head_seq() - 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert backend.log_floor() == backend.head_seq() - 5
        assert backend._engine.query("SELECT count(*) FROM log")[0][0] == 5
        b.sync_session.resume()                  # behind the floor: bootstraps, keeps its write
        b.sync_session.wait_for_upload_completion(timeout=T)
        b.sync_session.wait_for_download_completion(timeout=T)
        a.sync_session.wait_for_download_completion(timeout=T)
        for db in (a, b):
            assert db.get(WorkOrder, wo._id).priority == 119
            assert len(db.objects(WorkOrder).filter("title == 'offline on b'")) == 1
        a.close()
        b.close()
