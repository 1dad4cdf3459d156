"""A small upload the server would integrate on its event loop (``ServerSession._integrates_inline``)
while another process holds the write lock on the server's file (``tidesync revert`` on a running
server's file, a second server process): the loop must not wait for that lock (SQLite's busy
timeout, 10 s), or every connection of the server stalls with it. The integration goes to a worker
thread, which waits for the lock, and lands once, when the lock is released.

Real components: an in-process server, synced devices over its WebSocket, and a second sqlite3
connection holding ``BEGIN IMMEDIATE`` on the server's ``sync.db``, as another process would."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.request

from tests.helpers.servers import running_server, synced_db
from tests.models import Technician
from tidesync.server.enforcement import Enforcer
from tidesync.server.sync_endpoint import ServerSession
from tidesync.store.engine import BUSY_TIMEOUT

T = 20


def test_a_small_upload_behind_another_processs_write_lock_leaves_the_loop_serving(tmp_path, monkeypatch):
    monkeypatch.setattr(ServerSession, "INLINE_BELOW", float("inf"))  # the loop path whatever commits cost
    calls: list[tuple[bool, bool]] = []   # (waits for the lock, in a worker thread) for the late upload
    arrived = threading.Event()
    integrate = Enforcer.integrate

    def spy(self, txns, peer, peer_seq, **kw):
        if any(op.key == "late" for t in txns for op in t.ops):
            calls.append((kw.get("wait", True), threading.current_thread().name.startswith("asyncio_")))
            arrived.set()
        return integrate(self, txns, peer, peer_seq, **kw)

    monkeypatch.setattr(Enforcer, "integrate", spy)
    server_file = tmp_path / "server" / "sync.db"
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p1")
        b = synced_db(tmp_path / "b.db", server.url, [Technician], partition="p1")
        try:
            with a.write():
                a.create(Technician, _id="first", name="before the lock")
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)

            other = sqlite3.connect(server_file, isolation_level=None, timeout=T)
            try:
                other.execute("BEGIN IMMEDIATE")
                with a.write():
                    a.create(Technician, _id="late", name="behind the lock")
                late_id = a.history(1)[0].id
                assert arrived.wait(T), "the upload never reached the server"
                time.sleep(0.3)  # long enough for the loop to be stuck in BEGIN, if it waits there
                begun = time.monotonic()
                with urllib.request.urlopen(server.url + "/health", timeout=T) as response:
                    assert json.loads(response.read())["ok"] is True
                took = time.monotonic() - begun
                assert took < BUSY_TIMEOUT / 5, f"/health took {took:.1f} s behind the write lock"
                # Still held: nothing of the upload is in the file yet.
                assert other.execute("SELECT count(*) FROM log WHERE id = ?", (late_id,)).fetchone()[0] == 0
            finally:
                other.execute("ROLLBACK")
                other.close()

            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            assert b.get(Technician, "late").name == "behind the lock"
        finally:
            a.close()
            b.close()
    # Never waited for the lock on the loop (tried there without waiting, unless the backend was
    # busy at that moment, an acknowledgement flush say), integrated in a worker thread.
    assert all(threaded or not waits for waits, threaded in calls), calls
    assert calls[-1] == (True, True), calls
    check = sqlite3.connect(server_file)
    try:
        origins = check.execute("SELECT id FROM log WHERE origin = ?", (a.replica_id,)).fetchall()
    finally:
        check.close()
    assert len(origins) == 2 and (late_id,) in origins, origins
