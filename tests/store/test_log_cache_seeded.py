"""After ``Database.integrate`` the log cache holds the integrated transactions themselves (no
entry decoded again for the reads that follow) and knows which of them are whole in one
partition (no scope query for a session of that partition), while the file stays as the
integration left it. The reads give what reading the file gives."""

from __future__ import annotations

from typing import Any

from tidesync.core.operations import CreateDoc, SetValue
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database

ORIGIN = "a1b2c3d4e5f60718"
SCOPE_P1 = {"partition": {"key": "_partition", "value": "p1"}}
SCOPE_P2 = {"partition": {"key": "_partition", "value": "p2"}}


def _stamp(i: int) -> str:
    return f"{0x18f000000000 + i:012x}000000{ORIGIN}"


def _create(i: int, key: str, partition: str) -> CreateDoc:
    return CreateDoc("Job", key, _stamp(i), "", {"_id": key, "_partition": partition, "n": i}, {})


def _set(i: int, key: str, field: str, value: Any) -> SetValue:
    return SetValue("Job", key, _stamp(i), "", (field,), (), value)


def _read(db: Database, scope: dict[str, Any], after: int = 0) -> list[tuple[int, list[tuple[str, Any]]]]:
    batch = db.read_log(after, limit=100, max_bytes=1 << 20, scope=scope, exclude_origin=None)
    return [(seq, [(op.collection, op.key) for op in t.ops]) for seq, t in batch.entries]


def _history() -> list[Transaction]:
    return [
        Transaction(_stamp(1), ORIGIN, _stamp(1), (), (_create(1, "a", "p1"), _create(1, "b", "p2"))),
        Transaction(_stamp(2), ORIGIN, _stamp(2), (), (_set(2, "a", "n", 5),)),
        # Moves b into p1: the entry is then whole in p1, the earlier one too.
        Transaction(_stamp(3), ORIGIN, _stamp(3), (), (_set(3, "b", "_partition", "p1"),)),
        Transaction(_stamp(4), ORIGIN, _stamp(4), (), (_set(4, "a", "n", 6), _create(4, "c", "p2"))),
    ]


def test_reads_after_integrations_match_reads_of_the_file(tmp_path):
    seeded = Database(tmp_path / "seeded.db", (), partition_key="_partition")
    plain = Database(tmp_path / "plain.db", (), partition_key="_partition")
    try:
        for t in _history():
            for scope in (SCOPE_P1, SCOPE_P2):
                _read(seeded, scope)  # the cache current before each write, as on a server
            seeded.integrate([t])
            plain.integrate([Transaction.from_wire(t.to_wire())])
            plain.__dict__.pop("_ts_log_cache", None)  # read from the file
            for scope in (SCOPE_P1, SCOPE_P2):
                for after in range(4):
                    assert _read(seeded, scope, after) == _read(plain, scope, after), (t.id, scope, after)
                plain.__dict__.pop("_ts_log_cache", None)
    finally:
        seeded.close()
        plain.close()


def test_an_integrated_entry_is_read_without_decoding_or_a_scope_query(tmp_path):
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        db.integrate([Transaction(_stamp(1), ORIGIN, _stamp(1), (), (_create(1, "a", "p1"),))])
        _read(db, SCOPE_P1)
        t = Transaction.from_wire(Transaction(_stamp(2), ORIGIN, _stamp(2), (_stamp(1),),
                                              (_set(2, "a", "n", 9),)).to_wire())
        db.integrate([t])
        assert t.packed() is not None  # the logged bytes
        statements: list[str] = []
        db._engine.connection.set_trace_callback(statements.append)
        try:
            batch = db.read_log(1, limit=100, max_bytes=1 << 20, scope=SCOPE_P1, exclude_origin=None)
        finally:
            db._engine.connection.set_trace_callback(None)
        assert batch.entries == ((2, t),) and batch.entries[0][1] is t
        assert not [s for s in statements if "documents" in s or "FROM log" in s], statements
        # Another partition's session still asks the file, and gets nothing of it.
        assert _read(db, SCOPE_P2, 1) == []
    finally:
        db.close()


def test_recording_acknowledgements_keeps_the_cache_current(tmp_path):
    """The server records its peers' ``Ack``s between integrations: that write changes neither
    the log nor a document, so the seeded entries stay usable; another connection's write
    still makes the next read look at the file."""
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    other = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        db.integrate([Transaction(_stamp(1), ORIGIN, _stamp(1), (), (_create(1, "a", "p1"),))])
        _read(db, SCOPE_P1)
        t = Transaction(_stamp(2), ORIGIN, _stamp(2), (_stamp(1),), (_set(2, "a", "n", 9),))
        db.integrate([t])
        for durable in (False, True):
            db.record_acks({"00000000000000ee": 2}, durable=durable)
        statements: list[str] = []
        db._engine.connection.set_trace_callback(statements.append)
        try:
            batch = db.read_log(1, limit=100, max_bytes=1 << 20, scope=SCOPE_P1, exclude_origin=None)
        finally:
            db._engine.connection.set_trace_callback(None)
        assert batch.entries == ((2, t),)
        assert statements == ["PRAGMA data_version"], statements  # the check that nobody else wrote
        assert db.checkpoint("00000000000000ee").acked == 2
        other.integrate([Transaction(_stamp(3), ORIGIN, _stamp(3), (_stamp(2),), (_set(3, "a", "_partition", "p2"),))])
        db.record_acks({"00000000000000ee": 3}, durable=False)
        assert _read(db, SCOPE_P1, 1) == []  # "a" is in p2 now: seen although the cache was current
        assert _read(db, SCOPE_P2, 1) == [(2, [("Job", "a")]), (3, [("Job", "a")])]
    finally:
        db.close()
        other.close()
