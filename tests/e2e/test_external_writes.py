"""A write to a running server's ``sync.db`` by another process (``tidesync revert`` on the
server's file, or a second server process) reaches the connected devices without a new write
through the server."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

import tidesync
from tests.helpers.flexible import Device, eventually, login
from tests.helpers.servers import ROOT, running_server, synced_db
from tests.models import Technician, WorkOrder

pytestmark = pytest.mark.slow
T = 20


def test_a_revert_of_the_servers_file_by_the_cli_reaches_connected_devices(tmp_path):
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [Technician])
        b = synced_db(tmp_path / "b.db", server.url, [Technician])
        try:
            with a.write():
                a.create(Technician, _id="t", name="Ann")
            with a.write():
                a.get(Technician, "t").name = "Bea"
            target = a.history(1)[0].id
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            assert b.get(Technician, "t").name == "Bea"

            reverted = threading.Event()
            token = b.get(Technician, "t").add_listener(
                lambda obj, changes: obj.name == "Ann" and reverted.set())
            res = subprocess.run([sys.executable, "-m", "tidesync", "revert",
                                  str(tmp_path / "server" / "sync.db"), target],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            assert "restored Technician 't' name" in res.stdout
            # No write goes through the server after the revert: it finds the other process's
            # commit by itself and sends it on.
            assert reverted.wait(T)
            assert b.get(Technician, "t").name == "Ann"
            a.sync_session.wait_for_download_completion(timeout=T)
            assert a.get(Technician, "t").name == "Ann"
            token.remove()
        finally:
            a.close()
            b.close()


def test_a_revert_by_the_cli_moves_documents_in_and_out_of_flexible_views(tmp_path):
    with running_server(tmp_path / "server") as server:
        w = tidesync.open(tmp_path / "w.db", schema=[WorkOrder],
                          sync=tidesync.SyncConfig(user=login(server.url, tmp_path, "w")))
        dev = Device(server.url, tmp_path, "dev", [WorkOrder])
        try:
            with w.write():
                wo = w.create(WorkOrder, title="pump", status="open")
            with w.write():
                wo.status = "closed"
            target = w.history(1)[0].id
            w.sync_session.wait_for_upload_completion(timeout=T)
            with dev.db.subscriptions.update() as subs:
                subs.add(dev.db.objects(WorkOrder).filter("status == 'open'"), name="open")
            dev.db.subscriptions.wait_for_synchronization(timeout=T)
            assert len(dev.db.objects(WorkOrder)) == 0

            res = subprocess.run([sys.executable, "-m", "tidesync", "revert",
                                  str(tmp_path / "server" / "sync.db"), target],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            # The revert reopens the order: it enters the device's view.
            eventually(lambda: [o.title for o in dev.db.objects(WorkOrder)] == ["pump"])
        finally:
            dev.close()
            w.close()
