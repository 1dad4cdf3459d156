"""SIGKILL in the middle of sync: a client process during its upload, the server process in the
middle of a client's batches. After a restart on the same files: nothing lost, nothing twice.

"Nothing lost, nothing twice" is checked on the files themselves: every transaction the
client's file holds is in the server's log exactly once (and the server holds no other
transaction of that client), and the shared counter's total on the server is exactly the sum
of the increments in the client's file.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.helpers.kill_client import COUNTER_ID, write_one
from tests.helpers.servers import ROOT, ServerProcess, running_server, synced_db
from tests.models import Technician, WorkOrder
from tidesync.core.operations import CounterAdd
from tidesync.core.transaction import Transaction

pytestmark = pytest.mark.slow
T = 30


# -- reading tidesync files directly (read-only sqlite3, beside whatever process owns them) ---


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=T)


def replica_id(path: Path) -> str:
    con = _connect(path)
    try:
        return str(con.execute("SELECT value FROM settings WHERE key = 'replica_id'").fetchone()[0])
    finally:
        con.close()


def log_of(path: Path, origin: str | None = None) -> list[Transaction]:
    """The transactions in a file's log (of one origin), in log order."""
    con = _connect(path)
    try:
        sql, args = "SELECT data FROM log", ()
        if origin is not None:
            sql, args = sql + " WHERE origin = ?", (origin,)
        rows = con.execute(sql + " ORDER BY seq", args).fetchall()
    finally:
        con.close()
    return [Transaction.from_wire(msgpack.unpackb(r[0], raw=False)) for r in rows]


def live_bodies(path: Path) -> dict[tuple[str, str], Any]:
    con = _connect(path)
    try:
        rows = con.execute("SELECT collection, pk, body FROM documents WHERE live = 1").fetchall()
    finally:
        con.close()
    return {(c, pk): json.loads(b) for c, pk, b in rows}


def counter_total(bodies: dict[tuple[str, str], Any]) -> int:
    [counter] = [b for (c, _), b in bodies.items() if c == "WorkOrder"]
    return int(counter["visits"])


def increments(txns: list[Transaction]) -> int:
    return sum(op.amount for t in txns for op in t.ops if isinstance(op, CounterAdd))


def assert_exactly_once(client_file: Path, server_file: Path) -> list[Transaction]:
    """Every transaction of the client's file is in the server's log once; no other of its."""
    mine = log_of(client_file)
    local = [t for t in mine if t.origin == replica_id(client_file)]
    on_server = log_of(server_file, origin=replica_id(client_file))
    server_ids = [t.id for t in on_server]
    assert len(server_ids) == len(set(server_ids)), "a transaction is in the server's log twice"
    missing = {t.id for t in local} - set(server_ids)
    assert not missing, f"{len(missing)} of the client's {len(local)} transactions never reached the server"
    extra = set(server_ids) - {t.id for t in local}
    assert not extra, f"the server holds {len(extra)} transactions of this client that its file does not"
    assert counter_total(live_bodies(server_file)) == increments(local), "the counter lost or doubled increments"
    return local


# -- a client process ------------------------------------------------------------------------


class ClientProcess:
    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.kill_client", *args], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, predicate: Any, timeout: float = T) -> str:
        """The first output line that satisfies ``predicate`` (fails on exit or timeout)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no such line within {timeout} s")
            if line is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                pytest.fail(f"the client process exited ({self.proc.wait()}): {err[-2000:]}")
            if predicate(line):
                return line

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def sigkill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.close()
        assert self.proc.returncode == -signal.SIGKILL

    def close(self) -> int:
        """Wait for the process to end (killing it if it outlives ``T``); close its pipes."""
        try:
            self.proc.wait(T)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(T)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode


def mid_upload(line: str) -> bool:
    if not line.startswith("progress "):
        return False
    done, total = (int(x) for x in line.split()[1].split("/"))
    return 0 < done < total


def test_sigkill_a_client_mid_upload_then_restart_it(tmp_path):
    with running_server(tmp_path / "server") as server:
        server_file = tmp_path / "server" / "sync.db"
        client_file = tmp_path / "client.db"
        writer = ClientProcess("write", server.url, str(client_file), "150")
        try:
            writer.wait_for(lambda line: line == "written 150")
            writer.wait_for(mid_upload)  # the server has acknowledged part of the backlog
        finally:
            writer.sigkill()
        local = [t for t in log_of(client_file) if t.origin == replica_id(client_file)]
        on_server = {t.id for t in log_of(server_file, origin=replica_id(client_file))}
        assert 0 < len(on_server) < len(local), "the kill did not land in the middle of the upload"
        assert on_server <= {t.id for t in local}

        finisher = ClientProcess("finish", server.url, str(client_file))
        try:
            finisher.wait_for(lambda line: line == "uploaded", timeout=60)
        finally:
            assert finisher.close() == 0
        local = assert_exactly_once(client_file, server_file)
        assert len(local) >= 150

        # Another device sees all of it.
        other = synced_db(tmp_path / "other.db", server.url, [Technician, WorkOrder], partition="kill")
        try:
            other.sync_session.wait_for_download_completion(timeout=T)
            assert len(other.objects(Technician)) == len(local)
            [counter] = list(other.objects(WorkOrder))
            assert counter.visits == increments(local)
        finally:
            other.close()


def test_sigkill_the_server_mid_batch_then_restart_it(tmp_path):
    N = 200  # transactions, one per batch
    server = ServerProcess(tmp_path / "server").start()
    server_file = tmp_path / "server" / "sync.db"
    a = synced_db(tmp_path / "a.db", server.url, [Technician, WorkOrder], partition="kill",
                  batch_limit=1, min_backoff=0.02, max_backoff=0.3)
    b = None
    try:
        a.sync_session.wait_for_download_completion(timeout=T)
        a.sync_session.pause()
        for i in range(N):
            write_one(a, i)
        acked_some = threading.Event()

        def on_progress(p: Any) -> None:
            if p.transferred >= 5:  # this connection has had five batches acknowledged
                acked_some.set()

        a.sync_session.add_progress_notifier(on_progress, "upload")
        a.sync_session.resume()
        for _ in range(2):
            assert acked_some.wait(T), "the upload did not make progress"
            acked_some.clear()
            server.kill()  # SIGKILL, while the next batches are in flight or being integrated
            held = {t.id for t in log_of(server_file)}
            assert 0 < len(held) < N, "the kill did not land in the middle of the upload"
            server.start()  # same port, same data dir
            assert held <= {t.id for t in log_of(server_file)}

        a.sync_session.wait_for_upload_completion(timeout=T)
        local = assert_exactly_once(tmp_path / "a.db", server_file)
        assert len(local) == N

        # Clients converge: a second device bootstraps from the restarted server, writes, and
        # both end with the server's state.
        b = synced_db(tmp_path / "b.db", server.url, [Technician, WorkOrder], partition="kill")
        b.sync_session.wait_for_download_completion(timeout=T)
        with b.write():
            b.get(WorkOrder, COUNTER_ID).visits.increment(1000)
        b.sync_session.wait_for_upload_completion(timeout=T)
        a.sync_session.wait_for_download_completion(timeout=T)
        server_state = live_bodies(server_file)
        assert live_bodies(tmp_path / "a.db") == server_state
        assert live_bodies(tmp_path / "b.db") == server_state
        assert counter_total(server_state) == increments(local) + 1000
        assert len([k for k in server_state if k[0] == "Technician"]) == N
    finally:
        a.close()
        if b is not None:
            b.close()
        server.stop()


def test_sigkill_the_server_mid_upload_of_large_batches_then_restart_it(tmp_path):
    """Batches of 1,000 operations and more commit without SQLite's inline WAL checkpoint (a
    background thread makes it: server/enforcement.py DEFER_CHECKPOINT_OPS): killed while
    such batches are integrated or checkpointed, the server still holds every batch it
    acknowledged, and the upload completes exactly once after the restart."""
    from tidesync.server.enforcement import DEFER_CHECKPOINT_OPS

    N, PER = 10, DEFER_CHECKPOINT_OPS  # transactions, one per batch, each large enough
    server = ServerProcess(tmp_path / "server").start()
    server_file = tmp_path / "server" / "sync.db"
    a = synced_db(tmp_path / "a.db", server.url, [Technician, WorkOrder], partition="kill",
                  batch_limit=1, min_backoff=0.02, max_backoff=0.3)
    try:
        a.sync_session.wait_for_download_completion(timeout=T)
        a.sync_session.pause()
        for i in range(N):
            with a.write():
                for j in range(PER - 1):
                    a.create(Technician, _id=f"big{i}-{j}", name="z" * 40)
                counter = a.get(WorkOrder, COUNTER_ID)
                if counter is None:
                    counter = a.create(WorkOrder, _id=COUNTER_ID, title="the counter")
                counter.visits.increment(i + 1)
        local_ids = [t.id for t in log_of(tmp_path / "a.db") if t.origin == replica_id(tmp_path / "a.db")]
        acked = [0]
        acked_some = threading.Event()

        def on_progress(p: Any) -> None:
            acked[0] = max(acked[0], p.transferred)
            if p.transferred >= 2:
                acked_some.set()

        a.sync_session.add_progress_notifier(on_progress, "upload")
        a.sync_session.resume()
        assert acked_some.wait(60), "the upload did not make progress"
        seen_acked = acked[0]
        server.kill()  # SIGKILL: the next batch is in flight, integrated or being checkpointed
        held = {t.id for t in log_of(server_file)}
        assert set(local_ids[:seen_acked]) <= held, "an acknowledged batch was lost"
        assert len(held & set(local_ids)) < N, "the kill did not land in the middle of the upload"
        server.start()  # same port, same data dir
        assert held <= {t.id for t in log_of(server_file)}
        a.sync_session.wait_for_upload_completion(timeout=60)
        local = assert_exactly_once(tmp_path / "a.db", server_file)
        assert len(local) == N
        assert len([k for k in live_bodies(server_file) if k[0] == "Technician"]) == N * (PER - 1)
    finally:
        a.close()
        server.stop()


def write_big(db: Any, i: int) -> None:
    """One transaction of about 100 KB (so a download batch holds only a few), one increment."""
    with db.write():
        for j in range(40):
            db.create(Technician, _id=f"big{i}-{j}", name="y" * 2500)
        db.get(WorkOrder, COUNTER_ID).visits.increment(i + 1)


def catch_up_after_the_kill(server: Any, follower_file: Path, server_file: Path, writer_file: Path) -> None:
    """Restart the killed follower on its file: it downloads what it lacks and then holds the
    server's documents, every transaction once, and every increment the writer made."""
    catch_up = ClientProcess("catch-up", server.url, str(follower_file))
    try:
        catch_up.wait_for(lambda line: line == "downloaded", timeout=60)
    finally:
        assert catch_up.close() == 0
    assert live_bodies(follower_file) == live_bodies(server_file)
    ids = [t.id for t in log_of(follower_file)]
    assert len(ids) == len(set(ids)), "the follower integrated a transaction twice"
    assert counter_total(live_bodies(follower_file)) == increments(log_of(writer_file))


def test_sigkill_a_client_mid_download_then_restart_it(tmp_path):
    with running_server(tmp_path / "server") as server:
        server_file = tmp_path / "server" / "sync.db"
        follower_file = tmp_path / "follower.db"
        a = synced_db(tmp_path / "a.db", server.url, [Technician, WorkOrder], partition="kill")
        follower = ClientProcess("follow", server.url, str(follower_file))
        try:
            write_one(a, 0)  # creates the counter
            a.sync_session.wait_for_upload_completion(timeout=T)
            follower.wait_for(lambda line: line == "synced")  # it holds the server's log so far
            for i in range(60):
                write_big(a, i)
            a.sync_session.wait_for_upload_completion(timeout=T)
            follower.tell("resume")
            follower.wait_for(mid_upload)  # (download progress lines have the same shape)
        finally:
            follower.sigkill()
            a.close()
        got = len(live_bodies(follower_file))
        assert 1 < got < len(live_bodies(server_file)), "the kill did not land in the middle of the download"
        catch_up_after_the_kill(server, follower_file, server_file, tmp_path / "a.db")


def test_sigkill_a_client_as_its_listener_sees_a_download_then_restart_it(tmp_path):
    """A device's listeners see a download before its fsync (docs/sync.md, "Durability of
    downloads"); killed at that moment, it still holds data and checkpoint together (both or
    neither), downloads whatever it lacks, and holds every transaction once."""
    with running_server(tmp_path / "server") as server:
        server_file = tmp_path / "server" / "sync.db"
        follower_file = tmp_path / "follower.db"
        a = synced_db(tmp_path / "a.db", server.url, [Technician, WorkOrder], partition="kill")
        follower = ClientProcess("listen", server.url, str(follower_file))
        try:
            write_one(a, 0)  # creates the counter
            a.sync_session.wait_for_upload_completion(timeout=T)
            follower.wait_for(lambda line: line == "synced")
            for i in range(1, 4):
                write_one(a, i)
            a.sync_session.wait_for_upload_completion(timeout=T)
            follower.wait_for(lambda line: line.startswith("seen ") and int(line.split()[1]) > 1)
        finally:
            follower.sigkill()  # right as the listener saw a download
            a.close()

        catch_up_after_the_kill(server, follower_file, server_file, tmp_path / "a.db")


def test_sigkill_a_client_mid_bootstrap_then_restart_it(tmp_path):
    """A fresh device stores snapshot pages on a writer thread while it decodes the next ones,
    and commits all but the last without an fsync (docs/sync.md). Killed with pages in that
    pipeline, it restarts on its file, is sent the snapshot again, and then holds exactly the
    server's documents, each once, with nothing of its own in either log."""
    with running_server(tmp_path / "server") as server:
        server_file = tmp_path / "server" / "sync.db"
        device_file = tmp_path / "device.db"
        a = synced_db(tmp_path / "a.db", server.url, [Technician, WorkOrder], partition="kill")
        try:
            for t in range(12):  # 12,000 documents: pages of 500 (two), then larger ones
                with a.write():
                    for j in range(1_000):
                        a.create(Technician, _id=f"boot{t}-{j}", name=f"n{j}" * 20)
            a.sync_session.wait_for_upload_completion(timeout=T)
        finally:
            a.close()
        total = len(live_bodies(server_file))
        device = ClientProcess("bootstrap", server.url, str(device_file))
        try:
            device.wait_for(mid_upload)  # (download progress lines have the same shape)
        finally:
            device.sigkill()
        got = len(live_bodies(device_file))
        assert 0 < got < total, "the kill did not land in the middle of the bootstrap"
        catch_up = ClientProcess("catch-up", server.url, str(device_file))
        try:
            catch_up.wait_for(lambda line: line == "downloaded", timeout=60)
        finally:
            assert catch_up.close() == 0
        assert live_bodies(device_file) == live_bodies(server_file)
        con = _connect(device_file)
        try:
            rows, keys = con.execute("SELECT count(*), count(DISTINCT collection || ' ' || pk) FROM documents").fetchone()
        finally:
            con.close()
        assert rows == keys == total
        assert log_of(device_file) == []  # a snapshot adds no log entry; the device wrote nothing
        assert log_of(server_file, origin=replica_id(device_file)) == []
