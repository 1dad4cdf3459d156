"""The lean integration of a batch of top-level register writes (``Database._integrate_lean``)
against the general path (``_lean_fits`` forced False): the same rows (bodies, metas, scopes,
seqs), log, descriptors, heads, conflicts, checkpoints and results, whatever the batch holds
(losing writes, concurrent overwrites, defaults, containers, deleted or missing documents,
duplicates, malformed operations)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidesync.core.clock import HybridClock
from tidesync.core.operations import CreateDoc, DeleteDoc, SetValue
from tidesync.core.stamp import ZERO, ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.errors import MergeError
from tidesync.store import database as dbmod
from tidesync.store.database import Database

TABLES = {
    "log": "SELECT seq, id, origin, stamp, data, via FROM log ORDER BY seq",
    "descriptors": "SELECT id, origin, user, stamp, data, seq FROM descriptors ORDER BY id",
    "heads": "SELECT id FROM heads ORDER BY id",
    "checkpoints": "SELECT peer, received FROM checkpoints ORDER BY peer",
    "documents": "SELECT collection, pk, body, meta, epoch, live, seq, scope FROM documents ORDER BY rowid",
    "conflicts": "SELECT txn, collection, pk, path, rule, winner, winner_stamp, loser, loser_stamp FROM conflicts "
                 "ORDER BY rowid",
    "clock": "SELECT substr(value, 1, 18) FROM settings WHERE key = 'clock'",  # (the rest: the file's own id)
}

A, B = ReplicaId("a" * 16), ReplicaId("b" * 16)
DOCS = 6          # d0..d4 in the file (d3 with defaults, d4 with a container, d2 deleted), d5 never
# Mostly what fits (top-level registers), now and then what does not (_id, a container).
FIELDS = ("n", "n", "status", "status", "_partition", "n", "status", "_id", "obj")


def _clock(rid: ReplicaId, ahead: int = 0) -> HybridClock:
    ticks = itertools.count(1_700_000_000_000 + ahead, 7)
    return HybridClock(rid, lambda: next(ticks))


def _seed(a: HybridClock) -> list[Transaction]:
    ops: list = []
    s = a.now()   # the transaction's id, and its first operation's stamp (as a writer makes them)
    for i in range(5):
        fields = {"_id": f"d{i}", "n": 0, "status": "open", "_partition": "p1"}
        kinds: dict[str, str] = {}
        defaults: tuple[str, ...] = ()
        if i == 3:
            defaults = ("status",)
        if i == 4:
            fields["obj"] = {"x": 1}
            kinds = {"obj": "object"}
        ops.append(CreateDoc("c", f"d{i}", a.now() if i else s, ZERO, fields, kinds, defaults))
    seed = Transaction(s, A, s, (), tuple(ops))
    d = a.now()
    delete = Transaction(d, A, d, (s,), (DeleteDoc("c", "d2", d, ZERO),))
    return [seed, delete]


def _dump(db: Database) -> dict[str, list[tuple[object, ...]]]:
    with db._lock:
        return {name: [tuple(r) for r in db._engine.query(sql)] for name, sql in TABLES.items()}


def _run(path, batches, general: bool, monkeypatch) -> tuple[dict, list]:
    out: list = []
    with monkeypatch.context() as m:
        if general:
            m.setattr(dbmod, "_lean_fits", lambda txns, policies: False)
        db = Database(path, (), partition_key="_partition")
        try:
            for i, batch in enumerate(batches):
                try:
                    r = db.integrate(batch, peer="w", peer_seq=i)
                    out.append((r.applied, r.duplicates, r.conflicts, r.last_seq))
                except MergeError as exc:
                    out.append(("error", str(exc)))
            return _dump(db), out
        finally:
            db.close()


# One operation: (document, field, value, writer, stamp: fresh / one from before the seed, default)
_op = st.tuples(st.sampled_from([0, 1, 3, 4] * 4 + [2, 5]), st.sampled_from(FIELDS),
                st.sampled_from([-1, 0, 1, 2, 3, "p1", "p2", "x", None, -1, 0, 1, 2, 3, "p1", "p2", "x", None, {"k": 1}]),
                st.sampled_from([A, B]), st.sampled_from(["fresh"] * 7 + ["old"]), st.booleans())
_txn = st.lists(_op, min_size=1, max_size=2)
_batch = st.tuples(st.lists(_txn, min_size=1, max_size=6), st.sampled_from(["new", "new", "new", "again", "twice"]))


def _build(spec, ahead: int) -> list[list[Transaction]]:
    a, b = _clock(A), _clock(B, ahead)
    old = {A: [a.now() for _ in range(3)], B: [b.now() for _ in range(3)]}
    clocks = {A: a, B: b}
    batches = [_seed(a)]
    last: list[Transaction] = []
    for txn_specs, mode in spec:
        if mode == "again" and last:
            batches.append(list(last))
            continue
        batch: list[Transaction] = []
        for ops_spec in txn_specs:
            writer = ops_spec[0][3]
            tid = clocks[writer].now()
            ops = []
            for k, (doc, name, value, w, when, default) in enumerate(ops_spec):
                stamp = clocks[writer].now() if when == "fresh" else old[writer][k % 3]
                ops.append(SetValue("c", f"d{doc}", stamp, ZERO, (name,), (), value, default))
            batch.append(Transaction(tid, writer, tid, (), tuple(ops)))
        if mode == "twice":
            batch.append(batch[0])
        batches.append(batch)
        last = batch
    return batches


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.lists(_batch, min_size=1, max_size=4), ahead=st.sampled_from([0, 60, 140, 10_000]))
def test_the_lean_path_gives_what_the_general_path_gives(tmp_path_factory, monkeypatch, spec, ahead):
    """(``ahead``: how far B's clock is ahead of A's, in ms: B's writes lose, interleave or win.)"""
    tmp = tmp_path_factory.mktemp("lean")
    batches = _build(spec, ahead)
    lean = _run(tmp / "lean.db", batches, False, monkeypatch)
    general = _run(tmp / "general.db", batches, True, monkeypatch)
    assert lean == general


def _writes(clock: HybridClock, rid: ReplicaId, docs: list[int], field: str = "n") -> list[Transaction]:
    out = []
    for i, doc in enumerate(docs):
        s = clock.now()
        out.append(Transaction(s, rid, s, (), (SetValue("c", f"d{doc}", clock.now(), ZERO, (field,), (), i),)))
    return out


def _spy(monkeypatch) -> list[bool]:
    taken: list[bool] = []
    orig = Database._integrate_lean

    def spy(self, *args):
        got = orig(self, *args)
        taken.append(got is not None)
        return got
    monkeypatch.setattr(Database, "_integrate_lean", spy)
    return taken


def test_a_batch_of_own_writes_takes_the_lean_path(tmp_path, monkeypatch):
    a, b = _clock(A), _clock(B, 10_000)
    seed = _seed(a)
    # d4 has a container and d3 a default (another writer's write over it has nothing to check)
    batch = [*_writes(a, A, [0, 1, 0, 4]), *_writes(b, B, [3], "status")]
    taken = _spy(monkeypatch)
    db = Database(tmp_path / "x.db", (), partition_key="_partition")
    try:
        db.integrate(seed, peer="w", peer_seq=1)
        r = db.integrate(batch, peer="w", peer_seq=2)
        assert taken[-1] is True
        assert r.applied == 5 and r.conflicts == 0
        assert db.get_raw("c", "d3")["status"] == 0
        assert db.get_raw("c", "d0")["n"] == 2 and db.get_raw("c", "d1")["n"] == 1 and db.get_raw("c", "d4")["n"] == 3
    finally:
        db.close()


@pytest.mark.parametrize("case", ["other_writer", "deleted", "missing", "container", "id", "container_value", "loses"])
def test_batches_that_do_not_fit_take_the_general_path(tmp_path, monkeypatch, case):
    a, b = _clock(A), _clock(B, 10_000)
    seed = _seed(a)
    batch = {
        "other_writer": lambda: _writes(b, B, [0]),     # may overwrite a concurrent write: checked
        "deleted": lambda: _writes(a, A, [0, 2]),
        "missing": lambda: _writes(a, A, [5, 0]),
        "container": lambda: _writes(a, A, [4], "obj"),
        "loses": lambda: [Transaction(s, A, s, (), (SetValue("c", "d0", seed[0].ops[0].stamp, ZERO, ("n",), (), 9),))
                          for s in [a.now()]],
        "id": lambda: _writes(a, A, [0], "_id"),
        "container_value": lambda: [Transaction(s, A, s, (), (SetValue("c", "d0", s, ZERO, ("n",), (), [1]),))
                                    for s in [a.now()]],
    }[case]()
    taken = _spy(monkeypatch)
    db = Database(tmp_path / "x.db", (), partition_key="_partition")
    try:
        db.integrate(seed, peer="w", peer_seq=1)
        taken.clear()
        try:
            db.integrate(batch, peer="w", peer_seq=2)
        except MergeError:
            assert case == "id"
        assert True not in taken
    finally:
        db.close()
