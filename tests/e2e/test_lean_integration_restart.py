"""Session 9's server fast paths across a server restart: loops of one field integrated by the
lean path and read by sessions from the seeded log cache (``_seed_log_cache``), with one device
paused far behind, one writing another field, one writing the same field concurrently, and the
server stopped and started again (same files, same port) between batches. Every device ends
with the server's documents, and documents and conflict records are what the general path
(``_lean_fits`` False) gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tidesync
from tests.helpers.servers import free_port, synced_db
from tests.store.test_create_bulk import BulkNote, _items
from tidesync.server import ServerConfig, start_server
from tidesync.store import database as dbmod

pytestmark = pytest.mark.slow
T = 20
N = 40


def _docs(db: tidesync.Database) -> dict[str, Any]:
    return {o._id: (o.title, o.status, o.priority, o.score, o.flag) for o in db.objects(BulkNote)}


def _loop(db: tidesync.Database, field: str, value: Any, part: slice = slice(None)) -> None:
    with db.write():
        for o in list(db.objects(BulkNote).sort("_id"))[part]:
            setattr(o, field, value)


def _run(tmp: Path) -> tuple[Any, ...]:
    port = free_port()

    def start() -> Any:
        return start_server(ServerConfig(data_dir=tmp / "server", port=port))

    server = start()
    url = f"http://127.0.0.1:{port}"
    a = synced_db(tmp / "a.db", url, [BulkNote])
    b = synced_db(tmp / "b.db", url, [BulkNote])
    c = synced_db(tmp / "c.db", url, [BulkNote])
    try:
        _loop(a, "title", "x")  # nothing yet
        with a.write():
            a.create_many(BulkNote, _items(N))
        for db in (a, b, c):
            db.sync_session.wait_for_upload_completion(timeout=T)
            db.sync_session.wait_for_download_completion(timeout=T)
        c.sync_session.pause()
        _loop(a, "priority", 1)
        a.sync_session.wait_for_upload_completion(timeout=T)
        b.sync_session.wait_for_download_completion(timeout=T)
        _loop(b, "status", "b")
        _loop(c, "priority", 3, slice(0, N, 2))      # concurrent with a's, offline
        b.sync_session.wait_for_upload_completion(timeout=T)
        _loop(a, "priority", 2, slice(N // 2))
        a.sync_session.wait_for_upload_completion(timeout=T)
        server.stop()
        server = start()
        _loop(a, "priority", 4, slice(0, N // 4))    # queued while reconnecting
        _loop(b, "score", 0.25)
        for db in (a, b):
            db.sync_session.wait_for_upload_completion(timeout=T)
        c.sync_session.resume()
        c.sync_session.wait_for_upload_completion(timeout=T)
        for db in (a, b, c):
            db.sync_session.wait_for_download_completion(timeout=T)
        backend = server.app.state.tidesync.backend
        names = {a.replica_id: "a", b.replica_id: "b", c.replica_id: "c"}
        conflicts = sorted((x["key"], x["path"], x["winner"], x["loser"], names.get(x["winner_stamp"][18:]),
                            names.get(x["loser_stamp"][18:])) for x in backend.conflicts(1000))
        held = {f"n{i:05d}": backend.get_raw("BulkNote", f"n{i:05d}") for i in range(N)}
        return [_docs(db) for db in (a, b, c)], held, conflicts
    finally:
        for db in (a, b, c):
            db.close()
        server.stop()


def test_lean_integrations_and_seeded_reads_across_a_server_restart_give_the_general_paths_documents(tmp_path):
    docs, held, conflicts = _run(tmp_path / "lean")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dbmod, "_lean_fits", lambda txns, policies: False)
        expected = _run(tmp_path / "general")
    assert docs[0] == docs[1] == docs[2]
    assert {k: (v["title"], v["status"], v["priority"], v["score"], v["flag"]) for k, v in held.items()} == docs[0]
    assert (docs, held, conflicts) == expected
    assert conflicts, "c's concurrent loop recorded no conflict"
    assert docs[0]["n00000"][1:4] == ("b", 4, 0.25)
