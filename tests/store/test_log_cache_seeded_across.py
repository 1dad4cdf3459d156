"""The log cache seeded by integrations (session 9, ``ReplicaStore._seed_log_cache``) across
what its own tests do not combine it with: partition sessions reading at different positions
between lean integrations that move documents between partitions, an integration that fails
half-way, an acknowledgement flush, and log compaction. Every read gives what reading the file
with a fresh cache gives; a read from below the compaction floor asks for a snapshot."""

from __future__ import annotations

from typing import Any

import pytest

from tidesync.core.operations import CreateDoc, SetValue
from tidesync.core.transaction import Transaction
from tidesync.errors import MergeError
from tidesync.store.database import Database

ORIGINS = ("a1b2c3d4e5f60718", "0f1e2d3c4b5a6978")
SCOPES = [{"partition": {"key": "_partition", "value": p}} for p in ("p1", "p2", "p3")]


def _stamp(i: int, origin: int = 0) -> str:
    return f"{0x18f000000000 + i:012x}000000{ORIGINS[origin]}"


def _txn(i: int, ops: tuple[Any, ...], origin: int = 0) -> Transaction:
    s = _stamp(i, origin)
    return Transaction(s, ORIGINS[origin], s, (), ops)


def _read(db: Database, scope: dict[str, Any], after: int) -> Any:
    batch = db.read_log(after, limit=7, max_bytes=1 << 20, scope=scope, exclude_origin=None)
    return (batch.snapshot_required, batch.scanned_to, batch.head,
            [(seq, t.id, [(op.collection, op.key, getattr(op, "path", None)) for op in t.ops])
             for seq, t in batch.entries])


def _fresh_read(db: Database, scope: dict[str, Any], after: int) -> Any:
    saved = db.__dict__.pop("_ts_log_cache", None)
    try:
        return _read(db, scope, after)
    finally:
        db.__dict__.pop("_ts_log_cache", None)
        if saved is not None:
            db.__dict__["_ts_log_cache"] = saved


def _batches() -> list[tuple[list[Transaction], bool]]:
    """(batch, whether it fails): creates in three partitions, then lean-shaped batches of
    field writes and partition moves, one failing half-way (a malformed last operation)."""
    n = 0
    out: list[tuple[list[Transaction], bool]] = []

    def nxt() -> int:
        nonlocal n
        n += 1
        return n

    creates = []
    for k in range(12):
        i = nxt()
        creates.append(_txn(i, (CreateDoc("Job", f"k{k}", _stamp(i), "", {"_id": f"k{k}", "_partition": f"p{k % 3 + 1}",
                                                                        "n": 0}, {}),)))
    out.append((creates, False))
    for step in range(6):
        batch = []
        for k in range(step % 3, 12, 3):
            i = nxt()
            ops: tuple[Any, ...] = (SetValue("Job", f"k{k}", _stamp(i), "", ("n",), (), step),)
            if k % 4 == step % 4:
                ops += (SetValue("Job", f"k{k}", _stamp(i), "", ("_partition",), (), f"p{(k + step) % 3 + 1}"),)
            batch.append(_txn(i, ops))
        fails = step == 3
        if fails:
            i = nxt()
            batch.append(_txn(i, (SetValue("Job", "k0", _stamp(i), "", ("n", "x"), (), 1),)))
        out.append((batch, fails))
    return out


@pytest.mark.parametrize("compact", [False, True])
def test_seeded_reads_at_every_position_match_fresh_reads_of_the_file(tmp_path, compact):
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        positions = [0, 0, 0]
        for number, (batch, fails) in enumerate(_batches()):
            for scope in SCOPES:   # the sessions' reads make the cache current before each write
                _read(db, scope, db.head_seq())
            if fails:
                with pytest.raises(MergeError):
                    db.integrate(batch)
            else:
                db.integrate(batch)
            if number == 2:
                db.record_acks({ORIGINS[1]: 3}, durable=False)   # keeps the cache current
            if compact and number == 4:
                db.compact_log(5)
            head = db.head_seq()
            for s, scope in enumerate(SCOPES):
                for after in sorted({0, 1, positions[s], max(0, head - 3), head}):
                    assert _read(db, scope, after) == _fresh_read(db, scope, after), (number, s, after)
                positions[s] = min(head, positions[s] + 4)  # each session behind by its own amount
        if compact:
            assert _read(db, SCOPES[0], 0)[0] is True
    finally:
        db.close()
