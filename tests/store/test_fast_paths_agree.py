"""Adversarial differential tests of the store's fast paths (the lean create, the assignment
fast path stamped at commit, ``create_many(update=)`` done as columns, the columns records of
format 3): random mixes of assignments, bulk updates, creates, deletes, re-creates, queries and
list / dictionary / counter changes in one write must give what the general path gives: the
rows, merge states, the log as stored and as ``history()`` shows it, ``revert()`` and the
state a second database reaches through ``export_transactions()`` / ``integrate()``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tidesync
from tidesync.store import database as database_module
from tidesync.store import writer
from tidesync.store.database import Database
from tests.store.test_create_bulk import BulkNote, _norm
from tests.store.test_update_bulk import _before_sorted, _state


class MixNote(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    title: str
    tags: list[str] = tidesync.field(default_factory=list)
    notes: dict[str, str] = tidesync.field(default_factory=dict)
    hits: tidesync.Counter = tidesync.field(default_factory=tidesync.Counter)
    rank: int = 0


POOL = 48  # more than writer.COLUMNS_MIN_DOCS: a bulk write of the pool is stored as columns records
FIELDS = {"title": st.text(max_size=3), "priority": st.integers(-2, 2), "score": st.floats(-1, 1, allow_nan=False),
          "flag": st.booleans(), "extra": st.one_of(st.none(), st.text(max_size=2))}


def _nid(i: int) -> str:
    return f"n{i:05d}"


def _general(mp: pytest.MonkeyPatch) -> None:
    """Every fast path off: what a write gives through the general path."""
    mp.setattr(Database, "_fast_assign", lambda self, *a: False)
    mp.setattr(Database, "_update_plan", lambda self, cls, obj: None)
    mp.setattr(Database, "_pending_as_columns", lambda self, txn: None)
    mp.setattr(Database, "_loop_as_columns", lambda self, txn: None)
    mp.setattr(database_module, "_make_bulk_builder", lambda cls, obj: None)
    mp.setattr(writer, "COLUMNS_MIN_DOCS", 1 << 30)


_field_value = st.sampled_from(sorted(FIELDS)).flatmap(lambda n: st.tuples(st.just(n), FIELDS[n]))
_bulk = st.one_of(
    st.tuples(st.just("loop"), st.sampled_from([0, 1, 8, POOL - 2]), st.sampled_from([1, 3, 32, 40, POOL + 4]),
              _field_value),
    st.tuples(st.just("upd"), st.sampled_from([0, 1, 2, 10, POOL - 6]), st.sampled_from([1, 5, 32, 36, 40, POOL + 4]),
              st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True),
              st.sampled_from(["modified", "all"]), st.integers(0, 3)))
_op = st.one_of(
    st.tuples(st.just("assign"), st.integers(0, POOL + 3), _field_value),
    _bulk,
    st.tuples(st.just("create_many"), st.integers(0, POOL + 40), st.integers(1, 40)),
    st.tuples(st.just("create"), st.integers(0, POOL + 5)),
    st.tuples(st.just("delete"), st.integers(0, POOL + 3)),
    st.tuples(st.just("read"), st.integers(0, POOL + 3), st.sampled_from(sorted(FIELDS))),
    st.tuples(st.just("query"), st.integers(-2, 2)),
    st.tuples(st.just("mix"), st.integers(0, 3), st.sampled_from(["tag", "note", "hit", "title", "delete", "create"])),
)
_program = st.lists(st.lists(st.one_of(_op, _bulk), min_size=1, max_size=6), min_size=1, max_size=4)


def _value_for(name: str, i: int, seed: int) -> Any:
    """A value of field ``name`` for document ``i`` (``seed`` picks the pattern): a column of
    values of the field's own type."""
    v = (i * 7 + seed) % 3
    return {"title": f"t{v}", "priority": v - 1, "score": v / 4, "flag": v == 1, "extra": None if v == 0 and seed == 2 else f"e{v}"}[
        name]



def _apply_block(db: Any, block: list[Any], out: list[Any]) -> None:
    """One write transaction of ``block``'s operations; a refused one is recorded in ``out``
    with its error, and the write goes on."""
    with db.write():
        for op in block:
            try:
                _apply(db, op, out)
            except tidesync.TidesyncError as exc:
                out.append((op[0], type(exc).__name__, str(exc)))

def _apply(db: Database, op: tuple[Any, ...], out: list[Any]) -> None:
    kind = op[0]
    if kind == "assign":
        _, i, (name, value) = op
        obj = db.get(BulkNote, _nid(i))
        if obj is not None:
            setattr(obj, name, value)
    elif kind == "loop":  # a loop over results, as an app updates many objects
        _, start, count, (name, value) = op
        for n, obj in enumerate(db.objects(BulkNote).filter(f"_id >= '{_nid(start)}'").sort("_id")):
            if n >= count:
                break
            setattr(obj, name, value if n % 2 else _value_for(name, n, 1))
    elif kind == "upd":
        _, start, count, names, update, seed = op
        items = [{"_id": _nid(i), **{n: _value_for(n, i, seed) for n in names}} for i in range(start, start + count)]
        if seed == 3 and items:
            items[0] = {"_id": items[0]["_id"], names[0]: 3}  # another kind of value: not uniform
        out.append(("upd", db.create_many(BulkNote, items, update=update)))
    elif kind == "create_many":
        _, start, count = op
        items = [{"_id": _nid(i), "title": f"c{i}", "priority": i % 3} for i in range(start, start + count)]
        out.append(("create_many", db.create_many(BulkNote, items)))
    elif kind == "create":
        db.create(BulkNote, _id=_nid(op[1]), title="one", score=0.5)
    elif kind == "delete":
        obj = db.get(BulkNote, _nid(op[1]))
        if obj is not None:
            db.delete(obj)
    elif kind == "read":
        obj = db.get(BulkNote, _nid(op[1]))
        out.append(("read", None if obj is None else getattr(obj, op[2])))
    elif kind == "query":
        out.append(("query", len(db.objects(BulkNote).filter("priority == $0", op[1]))))
    elif kind == "mix":
        _, i, what = op
        mid = f"m{i}"
        obj = db.get(MixNote, mid)
        if obj is None:
            db.create(MixNote, _id=mid, title=f"m{i}", tags=["a"])
        elif what == "tag":
            obj.tags.append(f"t{len(obj.tags)}")
        elif what == "note":
            obj.notes[f"k{i}"] = obj.title
        elif what == "hit":
            obj.hits.increment(2)
        elif what == "title":
            obj.title = obj.title + "!"
        elif what == "delete":
            db.delete(obj)
        else:
            out.append(("mix", [sorted(o._id for o in db.objects(MixNote))]))


def _documents(db: Database) -> list[Any]:
    return _state(db)[:2]


def _run(tmp: Any, fast: bool, program: list[list[tuple[Any, ...]]], revert_at: int) -> tuple[Any, ...]:
    out: list[Any] = []
    with pytest.MonkeyPatch.context() as mp:
        if not fast:
            _general(mp)
        path = tmp / ("fast.db" if fast else "general.db")
        with tidesync.open(path, schema=[BulkNote, MixNote]) as db:
            with db.write():
                db.create_many(BulkNote, [{"_id": _nid(i), "title": f"n{i}", "priority": i % 5}
                                          for i in range(POOL)])
            with db.write():
                db.get(BulkNote, _nid(3)).title = "an overlay meta"
                db.delete(db.get(BulkNote, _nid(POOL - 1)))
            for block in program:
                _apply_block(db, block, out)
            state = _before_sorted(_state(db))
            history = [(h.seq, [(c.collection, c.id, c.kind, c.fields) for c in h.changes]) for h in db.history(100)]
            txns = db.export_transactions()
            # A second database reaches the same documents from the log.
            with tidesync.open(tmp / ("peer-f.db" if fast else "peer-g.db"), schema=[BulkNote, MixNote]) as peer:
                peer.integrate(txns, peer=db.replica_id)
                peer_docs = _documents(peer)
            entries = db.history(100)
            reverted: Any = None
            if entries:
                target = entries[revert_at % len(entries)]
                r = db.revert(target.id)
                reverted = (sorted(map(repr, r.restored)), sorted(map(repr, r.skipped)), _documents(db))
            # A copy (a new replica) holds the same history and documents.
            db.write_copy(tmp / ("copy-f.db" if fast else "copy-g.db"))
            with tidesync.open(tmp / ("copy-f.db" if fast else "copy-g.db"), schema=[BulkNote, MixNote]) as copy:
                copied = (_documents(copy), [(h.seq, [(c.collection, c.id, c.kind, c.fields) for c in h.changes])
                                             for h in copy.history(100)])
    return out, state, history, peer_docs, reverted, copied


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=_program, revert_at=st.integers(0, 8))
def test_random_mixed_writes_match_the_general_path(tmp_path_factory, program, revert_at):
    general = _run(tmp_path_factory.mktemp("g"), False, program, revert_at)
    fast = _run(tmp_path_factory.mktemp("f"), True, program, revert_at)
    for part, g, f in zip(("results", "state", "history", "peer", "revert", "copy"), general, fast):
        assert _norm(f) == _norm(g), part


def _rollback_run(tmp: Any, fast: bool) -> tuple[Any, ...]:
    errors = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(database_module, "_BULK_CHUNK", 36)  # several chunks in one call
        if not fast:
            _general(mp)
        with tidesync.open(tmp / ("fast.db" if fast else "general.db"), schema=[BulkNote]) as db:
            with db.write():
                db.create_many(BulkNote, [{"_id": _nid(i), "title": f"n{i}"} for i in range(120)])
            with db.write():
                db.get(BulkNote, _nid(1)).priority = 1  # an assignment pending before the calls
                db.create_many(BulkNote, [{"_id": _nid(i), "title": "kept"} for i in range(40, 80)], update="all")
                # Chunks: untouched documents (as columns), one pending document among others, the
                # first call's documents (kept as columns), then a failing item: nothing of the call stays.
                bad = [{"_id": _nid(i), "title": f"u{i}", "flag": True}
                       for i in [*range(80, 116), *range(0, 36), *range(40, 76)]]
                bad.append({"_id": _nid(72), "title": 5})
                try:
                    db.create_many(BulkNote, bad, update="modified")
                except tidesync.ValidationError as exc:
                    errors.append(str(exc))
                db.get(BulkNote, _nid(2)).flag = True           # after the rollback: the file's values again
                db.get(BulkNote, _nid(41)).priority = 4         # a document of the first (kept) call
                db.get(BulkNote, _nid(81)).priority = 4         # one the failed call had as columns
                db.create_many(BulkNote, [{"_id": _nid(i), "flag": False, "title": "again"} for i in range(36)],
                               update="modified")
                db.create_many(BulkNote, [{"_id": _nid(i), "title": "again"} for i in range(82, 118)],
                               update="modified")
                errors.append([(o._id, o.title, o.flag, o.priority) for o in db.objects(BulkNote).sort("_id")])
            state = _before_sorted(_state(db))
            entries = db.history(1)
            r = db.revert(entries[0].id)
            reverted = (sorted(map(repr, r.restored)), _documents(db))
    return errors, state, reverted


def test_a_failed_bulk_update_call_leaves_the_fast_paths_state_as_before(tmp_path):
    general = _rollback_run(tmp_path, False)
    fast = _rollback_run(tmp_path, True)
    assert general[0][0].startswith("BulkNote.title")
    assert _norm(fast) == _norm(general)


def test_two_connections_writing_one_file_through_the_fast_paths(tmp_path):
    """Two connections (threads) to one file, each committing loops of assignments, uniform
    bulk updates and lean creates over the same documents: every commit in the log once, with
    its own id, and a peer that integrates the log reaches the documents the file holds."""
    path = tmp_path / "c.db"
    with tidesync.open(path, schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, [{"_id": _nid(i), "title": f"n{i}"} for i in range(POOL)])
    errors: list[BaseException] = []
    commits = [0, 0]

    def work(w: int) -> None:
        try:
            with tidesync.open(path, schema=[BulkNote]) as mine:
                for r in range(12):
                    with mine.write():
                        if r % 3 == 0:
                            for n, obj in enumerate(mine.objects(BulkNote).sort("_id")):
                                obj.priority = w * 100 + r + n
                        elif r % 3 == 1:
                            mine.create_many(BulkNote, [{"_id": _nid(i), "title": f"w{w}r{r}", "score": r / 2}
                                                        for i in range(POOL)], update="modified")
                        else:
                            mine.create_many(BulkNote, [{"_id": f"w{w}-{r}-{i}", "title": "new"} for i in range(40)])
                            mine.get(BulkNote, _nid(r)).flag = bool(w)
                    commits[w] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    with tidesync.open(path, schema=[BulkNote]) as db:
        ids = [e.id for e in db.history(limit=1000)]
        assert len(ids) == len(set(ids)) == 1 + sum(commits)
        assert len(db.objects(BulkNote)) == POOL + 2 * 4 * 40
        with tidesync.open(tmp_path / "peer.db", schema=[BulkNote]) as peer:
            _take(db, peer)
            assert _documents(peer) == _documents(db)


@contextmanager
def _replicas(tmp_path: Any, model: type) -> Iterator[tuple[Database, Database, Database]]:
    """Three replicas a, b and c of ``model``'s documents, each in its own file."""
    with tidesync.open(tmp_path / "a.db", schema=[model]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[model]) as b, \
            tidesync.open(tmp_path / "c.db", schema=[model]) as c:
        yield a, b, c


def _take(source: Database, *targets: Database) -> None:
    """Each of ``targets`` integrates ``source``'s log, as from a peer."""
    for target in targets:
        target.integrate(source.export_transactions(), peer=source.replica_id)


def test_overwriting_a_default_is_no_conflict_whatever_form_the_merge_metadata_has(tmp_path):
    """A remote write replacing a value filled in from a default is never a concurrent
    overwrite (the expanded metadata's key of a default is a ``"0"`` key): a document whose
    metadata is still the compact form of its create must not record one either, even when
    the create's log entry is gone (trimmed) and its ancestry cannot be read."""
    with _replicas(tmp_path, MixNote) as (a, b, c):
        with a.write():
            a.create(MixNote, _id="compact", title="x")      # rank (and the containers) from defaults
            a.create(MixNote, _id="expanded", title="x")
        with a.write():
            a.get(MixNote, "expanded").tags.append("t")      # a list write: the metadata is expanded
        create = a.history(2)[1].id
        _take(a, b, c)
        assert "*" in b.document_state("MixNote", "compact").meta
        assert "*" not in b.document_state("MixNote", "expanded").meta
        # What log_keep does to an old entry: the log drops it, its descriptor stays.
        b._engine.execute("DELETE FROM log WHERE id = ?", (create,))
        with c.write():
            for pk in ("compact", "expanded"):
                c.get(MixNote, pk).rank = 3
        _take(c, b)
        assert b.get(MixNote, "compact").rank == b.get(MixNote, "expanded").rank == 3
        assert b.conflicts() == []


def test_a_causally_later_write_is_no_conflict_after_the_overwritten_entry_was_trimmed(tmp_path):
    with _replicas(tmp_path, BulkNote) as (a, b, c):
        with a.write():
            a.create(BulkNote, _id="x", title="first")
        create = a.history(1)[0].id
        _take(a, b, c)
        b._engine.execute("DELETE FROM log WHERE id = ?", (create,))  # as log_keep trims it
        with c.write():
            c.get(BulkNote, "x").title = "later"  # c has seen the create: a later edit
        _take(c, b)
        assert b.get(BulkNote, "x").title == "later"
        assert b.conflicts() == []


def test_a_concurrent_write_is_still_a_conflict_after_the_overwritten_entry_was_trimmed(tmp_path):
    """The descriptor a trimmed entry leaves answers the ancestry: c never saw a's edit."""
    with _replicas(tmp_path, BulkNote) as (a, b, c):
        with a.write():
            a.create(BulkNote, _id="x", title="first")
        _take(a, b, c)
        with a.write():
            a.get(BulkNote, "x").title = "by a"
        edit = a.history(1)[0].id
        _take(a, b)
        b._engine.execute("DELETE FROM log WHERE id = ?", (edit,))  # as log_keep trims it
        with c.write():
            c.get(BulkNote, "x").title = "by c"  # later, without having seen a's edit
        _take(c, b)
        assert b.get(BulkNote, "x").title == "by c"
        assert [(x["winner"], x["loser"]) for x in b.conflicts()] == [("by c", "by a")]


def _alternating_run(path: Any, two: bool, program: list[list[tuple[Any, ...]]]) -> tuple[Any, ...]:
    out: list[Any] = []
    with tidesync.open(path, schema=[BulkNote, MixNote]) as a, tidesync.open(path, schema=[BulkNote, MixNote]) as b:
        with a.write():
            a.create_many(BulkNote, [{"_id": _nid(i), "title": f"n{i}", "priority": i % 5} for i in range(POOL)])
        for db in (a, b):  # both connections read (and may cache) every document first
            out.append([(o._id, o.title, o.priority) for o in db.objects(BulkNote).sort("_id")])
        for n, block in enumerate(program):
            db = (a, b)[n % 2] if two else a
            _apply_block(db, block, out)
        for db in (a, b):
            out.append([(o._id, o.title, o.priority, o.score) for o in db.objects(BulkNote).sort("_id")])
        return out, _before_sorted(_state(a))


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=_program)
def test_two_connections_taking_turns_write_what_one_connection_writes(tmp_path_factory, program):
    """The blocks of a program committed by two connections to one file in turn (each having
    read the documents before the other's commits) give what one connection gives: reads,
    errors, rows, merge states and log."""
    tmp = tmp_path_factory.mktemp("turns")
    one = _alternating_run(tmp / "one.db", False, program)
    two = _alternating_run(tmp / "two.db", True, program)
    assert _norm(two) == _norm(one)
