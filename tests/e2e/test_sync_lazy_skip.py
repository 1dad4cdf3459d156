"""A session of a partition that the server's new log entries cannot concern is woken later
(``ServerSession.local_commit``) and then reads from the head instead of filtering every entry
written since its last wake-up (``_Shared.skip_to``): its device's checkpoint still moves to
the head, and what is written in its own partition still reaches it."""

from __future__ import annotations


import pytest

from tests.helpers.waiting import eventually
from tests.helpers.servers import running_server, synced_db
from tests.models import Technician

T = 20


@pytest.mark.slow
def test_an_idle_partition_skips_other_partitions_entries_and_still_gets_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr("tidesync.server.sync_endpoint.ServerSession.LAZY_COMMIT", 0.05)
    with running_server(tmp_path / "server") as server:
        state = server.app.state.tidesync
        backend = state.backend
        # (after, the head as the sessions were last told, partition): entries past that head
        # (committed, not yet announced) are read as usual.
        reads: list[tuple[int, int, str | None]] = []
        read_log = backend.read_log

        def spy(after, **kw):
            part = (kw.get("scope") or {}).get("partition")
            reads.append((after, state._ts_sync_shared.head, None if part is None else part["value"]))
            return read_log(after, **kw)

        monkeypatch.setattr(backend, "read_log", spy)
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p1")
        x = synced_db(tmp_path / "x.db", server.url, [Technician], partition="x1")
        y = synced_db(tmp_path / "y.db", server.url, [Technician], partition="x1")
        try:
            with x.write():
                x.create(Technician, _id="x-first", name="x")
            x.sync_session.wait_for_upload_completion(timeout=T)
            y.sync_session.wait_for_download_completion(timeout=T)
            for i in range(8):
                with a.write():
                    a.create(Technician, _id=f"a{i}", name="a")
                a.sync_session.wait_for_upload_completion(timeout=T)
            head = backend.head_seq()
            eventually(lambda: x.sync_session._received >= head, what="x's checkpoint reaches the head")
            eventually(lambda: y.sync_session._received >= head, what="y's checkpoint reaches the head")
            x_reads = [(after, now) for after, now, part in reads if part == "x1" and 0 < after < now]
            assert x_reads == [], "a session of x1 filtered entries of p1 only"
            assert any(part == "x1" and after == now for after, now, part in reads)

            with y.write():   # its own partition's entry is read, not skipped
                y.create(Technician, _id="y-one", name="y")
            y.sync_session.wait_for_upload_completion(timeout=T)
            with a.write():
                a.create(Technician, _id="a-last", name="a")
            a.sync_session.wait_for_upload_completion(timeout=T)
            eventually(lambda: x.get(Technician, "y-one") is not None, what="x gets y's document")
            head = backend.head_seq()
            eventually(lambda: x.sync_session._received >= head, what="x's checkpoint reaches the head")
            assert sorted(t._id for t in x.objects(Technician)) == ["x-first", "y-one"]
            assert sorted(t._id for t in a.objects(Technician)) == ["a-last", *(f"a{i}" for i in range(8))]
        finally:
            for db in (a, x, y):
                db.close()
