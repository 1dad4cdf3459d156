"""The device keeps two checkpoint values of the server in memory and stores them later,
unsynced: ``acked`` (the server's ``Ack``s of its uploads: informational, the upload starts
where the server's ``Welcome`` says) and a ``received`` moved by a download that carried no
transaction (the empty echo of its own upload). Neither costs a database transaction per
message; both are stored when the connection ends (and at most a second later while it is
busy); a device whose stored values lag (a power loss rolled them back) syncs correctly."""

from __future__ import annotations

import sqlite3

import pytest

from tests.helpers.waiting import eventually
from tests.helpers.servers import running_server, synced_db
from tests.models import WorkOrder

T = 20


def _local_head(db) -> int:
    return int(db._engine.query("SELECT max(seq) FROM log WHERE via IS NULL")[0][0] or 0)


@pytest.mark.slow
def test_acks_and_empty_downloads_cost_no_transaction_and_are_stored_at_the_end(tmp_path, monkeypatch):
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        b = synced_db(tmp_path / "b.db", server.url, [WorkOrder])
        try:
            a.sync_session.wait_for_download_completion(timeout=T)
            acks: list[tuple[str, int]] = []
            empty_downloads: list[int] = []
            record_ack, integrate = a.record_ack, a._integrate_download
            monkeypatch.setattr(a, "record_ack", lambda peer, seq: (acks.append((peer, seq)), record_ack(peer, seq)))

            def spy(txns, peer, peer_seq, **kw):
                if not txns:
                    empty_downloads.append(peer_seq)
                return integrate(txns, peer, peer_seq, **kw)

            monkeypatch.setattr(a, "_integrate_download", spy)
            for i in range(5):
                with a.write():
                    a.create(WorkOrder, title=f"a{i}")
                a.sync_session.wait_for_upload_completion(timeout=T)
            with b.write():
                b.create(WorkOrder, title="from b")
            b.sync_session.wait_for_upload_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            server_id = a.sync_session._server_id
            assert server_id is not None
            assert not [seq for peer, seq in acks if peer == server_id]  # no write per Ack
            assert empty_downloads == []  # nor per empty download
            assert a.sync_session._acked >= _local_head(a)  # the session's own view is current
            assert "from b" in {w.title for w in a.objects(WorkOrder)}

            a.sync_session.pause()  # the connection ends: what was kept in memory is stored
            eventually(lambda: a.sync_session.connection_state == "disconnected", what="a disconnects")
            eventually(lambda: a.sync_session._unstored_acked is None, what="the checkpoint is stored")
            cp = a.checkpoint(server_id)
            assert cp.acked == _local_head(a)
            assert cp.received == a.sync_session._received

            a.sync_session.resume()  # and when the database is closed
            eventually(lambda: a.sync_session.connection_state == "connected", what="a reconnects")
            with a.write():
                a.create(WorkOrder, title="last")
            a.sync_session.wait_for_upload_completion(timeout=T)
            head = _local_head(a)
        finally:
            a.close()
            b.close()
        with sqlite3.connect(tmp_path / "a.db") as raw:
            assert raw.execute("SELECT acked FROM checkpoints WHERE peer = ?", (server_id,)).fetchone() == (head,)


@pytest.mark.slow
def test_a_busy_session_stores_its_checkpoint_within_the_delay(tmp_path, monkeypatch):
    monkeypatch.setattr("tidesync.client.session.SyncSession.UNSTORED_FOR", 0.0)
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        try:
            for i in range(3):
                with a.write():
                    a.create(WorkOrder, title=f"a{i}")
            a.sync_session.wait_for_upload_completion(timeout=T)
            server_id = a.sync_session._server_id
            # Stored after the next message the session handles, without a disconnect.
            with a.write():
                a.create(WorkOrder, title="one more")
            a.sync_session.wait_for_upload_completion(timeout=T)
            eventually(lambda: a.checkpoint(server_id).acked >= _local_head(a), what="acked stored")
            assert a.sync_session.connection_state == "connected"
        finally:
            a.close()


@pytest.mark.slow
def test_a_device_whose_stored_checkpoint_lags_syncs_without_loss_or_duplicates(tmp_path):
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        b = synced_db(tmp_path / "b.db", server.url, [WorkOrder])
        try:
            for i in range(3):
                with a.write():
                    a.create(WorkOrder, title=f"a{i}")
            with b.write():
                b.create(WorkOrder, title="b0")
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_upload_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            server_id = a.sync_session._server_id
        finally:
            a.close()
        # As after a power loss that rolled back the unsynced checkpoint values.
        with sqlite3.connect(tmp_path / "a.db") as raw:
            raw.execute("UPDATE checkpoints SET acked = 0, received = 0 WHERE peer = ?", (server_id,))
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        try:
            with a.write():
                a.create(WorkOrder, title="a3")
            with b.write():
                b.create(WorkOrder, title="b1")
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_upload_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            want = ["a0", "a1", "a2", "a3", "b0", "b1"]
            assert sorted(w.title for w in a.objects(WorkOrder)) == want
            assert sorted(w.title for w in b.objects(WorkOrder)) == want
        finally:
            a.close()
            b.close()
