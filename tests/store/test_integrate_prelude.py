"""The integration prelude of a small batch (``Database._integrate_prelude``: the stored clock,
the next log seq and the known ids in one query) against the general path (three queries):
same rows, log, descriptors, heads, checkpoints and counts."""

from __future__ import annotations

import pytest

import tidesync
from tests.models import Technician, WorkOrder
from tidesync.store.database import Database

TABLES = {
    "log": "SELECT seq, id, origin, stamp, data, via FROM log ORDER BY seq",
    "descriptors": "SELECT id, origin, user, stamp, data, seq FROM descriptors ORDER BY id",
    "heads": "SELECT id FROM heads ORDER BY id",
    "checkpoints": "SELECT peer, received FROM checkpoints ORDER BY peer",
    "documents": "SELECT collection, pk, body, meta, epoch, live, seq FROM documents ORDER BY rowid",
    "sequence": "SELECT seq FROM sqlite_sequence WHERE name = 'log'",
}


def _dump(db: tidesync.Database) -> dict[str, list[tuple[object, ...]]]:
    with db._lock:
        return {name: [tuple(r) for r in db._engine.query(sql)] for name, sql in TABLES.items()}


def _replay(tmp_path, name, txns, peer, monkeypatch, general):
    """Integrate ``txns`` into a fresh database in the batches the test uses; its dump and results."""
    with monkeypatch.context() as m:
        if general:
            m.setattr(Database, "_PRELUDE_MAX", -1)
        with tidesync.open(tmp_path / name, schema=[WorkOrder, Technician]) as b:
            results = [
                b._integrate_download(txns[:2], peer, 2),
                b._integrate_download(txns[1:], peer, 4),  # a duplicate first, then new ones
                b.integrate(txns, peer=peer, peer_seq=4),  # all known
                b.integrate([], peer=peer, peer_seq=4),
            ]
            with b._lock:
                clock = b._engine.query("SELECT value FROM settings WHERE key = 'clock'")[0][0]
            assert clock == b._clock.last
            return _dump(b), [(r.applied, r.duplicates, r.last_seq) for r in results]


def test_a_small_batch_gives_what_the_general_path_gives(tmp_path, monkeypatch):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a:
        with a.write():
            a.create(Technician, _id="t1", name="one")
        with a.write():
            a.get(Technician, "t1").name = "two"
        with a.write():
            a.create(Technician, _id="t2", name="other")
        with a.write():
            a.delete(a.get(Technician, "t2"))
        txns = a.export_transactions(since=0)
        peer = a.replica_id
    lean = _replay(tmp_path, "lean.db", txns, peer, monkeypatch, general=False)
    general = _replay(tmp_path, "general.db", txns, peer, monkeypatch, general=True)
    assert lean == general
    assert lean[1] == [(2, 0, 2), (2, 1, 4), (0, 4, 0), (0, 0, 0)]
    assert [r[0] for r in lean[0]["log"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("general", [False, True])
def test_the_prelude_is_one_query(tmp_path, monkeypatch, general):
    if general:
        monkeypatch.setattr(Database, "_PRELUDE_MAX", -1)
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        with a.write():
            a.create(Technician, _id="t1", name="one")
        seen: list[str] = []
        b._engine._tracer = lambda sql, params: seen.append(sql)
        b._integrate_download(a.export_transactions(since=0), a.replica_id, 1)
        b._engine._tracer = None
        reads = [s for s in seen if s.startswith("SELECT") and "FROM documents" not in s]
        assert len(reads) == (3 if general else 1)
        assert b.get(Technician, "t1").name == "one"
