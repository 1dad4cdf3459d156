"""A synced database's write_copy() ships pre-filled (Realm's bundled realm): the device that
opens it is a new peer that downloads only what is newer, and writes from every side meet.
A copy is refused while the server has not acknowledged every local write. Real server."""

from __future__ import annotations

import sqlite3
import threading

import pytest

import tidesync
from tests.helpers.servers import running_server, synced_db
from tests.models import Technician

pytestmark = pytest.mark.slow
T = 20


def names(db: tidesync.Database) -> dict[str, str]:
    return {t._id: t.name for t in db.objects(Technician)}


def test_a_bundled_copy_syncs_as_a_new_device_without_downloading_again(tmp_path):
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [Technician])
        b = synced_db(tmp_path / "b.db", server.url, [Technician])
        c = None
        try:
            with a.write():
                for i in range(200):
                    a.create(Technician, _id=f"t{i:03}", name="seed")
            with b.write():
                b.create(Technician, _id="from-b", name="b")
            for db in (a, b):
                db.sync_session.wait_for_upload_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            assert len(a.objects(Technician)) == 201
            a.write_copy(tmp_path / "bundle.db")

            with b.write():                                   # after the copy: the bundle lacks it
                b.get(Technician, "t000").name = "renamed by b"
            b.sync_session.wait_for_upload_completion(timeout=T)

            with sqlite3.connect(tmp_path / "bundle.db") as raw:
                received_before = raw.execute("SELECT count(*) FROM log WHERE via IS NOT NULL").fetchone()[0]
                # a's writes are the server's to the bundle: nothing of them is uploaded again
                assert raw.execute("SELECT count(*) FROM log WHERE via IS NULL").fetchone()[0] == 0
            raw.close()
            c = synced_db(tmp_path / "bundle.db", server.url, [Technician])   # another install, another user
            uploads: list[tidesync.Progress] = []
            c.sync_session.add_progress_notifier(uploads.append, "upload")
            assert c.replica_id not in (a.replica_id, b.replica_id)
            seen: list[tidesync.Progress] = []
            c.sync_session.add_progress_notifier(seen.append, "download")
            c.sync_session.wait_for_download_completion(timeout=T)
            assert c.get(Technician, "t000").name == "renamed by b"
            assert len(c.objects(Technician)) == 201
            # No bootstrap: only the newer transaction came, into the log.
            assert all(p.transferable < 200 for p in seen), seen
            assert c._engine.query("SELECT count(*) FROM log WHERE via IS NOT NULL")[0][0] == received_before + 1

            fired = threading.Event()
            a.objects(Technician).add_listener(lambda r, ch: ch.insertions and fired.set())
            with c.write():
                c.create(Technician, _id="from-c", name="c")
            assert fired.wait(T)
            c.sync_session.wait_for_upload_completion(timeout=T)
            assert uploads and max(p.transferable for p in uploads) == 1, uploads   # c's one create only
            b.sync_session.wait_for_download_completion(timeout=T)
            for db in (a, b, c):
                db.sync_session.wait_for_download_completion(timeout=T)
            assert names(a) == names(b) == names(c)
            assert server.app.state.tidesync.backend.get_raw("Technician", "from-c") is not None
        finally:
            for db in (a, b, c):
                if db is not None:
                    db.close()


def test_a_copy_waits_for_the_upload_of_every_local_write(tmp_path):
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [Technician])
        try:
            a.sync_session.wait_for_download_completion(timeout=T)
            a.sync_session.pause()
            with a.write():
                a.create(Technician, _id="offline", name="not uploaded")
            with pytest.raises(tidesync.UsageError, match="wait_for_upload_completion"):
                a.write_copy(tmp_path / "early.db")
            assert not (tmp_path / "early.db").exists()
            a.sync_session.resume()
            a.sync_session.wait_for_upload_completion(timeout=T)
            a.write_copy(tmp_path / "late.db")
        finally:
            a.close()
        with tidesync.open(tmp_path / "late.db", schema=[Technician]) as copy:
            assert names(copy) == {"offline": "not uploaded"}
