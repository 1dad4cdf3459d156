"""Columns records in the log (format 3): a bulk update of the same top-level fields of many
documents is logged as one *set columns* record (operations) and one before-images record
instead of one operation and one before-image per document. Everything that reads the log
sees the transaction the per-operation form holds: the same documents, merge states, history,
revert, export to a peer and sync upload, whichever form was stored; peers never receive the
stored form (a record is not a wire form)."""

from __future__ import annotations

import msgpack
import pytest

import tidesync
from tidesync.core.clock import HybridClock
from tidesync.core.merge import canonical_state
from tidesync.core.operations import CREATE_COLUMNS, SET_COLUMNS, CreateDoc, SetValue, op_from_wire
from tidesync.core.stamp import MAX_COUNTER, ReplicaId, make_stamp, parse_stamp, stamp_after, stamp_run
from tidesync.core.transaction import Transaction
from tidesync.errors import MergeError
from tidesync.protocol import codec
from tidesync.protocol.messages import Changes
from tidesync.store import writer
from tidesync.store.replica import _unpack_stored
from tests.models import Gadget
from tests.store.test_create_bulk import BulkNote, _items, _norm
from tests.store.test_update_bulk import _state

N = 120
REPLICA = ReplicaId("00000000000000ab")


def test_a_run_of_stamps_is_what_the_clock_issues_in_a_row() -> None:
    for counter in (0, 5, MAX_COUNTER - 3, MAX_COUNTER):
        clock = HybridClock(REPLICA, lambda: 1000, last=make_stamp(1000, counter, REPLICA))
        issued = clock.now_many(10)
        assert issued == stamp_run(issued[0], 10)
        assert [stamp_after(issued[0], k) for k in range(10)] == issued
        assert issued == sorted(set(issued)) and clock.now() > issued[-1]
    # across the end of a millisecond's counter
    first = make_stamp(7, MAX_COUNTER - 1, REPLICA)
    run = stamp_run(first, 4)
    assert [parse_stamp(s)[:2] for s in run] == [(7, MAX_COUNTER - 1), (7, MAX_COUNTER), (8, 0), (8, 1)]
    assert stamp_run(first, 0) == [] and stamp_run(first, 1) == [first]


def test_long_runs_of_stamps_are_stamp_after_each() -> None:
    """Runs of 64 stamps or more are made from a table of the counter's last digits: across
    4,096-counter blocks, the end of a millisecond's counter and a second replica."""
    for replica in (REPLICA, ReplicaId("2fb9bf24a21fd44e")):
        for wall, counter in ((1000, 0), (1000, 4000), (9, 4095), (9, MAX_COUNTER - 5000), (9, MAX_COUNTER - 70),
                              (9, MAX_COUNTER)):
            first = make_stamp(wall, counter, replica)
            for n in (63, 64, 65, 4097, 9000):
                assert stamp_run(first, n) == [stamp_after(first, k) for k in range(n)]


def _records(db):
    """Per log entry: how many columns records its ops and before-images hold."""
    records = (SET_COLUMNS, CREATE_COLUMNS)
    out = []
    for (data,) in db._engine.query("SELECT data FROM log ORDER BY seq"):
        wire = msgpack.unpackb(data, raw=False)
        out.append((sum(type(o) is list and o[0] in records for o in wire["ops"]),
                    sum(type(b) is list and b[0] == SET_COLUMNS for b in wire["before"])))
    return out


def _scenario(db):
    with db.write():
        db.create_many(BulkNote, _items(N))
        db.create(BulkNote, _id="after", title="created after the record, in the same write")
        db.create_many(BulkNote, _items(3, 1000))
    with db.write():  # re-created documents: their base is their delete's stamp
        for i in range(0, 40, 4):
            db.delete(db.get(BulkNote, f"n{i:05d}"))
    with db.write():
        db.create_many(BulkNote, [{"_id": f"n{i:05d}", "title": f"again {i}"} for i in range(0, 40, 4)])
    objs = list(db.objects(BulkNote))
    with db.write():  # a loop of one field: one record, bases per document
        for n, o in enumerate(objs):
            o.priority = n % 7
    with db.write():  # two fields of every document, every kind of value, one base for all
        db.create_many(BulkNote, [{"_id": f"n{i:05d}", "score": 0.1 + i / 3, "extra": f'é"\\{i}'}
                                  for i in range(41, N)], update="all")
    with db.write():  # "modified": some items change one field, some the other: per operation
        db.create_many(BulkNote, [{"_id": f"n{i:05d}", "priority": 3, "flag": i % 2 == 0}
                                  for i in range(N)], update="modified")
    with db.write():  # a small loop: the wire form, as before
        for o in objs[:5]:
            o.title = "few"
    records = _records(db)
    history = db.history(20)
    before = _state(db, meta=True)
    big = history[3]  # the loop of one field
    revert = db.revert(big.id)
    after = _state(db, meta=True)
    exported = db.export_transactions()
    peer_path = str(db.path) + ".peer.db"
    with tidesync.open(peer_path, schema=[BulkNote]) as peer:
        peer.integrate(exported)
        peer_rows = peer._engine.query("SELECT collection, pk, body, live FROM documents ORDER BY collection, pk")
        peer_states = {(c, pk): canonical_state(peer._load_doc(c, None, (c, pk)).state) for c, pk, *_ in peer_rows}
    # a sync upload: the entries as read_log gives them, encoded, decoded and integrated by a peer
    batch = db.read_log(0, limit=1000, max_bytes=1 << 30, scope={}, exclude_origin=None)
    decoded = codec.decode(codec.encode(Changes(0, batch.scanned_to, batch.head, batch.entries),
                                        max_size=1 << 30), max_size=1 << 30)
    assert [t for _, t in decoded.entries] == [t for _, t in batch.entries]
    synced_path = str(db.path) + ".synced.db"
    with tidesync.open(synced_path, schema=[BulkNote]) as synced:
        synced.integrate([t for _, t in decoded.entries], peer="up", peer_seq=batch.scanned_to)
        synced_rows = synced._engine.query("SELECT collection, pk, body, live FROM documents ORDER BY collection, pk")
        synced_states = {(c, pk): canonical_state(synced._load_doc(c, None, (c, pk)).state)
                         for c, pk, *_ in synced_rows}
    assert synced_rows == peer_rows and synced_states == peer_states
    return records, (history, before, revert, after, [t.to_wire() for t in exported], peer_rows, peer_states)


def test_columns_records_give_the_per_operation_forms_documents_log_history_revert_peer_and_sync(
        tmp_path, monkeypatch):
    records, columns = _scenario(tidesync.open(tmp_path / "c.db", schema=[BulkNote]))
    # the creates as a record, deletes, re-creates (10: the wire form); the loop and the two-field
    # update as records; the rest not
    assert records == [(1, 0), (0, 0), (0, 0), (1, 1), (1, 1), (0, 0), (0, 0)]
    monkeypatch.setattr(writer, "COLUMNS_MIN_DOCS", 1 << 30)
    records, per_op = _scenario(tidesync.open(tmp_path / "p.db", schema=[BulkNote]))
    assert records == [(0, 0)] * 7
    assert _norm(columns) == _norm(per_op)


def test_an_entry_holding_records_is_sent_in_the_wire_form(tmp_path):
    with tidesync.open(tmp_path / "s.db", schema=[BulkNote]) as db:
        with db.write():
            db.create(BulkNote, _id="small", title="one")
        with db.write():
            db.create_many(BulkNote, _items(40))
        objs = list(db.objects(BulkNote))[1:]
        with db.write():
            for o in objs:
                o.priority = 4
        (created,), = db._engine.query("SELECT data FROM log WHERE seq = 2")
        assert [o[0] for o in msgpack.unpackb(created, raw=False)["ops"]] == [CREATE_COLUMNS]
        made = Transaction.from_stored(msgpack.unpackb(created, raw=False), created)
        assert made.packed() is None and [op.key for op in made.ops] == [f"n{i:05d}" for i in range(40)]
        assert all(type(op) is CreateDoc and op.fields["_id"] == op.key for op in made.ops)
        assert [op.stamp for op in made.ops] == stamp_run(made.id, 40)
        assert Transaction.from_wire(made.to_wire()) == made
        (data,), = db._engine.query("SELECT data FROM log ORDER BY seq DESC LIMIT 1")
        stored = msgpack.unpackb(data, raw=False)
        assert [o[0] for o in stored["ops"]] == [SET_COLUMNS] and stored["before"][0][0] == SET_COLUMNS
        full = Transaction.from_stored(stored, data)
        lazy = Transaction.stored_lazily(data, _unpack_stored)
        assert full.packed() is None and lazy.packed() is None and lazy == full
        assert len(full.ops) == 40 and all(type(op) is SetValue and op.value == 4 for op in full.ops)
        assert [op.stamp for op in full.ops] == stamp_run(full.ops[0].stamp, 40) and full.id == full.ops[0].stamp
        assert [b.fields for b in full.before] == [{"priority": i % 5} for i in range(40)]
        # its wire form is the per-operation one, which a peer parses and validates as usual
        wire = full.to_wire()
        assert all(o[0] == "S" for o in wire["ops"]) and all(len(b) == 4 for b in wire["before"])
        assert Transaction.from_wire(wire) == full
        # a small entry is still sent as stored, spliced in beside one holding records
        (small,), = db._engine.query("SELECT data FROM log ORDER BY seq LIMIT 1")
        assert Transaction.stored_lazily(small, _unpack_stored).packed() == small
        batch = db.read_log(0, limit=10, max_bytes=1 << 30, scope={}, exclude_origin=None)
        (_, first), (_, second), (_, third) = batch.entries
        assert second.packed() is None and third.packed() is None and first.packed() == small
        message = Changes(0, batch.scanned_to, batch.head, batch.entries)
        payload = codec.encode(message, max_size=1 << 30)
        for t in (first, second, third):
            with pytest.raises(AttributeError):
                object.__getattribute__(t, "ops")  # no operation objects made: stored bytes or wire map sent
        assert second.wire() == made.to_wire() and third.wire() == full.to_wire()
        assert payload == codec.encode(Changes(0, batch.scanned_to, batch.head, (
            (1, Transaction.from_stored(msgpack.unpackb(small, raw=False))), (2, made), (3, full))), max_size=1 << 30)
        assert codec.decode(payload, max_size=1 << 30).entries == ((1, first), (2, made), (3, full))


def test_a_peer_sending_a_columns_record_gets_a_clear_error(tmp_path):
    record = [SET_COLUMNS, "BulkNote", ["priority"], ["n00000"], make_stamp(1, 0, REPLICA), "", [1]]
    with pytest.raises(ValueError, match="unknown operation code"):
        op_from_wire(record)
    stamp = make_stamp(1, 0, REPLICA)
    wire = {"id": stamp, "origin": REPLICA, "stamp": stamp, "parents": [], "ops": [record], "before": []}
    with pytest.raises(ValueError):
        Transaction.from_wire(wire)
    with tidesync.open(tmp_path / "r.db", schema=[BulkNote]) as db:
        with pytest.raises(MergeError, match="unknown operation code"):
            db.integrate([wire])
        assert db.last_seq == 0


def _gadgets(path):
    from datetime import datetime, timezone
    from decimal import Decimal
    from uuid import UUID

    with tidesync.open(path, schema=[Gadget]) as db:
        with db.write():
            db.create_many(Gadget, [
                {"_id": i, "flag": i % 2 == 0, "ratio": i / 7, "blob": bytes([i, 0, 255]),
                 "uid": UUID(int=i), "oid": tidesync.ObjectId(f"{i:024x}"), "amount": Decimal(f"{i}.25"),
                 "when": datetime(2026, 1, 1 + i % 28, tzinfo=timezone.utc), "name": f"g{i}"} for i in range(40)]
                + [{"_id": 100 + i} for i in range(40)])  # every field a default: defaults per document
        records = _records(db)
        history = db.history(5)
        (data,), = db._engine.query("SELECT data FROM log")
        ops = Transaction.from_stored(msgpack.unpackb(data, raw=False)).ops
        # the key is the _id field's value, not the same object (as two unpacked items are not)
        assert all(op.key == op.fields["_id"] for op in ops)
        exported = db.export_transactions()
        with tidesync.open(str(path) + ".peer.db", schema=[Gadget]) as peer:
            peer.integrate(exported)
            rows = peer._engine.query("SELECT collection, pk, body, meta, live FROM documents ORDER BY pk")
            states = {(c, pk): canonical_state(peer._load_doc(c, None, (c, pk)).state) for c, pk, *_ in rows}
        own = db._engine.query("SELECT collection, pk, body, meta, live FROM documents ORDER BY pk")
    return records, (history, [t.to_wire() for t in exported], rows, states, own)


def test_a_create_record_of_every_scalar_type_gives_the_per_operation_forms_result(tmp_path, monkeypatch):
    records, columns = _gadgets(tmp_path / "c.db")
    assert records == [(1, 0)]
    monkeypatch.setattr(writer, "COLUMNS_MIN_DOCS", 1 << 30)
    records, per_op = _gadgets(tmp_path / "p.db")
    assert records == [(0, 0)]
    assert _norm(columns) == _norm(per_op)
