"""TLS: a CA and a server certificate made by the test; HTTPS login and WSS sync work with the
CA and fail with a clear CertificateError without it."""

from __future__ import annotations

import shutil
import time

import pytest

import tidesync
from tests.helpers.auth import make_ca_and_server_cert
from tests.helpers.servers import ServerProcess
from tests.models import Technician
from tidesync.server import ServerConfig, start_server

pytestmark = pytest.mark.slow
T = 20


@pytest.fixture
def tls_server(tmp_path):
    ca, cert, key = make_ca_and_server_cert(tmp_path / "pki")
    server = start_server(ServerConfig(data_dir=tmp_path / "s", port=0, tls_cert=str(cert), tls_key=str(key)))
    try:
        yield server, ca
    finally:
        server.stop()


def test_https_login_and_wss_sync_with_the_ca(tls_server, tmp_path):
    server, ca = tls_server
    assert server.url.startswith("https://127.0.0.1:")
    app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u", ca_file=ca)
    assert app.sync_url.startswith("wss://")
    user = app.log_in(tidesync.Credentials.anonymous())
    db = tidesync.open(tmp_path / "a.db", schema=[Technician], sync=tidesync.SyncConfig(user=user, partition="p"))
    try:
        with db.write():
            db.create(Technician, _id="tls", name="over wss")
        db.sync_session.wait_for_upload_completion(timeout=T)
        db.sync_session.wait_for_download_completion(timeout=T)   # HTTPS with the CA as well
        assert server.app.state.tidesync.backend.get_raw("Technician", "tls")["name"] == "over wss"
    finally:
        db.close()


def test_without_the_ca_login_and_sync_fail_with_a_certificate_error(tls_server, tmp_path):
    server, ca = tls_server
    with pytest.raises(tidesync.CertificateError) as err:
        tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "none").log_in(
            tidesync.Credentials.anonymous())
    assert "certificate" in str(err.value) and "ca_file" in str(err.value)
    assert err.value.code == "tls_certificate"

    # A user logged in with the CA, then used by an app that does not trust it.
    trusting = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u", ca_file=ca)
    trusting.log_in(tidesync.Credentials.anonymous())
    shutil.copytree(tmp_path / "u", tmp_path / "u2")
    app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u2")
    assert app.current_user is not None
    errors: list[tidesync.SyncError] = []
    db = tidesync.open(tmp_path / "b.db", schema=[Technician],
                       sync=tidesync.SyncConfig(user=app.current_user, partition="p",
                                                error_handler=lambda s, e: errors.append(e)))
    try:
        deadline = time.monotonic() + T
        while db.sync_session.state != "inactive" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.sync_session.state == "inactive"
        assert isinstance(db.sync_session.last_error, tidesync.CertificateError)
        assert db.sync_session.last_error.code == "tls_certificate" and errors
        with db.write():                                     # local work goes on
            db.create(Technician, _id="local", name="kept")
        assert db.get(Technician, "local") is not None
    finally:
        db.close()


def test_tidesync_serve_with_tls_cert_and_key(tmp_path):
    ca, cert, key = make_ca_and_server_cert(tmp_path / "pki")
    proc = ServerProcess(tmp_path / "s", extra=["--tls-cert", str(cert), "--tls-key", str(key)]).start()
    try:
        url = f"https://127.0.0.1:{proc.port}"
        deadline = time.monotonic() + T
        while True:
            try:
                user = tidesync.App("default", base_url=url, storage_dir=tmp_path / "u", ca_file=ca).log_in(
                    tidesync.Credentials.anonymous())
                break
            except tidesync.ConnectionClosedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert user.id
        with pytest.raises(tidesync.ConnectionClosedError):   # plain HTTP is not served
            tidesync.App("default", base_url=f"http://127.0.0.1:{proc.port}", storage_dir=tmp_path / "h",
                         timeout=2).log_in(tidesync.Credentials.anonymous())
    finally:
        proc.stop()
