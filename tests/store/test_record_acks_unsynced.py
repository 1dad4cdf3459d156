"""The server records its peers' acknowledgements without an fsync of their own
(``ReplicaStore.record_acks(..., durable=False)``, used by server/sync_endpoint.py's
``_Shared._flush_acks``): the server never reads them back, and the next durable commit makes
them durable. Unsynced commits do not count in ``Engine.commit_seconds`` (what a durable commit
costs decides where the server integrates small uploads)."""

from __future__ import annotations

import tidesync
from tests.models import Technician

PEER_A, PEER_B = "00000000000000aa", "00000000000000bb"


def _traced(db: tidesync.Database) -> list[str]:
    seen: list[str] = []
    db._engine._tracer = lambda sql, params: seen.append(sql)
    return seen


def test_unsynced_acks_are_stored_without_their_own_fsync_and_the_next_commit_is_durable(tmp_path):
    with tidesync.open(tmp_path / "s.db", schema=[Technician]) as db:
        with db.write():
            db.create(Technician, _id="t0", name="first")
        durable = db._engine.commit_seconds
        seen = _traced(db)
        db.record_acks({PEER_A: 5, PEER_B: 7}, durable=False)
        assert "PRAGMA synchronous = NORMAL" in seen[:seen.index("COMMIT")]
        assert db._engine.commit_seconds == durable  # not counted
        with db.write():
            db.create(Technician, _id="t1", name="next")
        first = seen.index("COMMIT")
        # FULL again before the next statement outside that transaction (the write's BEGIN).
        assert "PRAGMA synchronous = FULL" in seen[first:seen.index("COMMIT", first + 1)]
        assert (db.checkpoint(PEER_A).acked, db.checkpoint(PEER_B).acked) == (5, 7)
        assert db._engine.commit_seconds != durable
        assert int(db._engine.query("PRAGMA synchronous")[0][0]) == 2


def test_acks_are_durable_by_default(tmp_path):
    with tidesync.open(tmp_path / "s.db", schema=[Technician]) as db:
        seen = _traced(db)
        db.record_acks({PEER_A: 3})
        assert "PRAGMA synchronous = NORMAL" not in seen
        assert db.checkpoint(PEER_A).acked == 3
