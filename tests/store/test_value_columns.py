"""Value columns (``Database.add_value_column``, store/tables.py): a server's flexible router
selects documents by a field's value through an indexed column of ``documents`` instead of an
expression index on the body. Every way a document row is written must keep the column equal
to ``json_extract(body, '$.<field>')``: the integration writes it with new rows, triggers set it
again whenever another write left it stale. Also: the integration's update of rows the file
held (their scope column kept or moved as the upsert did)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidesync.core.operations import DeleteDoc, Unset
from tidesync.core.stamp import ZERO
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database
from tidesync.store.tables import value_triggers_sql
from tests.helpers.remote_writer import COLL, RemoteWriter



def stale(db: Database) -> list[tuple[Any, ...]]:
    """Rows whose value columns disagree with their bodies."""
    out: list[tuple[Any, ...]] = []
    for f in db.value_fields:
        out += db._engine.query(f"SELECT pk, '{f}', v_{f}, body FROM documents "
                                f"WHERE v_{f} IS NOT json_extract(body, '$.{f}')")
    return out


def by_value(db: Database, field: str, value: Any) -> set[str]:
    """The live documents whose ``field`` is ``value``, through the column (and its index)."""
    return {r[0] for r in db._engine.query(
        f"SELECT pk FROM documents WHERE collection = ? AND v_{field} = ? AND live = 1", [COLL, value])}


def test_every_write_keeps_the_columns_right(tmp_path: Path) -> None:
    db = Database(tmp_path / "sync.db", (), partition_key="_partition")
    try:
        w = RemoteWriter(db)
        w.commit(w.created("a", {"owner": "u1", "team": "g1"}), w.created("b", {"owner": ["u1", "u2"]}))
        # Added to a file with documents: filled from their bodies, indexed.
        assert db.add_value_column("owner") and db.add_value_column("team")
        assert db.value_fields == ("owner", "team")
        assert not stale(db) and by_value(db, "owner", "u1") == {'"a"'}
        plan = db._engine.query("EXPLAIN QUERY PLAN SELECT pk FROM documents WHERE collection = ? AND v_owner = ?",
                                [COLL, "u1"])
        assert any("documents_v_owner" in str(r) for r in plan)
        # Integration: new documents (one row and a batch of many), a changed value, an
        # unchanged one, odd kinds of values, an unset, a delete and a re-creation.
        w.commit(w.created("c", {"owner": "u3", "n": 1}))
        w.batch([[w.created(f"m{i}", {"owner": f"u{i % 3}", "team": i})] for i in range(70)])
        w.batch([[w.updated(f"m{i}", "n", i)] for i in range(70)]
                + [[w.updated(f"m{i}", "owner", "moved")] for i in range(0, 70, 7)])
        assert not stale(db)
        assert by_value(db, "owner", "moved") == {f'"m{i}"' for i in range(0, 70, 7)}
        for value in (3, 2.5, True, None, {"k": "v"}, ["x"], "u9"):
            w.commit(w.updated("a", "owner", value))
            assert not stale(db), value
        w.commit(w.updated("c", "n", 2))
        assert by_value(db, "owner", "u3") == {'"c"'}
        w.commit(Unset(COLL, "c", w.clock.now(), ZERO, ("owner",), ()))
        assert not stale(db) and by_value(db, "owner", "u3") == set()
        w.commit(DeleteDoc(COLL, "b", w.clock.now(), ZERO))
        assert not stale(db)
        w.commit(w.created("b2", {"owner": "u7"}))
        assert not stale(db) and by_value(db, "owner", "u7") == {'"b2"'}
        # The server's own (local) writes: a revert, an assignment.
        t = w.commit(w.created("r", {"owner": "reverted-away"}))
        assert db.revert(t.id).restored
        assert not stale(db) and by_value(db, "owner", "reverted-away") == set()
        with db.write():
            txn = db._current_txn()
            db._assign_plain(txn, txn.doc(COLL, "c", (COLL, '"c"')), COLL, "owner", "local")
        assert not stale(db) and by_value(db, "owner", "local") == {'"c"'}
        # Any other statement that writes a body.
        db._engine.execute("UPDATE documents SET body = json_set(body, '$.team', 'g9') WHERE pk = '\"a\"'")
        db._engine.execute("INSERT INTO documents (collection, pk, body, meta, epoch, live, seq) "
                           "VALUES (?, '\"raw\"', '{\"owner\":\"u5\"}', '{}', '', 1, 0)", [COLL])
        assert not stale(db) and by_value(db, "team", "g9") == {'"a"'} and by_value(db, "owner", "u5") == {'"raw"'}
        # Compaction, a copy, a reopened file: the columns, their indexes and triggers stay.
        db.compact()
        db.write_copy(tmp_path / "copy.db")
        w.commit(w.updated("a", "owner", "after-compact"))
        assert not stale(db) and by_value(db, "owner", "after-compact") == {'"a"'}
    finally:
        db.close()
    for path in (tmp_path / "sync.db", tmp_path / "copy.db"):
        again = Database(path, (), partition_key="_partition")
        try:
            assert again.value_fields == ("owner", "team")
            RemoteWriter(again).commit(RemoteWriter(again).created("new", {"owner": "u8"}))
            db2 = again
            db2._engine.execute("UPDATE documents SET body = json_set(body, '$.owner', 'u6') WHERE pk = '\"c\"'")
            assert not stale(again) and by_value(again, "owner", "u8") == {'"new"'}
            assert by_value(again, "owner", "u6") == {'"c"'}
        finally:
            again.close()


def test_a_file_without_the_triggers_gets_them_back_at_open(tmp_path: Path) -> None:
    db = Database(tmp_path / "sync.db", (), partition_key="_partition")
    try:
        assert db.add_value_column("owner")
        RemoteWriter(db).commit(RemoteWriter(db).created("a", {"owner": "u1"}))
        db._engine.execute("DROP TRIGGER documents_values_update")   # (a copy made without it)
    finally:
        db.close()
    again = Database(tmp_path / "sync.db", (), partition_key="_partition")
    try:
        again._engine.execute("UPDATE documents SET body = json_set(body, '$.owner', 'u2')")
        assert not stale(again) and by_value(again, "owner", "u2") == {'"a"'}
    finally:
        again.close()


def test_fields_that_cannot_have_a_column(tmp_path: Path) -> None:
    db = Database(tmp_path / "sync.db", (), partition_key="_partition")
    try:
        assert db.add_value_column("owner")
        # SQLite's column names ignore case: "Owner" would share owner's column.
        assert not db.add_value_column("Owner")
        assert not db.add_value_column("no-identifier")
        assert not db.add_value_column("x'); DROP TABLE documents; --")
        assert db.value_fields == ("owner",)
        assert db.add_value_column("owner")
    finally:
        db.close()


_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["u1", "u2", ""]),
                    st.lists(st.sampled_from(["u1", "u2"]), max_size=2), st.just({"k": 1}))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["create", "set", "unset", "delete", "n"]),
                                   _values), min_size=1, max_size=4), min_size=1, max_size=8))
def test_random_batches_keep_the_columns_right(tmp_path_factory: Any, batches: list[list[tuple[int, str, Any]]]) -> None:
    db = Database(tmp_path_factory.mktemp("v") / "sync.db", (), partition_key="_partition")
    try:
        assert db.add_value_column("owner")
        w = RemoteWriter(db)
        for batch in batches:
            txns: list[list[Any]] = []
            for k, kind, value in batch:
                key = f"d{k}"
                if kind == "create":
                    op: Any = w.created(key, {"owner": value})
                elif kind == "set":
                    op = w.updated(key, "owner", value)
                elif kind == "n":
                    op = w.updated(key, "n", value)
                elif kind == "unset":
                    op = Unset(COLL, key, w.clock.now(), ZERO, ("owner",), ())
                else:
                    op = DeleteDoc(COLL, key, w.clock.now(), ZERO)
                txns.append([op])
            w.batch(txns)
            assert not stale(db)
    finally:
        db.close()


def _scopes(db: Database) -> dict[str, tuple[Any, int]]:
    return {r[0]: (r[1], r[2]) for r in db._engine.query("SELECT pk, scope, live FROM documents")}


def test_rows_the_file_held_are_updated_with_their_scope_kept_or_moved(tmp_path: Path) -> None:
    """An integration updates the rows the file held without assigning a scope that stays
    (UPDATE_DOCUMENT_SAME_SCOPE), else with it, as the upsert did: the scope column follows the
    partition value, a tombstone keeps its partition, documents without one keep theirs."""
    for preload in (False, True):
        db = Database(tmp_path / f"scope-{preload}.db", (), partition_key="_partition")
        try:
            w = RemoteWriter(db)
            w.batch([[w.created("a", {"_partition": "p1", "n": 0})], [w.created("b", {"_partition": "p1", "n": 0})],
                     [w.created("c", {"n": 0})], [w.created("d", {"_partition": "p2"})]])
            assert _scopes(db) == {'"a"': ('"p1"', 1), '"b"': ('"p1"', 1), '"c"': ("null", 1), '"d"': ('"p2"', 1)}
            txns: list[Transaction] = []
            for ops in ([w.updated("a", "n", 1)], [w.updated("b", "_partition", "p3")], [w.updated("c", "n", 1)],
                        [DeleteDoc(COLL, "d", w.clock.now(), ZERO)], [w.created("e", {"_partition": "p1"})],
                        [w.updated("c", "_partition", "p4")]):
                txns.append(w.transaction(ops))
            pre = db.preload(txns) if preload else None
            db.integrate(txns, preloaded=pre)
            assert _scopes(db) == {'"a"': ('"p1"', 1), '"b"': ('"p3"', 1), '"c"': ('"p4"', 1), '"d"': ('"p2"', 0),
                                   '"e"': ('"p1"', 1)}
            assert db.get_raw(COLL, "b") == {"_id": "b", "_partition": "p3", "n": 0}
            assert db.get_raw(COLL, "a") == {"_id": "a", "_partition": "p1", "n": 1}
            assert db.get_raw(COLL, "d") is None
        finally:
            db.close()


def _kept(db: Database) -> dict[str, Any]:
    return {r[0]: r[1] for r in db._engine.query("SELECT pk, values_kept FROM documents")}


def test_lean_updates_vouch_only_for_rows_whose_value_fields_they_left(tmp_path: Path) -> None:
    db = Database(tmp_path / "sync.db", (), partition_key="_partition")
    try:
        assert db.add_value_column("owner") and db.add_value_column("team")
        w = RemoteWriter(db)
        w.batch([[w.created(f"m{i}", {"owner": f"u{i % 3}", "team": "g", "n": 0})] for i in range(12)])
        assert set(_kept(db).values()) == {None}
        lean: list[bool] = []
        orig = Database._integrate_lean

        def spy(self: Database, *args: Any) -> Any:
            out = orig(self, *args)
            lean.append(out is not None)
            return out
        Database._integrate_lean = spy  # type: ignore[method-assign]
        try:
            # One batch (the lean path): "n" only (vouched), "owner" or "team" (checked).
            w.batch([[w.updated(f"m{i}", "n", i)] for i in range(8)]
                    + [[w.updated("m8", "owner", "moved")], [w.updated("m9", "team", "h")],
                       [w.updated("m10", "n", 1)], [w.updated("m10", "owner", "again")]])
        finally:
            Database._integrate_lean = orig  # type: ignore[method-assign]
        assert lean == [True]
        seqs = {r[0]: r[1] for r in db._engine.query("SELECT pk, seq FROM documents")}
        kept = _kept(db)
        assert {pk for pk, v in kept.items() if v is not None} == {f'"m{i}"' for i in range(8)}
        assert all(kept[f'"m{i}"'] == seqs[f'"m{i}"'] for i in range(8))
        assert not stale(db)
        assert by_value(db, "owner", "moved") == {'"m8"'} and by_value(db, "owner", "again") == {'"m10"'}
        assert by_value(db, "team", "h") == {'"m9"'}
        # After a vouched update, any other write is checked again (it leaves values_kept as is).
        db._engine.execute("UPDATE documents SET body = json_set(body, '$.owner', 'raw') WHERE pk = '\"m0\"'")
        assert not stale(db) and by_value(db, "owner", "raw") == {'"m0"'}
        w.batch([[w.updated("m1", "owner", "later")], [w.updated("m2", "n", 5)]])
        assert not stale(db) and by_value(db, "owner", "later") == {'"m1"'}
        # What vouching means: an update that changes values_kept is not checked (only the
        # lean integration's statement does, for fields it did not write).
        db._engine.execute("UPDATE documents SET body = json_set(body, '$.owner', 'x'), values_kept = -1 "
                           "WHERE pk = '\"m3\"'")
        assert [r[0] for r in stale(db)] == ['"m3"']
    finally:
        db.close()


def test_a_file_from_before_values_kept_gets_it_at_open(tmp_path: Path) -> None:
    db = Database(tmp_path / "sync.db", (), partition_key="_partition")
    try:
        assert db.add_value_column("owner")
        w = RemoteWriter(db)
        w.batch([[w.created(f"m{i}", {"owner": "u1"})] for i in range(3)])
        # As an older version left it: no values_kept column, triggers without its condition.
        for stmt in value_triggers_sql(()):
            db._engine.execute(stmt)
        db._engine.execute("ALTER TABLE documents DROP COLUMN values_kept")
        stale_when = "new.v_owner IS NOT json_extract(new.body, '$.owner')"
        fix = "UPDATE documents SET v_owner = json_extract(new.body, '$.owner') WHERE rowid = new.rowid; END"
        for event in ("INSERT", "UPDATE OF body"):
            name = "insert" if event == "INSERT" else "update"
            db._engine.execute(f"CREATE TRIGGER documents_values_{name} AFTER {event} ON documents "
                               f"WHEN {stale_when} BEGIN {fix}")
    finally:
        db.close()
    again = Database(tmp_path / "sync.db", (), partition_key="_partition")
    try:
        assert again.value_fields == ("owner",)
        assert set(_kept(again).values()) == {None}
        w.db = again
        w.batch([[w.updated("m0", "n", 1)], [w.updated("m1", "owner", "u2")]])
        assert not stale(again) and by_value(again, "owner", "u2") == {'"m1"'}
        assert _kept(again)['"m0"'] is not None and _kept(again)['"m1"'] is None
        again._engine.execute("UPDATE documents SET body = json_set(body, '$.owner', 'u3') WHERE pk = '\"m0\"'")
        assert not stale(again)
    finally:
        again.close()
