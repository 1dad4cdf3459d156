"""A transaction larger than the maximum sync message syncs in parts (protocol feature
``parts``), both ways, over real connections; cut mid-transfer, nothing is lost or
duplicated. Small limits keep the transfers small."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from tests.helpers.proxy import ChaosProxy
from tests.helpers.servers import running_server, synced_db
from tests.models import Technician

pytestmark = pytest.mark.slow
T = 30
LIMITS = {"max_message_size": 64 * 1024, "max_assembled_size": 4 * 1024 * 1024}


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "server", **LIMITS) as s:
        yield s


def device(path, url, **config):
    return synced_db(path, url, [Technician], **LIMITS, **config)


def write_big(db, n=600, prefix="t"):
    """One transaction of ``n`` documents with incompressible names (about 250 bytes each)."""
    with db.write():
        db.create_many(Technician, ({"_id": f"{prefix}{i}", "name": os.urandom(100).hex()} for i in range(n)))
    return db.history(1)[0].id


def seed(a, b):
    """A first small write that ``b`` receives: from then on ``b`` gets log entries, not a
    bootstrap snapshot (docs/protocol.md, "Snapshots")."""
    with a.write():
        a.create(Technician, _id="seed", name="s")
    a.sync_session.wait_for_upload_completion(timeout=T)
    b.sync_session.wait_for_download_completion(timeout=T)
    assert b.get(Technician, "seed") is not None


def log_count(path, txn_id):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM log WHERE id = ?", (txn_id,)).fetchone()[0]
    finally:
        conn.close()


def test_a_transaction_over_the_message_size_reaches_connected_and_fresh_devices(server, tmp_path):
    a = device(tmp_path / "a.db", server.url)
    b = device(tmp_path / "b.db", server.url)
    try:
        seed(a, b)
        arrived = threading.Event()
        b.objects(Technician).add_listener(lambda r, c: len(r) == 602 and arrived.set())
        big = write_big(a)
        with a.write():
            a.create(Technician, _id="after", name="small")     # queued behind the big one
        a.sync_session.wait_for_upload_completion(timeout=T)
        assert arrived.wait(T)
        assert {t._id for t in b.objects(Technician)} == {f"t{i}" for i in range(600)} | {"after", "seed"}
        assert b.get(Technician, "t599").name == a.get(Technician, "t599").name
        assert log_count(tmp_path / "server" / "sync.db", big) == 1
        assert log_count(tmp_path / "b.db", big) == 1          # came as one transaction, not a snapshot
        c = device(tmp_path / "c.db", server.url)
        try:
            c.sync_session.wait_for_download_completion(timeout=T)
            assert len(c.objects(Technician)) == 602
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_an_upload_in_parts_cut_mid_transfer_is_retried_whole_once(server, tmp_path):
    with ChaosProxy(server.config.port) as proxy:
        a = device(tmp_path / "a.db", proxy.url, min_backoff=0.05, max_backoff=0.2)
        b = device(tmp_path / "b.db", server.url)
        try:
            seed(a, b)
            proxy.cut_after(100_000, "up")
            big = write_big(a, 1200)
            assert proxy.wait_cut(T)
            proxy.disarm()
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            assert len(b.objects(Technician)) == 1201
            assert log_count(tmp_path / "server" / "sync.db", big) == 1
        finally:
            a.close()
            b.close()


def test_a_download_in_parts_cut_mid_transfer_arrives_whole_once(server, tmp_path):
    with ChaosProxy(server.config.port) as proxy:
        a = device(tmp_path / "a.db", server.url)
        b = device(tmp_path / "b.db", proxy.url, min_backoff=0.05, max_backoff=0.2)
        try:
            seed(a, b)
            proxy.cut_after(100_000, "down")
            big = write_big(a, 1200)
            a.sync_session.wait_for_upload_completion(timeout=T)
            assert proxy.wait_cut(T)
            proxy.disarm()
            b.sync_session.wait_for_download_completion(timeout=T)
            assert len(b.objects(Technician)) == 1201
            assert log_count(tmp_path / "b.db", big) == 1
        finally:
            a.close()
            b.close()


def test_a_transaction_over_the_assembled_limit_is_reported_once_and_stays_local(server, tmp_path):
    errors = []
    a = synced_db(tmp_path / "a.db", server.url, [Technician], max_message_size=64 * 1024,
                  max_assembled_size=100 * 1024, min_backoff=0.05, max_backoff=0.1,
                  error_handler=lambda session, error: errors.append(error))
    try:
        write_big(a, 1200)                                   # about 300 KB encoded
        deadline = threading.Event()
        for _ in range(100):
            if errors:
                break
            deadline.wait(0.1)
        deadline.wait(1.0)                                   # several retries meanwhile
        assert len(errors) == 1
        assert errors[0].code == "message_too_large" and "split the write" in errors[0].advice
        assert len(a.objects(Technician)) == 1200             # nothing lost locally
    finally:
        a.close()
