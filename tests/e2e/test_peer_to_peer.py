"""Every peer is equal: two devices' SQLite databases sync directly, with no server, through the
same Link and Replicator the client and the server use (wired in memory here)."""

from __future__ import annotations

from typing import Any

import pytest

import tidesync
from tests.helpers.pairs import SessionPair
from tests.models import WorkOrder


class DeviceReplica:
    """A device's Database, plus the commit hook the in-memory endpoints listen to."""

    def __init__(self, db: tidesync.Database) -> None:
        self.db = db
        self.listeners: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def committed(self) -> None:
        for listener in list(self.listeners):
            listener(self.db.head_seq())

    def integrate(self, txns, *, peer, peer_seq):
        result = self.db.integrate(txns, peer=peer, peer_seq=peer_seq)
        if result.applied:
            self.committed()
        return result

    def integrate_snapshot(self, docs, *, peer, as_of_seq):
        result = self.db.integrate_snapshot(docs, peer=peer, as_of_seq=as_of_seq)
        if result.changed:
            self.committed()
        return result


def _titles(db):
    return sorted((w.title, tuple(w.tags), int(w.visits)) for w in db.objects(WorkOrder))


@pytest.mark.parametrize("swap", [False, True])
def test_two_devices_sync_directly_in_either_role(tmp_path, swap):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder]) as a_db, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder]) as b_db:
        a, b = DeviceReplica(a_db), DeviceReplica(b_db)
        with a_db.write():
            shared = a_db.create(WorkOrder, title="shared", tags=["a0"])
        pair = SessionPair(*(b, a) if swap else (a, b), expected_peer=False)
        pair.start()
        pair.run()
        assert _titles(a_db) == _titles(b_db)
        with a_db.write():
            a_db.get(WorkOrder, shared._id).tags.append("from-a")
            a_db.get(WorkOrder, shared._id).visits.increment(1)
        a.committed()
        with b_db.write():
            b_db.get(WorkOrder, shared._id).tags.append("from-b")
            b_db.get(WorkOrder, shared._id).visits.increment(2)
            b_db.create(WorkOrder, title="only on b")
        b.committed()
        pair.run()
        assert _titles(a_db) == _titles(b_db)
        w = a_db.get(WorkOrder, shared._id)
        assert sorted(w.tags) == ["a0", "from-a", "from-b"] and w.visits == 3
        assert pair.a.failure is None and pair.b.failure is None
        # nothing came back where it came from: each transaction is in each log once
        for db in (a_db, b_db):
            ids = [r[0] for r in db._engine.query("SELECT id FROM log")]
            assert len(ids) == len(set(ids)) == 3
