"""``ReplicaStore._run_values`` writes many rows a few dozen per statement (``INSERT ... SELECT
* FROM (VALUES ...)``, upsert clause included). It must leave exactly the rows, rowids and
upsert outcomes that the same statement run once per row leaves, and an integrated batch of many
transactions must be stored exactly as before."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import tidesync
from tidesync.core.operations import CreateDoc, SetValue
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database
from tidesync.store.replica import _VALUES_ROWS
from tidesync.store.tables import UPSERT_DOCUMENT

ORIGIN = "00000000000000aa"


def _stamp(n: int) -> str:
    return f"{n:016x}00{ORIGIN}"


def _rows(db: Database, sql: str) -> list[tuple]:
    return [tuple(r) for r in db._engine.query(sql)]


@pytest.mark.parametrize("n", [0, 1, _VALUES_ROWS - 1, _VALUES_ROWS, _VALUES_ROWS + 1, 3 * _VALUES_ROWS + 17])
def test_the_same_rows_as_one_statement_per_row(tmp_path: Path, n: int) -> None:
    rng = random.Random(n)
    keys = [f'"k{rng.randrange(max(1, n // 2 + 1))}"' for _ in range(n)]  # repeats: the upsert applies
    rows = [("Note", k, f'{{"_id":{k},"i":{i}}}', '{"*":"x"}', "", rng.choice([0, 1]), i + 1,
             rng.choice([None, '"p"', '"q"'])) for i, k in enumerate(keys)]
    dbs = []
    for name, many in (("one", False), ("many", True)):
        db = tidesync.open(tmp_path / f"{name}.db")
        with db._engine.atomic():
            db._engine.run_rows(UPSERT_DOCUMENT, [("Note", '"held"', "{}", "{}", "", 1, 0, '"h"')])
            if many:
                db._run_values(UPSERT_DOCUMENT, rows, 8)
            else:
                db._engine.run_rows(UPSERT_DOCUMENT, rows)
        dbs.append(db)
    sql = "SELECT rowid, collection, pk, body, meta, epoch, live, seq, scope FROM documents ORDER BY rowid"
    assert _rows(dbs[0], sql) == _rows(dbs[1], sql)
    for db in dbs:
        db.close()


def test_a_batch_of_many_transactions_is_stored_as_before(tmp_path: Path) -> None:
    """Hundreds of small transactions (creates, then updates of some of them), integrated
    at once and one at a time: the same documents, log, descriptors and heads."""
    txns = []
    n = 0
    prev: tuple[str, ...] = ()
    for i in range(300):
        ops = []
        for j in range(3):
            n += 1
            key = f"d{i}-{j}"
            ops.append(CreateDoc("Note", key, _stamp(n), "", {"_id": key, "i": i, "j": j}, {}, ()))
        if i % 7 == 3:
            n += 1
            ops.append(SetValue("Note", f"d{i - 1}-0", _stamp(n), "", ("i",), (), -i))
        tid = ops[0].stamp
        txns.append(Transaction(tid, ORIGIN, tid, prev, tuple(ops)))
        prev = (tid,)
    dbs = []
    for name, batch in (("batch", True), ("single", False)):
        db = tidesync.open(tmp_path / f"{name}.db")
        if batch:
            db.integrate(txns, peer="p", peer_seq=300)
        else:
            for k, t in enumerate(txns):
                db.integrate([t], peer="p", peer_seq=k + 1)
        dbs.append(db)
    for sql in ("SELECT rowid, collection, pk, body, meta, epoch, live, seq, scope FROM documents ORDER BY rowid",
                "SELECT seq, id, origin, stamp, data, via FROM log ORDER BY seq",
                "SELECT id, origin, user, stamp, data, seq FROM descriptors ORDER BY id",
                "SELECT id FROM heads ORDER BY id"):
        assert _rows(dbs[0], sql) == _rows(dbs[1], sql), sql
    for db in dbs:
        db.close()
