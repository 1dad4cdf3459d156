"""Bulk writes through the store's fast paths (lean creates, a loop of assignments and a
uniform ``create_many(update=)`` stored as columns records, a revert of one) synced through a
real server with another device writing the same documents: every side ends with what two
databases exchanging their logs through the general path reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tidesync
from tests.helpers.servers import running_server, synced_db
from tests.store.test_create_bulk import BulkNote
from tests.store.test_fast_paths_agree import _general

pytestmark = pytest.mark.slow
T = 20
N = 60


def _docs(db: tidesync.Database) -> dict[str, Any]:
    return {o._id: (o.title, o.priority, o.score, o.flag, o.extra) for o in db.objects(BulkNote)}


def _a_first(a: tidesync.Database) -> None:
    with a.write():
        a.create_many(BulkNote, [{"_id": f"n{i:03d}", "title": f"n{i}", "priority": i % 3} for i in range(N)])


def _b_writes(b: tidesync.Database) -> None:
    with b.write():
        for i in range(0, N, 5):
            b.get(BulkNote, f"n{i:03d}").title = f"b{i}"
        b.delete(b.get(BulkNote, "n007"))


def _a_writes(a: tidesync.Database) -> str:
    with a.write():
        for n, o in enumerate(a.objects(BulkNote).sort("_id")):
            o.score = n / 4
    loop = a.history(1)[0].id
    with a.write():
        a.create_many(BulkNote, [{"_id": f"n{i:03d}", "priority": 7, "flag": True} for i in range(N) if i != 7],
                      update="modified")
    with a.write():
        a.create_many(BulkNote, [{"_id": f"m{i:03d}", "title": "more", "extra": "x"} for i in range(40)])
    return loop


def _exchange(x: tidesync.Database, y: tidesync.Database) -> None:
    y.integrate(x.export_transactions(), peer=x.replica_id)
    x.integrate(y.export_transactions(), peer=y.replica_id)


def _general_run(tmp: Path) -> dict[str, Any]:
    """The same writes, in the same order, between two local databases, every fast path off."""
    with pytest.MonkeyPatch.context() as mp:
        _general(mp)
        with tidesync.open(tmp / "ga.db", schema=[BulkNote]) as a, tidesync.open(tmp / "gb.db", schema=[BulkNote]) as b:
            _a_first(a)
            _exchange(a, b)
            _b_writes(b)
            loop = _a_writes(a)
            _exchange(a, b)
            a.revert(loop)
            _exchange(a, b)
            assert _docs(a) == _docs(b)
            return _docs(a)


def test_bulk_fast_path_writes_sync_as_the_general_path_gives(tmp_path):
    expected = _general_run(tmp_path)
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [BulkNote])
        b = synced_db(tmp_path / "b.db", server.url, [BulkNote])
        try:
            _a_first(a)
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            b.sync_session.pause()
            _b_writes(b)
            loop = _a_writes(a)
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.resume()
            b.sync_session.wait_for_upload_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            a.revert(loop)
            for db in (a, b):
                db.sync_session.wait_for_upload_completion(timeout=T)
            for db in (a, b):
                db.sync_session.wait_for_download_completion(timeout=T)
            assert _docs(a) == _docs(b) == expected
            backend = server.app.state.tidesync.backend
            held = {i: backend.get_raw("BulkNote", i) for i in [*expected, "n007"]}
            assert {i: (d["title"], d["priority"], d["score"], d["flag"], d["extra"])
                    for i, d in held.items() if d is not None} == expected
        finally:
            a.close()
            b.close()
