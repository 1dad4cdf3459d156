"""The upload fast path: a batch's creates of documents the file does not hold become rows
straight from the operation, and a transaction parsed from its wire form keeps that map for its
log entry. Both must give exactly what the general path gives."""

from __future__ import annotations

import json
import random

import msgpack
import pytest

import tidesync
from tidesync.core import merge
from tidesync.core.operations import CreateDoc, DeleteDoc, SetValue, op_to_wire
from tidesync.core.transaction import Transaction
from tidesync.core.values import canonical_json
from tidesync.errors import MergeError
from tidesync.store.database import Database

ORIGIN = "00000000000000aa"


def _stamp(n: int) -> str:
    return f"{n:016x}00{ORIGIN}"


def _txn(n: int, ops: list, parents: tuple = ()) -> Transaction:
    return Transaction(ops[0].stamp, ORIGIN, ops[0].stamp, parents, tuple(ops))


def _stored(db: Database):
    return {(c, pk): (body, meta, epoch, live, seq, scope) for c, pk, body, meta, epoch, live, seq, scope in
            db._engine.query("SELECT collection, pk, body, meta, epoch, live, seq, scope FROM documents")}


def _expected(txns: list[Transaction], held: dict) -> dict:
    """Each document's state from the merge core, one operation at a time."""
    states = dict(held)
    for t in txns:
        for op in t.ops:
            ref = (op.collection, canonical_json(op.key))
            state = states.get(ref) or merge.new_state()
            states[ref], _ = merge.integrate(state, op)
    return states


def test_new_documents_touched_again_in_the_batch_match_the_merge_core(tmp_path):
    rng = random.Random(7)
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        held_op = CreateDoc("Doc", "held", _stamp(1), "", {"_id": "held", "_partition": "p", "n": 0}, {})
        db.integrate([_txn(1, [held_op])])
        held = {("Doc", '"held"'): merge.integrate(merge.new_state(), held_op)[0]}
        txns = []
        n = 10
        for i in range(40):
            ops = []
            for _ in range(rng.randint(1, 4)):
                n += 1
                key = rng.choice(["held", "a", "b", "c", f"new{i}", 7, {"k": 1}])
                kind = rng.random()
                if kind < 0.5:
                    fields = {"_partition": "p", "n": n, "tags": ["x", f"t{n}"]}
                    ops.append(CreateDoc("Doc", key, _stamp(n), "", fields, {"tags": "list"} if n % 2 else {}))
                elif kind < 0.8:
                    ops.append(SetValue("Doc", key, _stamp(n), "", ("n",), (), n))
                else:
                    ops.append(DeleteDoc("Doc", key, _stamp(n), ""))
            txns.append(_txn(n, ops))
        db.integrate(txns, peer="00000000000000ab", peer_seq=9)
        stored = _stored(db)
        expected = _expected(txns, held)
        assert set(stored) == set(expected)
        for ref, state in expected.items():
            body, meta, epoch, live, _, scope = stored[ref]
            assert (msgpack.unpackb(msgpack.packb(state.body)), state.meta, state.epoch, state.live) == (
                merge_json(body), merge_json(meta), epoch, bool(live)), ref
            if state.live:
                assert scope == json.dumps(state.body.get("_partition"))
    finally:
        db.close()


def merge_json(text: str):
    return json.loads(text)


def test_a_bad_create_of_a_new_document_rolls_the_batch_back(tmp_path):
    db = Database(tmp_path / "server.db", ())
    try:
        good = CreateDoc("Doc", "a", _stamp(1), "", {"_id": "a"}, {})
        bad = CreateDoc("Doc", "b", _stamp(2), "", {"_id": "not b"}, {})
        with pytest.raises(MergeError):
            db.integrate([_txn(1, [good]), _txn(2, [bad])])
        assert _stored(db) == {}
        assert db.last_seq == 0
    finally:
        db.close()


@pytest.mark.parametrize("extra", [{}, {"user": "u1"}, {"meta": {"m": 1}}, {"user": "u1", "meta": {"m": 1}}])
def test_a_parsed_upload_of_creates_keeps_its_wire_map(extra):
    op = CreateDoc("Doc", "a", _stamp(1), "", {"_id": "a", "x": [1, {"y": 2.5}]}, {"x": "list"}, ("z",))
    wire = {"id": op.stamp, "origin": ORIGIN, "stamp": op.stamp, "parents": [_stamp(0)], "ops": [op_to_wire(op)],
            "before": [], **extra}
    t = Transaction.from_wire(msgpack.unpackb(msgpack.packb(wire)))
    assert t.wire() == t.to_wire() == wire
    assert t._wire is not None
    assert msgpack.packb(t.wire()) == msgpack.packb(t.to_wire())


@pytest.mark.parametrize("wire_change", [
    lambda w: w.update(user=None),           # to_wire() leaves a None user out
    lambda w: w.update(meta={}),             # ... and an empty meta
    lambda w: w.pop("before"),               # ... and always writes before
    lambda w: w.update(extra=1),             # unknown keys are not kept
    lambda w: w.update(id=w.pop("id")),      # another key order
    lambda w: w["ops"].append(["D", "Doc", "a", _stamp(2), ""]),  # not only creates
    lambda w: w.update(before=[["Doc", "a", None, 0]]),
])
def test_other_wire_maps_are_rebuilt(wire_change):
    op = CreateDoc("Doc", "a", _stamp(1), "", {"_id": "a"}, {})
    wire = {"id": op.stamp, "origin": ORIGIN, "stamp": op.stamp, "parents": [], "ops": [op_to_wire(op)],
            "before": []}
    wire_change(wire)
    t = Transaction.from_wire(wire)
    assert t._wire is None
    assert t.wire() == t.to_wire()


def test_refs_are_each_ops_document_ref():
    ops = [CreateDoc("Doc", k, _stamp(i), "", {}, {}) for i, k in enumerate(["a", 1, {"b": [1]}, "a"], 1)]
    t = _txn(1, ops)
    assert t.refs() == tuple(("Doc", canonical_json(op.key)) for op in ops)
    assert t.refs() is t.refs()
    assert t.touches() == (("Doc", "a"), ("Doc", 1), ("Doc", {"b": [1]}))
    assert t == Transaction(t.id, t.origin, t.stamp, t.parents, t.ops)  # derived fields are not compared


def test_an_upload_through_a_device_is_stored_as_its_wire_form(tmp_path):
    class UpDoc(tidesync.Model):
        _id: str = tidesync.field(primary_key=True)
        title: str = ""
        tags: list[str] = tidesync.field(default_factory=list)

    dev = tidesync.open(tmp_path / "dev.db", schema=[UpDoc])
    srv = Database(tmp_path / "server.db", ())
    try:
        with dev.write():
            for i in range(5):
                dev.create(UpDoc, _id=f"d{i}", title=f"t{i}", tags=["a"])
        sent = dev.export_transactions(0)
        received = [Transaction.from_wire(msgpack.unpackb(msgpack.packb(t.to_wire()))) for t in sent]
        assert all(t._wire is not None for t in received)
        srv.integrate(received, peer=dev.replica_id, peer_seq=1)
        (data,) = srv._engine.query("SELECT data FROM log")[0]
        assert data == msgpack.packb(sent[0].to_wire(), use_bin_type=True)
    finally:
        dev.close()
        srv.close()


@pytest.mark.parametrize("partition", ["u0", 7, {"team": "a"}])
def test_partition_check_of_plain_creates(tmp_path, partition):
    """The partition session's quick pass over transactions of plain creates lets through
    exactly the creates in the session's partition, of documents no other partition holds;
    anything else goes through the per-document check (same refusals as before)."""
    from types import SimpleNamespace

    from tidesync.server.config import ServerConfig
    from tidesync.server.enforcement import Enforcer
    from tidesync.server.schemas import SchemaLearner

    config = ServerConfig(data_dir=tmp_path, development_mode=False)
    server = Database(tmp_path / "server.db", (), partition_key=config.partition_key)
    state = SimpleNamespace(backend=server, config=config, schema_learner=SchemaLearner(tmp_path / "schema.json"))
    try:
        pkey = config.partition_key
        other = Enforcer(state, None, "elsewhere", True)
        taken = CreateDoc("Doc", "taken", _stamp(1), "", {"_id": "taken", pkey: "elsewhere"}, {})
        other.integrate([_txn(1, [taken])], "00000000000000bb", 1)
        enf = Enforcer(state, None, partition, True)

        def create(n: int, key: str, value) -> CreateDoc:
            fields = {"_id": key} if value is ... else {"_id": key, pkey: value}
            return CreateDoc("Doc", key, _stamp(n), "", fields, {})

        good = _txn(10, [create(10, "a", partition), create(11, "b", partition)])
        mixed = _txn(20, [create(20, "c", partition), create(21, "d", "u9"), create(22, "taken", partition),
                          create(23, "e", ...), create(24, "f", 7.0 if partition == 7 else partition)])
        _, messages, compensated = enf.integrate([good, mixed], "00000000000000aa", 2)
        refused = sorted(m.key for m in messages)
        expected = ["d", "e", "taken"] + (["f"] if partition == 7 else [])
        assert refused == sorted(expected)
        assert compensated
        assert sorted(server.get_raw("Doc", k)["_id"] for k in ("a", "b", "c") if server.get_raw("Doc", k)) == \
            ["a", "b", "c"]
        assert server.get_raw("Doc", "d") is None
        assert server.get_raw("Doc", "taken")[pkey] == "elsewhere"
    finally:
        server.close()


def test_a_create_parsed_or_read_back_is_a_plain_frozen_create():
    from dataclasses import FrozenInstanceError

    from tidesync.core.operations import op_from_stored, op_from_wire

    op = CreateDoc("Doc", {"k": [1]}, _stamp(1), "", {"_id": {"k": [1]}, "x": 1}, {"x": "counter"}, ("x",))
    for parsed in (op_from_wire(op_to_wire(op)), op_from_stored(op_to_wire(op))):
        assert type(parsed) is CreateDoc
        assert parsed == op and hash(parsed.stamp) == hash(op.stamp)
        assert repr(parsed) == repr(op)
        with pytest.raises(FrozenInstanceError):
            parsed.key = "other"  # type: ignore[misc]


def _rows_with_rowid(db: Database):
    return db._engine.query("SELECT rowid, collection, pk, body, meta, epoch, live, seq, scope FROM documents "
                            "ORDER BY rowid")


def test_a_preloaded_batch_is_stored_as_one_read_at_integration(tmp_path):
    # Database.preload reads a batch's documents once (for the server's partition check and
    # the integration). Used, or discarded because the file changed in between, or with
    # duplicates in the batch: the rows (rowids too), the log and the scopes must be those of
    # a plain integrate.
    rng = random.Random(5)
    held_op = CreateDoc("Doc", "held", _stamp(1), "", {"_id": "held", "_partition": "p", "n": 0}, {})
    gone_op = CreateDoc("Doc", "gone", _stamp(2), "", {"_id": "gone", "_partition": "q"}, {})
    first = [_txn(1, [held_op]), _txn(2, [gone_op]), _txn(3, [DeleteDoc("Doc", "gone", _stamp(3), "")])]
    between = _txn(4, [SetValue("Doc", "held", _stamp(4), "", ("m",), (), 99),
                       CreateDoc("Doc", "a", _stamp(5), "", {"_id": "a", "_partition": "p", "m": 1}, {})])
    txns = []
    n = 10
    for i in range(30):
        ops = []
        for _ in range(rng.randint(1, 3)):
            n += 1
            key = rng.choice(["held", "gone", "a", "b", f"new{i}", f"new{i}x"])
            if rng.random() < 0.6:
                ops.append(CreateDoc("Doc", key, _stamp(n), "", {"_partition": "p", "n": n}, {}))
            else:
                ops.append(SetValue("Doc", key, _stamp(n), "", ("n",), (), n))
        txns.append(_txn(n, ops))
    batch = [first[0], txns[12], txns[25], *txns]  # with duplicates: as without them
    for case in ("used", "stale", "duplicates"):
        results = []
        for preload in (False, True):
            db = Database(tmp_path / f"{case}{preload}.db", (), partition_key="_partition")
            try:
                db.integrate(first)
                todo = batch if case == "duplicates" else txns
                if case == "duplicates":
                    db.integrate([txns[12], txns[25]])
                pre = db.preload(todo) if preload else None
                if pre is not None:
                    refs = {ref for t in todo for ref in t.refs()}
                    assert pre.scopes == db.document_scopes(refs) and ("Doc", '"gone"') in pre.scopes
                    assert pre.scopes[("Doc", '"held"')] == '"p"'
                if case == "stale":
                    db.integrate([between])
                db.integrate(todo, peer="00000000000000ab", peer_seq=3, preloaded=pre)
                if pre is not None:
                    assert pre.take((0, 0)) is None  # good for one integrate
                results.append((_rows_with_rowid(db), db._engine.query("SELECT seq, id, data FROM log")))
            finally:
                db.close()
        assert results[0] == results[1], case
        assert len(results[0][0]) > 12 and len(results[0][1]) > 30


def test_creates_parsed_together_are_those_parsed_one_by_one():
    # creates_from_wire (a transaction's creates in one pass) must give exactly the operations
    # op_from_wire gives, and None (the one-by-one path then raises its error) for anything
    # that is not a well-formed create of exact types.
    from tidesync.core.operations import creates_from_wire, op_from_wire

    class S(str):
        pass

    good = ["C", "Doc", "k", _stamp(1), "", {"_id": "k", "n": 1}, {"tags": "list"}, ["n"]]
    variants = [good, [*good[:4], _stamp(0), *good[5:]]]
    bad_items = {0: ["D", 1], 1: ["", 3, None, S("Doc")], 3: ["", "x", _stamp(1).upper(), _stamp(1) + "0", 5,
                                                               S(_stamp(1))],
                 4: [0, None, "x", S("")], 5: [{1: 2}, [], None], 6: [{"a": "nope"}, {1: "list"}, []],
                 7: [[1], ("n",), None]}
    for i, values in bad_items.items():
        for v in values:
            data = list(good)
            data[i] = v
            variants.append(data)
    variants += [good[:7], [*good, 1], ("C", *good[1:]), "C", None]
    rng = random.Random(3)
    for _ in range(200):
        ops = [rng.choice(variants) for _ in range(rng.randint(0, 4))]
        fast = creates_from_wire(ops)
        one_by_one: list = []
        error = None
        for o in ops:
            try:
                one_by_one.append(op_from_wire(o))
            except (ValueError, TypeError) as exc:
                error = exc
                break
        if fast is not None:
            assert error is None and fast == tuple(one_by_one)
            assert all(type(op) is CreateDoc for op in fast)
        elif error is None:  # refused by the fast path but well-formed: not only exact creates
            assert any(type(o) is not list or any(type(x) is S for x in o) or type(o[7]) is not list
                       for o in ops), ops
