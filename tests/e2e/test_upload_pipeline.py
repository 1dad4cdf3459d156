"""The upload pipeline: the device reads its first batch while the server answers its Hello,
sends each batch as soon as it is encoded; the server decodes a batch that arrives while it
integrates the previous one, and commits large batches without the inline WAL checkpoint.
Whatever the path, the server ends up with exactly what the device wrote."""

from __future__ import annotations

import sqlite3

from tests.helpers.servers import running_server, synced_db
from tests.models import Technician

T = 60


def _server_docs(path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=T)
    try:
        return int(con.execute("SELECT count(*) FROM documents WHERE collection = 'Technician' AND live = 1")
                   .fetchone()[0])
    finally:
        con.close()


def test_large_and_many_batches_arrive_whole(tmp_path, monkeypatch):
    from tidesync.client.session import SyncSession

    warmed: list[int] = []
    original = SyncSession._warm_upload

    def counting(self):
        before = len(self._db.__dict__.get("_ts_log_cache")._rows) if self._db.__dict__.get("_ts_log_cache") else 0
        original(self)
        cache = self._db.__dict__.get("_ts_log_cache")
        warmed.append((len(cache._rows) if cache is not None else 0) - before)

    monkeypatch.setattr(SyncSession, "_warm_upload", counting)
    with running_server(tmp_path / "server") as server:
        db = synced_db(tmp_path / "a.db", server.url, [Technician], partition="up", batch_bytes=64 * 1024)
        try:
            db.sync_session.wait_for_download_completion(timeout=T)
            db.sync_session.pause()
            with db.write():  # one transaction of 3,000 documents: one batch, one commit
                for i in range(3000):
                    db.create(Technician, _id=f"big-{i}", name="n" * 60)
            for t in range(60):  # then 60 small transactions, in batches of 64 KiB
                with db.write():
                    for j in range(50):
                        db.create(Technician, _id=f"small-{t}-{j}", name="m" * 60)
            cache = db.__dict__.get("_ts_log_cache")
            if cache is not None:
                cache._rows.clear()  # as after a restart: the entries are read from the file
            db.sync_session.resume()
            db.sync_session.wait_for_upload_completion(timeout=T)
        finally:
            db.close()
        assert warmed and warmed[-1] >= 1  # the first batch was read ahead, during the handshake
        assert _server_docs(tmp_path / "server" / "sync.db") == 3000 + 60 * 50
        other = synced_db(tmp_path / "b.db", server.url, [Technician], partition="up")
        try:
            other.sync_session.wait_for_download_completion(timeout=T)
            assert len(other.objects(Technician)) == 3000 + 60 * 50
        finally:
            other.close()
