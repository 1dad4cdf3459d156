"""Snapshot pages read from a replica: every document of the scope once, in bounded pages."""

from __future__ import annotations

import random

import pytest

from tidesync.core.stamp import ReplicaId
from tidesync.protocol.messages import SnapshotDoc
from tidesync.store.database import Database


def _stamp(wall: int) -> str:
    return f"{wall:012x}000000" + "a" * 16


@pytest.mark.parametrize("limit, max_bytes", [(1, 1 << 20), (3, 1 << 20), (7, 400), (50, 1), (1000, 1 << 20)])
def test_pages_give_every_document_of_the_scope_once(tmp_path, limit: int, max_bytes: int) -> None:
    # Partition scopes are read by collection, then rowid (the scope index's order); the
    # whole file by rowid. Either way: each document once, pages of at most ``limit``
    # documents that stop at the first one reaching ``max_bytes``, the stored text.
    rng = random.Random(limit * 7 + max_bytes)
    db = Database(tmp_path / "server.db", (), partition_key="_partition", bootstrap_with_snapshot=True)
    try:
        for batch in range(6):  # collections and partitions interleaved in rowid order
            docs = []
            for i in range(rng.randint(5, 25)):
                coll, part = rng.choice(["B", "A", "C"]), rng.choice(["p", "q", 3])
                key = f"{coll}{batch}-{i}"
                live = rng.random() < 0.85
                state = {"epoch": "" if live else _stamp(batch + 1), "live": live,
                         "body": {"_id": key, "_partition": part, "t": "x" * rng.randint(0, 60)} if live else {},
                         "meta": {"*": _stamp(i + 1)} if live else {}}
                docs.append(SnapshotDoc(coll, key, state))
            db.integrate_snapshot(docs, peer=ReplicaId("00000000000000ab"), as_of_seq=None)
        rows = db._engine.query("SELECT rowid, collection, pk, body, meta, epoch, live, scope FROM documents")
        for scope, want in (({}, None), ({"partition": {"key": "_partition", "value": "p"}}, '"p"'),
                            ({"partition": {"key": "_partition", "value": 3}}, "3"),
                            ({"partition": {"key": "_partition", "value": "none"}}, '"none"')):
            expected = {(c, pk): (body, meta, epoch, bool(live)) for _, c, pk, body, meta, epoch, live, s in rows
                        if want is None or s == want}
            seen: dict[tuple[str, str], tuple[str, str, str, bool]] = {}
            cursor: object | None = None
            for _ in range(len(rows) + 2):
                page = db.read_snapshot(scope, cursor=cursor, limit=limit, max_bytes=max_bytes)
                assert len(page.docs) <= limit
                sizes = [len(d.json_form[2]) + len(d.json_form[3]) + len(f'"{d.key}"') for d in page.docs]
                assert sum(sizes[:-1]) < max_bytes and page.nbytes == sum(sizes)
                for d in page.docs:
                    ref = (d.collection, f'"{d.key}"')
                    assert ref not in seen
                    epoch, live, body, meta = d.json_form
                    seen[ref] = (body, meta, epoch, live)
                    assert d.state["live"] is live and d.state["body"] == SnapshotDoc.from_json_form(
                        d.collection, d.key, epoch, live, body, meta).state["body"]
                cursor = page.cursor
                if cursor is None:
                    break
            assert cursor is None and seen == expected, scope
    finally:
        db.close()


def test_a_bootstrap_page_leaves_the_wal_checkpoint_to_the_background_thread(tmp_path) -> None:
    # A device's bootstrap pages commit without SQLite's inline checkpoint (a copy of the WAL
    # and two fsyncs every few pages); the background checkpointer copies the WAL instead, and
    # the documents are all there.
    import json
    import sqlite3

    from tidesync.protocol.messages import Snapshot

    db = Database(tmp_path / "device.db", (), partition_key="_partition")
    try:
        note = "x" * 400
        for p in range(3):  # about 6 MB of WAL: past SQLite's 1,000-page threshold
            docs = [["Doc", f"k{p}-{i}", "", True, json.dumps({"_id": f"k{p}-{i}", "_partition": "p", "n": note}),
                     '{"*":"' + _stamp(p + 1) + '"}'] for i in range(5000)]
            page = Snapshot.from_body({"page": p, "docs": docs, "as_of_seq": 9, "done": p == 2}, plain=True)
            db._integrate_snapshot_download(page.docs, ReplicaId("00000000000000ab"), 9 if p == 2 else None)
        checkpointer = db._checkpointer
        assert checkpointer is not None and checkpointer.wait_idle() and checkpointer.runs >= 1
        assert db._engine.query("PRAGMA wal_autocheckpoint")[0][0] == db.AUTOCHECKPOINT_PAGES  # as before
        assert db._engine.query("SELECT count(*) FROM documents")[0][0] == 15000
        assert db.checkpoint(ReplicaId("00000000000000ab")).received == 9
    finally:
        db.close()
    conn = sqlite3.connect(tmp_path / "device.db")
    try:
        assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 15000
    finally:
        conn.close()
