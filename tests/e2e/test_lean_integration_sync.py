"""Session 9's lean integration path (``Database._integrate_lean``) end to end: three devices
writing the same top-level fields offline (loops, defaults filled in at create, one device that
joined after the others), uploading in an order where later-stamped writes arrive first and
writes of one replica overwrite another's. The server's conflict records, its documents and
every device's documents are what they are with the lean path off (``_lean_fits`` False)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tidesync
from tests.helpers.servers import running_server, synced_db
from tests.store.test_create_bulk import BulkNote, _items
from tidesync.store import database as dbmod

pytestmark = pytest.mark.slow
T = 20
N = 30


def _docs(db: tidesync.Database) -> dict[str, Any]:
    return {o._id: (o.title, o.status, o.priority, o.score, o.flag, o.extra) for o in db.objects(BulkNote)}


def _run(tmp: Path) -> tuple[Any, ...]:
    taken: list[int] = []
    lean = dbmod.Database._integrate_lean

    def spy(self: Any, txns: Any, *args: Any) -> Any:
        done = lean(self, txns, *args)
        if done is not None:
            taken.append(len(txns))
        return done

    with pytest.MonkeyPatch.context() as mp, running_server(tmp / "server") as server:
        mp.setattr(dbmod.Database, "_integrate_lean", spy)
        a = synced_db(tmp / "a.db", server.url, [BulkNote])
        b = synced_db(tmp / "b.db", server.url, [BulkNote])
        c = None
        try:
            with a.write():
                a.create_many(BulkNote, _items(N))
            a.sync_session.wait_for_upload_completion(timeout=T)
            with a.write():  # a's own later writes: what the lean path takes
                for o in a.objects(BulkNote).sort("_id"):
                    o.score = 0.5
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            c = synced_db(tmp / "c.db", server.url, [BulkNote])
            c.sync_session.wait_for_download_completion(timeout=T)
            assert len(_docs(c)) == N
            for db in (a, b, c):
                db.sync_session.pause()
            objs = {name: list(db.objects(BulkNote).sort("_id")) for name, db in (("a", a), ("b", b), ("c", c))}
            with a.write():
                for o in objs["a"][:20]:
                    o.title = "a"
                for o in objs["a"][:10]:
                    o.status = "a"                 # defaulted at create in every fourth
            with b.write():
                for o in objs["b"][10:]:
                    o.title = "b"                  # later than a's: a's arrive second and lose
            with c.write():
                for o in objs["c"]:
                    o.priority = 7                 # nobody else's field
                for o in objs["c"][25:]:
                    o.title = "c"                  # overwrites b's without having seen them
                for o in objs["c"][:4]:
                    o.status = "c"
            for db in (b, a, c):
                db.sync_session.resume()
                db.sync_session.wait_for_upload_completion(timeout=T)
            for db in (a, b, c):
                db.sync_session.wait_for_download_completion(timeout=T)
            names = {a.replica_id: "a", b.replica_id: "b", c.replica_id: "c"}
            backend = server.app.state.tidesync.backend
            conflicts = sorted((names.get(x["transaction"][18:], "?"), x["key"], x["path"], x["rule"], x["winner"],
                                x["loser"], names.get(x["winner_stamp"][18:], "?"),
                                names.get(x["loser_stamp"][18:], "?")) for x in backend.conflicts(1000))
            device_conflicts = [sorted((x["key"], x["path"], x["winner"], x["loser"]) for x in db.conflicts(1000))
                                for db in (a, b, c)]
            docs = [_docs(db) for db in (a, b, c)]
            held = {f"n{i:05d}": backend.get_raw("BulkNote", f"n{i:05d}") for i in range(N)}
            history = [[(names.get(e.origin), sorted((c.id, c.kind, c.fields) for c in e.changes))
                        for e in db.history(20)] for db in (a, b, c)]
            return conflicts, device_conflicts, docs, held, taken, history
        finally:
            for db in (a, b, c):
                if db is not None:
                    db.close()


def test_concurrent_register_writes_through_the_lean_path_record_the_general_paths_conflicts(tmp_path):
    got = _run(tmp_path / "lean")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dbmod, "_lean_fits", lambda txns, policies: False)
        expected = _run(tmp_path / "general")
    conflicts, device_conflicts, docs, held, taken, history = got
    assert taken, "the lean path never ran"
    assert not expected[4]
    assert conflicts == expected[0]
    assert device_conflicts == expected[1]
    assert docs == expected[2]
    assert held == expected[3]
    assert history == expected[5]
    assert docs[0] == docs[1] == docs[2]
    # a's ten losing titles, c's four statuses over a's and five titles over b's; none for
    # c's priorities (c joined a's creates from the server's snapshot: seen, not concurrent).
    assert [(c[0], c[2]) for c in conflicts] == [("a", "title")] * 10 + [("c", "status")] * 4 + [("c", "title")] * 5
    assert [len(x) for x in device_conflicts] == [19, 19, 19]
    assert docs[0]["n00027"][0] == "c" and docs[0]["n00012"][0] == "b" and docs[0]["n00003"][:3] == ("a", "c", 7)
