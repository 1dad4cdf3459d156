"""The upload pipeline: a device on a local link sends its batches uncompressed (below 8 MiB),
the server decodes a batch that arrives while it integrates the previous one, and commits large
batches without the inline WAL checkpoint. Whatever the path, the server ends up with exactly
what the device wrote."""

from __future__ import annotations

import sqlite3

import pytest

from tests.helpers.servers import running_server, synced_db
from tests.models import Technician
from tidesync.client.session import LOCAL_COMPRESS_THRESHOLD, compress_threshold_for
from tidesync.protocol.codec import DEFAULT_COMPRESS_THRESHOLD

T = 60


@pytest.mark.parametrize(("url", "local"), [
    ("ws://127.0.0.1:9090/api/default/sync", True),
    ("wss://127.3.4.5/api/x/sync", True),
    ("ws://[::1]:80/api/x/sync", True),
    ("ws://LOCALHOST:80/api/x/sync", True),
    ("wss://sync.example.com/api/x/sync", False),
    ("ws://10.0.0.1:9090/api/x/sync", False),
    ("ws://[2001:db8::1]/api/x/sync", False),
    ("ws://[bad/api", False),
])
def test_a_local_link_compresses_only_very_large_bodies(url, local):
    assert compress_threshold_for(url) == (LOCAL_COMPRESS_THRESHOLD if local else DEFAULT_COMPRESS_THRESHOLD)


def _server_docs(path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=T)
    try:
        return int(con.execute("SELECT count(*) FROM documents WHERE collection = 'Technician' AND live = 1")
                   .fetchone()[0])
    finally:
        con.close()


def test_large_and_many_batches_arrive_whole(tmp_path):
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
            db.sync_session.resume()
            db.sync_session.wait_for_upload_completion(timeout=T)
        finally:
            db.close()
        assert _server_docs(tmp_path / "server" / "sync.db") == 3000 + 60 * 50
        other = synced_db(tmp_path / "b.db", server.url, [Technician], partition="up")
        try:
            other.sync_session.wait_for_download_completion(timeout=T)
            assert len(other.objects(Technician)) == 3000 + 60 * 50
        finally:
            other.close()
