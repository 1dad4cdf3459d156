"""Token lifetimes end to end: transparent refresh over HTTP and for open sync connections,
offline work across expiry, and log out / disable ending open connections."""

from __future__ import annotations

import threading
import time

import pytest

import tidesync
from tests.helpers.auth import auth_config
from tests.helpers.servers import free_port, running_server
from tests.models import Technician
from tidesync.cli.main import main as cli
from tidesync.server import ServerConfig, start_server

pytestmark = pytest.mark.slow
T = 20


def wait_until(condition, timeout=T):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_http_calls_refresh_an_expired_access_token_transparently(tmp_path):
    with running_server(tmp_path / "s", access_token_ttl=1) as server:
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u")
        user = app.log_in(tidesync.Credentials.anonymous())
        first = user.access_token
        time.sleep(1.2)
        user._expires_at = time.time() + 3600   # the client believes it is fresh: the server says no
        assert user.refresh_profile() == {}      # 401 expired_token -> refresh -> retried once
        assert user.access_token != first
        time.sleep(1.2)
        user.refresh_profile()                   # known to be expired: refreshed before the call
        persisted = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u").current_user
        assert persisted is not None and persisted.access_token == user.access_token


def test_an_open_sync_connection_reconnects_with_a_new_token_when_its_token_expires(tmp_path):
    with running_server(tmp_path / "s", access_token_ttl=2) as server:
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u")
        user = app.log_in(tidesync.Credentials.anonymous())
        tokens: list[str] = []
        states: list[str] = []
        errors: list[tidesync.SyncError] = []
        db = tidesync.open(tmp_path / "a.db", schema=[Technician],
                           sync=tidesync.SyncConfig(user=user, partition="p", error_handler=lambda s, e: errors.append(e)))
        db.sync_session.add_connection_callback(lambda old, new: (states.append(new), tokens.append(user.access_token)))
        try:
            wait_until(lambda: db.sync_session.connection_state == "connected")
            connected_with = user.access_token
            wait_until(lambda: states.count("connected") >= 2, timeout=10)   # expired while connected
            assert user.access_token != connected_with
            assert db.sync_session.state == "active" and errors == []         # refreshed, not reported
            with db.write():
                db.create(Technician, _id="after-expiry", name="still syncing")
            db.sync_session.wait_for_upload_completion(timeout=T)
            assert server.app.state.tidesync.backend.get_raw("Technician", "after-expiry") is not None
        finally:
            db.close()


def test_offline_work_goes_on_across_token_expiry_and_catches_up(tmp_path):
    port = free_port()
    server = start_server(ServerConfig(data_dir=tmp_path / "s", port=port, access_token_ttl=1))
    app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u")
    user = app.log_in(tidesync.Credentials.anonymous())
    db = tidesync.open(tmp_path / "a.db", schema=[Technician], sync=tidesync.SyncConfig(user=user, partition="p"))
    try:
        db.sync_session.wait_for_download_completion(timeout=T)
        server.stop()
        time.sleep(1.2)                                   # the access token expires while offline
        with db.write():
            db.create(Technician, _id="offline", name="written offline")
        assert db.get(Technician, "offline").name == "written offline"
        server = start_server(ServerConfig(data_dir=tmp_path / "s", port=port, access_token_ttl=1))
        db.sync_session.wait_for_upload_completion(timeout=T)
        assert server.app.state.tidesync.backend.get_raw("Technician", "offline") is not None
    finally:
        db.close()
        server.stop()


def _open_connected(tmp_path, server, name, storage=None):
    app = tidesync.App("default", base_url=server.url, storage_dir=storage or tmp_path / f"u-{name}")
    user = app.log_in(tidesync.Credentials.anonymous())
    db = tidesync.open(tmp_path / f"{name}.db", schema=[Technician],
                       sync=tidesync.SyncConfig(user=user, partition="p", max_backoff=0.5))
    wait_until(lambda: db.sync_session.connection_state == "connected")
    return app, user, db


def test_log_out_delete_and_disable_end_open_sync_connections(tmp_path):
    cfg = auth_config(session_recheck_interval=0.3)
    with running_server(tmp_path / "s", auth=cfg) as server:
        survivor_app, survivor, bystander = _open_connected(tmp_path, server, "bystander")
        dropped = threading.Event()
        bystander.sync_session.add_connection_callback(lambda old, new: new == "disconnected" and dropped.set())

        app, user, db = _open_connected(tmp_path, server, "logout")
        user.log_out()                                    # revokes its session: the connection ends
        wait_until(lambda: db.sync_session.state == "inactive")
        assert isinstance(db.sync_session.last_error, tidesync.AuthError)
        db.close()

        app, user, db = _open_connected(tmp_path, server, "delete")
        app.delete_user(user)
        wait_until(lambda: db.sync_session.state == "inactive")
        db.close()

        app, user, db = _open_connected(tmp_path, server, "disable")
        assert cli(["users", "disable", user.id, "--data", str(server.config.data_dir)]) == 0   # another process
        wait_until(lambda: db.sync_session.state == "inactive")
        with db.write():
            db.create(Technician, _id="after-ban", name="stays on the device")
        time.sleep(0.3)
        assert server.app.state.tidesync.backend.get_raw("Technician", "after-ban") is None
        assert db.get(Technician, "after-ban") is not None
        db.close()

        assert bystander.sync_session.connection_state == "connected" and not dropped.is_set()
        bystander.close()
