"""``Database.integrate(first=...)``: transactions of this replica's own (a server's compensating
transaction for the writes it refused of an upload batch) integrated before the batch in the
same storage transaction, all or nothing with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.store.test_integrate_waits_for_another_writer import A, _body, _clock, _seeded, _set
from tidesync.core.operations import SetValue
from tidesync.core.stamp import ZERO, ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.errors import MergeError


def test_transactions_integrated_first_are_read_by_the_batch_as_if_integrated_before_it(tmp_path: Path) -> None:
    # Database.integrate(first=...): the server's compensating transaction and the allowed
    # rest of a batch, in one storage transaction. When both write one document (a refused
    # and an allowed write of it), the batch merges into what the first wrote, as two calls
    # one after the other do, also with that document's row kept from an earlier batch.
    results = []
    for together in (False, True):
        path = tmp_path / f"sync-{together}.db"
        clock = _clock()
        db, seed = _seeded(path, clock)
        try:
            db.integrate([_set(clock, seed, "x", "n", 1)], peer="w", peer_seq=2)   # x's row kept
            own = _set(clock, seed, "x", "status", "restored")
            batch = [_set(clock, seed, "x", "n", 2)]
            if together:
                db.integrate(batch, peer="w", peer_seq=3, first=[own])
            else:
                db.integrate([own])
                db.integrate(batch, peer="w", peer_seq=3)
            results.append(_body(path, "x"))
        finally:
            db.close()
    assert results[1] == results[0] == {"_id": "x", "n": 2, "status": "restored", "_partition": "p1"}


def test_a_batch_that_fails_leaves_the_transactions_integrated_first_out(tmp_path: Path) -> None:
    path = tmp_path / "sync.db"
    clock = _clock()
    db, seed = _seeded(path, clock)
    try:
        head = db.head_seq()
        own = _set(clock, seed, "x", "status", "restored")
        t = clock.now()
        bad = Transaction(t, A, t, (seed.id,), (SetValue("c", "y", t, ZERO, ("_id",), (), "z"),))   # (the key)
        with pytest.raises(MergeError):
            db.integrate([bad], peer="w", peer_seq=2, first=[own])
        assert db.head_seq() == head
        assert _body(path, "x")["status"] == "open"
        assert db.checkpoint(ReplicaId("w")).received == 1   # (the seed's)
    finally:
        db.close()
