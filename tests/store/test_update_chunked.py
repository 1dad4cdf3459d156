"""A one-field update of many documents (an assignment loop committed as columns, a uniform
``create_many(..., update=...)`` chunk) writes its rows ``_CHUNK_ROWS`` per ``UPDATE``
statement (each row's body and meta found by its rowid, ``_chunk_update``) and the rest with
one ``executemany``: the same rows (meta text included), merge states, log, descriptors, revert
and peer documents as with one ``executemany`` for all of them, whatever the rows' order, their
metas (a create's compact meta or one with an overlay already), the values' kind and whether
the bodies were spliced or written with ``json_set``, and in an encrypted file."""

from __future__ import annotations

import pytest

import tidesync
from tidesync.store import database
from tidesync.store.database import Database
from tests.store.test_create_bulk import BulkNote, _norm
from tests.store.test_update_bulk import _before_sorted, _outcome

N = 200
KEY = bytes(range(64))


def _key(i: int) -> str:
    return f"c{i:04d}"


def _scenario(db):
    # Created in another order than the keys': the loops (in key order) meet their rows out of
    # rowid order, as the chunks must not assume.
    with db.write():
        db.create_many(BulkNote, [{"_id": _key(i * 73 % N), "title": f"t{i}", "priority": i % 4} for i in range(N)])
    with db.write():  # every ninth row gets an overlay meta: the loops below meet both kinds
        for o in list(db.objects(BulkNote))[::9]:
            o.priority = 21
    with db.write():  # two whole chunks of 64 and 7 more
        for o in list(db.objects(BulkNote))[:135]:
            o.priority = 5
    by_key = {o._id: o for o in db.objects(BulkNote)}
    with db.write():  # in the order of creation: rows in rowid order
        for i in range(100):
            by_key[_key(i * 73 % N)].priority = 6
    with db.write():  # one whole chunk exactly, str values (spliced)
        for n, o in enumerate(list(db.objects(BulkNote))[10:74]):
            o.title = f"new {n} é"
    with db.write():  # str values that need escaping: json_set, no splice
        for n, o in enumerate(list(db.objects(BulkNote))[:70]):
            o.status = f'q"{n}\\'
    # A body holding an object: that loop's bodies do not split, json_set writes them.
    db._engine.run("UPDATE documents SET body = json_set(body, '$.o', json('{\"priority\":9}')) "
                   "WHERE pk = '\"c0100\"'")
    db._cache.clear()
    with db.write():
        for n, o in enumerate(list(db.objects(BulkNote))[60:160]):
            o.priority = n
    with db.write():  # floats over the same bodies: json_set with json(?)
        for n, o in enumerate(list(db.objects(BulkNote))[90:160]):
            o.score = n / 4
    with db.write():  # uniform create_many(update=) chunks: float, bool (some unchanged)
        db.create_many(BulkNote, [{"_id": _key(i), "score": i / 7} for i in range(150)], update="all")
    with db.write():
        db.create_many(BulkNote, [{"_id": _key(i), "flag": i % 2 == 0} for i in range(20, 200)], update="modified")
    before, after, entries, revert, docs = _outcome(db, 2, [BulkNote], meta=True)
    return _before_sorted(before), _before_sorted(after), entries, revert, docs


@pytest.mark.parametrize("size, key", [(64, None), (5, None), (64, KEY)])
def test_rows_written_in_chunks_are_what_executemany_writes(tmp_path, monkeypatch, size, key):
    chunked: list[int] = []
    write = Database._write_single_chunks

    def recorded(self, name, rowids, *a):
        chunked.append(len(rowids))
        return write(self, name, rowids, *a)
    monkeypatch.setattr(Database, "_write_single_chunks", recorded)
    monkeypatch.setattr(database, "_CHUNK_ROWS", size)
    forms: list[str] = []
    with tidesync.open(tmp_path / "c.db", schema=[BulkNote], encryption_key=key) as db:  # key: SQLCipher
        execute = db._engine.execute

        def seen(sql, *a, **k):
            if sql.startswith("UPDATE documents SET body =") and "CASE WHEN rowid <" in sql:
                forms.append("range" if "BETWEEN" in sql else "in")
            return execute(sql, *a, **k)
        monkeypatch.setattr(db._engine, "execute", seen)
        chunks = _scenario(db)
    # Every write of one field of `size` documents or more went the chunks' way (the revert
    # and the peer's integration take other paths).
    if size == 64:
        assert chunked == [135, 100, 64, 70, 100, 70, 150, 90]
    else:
        assert len(chunked) == 9 and chunked[0] == 23
    # Chunks of consecutive rowids (the loop in the order of creation) took the range, the
    # others the IN list: both forms wrote rows below.
    assert "range" in forms and "in" in forms
    monkeypatch.undo()
    monkeypatch.setattr(database, "_CHUNK_ROWS", 10 ** 9)  # one executemany for every row
    with tidesync.open(tmp_path / "e.db", schema=[BulkNote]) as db:
        each = _scenario(db)
    assert _norm(chunks[:2]) == _norm(each[:2])
    assert _norm(chunks[4]) == _norm(each[4])
    assert len(chunks[2]) == len(each[2]) and _norm(chunks[3]) == _norm(each[3])


def test_chunk_statement_finds_each_row_by_its_rowid():
    sql = database._chunk_update("?", 5)
    assert sql.count("CASE WHEN rowid <") == 2 * 4  # a binary tree of 5 leaves per column
    assert "?16" in sql and "?17" not in sql  # 3 parameters per row, then the seq
    assert "rowid IN (?1, ?4, ?7, ?10, ?13)" in sql


def test_chunk_statement_of_consecutive_rowids_takes_the_range_from_the_first_to_the_last():
    sql = database._chunk_update("?", 5, True)
    assert sql.endswith("WHERE rowid BETWEEN ?1 AND ?13") and " IN (" not in sql
    assert sql.count("CASE WHEN rowid <") == 2 * 4 and "?16" in sql  # the same values and seq


def test_compact_metas_are_told_by_the_least_and_the_greatest():
    stamps = [f"{w:012x}{c:06x}{'ab' * 8}" for w, c in ((5, 1), (9, 0), (5, 2), (7, 3))]
    compact = [f'{{"*":"{s}"}}' for s in stamps]
    assert database._compact_metas(compact) == (True, compact[1])  # the latest stamp's
    overlay = '{"*":"' + stamps[0] + '","r":{"priority":"1' + stamps[1] + '"}}'
    assert not database._compact_metas([*compact, overlay])[0]  # not all of 42 characters
    # 42 characters but not a create's compact meta: sorting before, and after, the others
    for other in ('{"*":0,"x":"' + "0" * 28 + '"}', '{"a":"' + stamps[0] + '"}'):
        assert len(other) == 42
        assert not database._compact_metas([*compact, other])[0]
        assert not database._compact_metas([other, *compact])[0]
    assert database._compact_metas([]) == (False, "")
