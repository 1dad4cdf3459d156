"""A device restored from a backup reconnects to a server that has compacted its log."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers.servers import running_server, synced_db
from tests.models import WorkOrder

pytestmark = pytest.mark.slow
T = 20


def _copy_db(src, dst) -> None:
    for suffix in ("", "-wal", "-shm"):
        s = src.with_name(src.name + suffix)
        d = dst.with_name(dst.name + suffix)
        if d.exists():
            d.unlink()
        if s.exists():
            shutil.copyfile(s, d)


def test_regression_a_device_restored_from_a_backup_after_compaction_integrates_nothing_twice(tmp_path):
    """The restored device's log is behind what the server acknowledged, so it uploads its
    whole log again ("the peer drops what it already has"). The server had compacted those
    transactions out of its log; it deduplicated against the log only, so it integrated them
    a second time (new log entries, fanned out again). It must know them by their descriptors."""
    with running_server(tmp_path / "server") as server:
        backend = server.app.state.tidesync.backend
        path, backup = tmp_path / "a.db", tmp_path / "backup.db"
        a = synced_db(path, server.url, [WorkOrder], partition="p1")
        with a.write():
            wo = a.create(WorkOrder, title="counted")
        key = wo._id
        for _ in range(3):
            with a.write():
                a.get(WorkOrder, key).visits.increment(5)
        a.sync_session.wait_for_upload_completion(timeout=T)
        a.close()
        _copy_db(path, backup)  # the backup: four transactions, all on the server

        a = synced_db(path, server.url, [WorkOrder], partition="p1")
        with a.write():
            a.get(WorkOrder, key).visits.increment(100)
        a.sync_session.wait_for_upload_completion(timeout=T)
        a.close()

        backend.compact_log(keep_last=0)
        head = backend.head_seq()

        _copy_db(backup, path)  # the device is restored from its backup
        a = synced_db(path, server.url, [WorkOrder], partition="p1")
        try:
            a.sync_session.wait_for_upload_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            assert backend.head_seq() == head, "the server integrated transactions it already had"
            with backend._lock:
                assert backend._engine.query("SELECT count(*) FROM log")[0][0] == 0
            assert a.get(WorkOrder, key).visits == 115
        finally:
            a.close()
