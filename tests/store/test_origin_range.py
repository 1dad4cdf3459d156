"""``Database._origin_range``: the lowest and highest transaction id held of each origin, kept in
memory for the conflict records' ancestry check (``_is_ancestor``) instead of a look-up by origin
in the descriptors (no index by origin: an origin that wrote nothing here scanned them all). It
must always agree with the descriptors themselves: after integrations, log compaction, and a
transaction rolled back after it was read."""

from __future__ import annotations

import random

import pytest

from tidesync.core.operations import CreateDoc, SetValue
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database

ORIGINS = [f"{i:016x}" for i in range(1, 6)]


def _txn(origin: str, n: int, key: str, parents: tuple[str, ...] = ()) -> Transaction:
    stamp = f"{n:012x}000000{origin}"
    op = CreateDoc("Doc", key, stamp, "", {"_id": key, "n": n}, {})
    return Transaction(stamp, origin, stamp, parents, (op,))


def _truth(db: Database, origin: str) -> list[str] | None:
    [(low, high)] = db._engine.query("SELECT min(id), max(id) FROM descriptors WHERE origin = ?", (origin,))
    return None if low is None else [low, high]


def _check(db: Database) -> None:
    with db._lock, db._engine.atomic():
        for origin in ORIGINS + ["00000000000000ff"]:
            assert db._origin_range(origin) == _truth(db, origin), origin


@pytest.mark.parametrize("seed", range(4))
def test_the_kept_ranges_agree_with_the_descriptors(tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    db = Database(tmp_path / "server.db", (), bootstrap_with_snapshot=True)
    try:
        n = 1000
        for step in range(40):
            what = rng.random()
            if what < 0.6:
                batch = []
                for _ in range(rng.randint(1, 4)):
                    n += rng.randint(1, 50)
                    batch.append(_txn(rng.choice(ORIGINS[:3] if step < 20 else ORIGINS), n, f"k{n}"))
                db.integrate(batch, peer=batch[0].origin, peer_seq=step)
            elif what < 0.75:
                db.compact_log(keep_last=rng.choice([0, 1, 3]))
            elif what < 0.9:
                # A transaction that reads the ranges, appends entries, then rolls back: the
                # entries it read must not stay (the next ones reuse their seqs).
                with pytest.raises(RuntimeError), db._lock, db._engine.atomic():
                    n += 1
                    db._append_log(_txn(rng.choice(ORIGINS), n, f"r{n}"))
                    db._origin_range(ORIGINS[0])
                    raise RuntimeError("rolled back")
            if rng.random() < 0.7:
                _check(db)
        _check(db)
    finally:
        db.close()


def test_an_origin_that_wrote_nothing_here_is_answered_without_scanning_the_descriptors(tmp_path) -> None:
    db = Database(tmp_path / "server.db", (), bootstrap_with_snapshot=True)
    try:
        db.integrate([_txn(ORIGINS[0], n, f"k{n}") for n in range(1, 200)], peer=ORIGINS[0], peer_seq=1)
        later = _txn(ORIGINS[1], 500, "k1")
        statements: list[str] = []
        db._engine._conn.set_trace_callback(statements.append)
        try:
            with db._lock, db._engine.atomic():
                for _ in range(3):   # the descriptors are read whole once, then not again
                    assert db._is_ancestor(f"{100:012x}000000{ORIGINS[2]}", later)
        finally:
            db._engine._conn.set_trace_callback(None)
        assert sum("FROM descriptors GROUP BY origin" in s for s in statements) == 1
        # not the look-up by origin, which scans every descriptor back from the stamp
        assert not any("FROM descriptors WHERE origin" in s for s in statements)
    finally:
        db.close()


def test_the_ancestry_check_gives_what_the_descriptors_give(tmp_path) -> None:
    # The writer of the overwritten value: its latest transaction up to the stamp, found from
    # the kept range when the stamp is past the origin's last one, else looked up.
    db = Database(tmp_path / "server.db", (), bootstrap_with_snapshot=True)
    try:
        a, b = ORIGINS[0], ORIGINS[1]
        t1, t2 = _txn(a, 10, "x"), _txn(a, 30, "y")
        db.integrate([t1, t2], peer=a, peer_seq=1)
        saw_t1 = _txn(b, 40, "z", parents=(t1.id,))
        saw_t2 = _txn(b, 41, "w", parents=(t2.id,))
        with db._lock, db._engine.atomic():
            assert db._is_ancestor(f"{20:012x}000000{a}", saw_t1)       # t1's write, t1 seen
            assert not db._is_ancestor(f"{35:012x}000000{a}", saw_t1)   # t2's write, not seen
            assert db._is_ancestor(f"{35:012x}000000{a}", saw_t2)       # past a's last: t2
            assert db._is_ancestor(f"{5:012x}000000{a}", saw_t1)        # before a's first: unknown
    finally:
        db.close()


def test_a_writer_integrated_here_is_found_near_the_stamp_without_the_ranges(tmp_path) -> None:
    db = Database(tmp_path / "server.db", (), bootstrap_with_snapshot=True)
    try:
        a, b = ORIGINS[0], ORIGINS[1]
        t1 = _txn(a, 10, "x")
        db.integrate([t1] + [_txn(b, n, f"k{n}") for n in range(11, 40)], peer=a, peer_seq=1)
        statements: list[str] = []
        db._engine._conn.set_trace_callback(statements.append)
        try:
            with db._lock, db._engine.atomic():
                assert db._is_ancestor(t1.id, _txn(b, 50, "z", parents=(t1.id,)))
                assert not db._is_ancestor(t1.id, _txn(b, 51, "w"))
        finally:
            db._engine._conn.set_trace_callback(None)
        assert db._origin_ids is None and not any("GROUP BY origin" in s for s in statements)
    finally:
        db.close()


def test_an_integration_that_rolls_back_leaves_no_range_of_its_entries(tmp_path) -> None:
    """A batch fails after the overwrite check read the ranges inside it (they name its first
    entries, logged by then); a later batch logs the last of them again at the same seq, other
    entries before it. An overwrite of a value of an origin that only the rolled-back batch
    held a transaction of (here: joined from a snapshot) claims no conflict, as in a file that
    never saw the failed batch (the ranges kept in memory named the rolled-back transaction)."""
    from tidesync.errors import MergeError
    from tidesync.protocol.messages import SnapshotDoc

    origins = {n: c * 16 for n, c in dict(S="5", X="7", Y="9", Z="b", V="c", W="d").items()}

    def st(i: int, o: str) -> str:
        return f"{0x18f000000000 + i:012x}000000{origins[o]}"

    epoch = st(1, "W")

    def joined(key: str, field: str, stamp: str) -> SnapshotDoc:
        return SnapshotDoc("Job", key, {"epoch": epoch, "live": True, "body": {"_id": key, field: "old"},
                                        "meta": {"*": epoch, "r": {field: "1" + stamp}}})

    def create(i: int, o: str, key: str) -> Transaction:
        return Transaction(st(i, o), origins[o], st(i, o), (), (CreateDoc("Job", key, st(i, o), "", {"_id": key}, {}),))

    def overwrite(i: int, o: str, key: str, field: str, parents: tuple[str, ...] = ()) -> Transaction:
        op = SetValue("Job", key, st(i, o), epoch, (field,), (), o)
        return Transaction(st(i, o), origins[o], st(i, o), parents, (op,))

    def run(name: str, fail: bool) -> list[tuple[str, str]]:
        db = Database(tmp_path / f"{name}.db", ())
        try:
            db.integrate_snapshot([joined("d2", "g", st(10, "S")), joined("d3", "h", st(10, "X"))],
                                  peer="eeeeeeeeeeeeeeee", as_of_seq=0)
            tw = create(7, "W", "e3")
            if fail:
                ty = overwrite(20, "Y", "d2", "g")   # its check reads the ranges: S wrote nothing here
                bad = Transaction(st(21, "Y"), origins["Y"], st(21, "Y"), (ty.id,),
                                  (SetValue("Job", "d2", st(21, "Y"), epoch, ("g", "x"), (), "y"),))
                with pytest.raises(MergeError):
                    db.integrate([create(5, "X", "e1"), tw, ty, bad])
            db.integrate([create(6, "V", "e2"), tw])    # tw at the seq it had in the failed batch
            db.integrate([overwrite(30, "Z", "d3", "h")])  # X's value, X's writes never held here
            return [(c["key"], c["path"]) for c in db.conflicts()]
        finally:
            db.close()

    assert run("fresh", fail=False) == []
    assert run("after-failure", fail=True) == []


def test_a_seen_stamp_reaches_the_writes_up_to_it_not_the_rest_of_their_transaction(tmp_path) -> None:
    # One transaction of a writes w, x, y in turn (stamps s0 = its id, s1, s2). A replica shown
    # x as a state names s1 as a "seen" parent: it saw w and x, not y. (A seen stamp that is
    # the transaction's id itself counts as the whole transaction, as a parent naming it does.)
    from tidesync.core.operations import SetValue

    db = Database(tmp_path / "server.db", (), bootstrap_with_snapshot=True)
    try:
        a, b = ORIGINS[0], ORIGINS[1]
        db.integrate([_txn(a, 5, "w"), _txn(a, 6, "x"), _txn(a, 7, "y")], peer=a, peer_seq=1)
        s0, s1, s2 = (f"{10:012x}{i:06x}{a}" for i in range(3))
        three = Transaction(s0, a, s0, (), tuple(SetValue("Doc", key, st, "", ("n",), (), 1)
                                                 for key, st in (("w", s0), ("x", s1), ("y", s2))))
        db.integrate([three], peer=a, peer_seq=2)

        def by_b(n: int, parents: tuple[str, ...]) -> Transaction:
            return Transaction(f"{n:012x}000000{b}", b, f"{n:012x}000000{b}", parents, ())

        with db._lock, db._engine.atomic():
            assert db._is_ancestor(s0, by_b(20, (s1,))) and db._is_ancestor(s1, by_b(21, (s1,)))
            assert not db._is_ancestor(s2, by_b(22, (s1,)))     # y: not shown
            assert db._is_ancestor(s2, by_b(23, (s2,)))
            assert db._is_ancestor(s2, by_b(24, (s0,)))         # the transaction's id: all of it
    finally:
        db.close()
