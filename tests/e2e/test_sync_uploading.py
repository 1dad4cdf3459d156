"""``ServerState.uploading`` over a real server: a device whose last batch ended before its head
(``Changes.to_seq < head``) is in the middle of an upload, so it is in the set; it leaves the
set when its last batch is integrated, or when its connection closes mid-upload. The flexible
router starts a round waiting out its spacing only when the set is empty (``Router._spacing``),
so a session left in it would hold every later stream's end back.

The raw-WebSocket tests send each batch by hand, so the set is looked at exactly between two
batches: the server sends a batch's ``Ack`` after noting the session (``ServerSession.
_integrated``), so once the test holds the ``Ack`` the set says what it must.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import pytest
from websockets.sync.client import connect

import tidesync
from tests.helpers.servers import running_server, synced_db
from tests.helpers.waiting import eventually
from tests.models import Technician
from tidesync.core.clock import HybridClock
from tidesync.core.operations import CreateDoc
from tidesync.core.stamp import ZERO, ReplicaId, Stamp
from tidesync.core.transaction import Transaction
from tidesync.protocol.codec import decode, encode
from tidesync.protocol.messages import Ack, Changes, Hello, Message, Welcome

pytestmark = pytest.mark.slow
T = 20


def _uploading_peers(server: Any) -> set[str]:
    """The replica ids of the sessions in the server's ``uploading`` set (read from this
    thread: copied until no event-loop change lands in the middle of the copy)."""
    state = server.app.state.tidesync
    for _ in range(100):
        try:
            return {s.replicator.peer for s in list(state.uploading)}
        except RuntimeError:   # (changed size during iteration)
            time.sleep(0.001)
    raise AssertionError("the uploading set kept changing")


class _RawDevice:
    """A device speaking the protocol by hand: one Hello, then batches of creates sent one at a time."""

    def __init__(self, url: str, token: str) -> None:
        self.rid = ReplicaId(secrets.token_hex(8))
        self.clock = HybridClock(self.rid, lambda: int(time.time() * 1000), Stamp(""))
        self.ws = connect(url, max_size=None, compression=None, open_timeout=T, close_timeout=T).__enter__()
        self.ws.send(encode(Hello(self.rid, token, {"partition": {"key": "_partition", "value": "up"}})))
        welcome = self._next()
        assert isinstance(welcome, Welcome) and welcome.checkpoint == 0, welcome

    def _next(self) -> Message:
        return decode(self.ws.recv(timeout=T))

    def send_batch(self, start: int, keys: list[str], head: int) -> None:
        """Send the entries ``start + 1 ...`` (one create each) as one batch, wait for its Ack."""
        entries = []
        for i, key in enumerate(keys, start + 1):
            s = self.clock.now()
            op = CreateDoc("Technician", key, s, ZERO, {"_id": key, "_partition": "up", "name": "raw"}, {})
            entries.append((i, Transaction(s, self.rid, s, (), (op,))))
        to_seq = start + len(keys)
        self.ws.send(encode(Changes(start, to_seq, head, tuple(entries))))
        while True:
            m = self._next()
            if isinstance(m, Ack):
                assert m.seq == to_seq, m
                return


@pytest.fixture
def served(tmp_path):
    with running_server(tmp_path / "server") as server:
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "users")
        user = app.log_in(tidesync.Credentials.anonymous())
        yield server, app.sync_url, user.access_token


def test_a_device_is_uploading_between_its_batches_and_leaves_after_its_last(served):
    server, url, token = served
    device = _RawDevice(url, token)
    try:
        assert _uploading_peers(server) == set()
        device.send_batch(0, ["a1", "a2"], head=5)
        assert _uploading_peers(server) == {device.rid}
        device.send_batch(2, ["a3", "a4"], head=5)
        assert _uploading_peers(server) == {device.rid}
        device.send_batch(4, ["a5"], head=5)   # the last: it reaches the head
        assert _uploading_peers(server) == set()
        # A later write of the device's, in one batch, goes in and out again.
        device.send_batch(5, ["a6"], head=6)
        assert _uploading_peers(server) == set()
    finally:
        device.ws.close()


def test_a_device_whose_head_grows_during_its_upload_stays_uploading_until_it_reaches_it(served):
    server, url, token = served
    device = _RawDevice(url, token)
    try:
        device.send_batch(0, ["g1"], head=2)
        device.send_batch(1, ["g2"], head=3)   # written meanwhile: the head moved on
        assert _uploading_peers(server) == {device.rid}
        device.send_batch(2, ["g3"], head=3)
        assert _uploading_peers(server) == set()
    finally:
        device.ws.close()


def test_a_device_whose_connection_closes_mid_upload_leaves_the_set(served):
    server, url, token = served
    leaving = _RawDevice(url, token)
    staying = _RawDevice(url, token)
    try:
        leaving.send_batch(0, ["c1"], head=3)
        staying.send_batch(0, ["s1"], head=2)
        assert _uploading_peers(server) == {leaving.rid, staying.rid}
        leaving.ws.close()
        eventually(lambda: _uploading_peers(server) == {staying.rid}, timeout=T,
                   what="the closed session left the uploading set")
        staying.send_batch(1, ["s2"], head=2)
        assert _uploading_peers(server) == set()
    finally:
        leaving.ws.close()
        staying.ws.close()


class _Recording(set):  # type: ignore[type-arg]
    """``ServerState.uploading`` that also notes, for each change, the peer and whether it
    was in the set afterwards (the event loop is the only writer)."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[str, bool]] = []
        self.lock = threading.Lock()

    def add(self, session: Any) -> None:
        super().add(session)
        with self.lock:
            self.changes.append((session.replicator.peer, True))

    def discard(self, session: Any) -> None:
        was = session in self
        super().discard(session)
        if was:
            with self.lock:
                self.changes.append((session.replicator.peer, False))


def test_a_synced_device_uploading_a_backlog_in_small_batches_is_uploading_until_its_last(tmp_path):
    """A real device (batch_limit=2) with 9 transactions written offline: the server notes it
    uploading after its first batches and not once its last is integrated."""
    with running_server(tmp_path / "server") as server:
        state = server.app.state.tidesync
        recording = state.uploading = _Recording()
        db = synced_db(tmp_path / "a.db", server.url, [Technician], partition="up", batch_limit=2)
        try:
            db.sync_session.wait_for_upload_completion(timeout=T)
            db.sync_session.pause()
            for i in range(9):
                with db.write():
                    db.create(Technician, _id=f"b{i}", name="written offline")
            with recording.lock:
                recording.changes.clear()
            db.sync_session.resume()
            db.sync_session.wait_for_upload_completion(timeout=T)
            eventually(lambda: not _uploading_peers(server), timeout=T, what="the device left the uploading set")
            with recording.lock:
                changes = list(recording.changes)
            mine = [inside for peer, inside in changes if peer == db.replica_id]
            assert mine and mine[0] is True, f"never noted uploading: {changes}"
            assert mine[-1] is False
            with server.app.state.tidesync.backend._lock:
                n = server.app.state.tidesync.backend._engine.query(
                    "SELECT count(*) FROM documents WHERE collection = 'Technician' AND live = 1")[0][0]
            assert n == 9
        finally:
            db.close()
        assert _uploading_peers(server) == set()
