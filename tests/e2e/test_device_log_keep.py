"""A synced device opened with log_keep drops old log entries only once the server holds them:
writes made offline all upload, then the log shrinks."""

from __future__ import annotations

import time

import pytest

import tidesync
from tests.helpers.servers import running_server
from tests.models import Technician

pytestmark = pytest.mark.slow
T = 30


def test_a_device_trims_its_log_only_behind_what_the_server_acknowledged(tmp_path):
    with running_server(tmp_path / "server") as server:
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "users")
        user = app.log_in(tidesync.Credentials.anonymous())
        db = tidesync.open(tmp_path / "a.db", schema=[Technician], log_keep=5,
                           sync=tidesync.SyncConfig(user=user, partition="p"))
        try:
            db.sync_session.wait_for_download_completion(timeout=T)
            db.sync_session.pause()                            # offline: nothing is acknowledged
            for i in range(150):
                with db.write():
                    db.create(Technician, _id=f"t{i}", name="offline")
            time.sleep(1.5)
            assert db.log_floor() == 0                         # nothing dropped: the server has none of it
            db.sync_session.resume()
            db.sync_session.wait_for_upload_completion(timeout=T)
            backend = server.app.state.tidesync.backend
            assert len(backend._engine.query("SELECT 1 FROM documents WHERE collection = 'Technician'")) == 150
            deadline = time.monotonic() + T                    # acked is stored within about a second
            while db.log_floor() == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert db.log_floor() >= 100 and db.last_seq == 150
            assert len(db._engine.query("SELECT 1 FROM log")) == 150 - db.log_floor()
            with db.write():                                   # and it goes on syncing
                db.create(Technician, _id="after", name="online")
            db.sync_session.wait_for_upload_completion(timeout=T)
            assert backend.get_raw("Technician", "after") is not None
        finally:
            db.close()
