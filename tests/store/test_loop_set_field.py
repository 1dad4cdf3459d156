"""The assignment loop's next assignments taken in ``ObjectBinding.set_field`` (session 10,
perf-loop10), without ``Database._fast_assign``: a loop mixed with what that path must leave
alone (a wrong type, a bool for an int, the same object twice, a deleted object, another
thread, an embedded object with a field of the loop's name, another field, another collection,
a bulk update, a read of the field, a revert) gives the rows, log, errors and peer documents the
general path gives, and the loop path does take the plain assignments."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

import tidesync
from tidesync.errors import InvalidatedObjectError, NotInWriteTransaction, ValidationError
from tidesync.store.database import Database
from tests.store.test_create_bulk import BulkNote, _items, _norm
from tests.store.test_fast_paths_agree import _general

N = 60


class LsInner(tidesync.EmbeddedModel):
    priority: int = 0


class LsOuter(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    priority: int = 0
    inner: LsInner | None = None


def _rows(db: tidesync.Database) -> list[Any]:
    return [(c, json.loads(pk), json.loads(body), json.loads(meta), live) for c, pk, body, meta, live in
            db._engine.query("SELECT collection, pk, body, meta, live FROM documents ORDER BY collection, pk")]


def _scenario(tmp: Path, name: str) -> tuple[Any, ...]:
    path = tmp / f"{name}.db"
    errors: list[str] = []
    with tidesync.open(path, schema=[BulkNote, LsOuter]) as db:
        with db.write():
            db.create_many(BulkNote, _items(N))
            for i in range(4):
                db.create(LsOuter, _id=f"o{i}", priority=i, inner=LsInner(priority=10 + i))
        objs = list(db.objects(BulkNote).sort("_id"))
        with db.write():
            db.delete(objs[7])
        outers = list(db.objects(LsOuter).sort("_id"))
        with db.write():
            for n, o in enumerate(objs):
                if n == 7:
                    try:
                        o.priority = 1
                    except InvalidatedObjectError as exc:
                        errors.append(f"deleted: {exc}")
                    continue
                o.priority = n % 3
                if n == 5:
                    try:
                        o.priority = "high"  # type: ignore[assignment]
                    except ValidationError as exc:
                        errors.append(f"type: {exc}")
                if n == 9:
                    o.priority = 4  # the same object again
                if n == 11:
                    outers[1].inner.priority = 99  # an embedded field of the loop's name
                if n == 13:
                    outers[2].priority = 7  # the same field of another collection
                if n == 17:
                    o.title = "other field"
                if n == 19:
                    done: list[str] = []

                    def other() -> None:
                        try:
                            objs[20].priority = 1
                        except NotInWriteTransaction:
                            done.append("thread refused")

                    t = threading.Thread(target=other)
                    t.start()
                    t.join()
                    errors.extend(done)
                if n == 23:
                    errors.append(f"read: {objs[22].priority}")
                if n == 29:
                    db.create_many(BulkNote, [{"_id": "n00050", "title": "note 50", "priority": 3}],
                                   update="modified")
                if n == 31:
                    o.flag = True
            try:
                objs[40].priority = True  # type: ignore[assignment]
            except ValidationError as exc:
                errors.append(f"bool: {exc}")
            objs[41].score = 2  # an int where the field takes a float: coerced
        with db.write():
            for o in objs[30:50]:
                o.priority = 2
        history = [[(c.id, c.kind, c.fields) for c in e.changes] for e in db.history(10)]
        before_revert = _rows(db)
        db.revert(db.history(1)[0].id)
        rows = _rows(db)
        with tidesync.open(tmp / f"{name}.peer.db", schema=[BulkNote, LsOuter]) as peer:
            peer.integrate(db.export_transactions())
            peer_rows = [(c, pk, body, live) for c, pk, body, _, live in _rows(peer)]
    return _norm(before_revert), _norm(rows), peer_rows, _norm(history), errors


def test_the_loop_path_agrees_with_the_general_path(tmp_path: Path) -> None:
    calls = [0]
    fast_assign = Database._fast_assign

    def counting(self: Database, *a: Any) -> bool:
        calls[0] += 1
        return fast_assign(self, *a)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Database, "_fast_assign", counting)
        fast = _scenario(tmp_path, "fast")
    with pytest.MonkeyPatch.context() as mp:
        _general(mp)
        general = _scenario(tmp_path, "general")
    assert fast == general
    assert fast[0] != fast[1]  # the revert changed something
    errors = fast[4]
    assert [e.split(":")[0] for e in errors] == ["type", "deleted", "thread refused", "read", "bool"]
    # Of the loops' ~80 plain assignments, the ones after a loop began did not go through
    # _fast_assign (35 did: each interruption above begins a loop anew).
    assert calls[0] < 40


def test_a_loop_that_meets_a_deleted_object_keeps_what_it_recorded(tmp_path: Path) -> None:
    with tidesync.open(tmp_path / "d.db", schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(10))
        objs = list(db.objects(BulkNote).sort("_id"))
        with db.write():
            db.delete(objs[5])
        with db.write():
            for o in objs[:5]:
                o.priority = 4
            with pytest.raises(InvalidatedObjectError):
                objs[5].priority = 4
            txn = db._txn
            assert txn is not None and len(txn.loop_keys) == 5 and len(txn.loop_buf) == 10
            for o in objs[6:]:
                o.priority = 4
        assert [o.priority for o in db.objects(BulkNote).sort("_id")] == [4] * 9
