"""A uniform ``create_many(..., update=...)`` chunk reads its rows as one row of columns
(``group_concat`` of pks, epochs, metas, rowids and old values): values and keys holding the
separators (``\\x1e``, ``,``), fields absent from some bodies, keys out of order and in order,
one field and two: the same documents, merge states, log, history, revert and peer documents
as the general path, and with the columns read as asked."""

from __future__ import annotations

import tidesync
from tests.store.test_create_bulk import BulkNote, _norm
from tests.store.test_update_bulk import _before_sorted, _general, _outcome, _record_uniform, _state

N = 300


def _key(i):
    return f"k\x1e{i:04d},\u00e9" if i % 3 == 0 else f"k{i:04d}"


def _scenario(db):
    with db.write():
        db.create_many(BulkNote, [{"_id": _key(i), "title": f"t\x1e{i},\"x\"", "extra": "e\x1e," if i % 2 else None}
                                  for i in range(N)])
    # Bodies without a field (as a file written before the field was in the schema).
    db._engine.run("UPDATE documents SET body = json_remove(body, '$.extra') WHERE pk LIKE '\"k00%1\"'")
    db._engine.run("UPDATE documents SET body = json_remove(body, '$.status') WHERE pk LIKE '\"k00%2\"'")
    db._cache.clear()
    with db.write():
        keys = sorted(_key(i) for i in range(N))
        # in order (a range of the key index), one field, absent in some bodies, some unchanged
        db.create_many(BulkNote, [{"_id": k, "extra": "e\x1e," if n % 4 else f"new\x1e{n}"}
                                  for n, k in enumerate(keys)], update="modified")
    with db.write():
        # out of order (one seek per key), two fields, absent in some bodies
        db.create_many(BulkNote, [{"_id": k, "title": f"t{n}" if n % 5 else f"t\x1e{n},\"x\"", "status": "open"}
                                  for n, k in enumerate(keys[::-1][:200])], update="modified")
    with db.write():
        db.create_many(BulkNote, [{"_id": k, "priority": n % 3} for n, k in enumerate(keys)], update="all")
    before, after, entries, revert, docs = _outcome(db, 2, [BulkNote])
    return _before_sorted(before), _before_sorted(after), entries, revert, docs


def test_columns_read_gives_the_general_paths_documents_log_revert_and_peer(tmp_path, monkeypatch):
    used = _record_uniform(monkeypatch)
    with tidesync.open(tmp_path / "c.db", schema=[BulkNote]) as db:
        columns = _scenario(db)
    assert used == [True, True, True]
    monkeypatch.undo()
    _general(monkeypatch)
    with tidesync.open(tmp_path / "g.db", schema=[BulkNote]) as db:
        general = _scenario(db)
    assert _norm(columns[:2]) == _norm(general[:2])
    assert _norm(columns[4]) == _norm(general[4])
    assert [e.id for e in columns[2]] != [] and len(columns[2]) == len(general[2])
