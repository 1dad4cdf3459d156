"""The rows the last integrations wrote, kept for the next lean integration
(``Database._rows_cache``): taken instead of reading them back only while nothing else wrote
the file (the version ``_rows_at``, moved on by ``record_acks``). Every scenario is run with
the cache and with it off (``ROWS_CACHE = 0``): the same rows, log, descriptors, heads,
conflicts, checkpoints and results, whatever wrote in between (the same connection's local
writes, another connection, a rolled-back batch, acknowledgements)."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidesync.core.clock import HybridClock
from tidesync.core.operations import CreateDoc, SetValue
from tidesync.core.stamp import ZERO, ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.errors import MergeError
from tidesync.store.database import Database

TABLES = {
    "log": "SELECT seq, id, origin, stamp, data, via FROM log ORDER BY seq",
    "descriptors": "SELECT id, origin, user, stamp, data, seq FROM descriptors ORDER BY id",
    "heads": "SELECT id FROM heads ORDER BY id",
    "checkpoints": "SELECT peer, received, acked FROM checkpoints ORDER BY peer",
    "documents": "SELECT collection, pk, body, meta, epoch, live, seq, scope FROM documents ORDER BY rowid",
    "conflicts": "SELECT txn, collection, pk, path, rule, winner, winner_stamp, loser, loser_stamp FROM conflicts "
                 "ORDER BY rowid",
}

A = ReplicaId("a" * 16)
DOCS = 4


def _clock() -> HybridClock:
    ticks = itertools.count(1_700_000_000_000, 7)
    return HybridClock(A, lambda: next(ticks))


def _dump(db: Database) -> dict[str, list[tuple[object, ...]]]:
    with db._lock:
        return {name: [tuple(r) for r in db._engine.query(sql)] for name, sql in TABLES.items()}


# A step: ("batch", [(doc, field, value), ...]) one transaction per write; ("raw", doc, value):
# another connection sets the document's "n"; ("same", doc, value): this connection does, by a
# statement; ("local", doc, value): by a local write (its log entry is this file's own: not
# compared across files); ("ack", n); ("bad",): a batch that fails and rolls back.
_write = st.tuples(st.integers(0, DOCS - 1), st.sampled_from(["n", "n", "status"]), st.integers(0, 9))
_step = st.one_of(st.tuples(st.just("batch"), st.lists(_write, min_size=1, max_size=5)),
                  st.tuples(st.just("raw"), st.integers(0, DOCS - 1), st.integers(10, 19)),
                  st.tuples(st.just("same"), st.integers(0, DOCS - 1), st.integers(20, 29)),
                  st.tuples(st.just("ack"), st.integers(1, 9)),
                  st.tuples(st.just("bad")))


def _run(path: Path, steps: list[Any], cache: bool, monkeypatch: Any) -> tuple[dict[str, Any], list[Any], int]:
    out: list[Any] = []
    taken = [0]
    with monkeypatch.context() as m:
        if not cache:
            m.setattr(Database, "ROWS_CACHE", 0)
        clock = _clock()
        db = Database(path, (), partition_key="_partition")
        try:
            s = clock.now()
            seed = Transaction(s, A, s, (), tuple(
                CreateDoc("c", f"d{i}", s if i == 0 else clock.now(), ZERO,
                          {"_id": f"d{i}", "n": 0, "status": "open", "_partition": "p1"}, {})
                for i in range(DOCS)))
            db.integrate([seed], peer="w", peer_seq=0)
            parents: tuple[str, ...] = (seed.id,)
            for i, step in enumerate(steps, 1):
                if step[0] == "batch":
                    batch = []
                    for doc, field, value in step[1]:
                        t = clock.now()
                        batch.append(Transaction(t, A, t, parents, (SetValue("c", f"d{doc}", t, ZERO, (field,), (),
                                                                              value),)))
                        parents = (t,)
                    cached = set(db._rows_cache) if db._rows_at == (db._engine.total_changes(),
                                                                   db._engine.data_version()) else set()
                    taken[0] += len(cached & {ref for t in batch for ref in t.refs()})
                    r = db.integrate(batch, peer="w", peer_seq=i)
                    out.append((r.applied, r.duplicates, r.conflicts, r.last_seq))
                elif step[0] == "raw":
                    other = sqlite3.connect(path, isolation_level=None)
                    try:
                        other.execute("UPDATE documents SET body = json_set(body, '$.n', ?) WHERE pk = ?",
                                      (step[2], f'"d{step[1]}"'))
                    finally:
                        other.close()
                elif step[0] == "local":
                    with db.write():
                        txn = db._current_txn()
                        ref = ("c", f'"d{step[1]}"')
                        db._assign_plain(txn, txn.doc("c", f"d{step[1]}", ref), "c", "n", step[2])
                elif step[0] == "same":
                    with db._lock:
                        db._engine.execute("UPDATE documents SET body = json_set(body, '$.n', ?) WHERE pk = ?",
                                           (step[2], f'"d{step[1]}"'))
                elif step[0] == "ack":
                    db.record_acks({ReplicaId("b" * 16): step[1]})
                else:
                    t = clock.now()
                    bad = Transaction(t, A, t, parents, (SetValue("c", "d0", t, ZERO, ("n",), (), 1),
                                                         SetValue("c", "d1", t, ZERO, ("_id",), (), "x")))
                    with pytest.raises(MergeError):
                        db.integrate([bad], peer="w", peer_seq=i)
            return _dump(db), out, taken[0]
        finally:
            db.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_step, min_size=1, max_size=8))
def test_the_cache_gives_what_reading_the_rows_gives(tmp_path_factory: Any, monkeypatch: Any, steps: list[Any]) -> None:
    tmp = tmp_path_factory.mktemp("rows")
    with_cache = _run(tmp / "cached.db", steps, True, monkeypatch)
    without = _run(tmp / "read.db", steps, False, monkeypatch)
    assert with_cache[:2] == without[:2]
    assert without[2] == 0


def test_the_cache_serves_consecutive_batches_and_survives_acknowledgements(tmp_path: Path, monkeypatch: Any) -> None:
    steps = [("batch", [(0, "n", 1), (1, "n", 1)]), ("ack", 1), ("batch", [(0, "n", 2), (2, "status", 5)]),
             ("batch", [(1, "n", 3)])]
    cached = _run(tmp_path / "c.db", steps, True, monkeypatch)
    # All four documents were written by the seed, so each write of the three batches finds its row.
    assert cached[2] == 5
    assert cached[:2] == _run(tmp_path / "r.db", steps, False, monkeypatch)[:2]


@pytest.mark.parametrize("between", [("raw", 0, 11), ("same", 0, 21), ("local", 0, 22), ("bad",)])
def test_another_write_voids_the_cache(tmp_path: Path, monkeypatch: Any, between: tuple[Any, ...]) -> None:
    steps = [("batch", [(1, "n", 1)]), between, ("batch", [(0, "status", 7), (1, "n", 2)])]
    cached = _run(tmp_path / "c.db", steps, True, monkeypatch)
    assert cached[2] == 1      # the first batch only
    read = _run(tmp_path / "r.db", steps, False, monkeypatch)
    if between[0] == "local":   # (its log entry, id and stamps are each file's own)
        assert cached[0]["documents"][1:] == read[0]["documents"][1:] and cached[1] == read[1]
    else:
        assert cached[:2] == read[:2]
    body = [r for r in cached[0]["documents"] if r[1] == '"d0"'][0][2]
    if between[0] != "bad":
        assert f'"n":{between[2]}' in body and '"status":7' in body   # the other write kept, and the batch's
