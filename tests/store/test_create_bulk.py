"""``db.create_many``'s bulk path (rows inserted at once, operations packed for the log): the
same file, log, history and revert as its general path, whatever else the write does."""

from __future__ import annotations

import re

import msgpack
import pytest

import tidesync
from tidesync.core.transaction import Transaction
from tidesync.store import database as database_module
from tidesync.store.writer import BulkCreates, pack_transaction


class BulkNote(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    title: str
    status: str = "open"
    priority: int = 0
    score: float = 0.0
    flag: bool = False
    extra: str | None = None


class BulkNested(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    tags: list[str] = tidesync.field(default_factory=list)


_STAMP = re.compile(r"(?<![0-9a-f])([0-9a-f]?)([0-9a-f]{34})(?![0-9a-f])")  # a stamp, or a key: "0"/"1" + stamp


def _norm(value):
    """Stamps (and so ids) and replica ids differ between two runs: replace each stamp by its
    rank among the stamps in ``value``, and the replica id by R."""
    text = repr(value)
    rank = {s: f"S{i}" for i, s in enumerate(sorted({m.group(2) for m in _STAMP.finditer(text)}))}
    text = _STAMP.sub(lambda m: m.group(1) + rank[m.group(2)], text)
    return re.sub(r"'[0-9a-f]{16}'", "'R'", text)


def _items(n, start=0):
    out = []
    for i in range(start, start + n):
        item = {"_id": f"n{i:05d}", "title": f"note {i}", "status": ("open", "done")[i % 2], "priority": i % 5,
                "score": i / 8 if i % 3 else i, "flag": i % 7 == 0}
        if i % 4 == 0:
            del item["status"], item["score"]  # defaults filled in
        if i % 5 == 0:
            item["extra"] = "é\"\\\n" + str(i)  # escaped in JSON
        out.append(item)
    return out


def _scenario(db):
    with db.write():
        db.create(BulkNote, _id="old", title="old")
        db.create(BulkNote, _id="gone", title="gone")
    with db.write():
        db.delete(db.get(BulkNote, "gone"))
    with db.write():
        db.create(BulkNote, _id="first", title="made before")
        db.get(BulkNote, "old").priority = 7  # the update fast path: pending
        assert db.create_many(BulkNote, _items(5000)) == 5000  # more than one chunk
        assert len(db.objects(BulkNote).filter("priority == 3")) == 1000
        changed = db.get(BulkNote, "n00010")
        changed.title = "changed in the same write"  # no before-image: it did not exist before
        db.delete(db.get(BulkNote, "n00011"))
        db.create_many(BulkNote, [{"_id": "n00012", "title": "upserted", "priority": 4}], update="modified")
        # a re-created tombstone and an object of the model: the general path, inside the call
        db.create_many(BulkNote, [{"_id": "gone", "title": "back"}, BulkNote(_id="obj", title="unmanaged")]
                       + _items(3, 6000))
        db.create_many(BulkNested, [{"_id": "x", "tags": ["a"]}])
        # db.create, one by one: the same lean path
        for i, item in enumerate(_items(300, 7000)):
            made = db.create(BulkNote, item)
            if i % 50 == 0:
                assert made.title == item["title"]
                made.priority = 9
        with pytest.raises(tidesync.ValidationError, match="already exists"):
            db.create(BulkNote, _id="n07001", title="again")
        db.create(BulkNote, _id="n00011", title="deleted above, created again")
        db.create(BulkNote, {"_id": "kw", "title": "values"}, priority=2)
        db.create(BulkNote, _id="late", title="t", score=1)
        assert db.get(BulkNote, "n04999").title == "note 4999"
    with db.write():
        db.get(BulkNote, "n00020").title = "a later write"
    entries = db.history(10)
    sql = "SELECT collection, pk, body, meta, epoch, live, seq FROM documents ORDER BY collection, pk"
    before_revert = db._engine.query(sql)
    revert = db.revert(entries[1].id)
    rows = before_revert + db._engine.query(sql)
    # Each entry as the transaction it stands for (bulk creates may be stored as a columns record).
    log = [(seq, Transaction.from_stored(msgpack.unpackb(data, raw=False)).to_wire(), data) for seq, data in
           db._engine.query("SELECT seq, data FROM log ORDER BY seq")]
    desc = sorted((seq, msgpack.unpackb(data, raw=False)) for seq, data in
                  db._engine.query("SELECT seq, data FROM descriptors"))
    # A descriptor's size is its entry's stored size (smaller for a columns record): checked
    # here, then left out of the comparison between paths.
    stored = {seq: len(data) for seq, _, data in log}
    for seq, d in desc:
        assert d.pop("size") == stored[seq]
    return rows, log, desc, entries, revert


def _run(path, bulk, monkeypatch):
    if not bulk:
        monkeypatch.setattr(database_module, "_make_bulk_builder", lambda cls, obj: None)
    with tidesync.open(path, schema=[BulkNote, BulkNested]) as db:
        out = _scenario(db)
        used = db._bulk_builders.get("BulkNote") is not None
    monkeypatch.undo()
    assert used == bulk
    return out


def test_bulk_path_gives_the_general_paths_file_log_history_and_revert(tmp_path, monkeypatch):
    rows_g, log_g, desc_g, hist_g, rev_g = _run(tmp_path / "general.db", False, monkeypatch)
    rows_b, log_b, desc_b, hist_b, rev_b = _run(tmp_path / "bulk.db", True, monkeypatch)
    assert len(rows_b) == len(rows_g) == 2 * 5310
    assert _norm(rows_b) == _norm(rows_g)
    assert _norm([(seq, wire) for seq, wire, _ in log_b]) == _norm([(seq, wire) for seq, wire, _ in log_g])
    assert _norm(desc_b) == _norm(desc_g)
    assert _norm(hist_b) == _norm(hist_g)
    assert _norm(rev_b) == _norm(rev_g)
    for seq, wire, data in log_b:
        # canonical msgpack: packing what was read gives the same bytes
        assert msgpack.packb(msgpack.unpackb(data, raw=False), use_bin_type=True) == data
        stamps = [op[3] for op in wire["ops"]]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert wire["id"] == stamps[0]
    big = log_b[2][1]
    assert len(big["ops"]) == 5012 + 300 + 6 + 3 and big["before"] == [["BulkNote", "old", {"priority": 0}, False]]
    # the rows the big write left carry its log seq
    assert {r[6] for r in rows_b[:5310] if r[1].startswith('"n0')} == {log_b[2][0], log_b[3][0]}


def test_a_duplicate_across_chunks_or_of_a_pending_document_raises_and_leaves_nothing(tmp_path):
    with tidesync.open(tmp_path / "d.db", schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(10))
        with db.write():
            db.get(BulkNote, "n00003").priority = 4  # pending in the update fast path
            with pytest.raises(tidesync.ValidationError, match="'n00003' already exists"):
                db.create_many(BulkNote, _items(5, 100) + _items(1, 3))
            with pytest.raises(tidesync.ValidationError, match="'n09000' already exists"):
                db.create_many(BulkNote, _items(9001, 1000) + _items(1, 9000))
            with pytest.raises(tidesync.ValidationError, match="BulkNote.priority expects int"):
                db.create_many(BulkNote, _items(5000, 1000) + [{"_id": "bad", "title": "x", "priority": "high"}])
            with pytest.raises(tidesync.ValidationError, match="BulkNote.title is required"):
                db.create_many(BulkNote, [{"_id": "no title"}])
            assert db.get(BulkNote, "n00100") is None and db.get(BulkNote, "n01000") is None
            assert len(db.objects(BulkNote)) == 10
            db.create_many(BulkNote, _items(2, 50))
        assert len(db.objects(BulkNote)) == 12
        assert db.get(BulkNote, "n00003").priority == 4
        entry = db.history(1)[0]
        assert sorted(c.kind for c in entry.changes) == ["create", "create", "update"]


def test_a_failed_write_leaves_nothing_and_the_next_one_is_numbered_right(tmp_path):
    with tidesync.open(tmp_path / "f.db", schema=[BulkNote]) as db:
        with pytest.raises(RuntimeError):
            with db.write():
                db.create_many(BulkNote, _items(100))
                raise RuntimeError("rolled back")
        assert len(db.objects(BulkNote)) == 0 and db.history() == []
        with db.write():
            db.create_many(BulkNote, _items(3))
        (seq,) = db._engine.query("SELECT max(seq) FROM log")[0]
        assert {r[0] for r in db._engine.query("SELECT seq FROM documents")} == {seq}


def test_a_peer_integrating_the_log_gets_the_same_documents(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[BulkNote]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[BulkNote]) as b:
        with a.write():
            a.create(BulkNote, _id="solo", title="one")
            a.create_many(BulkNote, _items(300))
            a.get(BulkNote, "solo").title = "two"
        b.integrate(a.export_transactions(), peer=a.replica_id)
        body = "SELECT pk, body, meta, epoch, live FROM documents ORDER BY pk"
        assert b._engine.query(body) == a._engine.query(body)


def test_pack_transaction_is_msgpack_of_the_whole_map():
    def op(i):
        return ["C", "N", f"k{i}", f"{i:034x}", "", {"_id": f"k{i}", "v": i}, {}, []]

    for n_before, n_bulk, n_after in ((0, 1, 0), (3, 20, 2), (0, 70000, 15), (16, 15, 0)):
        ops = [op(i) for i in range(n_before + n_bulk + n_after)]
        wire = {"id": "i", "origin": "o", "stamp": "s", "parents": ["p"], "ops": ops, "before": [], "user": "u"}
        middle = ops[n_before:n_before + n_bulk]
        packed = msgpack.packb(middle, use_bin_type=True)
        items = packed[1:] if len(middle) < 16 else packed[3:] if len(middle) < 65536 else packed[5:]
        bulk = BulkCreates(n_before, n_bulk, middle[0][3], [items[:7], items[7:]], [])
        rest = {**wire, "ops": ops[:n_before] + ops[n_before + n_bulk:]}
        assert pack_transaction(rest, [bulk]) == msgpack.packb(wire, use_bin_type=True)


def test_fast_assignments_before_lean_creates_keep_log_order_and_stamp_order(tmp_path):
    """An assignment buffered by the update fast path, then lean creates (one and in bulk),
    then another assignment: the log lists them in that order, with increasing stamps."""
    with tidesync.open(tmp_path / "a.db", schema=[BulkNote]) as db:
        with db.write():
            a = db.create(BulkNote, _id="a", title="t")
        with db.write():
            a.priority = 2
            db.create(BulkNote, _id="b", title="u")
            db.create_many(BulkNote, [{"_id": "c", "title": "v"}, {"_id": "d", "title": "w"}])
            a.priority = 5
        t = db.export_transactions()[-1]
    assert [(type(op).__name__, op.key) for op in t.ops] == [
        ("SetValue", "a"), ("CreateDoc", "b"), ("CreateDoc", "c"), ("CreateDoc", "d"), ("SetValue", "a")]
    stamps = [op.stamp for op in t.ops]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert t.id == stamps[0]


def test_pack_transaction_packs_a_runs_wire_forms_as_msgpack_of_the_whole_map():
    def op(i):
        return ["C", "N", f"k{i}", f"{i:034x}", "", {"_id": f"k{i}", "v": i}, {}, [] if i % 2 else ["v"]]

    for n_before, n_packed, n_wires, n_after in ((0, 0, 1, 0), (2, 0, 17, 1), (0, 5, 12, 0), (1, 3, 70000, 2)):
        n_bulk = n_packed + n_wires
        ops = [op(i) for i in range(n_before + n_bulk + n_after)]
        wire = {"id": "i", "origin": "o", "stamp": "s", "parents": [], "ops": ops, "before": [], "user": None}
        middle = ops[n_before:n_before + n_bulk]
        packed = [msgpack.packb(o, use_bin_type=True) for o in middle[:n_packed]]
        bulk = BulkCreates(n_before, n_bulk, middle[0][3], packed, [], middle[n_packed:])
        rest = {**wire, "ops": ops[:n_before] + ops[n_before + n_bulk:]}
        assert pack_transaction(rest, [bulk]) == msgpack.packb(wire, use_bin_type=True)


def test_create_checks_the_model_and_the_write_after_its_lean_path_is_known(tmp_path):
    class Other(tidesync.Model):
        _id: str = tidesync.field(primary_key=True)

    db = tidesync.open(tmp_path / "a.db", schema=[BulkNote])
    with db.write():
        db.create(BulkNote, _id="a", title="a")  # the lean path is now known for BulkNote
    with pytest.raises(tidesync.NotInWriteTransaction):
        db.create(BulkNote, _id="b", title="b")
    with db.write():
        with pytest.raises(tidesync.UsageError):
            db.create(Other, _id="c")
        with pytest.raises(tidesync.UsageError):
            db.create([], _id="c")  # type: ignore[arg-type]  # unhashable: still a clear error
        with pytest.raises(tidesync.ValidationError):
            db.create(BulkNote, _id="a2")  # title is required
        assert db.create(BulkNote, _id="b", title="b").title == "b"
    db.close()
    with pytest.raises(tidesync.DatabaseClosedError):
        db.create(BulkNote, _id="d", title="d")
