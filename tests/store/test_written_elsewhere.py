"""ReplicaStore.written_elsewhere: another connection's commit to the file is noticed once,
this connection's own commits are not."""

from __future__ import annotations

import threading

from tidesync.store.database import Database
from tests.models import Technician


def test_another_connections_commit_is_reported_once_with_the_new_head(tmp_path):
    path = tmp_path / "sync.db"
    server = Database(path, [Technician])
    try:
        assert server.written_elsewhere() is None            # the first call takes note
        with server.write():
            server.create(Technician, _id="a", name="A")
        assert server.written_elsewhere() is None            # its own commit: not elsewhere
        other = Database(path, [Technician])
        try:
            with other.write():
                other.create(Technician, _id="b", name="B")
            head = other.head_seq()
        finally:
            other.close()
        assert head == 2
        assert server.written_elsewhere() == head
        assert server.written_elsewhere() is None            # reported once
    finally:
        server.close()


def test_a_busy_replica_answers_at_once_and_reports_the_write_later(tmp_path):
    path = tmp_path / "sync.db"
    db = Database(path, [Technician])
    db.written_elsewhere()
    with Database(path, [Technician]) as other, other.write():
        other.create(Technician, _id="b", name="B")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        assert db.written_elsewhere() is None                # busy: no wait, nothing consumed
    finally:
        release.set()
        t.join(10)
    assert db.written_elsewhere() == 1
    db.close()
    assert db.written_elsewhere() is None                    # closed
