"""The update fast path reads ahead four columns per document, ``pk, meta, body, at``, where
``at`` is the rowid of a live document of epoch ``''`` and else ``[rowid, live, epoch]`` as JSON
(``writer.READ_AHEAD_COLUMNS``, ``writer.row_facts``): documents re-created after a delete (a
non-empty epoch) and deleted ones, met by a loop committed as columns, by a loop turned into
pending documents, and by assignments of two fields per document, give the rows, errors, log,
revert and peer documents the general path gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tidesync
from tidesync.errors import InvalidatedObjectError
from tidesync.store import writer
from tests.store.test_create_bulk import BulkNote, _norm
from tests.store.test_fast_paths_agree import _general

N = 90
KEYS = [f"e{i:03d}" for i in range(N)]
AGAIN = set(KEYS[::5])  # deleted, then created again: a new epoch
GONE = set(KEYS[1::13]) - AGAIN  # deleted


def _rows(db: tidesync.Database) -> list[Any]:
    return [(c, json.loads(pk), json.loads(body), json.loads(meta), epoch, live) for c, pk, body, meta, epoch, live in
            db._engine.query("SELECT collection, pk, body, meta, epoch, live FROM documents ORDER BY collection, pk")]


def _loop(objs: dict[str, Any], errors: list[str], field: str, value: Any, keys: list[str]) -> None:
    for k in keys:
        try:
            setattr(objs[k], field, value)
        except InvalidatedObjectError:
            errors.append(f"{field} {k}")


def _scenario(tmp: Path, name: str) -> tuple[Any, ...]:
    errors: list[str] = []
    with tidesync.open(tmp / f"{name}.db", schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, [{"_id": k, "title": k, "priority": 1} for k in KEYS])
        objs = {o._id: o for o in db.objects(BulkNote)}
        with db.write():
            for k in sorted(AGAIN | GONE):
                db.delete(objs[k])
        with db.write():
            for k in sorted(AGAIN):
                objs[k] = db.create(BulkNote, _id=k, title="again", priority=2)
        assert db._engine.query("SELECT count(*) FROM documents WHERE epoch != '' AND live")[0][0] == len(AGAIN)
        with db.write():  # a loop committed as columns, meeting both kinds
            _loop(objs, errors, "priority", 3, KEYS)
        with db.write():  # a loop turned into pending documents by a read in the middle
            _loop(objs, errors, "priority", 4, KEYS[:40])
            errors.append(f"read {objs[KEYS[5]].priority} {objs[KEYS[6]].priority}")
            _loop(objs, errors, "priority", 4, KEYS[40:])
        with db.write():  # two fields of each document: the second ones pending documents
            for k in KEYS:
                _loop(objs, errors, "priority", 5, [k])
                _loop(objs, errors, "score", 0.5, [k])
        with db.write():  # a bulk update of the same documents, then a loop
            db.create_many(BulkNote, [{"_id": k, "status": "bulk"} for k in KEYS if k not in GONE], update="modified")
        with db.write():
            _loop(objs, errors, "status", "loop", list(reversed(KEYS)))
        history = [[(c.id, c.kind, c.fields) for c in e.changes] for e in db.history(10)]
        before_revert = _rows(db)
        db.revert(db.history(3)[2].id)
        rows = _rows(db)
        with tidesync.open(tmp / f"{name}.peer.db", schema=[BulkNote]) as peer:
            peer.integrate(db.export_transactions())
            peer_rows = [(c, pk, body, live) for c, pk, body, _, _, live in _rows(peer)]
    return _norm(before_revert), _norm(rows), peer_rows, _norm(history), errors


def test_documents_of_another_epoch_and_deleted_ones_agree_with_the_general_path(tmp_path: Path) -> None:
    seen: list[Any] = []
    facts = writer.row_facts

    def recorded(at: Any) -> tuple[str, bool, int]:
        got = facts(at)
        seen.append(got)
        return got

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "row_facts", recorded)
        for module in ("database", "managed"):
            mp.setattr(f"tidesync.store.{module}.row_facts", recorded)
        fast = _scenario(tmp_path, "fast")
    with pytest.MonkeyPatch.context() as mp:
        _general(mp)
        general = _scenario(tmp_path, "general")
    assert fast == general
    assert fast[0] != fast[1]  # the revert changed something
    assert sorted(fast[4]) == sorted([f"{f} {k}" for f in ("priority", "priority", "priority", "score", "status")
                                      for k in GONE] + ["read 4 4"])
    # the JSON form was read: documents of another epoch (and deleted ones) met
    assert any(epoch for epoch, _, _ in seen) and any(not live for _, live, _ in seen)


def test_row_facts_of_each_form() -> None:
    assert writer.row_facts(12) == ("", True, 12)
    assert writer.row_facts('[7,0,""]') == ("", False, 7)
    assert writer.row_facts('[9,1,"0000000000ab000001abababababababab"]') == (
        "0000000000ab000001abababababababab", True, 9)
