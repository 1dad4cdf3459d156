"""An idle partition session is woken for other partitions' entries only every
``ServerSession.LAZY_COMMIT`` seconds, but its device's ``wait_for_download_completion`` does
not wait for that: the ``GET sync/head`` it makes brings the wake-up forward
(``ServerSession.download_wanted``), and until a wake-up has reached that head every commit
wakes the session at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from tidesync.server.sync_endpoint import ServerSession

from tests.helpers.servers import running_server, synced_db
from tests.helpers.waiting import eventually
from tests.models import Technician

T = 20


@pytest.mark.slow
def test_waiting_for_the_download_does_not_wait_for_the_lazy_wake_up(tmp_path, monkeypatch):
    monkeypatch.setattr("tidesync.server.sync_endpoint.ServerSession.LAZY_COMMIT", 600.0)
    with running_server(tmp_path / "server") as server:
        backend = server.app.state.tidesync.backend
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p")
        x = synced_db(tmp_path / "x.db", server.url, [Technician], partition="x")
        try:
            with x.write():
                x.create(Technician, _id="x0", name="x")
            x.sync_session.wait_for_upload_completion(timeout=T)
            x.sync_session.wait_for_download_completion(timeout=T)
            for i in range(3):
                with a.write():
                    a.create(Technician, _id=f"a{i}", name="a")
                a.sync_session.wait_for_upload_completion(timeout=T)
            head = backend.head_seq()
            assert x.sync_session._received < head  # its wake-up is 300-900 s away
            started = time.monotonic()
            x.sync_session.wait_for_download_completion(timeout=T)
            assert x.sync_session._received >= head
            assert time.monotonic() - started < T
            (session,) = server.app.state.tidesync._ts_sync_shared.partitions['"x"']
            eventually(lambda: session._wanted == 0, what="the head asked for is forgotten once reached")
            x.sync_session.wait_for_download_completion(timeout=T)  # asked again, caught up
            assert session._wanted == 0  # nothing to wait for: later commits stay lazy
            # Nothing of p reached x; x's own document is still there, once.
            assert [t._id for t in x.objects(Technician)] == ["x0"]
        finally:
            for db in (a, x):
                db.close()


@pytest.mark.slow
def test_a_head_not_yet_announced_wakes_the_session_at_the_next_commit(tmp_path, monkeypatch):
    # The head a device was told can count entries whose integration the sessions have not
    # been woken for yet: the wake-up made at the request reads less, and the announcement
    # of those entries (of another partition) must wake the session at once, not lazily.
    monkeypatch.setattr("tidesync.server.sync_endpoint.ServerSession.LAZY_COMMIT", 600.0)
    loops: list[asyncio.AbstractEventLoop] = []
    local_commit = ServerSession.local_commit

    def spy(self: ServerSession) -> None:
        loops.append(asyncio.get_running_loop())
        local_commit(self)

    monkeypatch.setattr(ServerSession, "local_commit", spy)
    with running_server(tmp_path / "server") as server:
        state = server.app.state.tidesync
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p")
        x = synced_db(tmp_path / "x.db", server.url, [Technician], partition="x")
        try:
            x.sync_session.wait_for_download_completion(timeout=T)
            with a.write():
                a.create(Technician, _id="a0", name="a")
            a.sync_session.wait_for_upload_completion(timeout=T)
            shared = state._ts_sync_shared
            (session,) = shared.partitions['"x"']
            loop = loops[-1]  # the server's
            ahead = shared.head + 1

            async def want() -> tuple[int, bool]:
                session.download_wanted(ahead)  # one past what was announced so far
                await asyncio.sleep(0.2)
                return session._wanted, session._lazy_commit

            wanted, lazy = asyncio.run_coroutine_threadsafe(want(), loop).result(T)
            assert wanted == ahead and not lazy
            with a.write():
                a.create(Technician, _id="a1", name="a")
            a.sync_session.wait_for_upload_completion(timeout=T)
            head = state.backend.head_seq()
            assert head >= ahead
            eventually(lambda: x.sync_session._received >= head, timeout=T,
                       what="x's checkpoint reaches the head without its lazy wake-up")
            assert session._wanted == 0
        finally:
            for db in (a, x):
                db.close()


@pytest.mark.slow
def test_the_uploaders_wait_for_its_download_does_not_wait_for_its_echo(tmp_path, monkeypatch):
    # The uploader's checkpoint-only echo comes ECHO_DELAY after its uploads (600 s here), or
    # as soon as its device asks for the server's head.
    monkeypatch.setattr("tidesync.server.sync_endpoint.ServerSession.ECHO_DELAY", 600.0)
    monkeypatch.setattr("tidesync.server.sync_endpoint.ServerSession.LAZY_COMMIT", 600.0)
    with running_server(tmp_path / "server") as server:
        backend = server.app.state.tidesync.backend
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p")
        try:
            a.sync_session.wait_for_download_completion(timeout=T)
            for i in range(3):
                with a.write():
                    a.create(Technician, _id=f"a{i}", name="a")
                a.sync_session.wait_for_upload_completion(timeout=T)
            head = backend.head_seq()
            assert a.sync_session._received < head  # its echo waits
            a.sync_session.wait_for_download_completion(timeout=T)
            assert a.sync_session._received >= head
            with a.write():  # a later upload, once the head asked for is reached: lazy again
                a.create(Technician, _id="a3", name="a")
            a.sync_session.wait_for_upload_completion(timeout=T)
            assert a.sync_session._received < backend.head_seq()
            assert sorted(t._id for t in a.objects(Technician)) == ["a0", "a1", "a2", "a3"]
        finally:
            a.close()
