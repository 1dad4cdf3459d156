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
