"""The device's hand-offs on the propagation path. The session thread reads the socket itself
(client/_wsconn.py): messages reach it whole and in order, and its inbox wakes it while it
waits on the socket. Behind a proxy ``websockets``' client is used, whose socket thread puts
messages straight into the inbox (no reader thread)."""

from __future__ import annotations

import queue
import socket
import threading
import time

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from tests.helpers.servers import running_server, synced_db
from tests.models import WorkOrder
from tidesync.client._wsconn import SocketConnection, WakeInbox, direct_socket_usable
from tidesync.client.session import _direct_connection

T = 20


@pytest.fixture
def conn_and_inbox():
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    cls = _direct_connection(inbox)
    assert cls is not None
    ours, theirs = socket.socketpair()
    conn = cls(ours, ClientProtocol(parse_uri("ws://127.0.0.1/x")), ping_interval=None)
    conn.response = object()  # past the handshake: frames are messages now
    yield conn, inbox, theirs
    theirs.close()
    ours.close()


def test_whole_messages_go_to_the_inbox_in_order(conn_and_inbox):
    conn, inbox, _ = conn_and_inbox
    conn.process_event(Frame(Opcode.BINARY, b"one"))
    conn.process_event(Frame(Opcode.TEXT, b"tw", fin=False))
    conn.process_event(Frame(Opcode.PING, b"not a message"))  # control frames may interleave
    conn.process_event(Frame(Opcode.CONT, b"o", fin=False))
    conn.process_event(Frame(Opcode.CONT, b"", fin=True))
    conn.process_event(Frame(Opcode.BINARY, b"three"))
    got = [inbox.get_nowait() for _ in range(3)]
    assert got == [("data", (conn, b"one")), ("data", (conn, b"two")), ("data", (conn, b"three"))]
    assert inbox.empty()


def test_the_end_of_the_socket_is_reported_once(conn_and_inbox):
    conn, inbox, theirs = conn_and_inbox
    theirs.shutdown(socket.SHUT_RDWR)  # the peer goes away: the socket thread ends
    assert inbox.get(timeout=T) == ("lost", conn)
    conn.recv_events_thread.join(T)
    assert inbox.empty()


@pytest.mark.slow
@pytest.mark.parametrize("own_socket", [True, False])
def test_a_session_runs_without_a_reader_thread_and_listeners_fire(tmp_path, monkeypatch, own_socket):
    if not own_socket:  # as behind a proxy: websockets' threaded client
        monkeypatch.setattr("tidesync.client.session.direct_socket_usable", lambda url: False)
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        b = synced_db(tmp_path / "b.db", server.url, [WorkOrder])
        try:
            seen: queue.SimpleQueue = queue.SimpleQueue()
            b.objects(WorkOrder).add_listener(lambda r, c: c.insertions and seen.put(len(r)))
            for i in range(5):
                with a.write():
                    a.create(WorkOrder, title=f"w{i}")
                assert seen.get(timeout=T) >= 1
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            assert sorted(w.title for w in b.objects(WorkOrder)) == [f"w{i}" for i in range(5)]
            assert b.sync_session.connection_state == "connected"
            names = {t.name for t in threading.enumerate()}
            assert "tidesync-sync-reader" not in names
            # Own socket: read by the session thread (no websockets socket thread for it).
            assert isinstance(b.sync_session._ws, SocketConnection) == own_socket
            # A dropped connection is noticed without the reader thread: the session reconnects.
            b.sync_session._ws.close()
            deadline = time.monotonic() + T
            while time.monotonic() < deadline and b.sync_session.connection_state == "connected":
                time.sleep(0.01)
            with a.write():
                a.create(WorkOrder, title="after")
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            assert "after" in {w.title for w in b.objects(WorkOrder)}
        finally:
            a.close()
            b.close()


def test_frames_become_whole_messages_in_order():
    conn = SocketConnection.__new__(SocketConnection)  # only the frame assembly, no socket
    conn._fragments = None
    out: list[bytes] = []
    for frame in (Frame(Opcode.BINARY, b"one"), Frame(Opcode.TEXT, b"tw", fin=False), Frame(Opcode.PING, b"x"),
                  Frame(Opcode.CONT, b"o", fin=False), Frame(Opcode.CONT, b"", fin=True),
                  Frame(Opcode.BINARY, b"three")):
        conn._take(frame, out)
    assert out == [b"one", b"two", b"three"]


def test_the_inbox_wakes_a_select_on_it():
    import selectors

    inbox = WakeInbox()
    sel = selectors.DefaultSelector()
    sel.register(inbox.wake_fd, selectors.EVENT_READ)
    try:
        assert sel.select(0) == []
        threading.Timer(0.05, inbox.put, (("commit", None),)).start()
        assert sel.select(T)  # woken by the put from another thread
        inbox.drain_wake()
        assert sel.select(0) == []
        assert inbox.get_nowait() == ("commit", None)
        for i in range(100_000):  # a full pipe never blocks a put
            inbox.put(("commit", i))
        assert inbox.get(timeout=1) == ("commit", 0)
    finally:
        sel.close()


def test_a_proxy_makes_the_session_use_websockets_client(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert direct_socket_usable("wss://sync.example/api/x/sync")
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert not direct_socket_usable("wss://sync.example/api/x/sync")
    assert not direct_socket_usable("not a url")


@pytest.mark.slow
def test_an_upload_wakes_the_other_sessions_before_its_own_session_resumes(tmp_path, monkeypatch):
    """The server starts an upload's integration where the message arrives (the receive hook)
    and wakes the other sessions from the event loop's callback as soon as it is committed,
    while the uploading session's own Integrate is still pending; everything still arrives."""
    from tidesync.server.app import ServerState

    pending_at_wake: list[int] = []
    notify = ServerState.notify_commit

    def spy(self, origin_session=None, first=(), skip=frozenset()):
        if origin_session is not None:
            pending_at_wake.append(len(origin_session.replicator._in_pending))
        return notify(self, origin_session, first, skip)

    monkeypatch.setattr(ServerState, "notify_commit", spy)
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        b = synced_db(tmp_path / "b.db", server.url, [WorkOrder])
        try:
            seen: queue.SimpleQueue = queue.SimpleQueue()
            b.objects(WorkOrder).add_listener(lambda r, c: c.insertions and seen.put(len(r)))
            a.sync_session.wait_for_upload_completion(timeout=T)
            for i in range(10):
                with a.write():
                    a.create(WorkOrder, title=f"w{i}")
                assert seen.get(timeout=T) >= 1
                time.sleep(0.02)  # the uploader's session is idle again when the next one comes
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            assert sorted(w.title for w in b.objects(WorkOrder)) == [f"w{i}" for i in range(10)]
        finally:
            a.close()
            b.close()
    assert 1 in pending_at_wake  # woken before the uploader's run() took the integration's result
