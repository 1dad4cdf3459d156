"""The uploading session is woken for the entries of its own upload ``ECHO_DELAY`` later, once
for several uploads (``ServerSession.own_commit``): its upload's ``Ack`` is not delayed, the
other devices get the changes at once, and its device's checkpoint still reaches the head
(at the latest when the delay ends, sooner when a write that concerns it comes)."""

from __future__ import annotations


import pytest

from tests.helpers.waiting import eventually
from tests.helpers.servers import running_server, synced_db
from tests.models import Technician

T = 20


@pytest.mark.slow
def test_the_uploaders_checkpoint_moves_with_the_next_write_that_concerns_it(tmp_path, monkeypatch):
    monkeypatch.setattr("tidesync.server.sync_endpoint.ServerSession.ECHO_DELAY", 600.0)
    with running_server(tmp_path / "server") as server:
        backend = server.app.state.tidesync.backend
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p")
        b = synced_db(tmp_path / "b.db", server.url, [Technician], partition="p")
        try:
            for i in range(3):
                with a.write():
                    a.create(Technician, _id=f"a{i}", name="a")
                a.sync_session.wait_for_upload_completion(timeout=T)  # the Ack is not delayed
            eventually(lambda: b.get(Technician, "a2") is not None, what="b gets a's documents")
            head = backend.head_seq()
            eventually(lambda: b.sync_session._received >= head, what="b's checkpoint reaches the head")
            assert a.sync_session._received < head  # its echo waits (600 s here)
            with b.write():
                b.create(Technician, _id="b0", name="b")
            b.sync_session.wait_for_upload_completion(timeout=T)
            eventually(lambda: a.get(Technician, "b0") is not None, what="a gets b's document")
            head = backend.head_seq()
            eventually(lambda: a.sync_session._received >= head, what="a's checkpoint passes its own entries")
            assert sorted(t._id for t in a.objects(Technician)) == ["a0", "a1", "a2", "b0"]
            assert sorted(t._id for t in b.objects(Technician)) == ["a0", "a1", "a2", "b0"]
        finally:
            for db in (a, b):
                db.close()


@pytest.mark.slow
def test_the_uploaders_download_completes_after_its_own_writes(tmp_path):
    with running_server(tmp_path / "server") as server:
        backend = server.app.state.tidesync.backend
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p")
        try:
            for i in range(5):
                with a.write():
                    a.create(Technician, _id=f"a{i}", name="a")
            a.sync_session.wait_for_upload_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            head = backend.head_seq()
            eventually(lambda: a.sync_session._received >= head, what="a's checkpoint reaches the head")
        finally:
            a.close()


@pytest.mark.slow
def test_a_lazy_wake_up_is_brought_forward_for_the_echo(tmp_path, monkeypatch):
    # A write of another partition schedules a's lazy wake-up (LAZY_COMMIT, 600 s here); a's
    # own upload then needs its echo within ECHO_DELAY, not after the lazy one.
    monkeypatch.setattr("tidesync.server.sync_endpoint.ServerSession.LAZY_COMMIT", 600.0)
    with running_server(tmp_path / "server") as server:
        backend = server.app.state.tidesync.backend
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p")
        x = synced_db(tmp_path / "x.db", server.url, [Technician], partition="x")
        try:
            with x.write():
                x.create(Technician, _id="x0", name="x")
            x.sync_session.wait_for_upload_completion(timeout=T)
            with a.write():
                a.create(Technician, _id="a0", name="a")
            a.sync_session.wait_for_upload_completion(timeout=T)
            head = backend.head_seq()
            eventually(lambda: a.sync_session._received >= head, what="a's checkpoint reaches the head")
        finally:
            for db in (a, x):
                db.close()
