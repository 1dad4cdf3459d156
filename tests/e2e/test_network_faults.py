"""Targeted network faults through :class:`~tests.helpers.proxy.ChaosProxy` (regression tests
for bugs the simulation's proxy found), over a real server on 127.0.0.1."""

from __future__ import annotations

import pytest

import tidesync
from tests.helpers.proxy import ChaosProxy
from tests.helpers.servers import running_server, synced_db
from tests.models import Technician

pytestmark = pytest.mark.slow
T = 20


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "server") as s:
        yield s


@pytest.fixture
def proxy(server):
    with ChaosProxy(server.config.port) as p:
        yield p


def test_regression_download_wait_retries_when_the_head_response_ends_mid_body(server, proxy, tmp_path):
    """wait_for_download_completion asks the server for its head over HTTP. A response cut
    short by an orderly close raised http.client.IncompleteRead straight out of the wait
    (not an OSError, so not retried); it must count as "server unreachable": retry until the
    deadline, then tidesync.TimeoutError."""
    db = synced_db(tmp_path / "a.db", proxy.url, [Technician])
    try:
        db.sync_session.wait_for_download_completion(timeout=T)
        proxy.truncate_http_bodies(keep=3)
        with pytest.raises(tidesync.TimeoutError):
            db.sync_session.wait_for_download_completion(timeout=1.0)
        assert proxy.cuts_done >= 1
        proxy.truncate_http_bodies(None)
        db.sync_session.wait_for_download_completion(timeout=T)
    finally:
        db.close()


def test_regression_log_in_through_a_response_cut_mid_body_is_a_connection_error(proxy, tmp_path):
    """The app's HTTP calls (log in, refresh) raise the typed ConnectionClosedError, not
    http.client.IncompleteRead, when the answer is cut short."""
    app = tidesync.App("default", base_url=proxy.url, storage_dir=tmp_path / "users")
    proxy.truncate_http_bodies(keep=5)
    with pytest.raises(tidesync.ConnectionClosedError):
        app.log_in(tidesync.Credentials.anonymous())
    proxy.truncate_http_bodies(None)
    assert app.log_in(tidesync.Credentials.anonymous()).logged_in
