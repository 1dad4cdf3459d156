"""Session 9's assignment loop recorded as columns (``WriteTransaction.loop_keys``,
``Database._loop_as_columns``) across what its own tests do not combine it with: a second
connection writing the same documents between two writes, objects read before that write and
assigned in the loop, the same objects reached through two different results, a loop that
raises half-way followed by one that commits, ``write_copy`` of the result, an encrypted
file, and a revert. Each ends with what the general path (every fast path off) gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tidesync
from tests.helpers.extras import needs_sqlcipher
from tests.store.test_create_bulk import BulkNote, _items, _norm
from tests.store.test_fast_paths_agree import _general


def _fast_and_general(run: Any, tmp: Path, *args: Any) -> tuple[Any, Any]:
    """``run(tmp, "fast", *args)`` with the fast paths, then ``run(tmp, "general", *args)`` with
    every fast path off: both results."""
    got = run(tmp, "fast", *args)
    with pytest.MonkeyPatch.context() as mp:
        _general(mp)
        return got, run(tmp, "general", *args)


N = 120


def _rows(db: tidesync.Database) -> list[tuple[Any, ...]]:
    return [(json.loads(pk), json.loads(body), live) for pk, body, live in db._engine.query(
        "SELECT pk, body, live FROM documents WHERE collection = 'BulkNote' ORDER BY pk")]


def _peer_rows(db: tidesync.Database, path: Path) -> list[tuple[Any, ...]]:
    with tidesync.open(path, schema=[BulkNote]) as peer:
        peer.integrate(db.export_transactions())
        return _rows(peer)


def _two_connections(tmp: Path, name: str) -> tuple[list[Any], list[Any], list[Any]]:
    path = tmp / f"{name}.db"
    with tidesync.open(path, schema=[BulkNote]) as a, tidesync.open(path, schema=[BulkNote]) as b:
        with a.write():
            a.create_many(BulkNote, _items(N))
        objs = list(a.objects(BulkNote).sort("_id"))       # read before b writes
        assert [o.priority for o in objs[:3]] == [0, 1, 2]
        with b.write():                                     # the other connection: same documents
            for o in b.objects(BulkNote).sort("_id"):
                o.title = "from b"                          # another field of every one
            for o in list(b.objects(BulkNote).sort("_id"))[::3]:
                o.priority = 9                              # and the loop's field of some
        with a.write():                                     # a's loop over what it read before
            for n, o in enumerate(objs):
                if n % 2:
                    o.priority = n % 4
        with a.write():                                     # and a loop of b's field after it
            for o in objs[:N // 2]:
                o.title = "from a"
        rows = _rows(a)
        assert rows == _rows(b)
        return rows, _peer_rows(a, tmp / f"{name}.peer.db"), [
            (e.origin == a.replica_id, [(c.id, c.kind, c.fields) for c in e.changes]) for e in a.history(10)]


def test_a_loop_over_objects_read_before_another_connection_wrote_keeps_that_connections_writes(tmp_path):
    (rows, peer, history), expected = _fast_and_general(_two_connections, tmp_path)
    assert rows == expected[0]
    assert peer == expected[1] == rows
    assert history == expected[2]
    body = dict((pk, b) for pk, b, _ in rows)
    assert body["n00001"]["priority"] == 1 and body["n00001"]["title"] == "from a"
    assert body["n00003"]["priority"] == 3 and body["n00003"]["title"] == "from a"
    assert body["n00006"]["priority"] == 9 and body["n00006"]["title"] == "from a"
    assert body[f"n{N - 1:05d}"]["title"] == "from b"


def _two_results(tmp: Path, name: str, fail: bool) -> tuple[Any, ...]:
    path = tmp / f"{name}.db"
    with tidesync.open(path, schema=[BulkNote]) as db:
        with db.write():
            db.create_many(BulkNote, _items(N))
        low = db.objects(BulkNote).filter("priority < 3").sort("_id")
        by_title = db.objects(BulkNote).sort("title", reverse=True)
        if fail:
            with pytest.raises(RuntimeError), db.write():  # raises half-way through a loop
                for n, o in enumerate(low):
                    o.score = -1.0
                    if n == 20:
                        raise RuntimeError("stop")
        with db.write():
            for o in list(low):            # the loop, through one results ...
                o.score = 1.5
            for o in list(by_title)[:40]:  # ... the same field again through another
                o.score = 2.5
            for o in list(low)[:10]:       # and a second field of some of them
                o.flag = True
        loop_id = db.history(1)[0].id
        before = _rows(db)
        db.revert(loop_id)
        after = _rows(db)
        copy = tmp / f"{name}.copy.db"
        db.write_copy(copy)
        with tidesync.open(copy, schema=[BulkNote]) as c:
            copied = _rows(c)
        peer = _peer_rows(db, tmp / f"{name}.peer.db")
        history = [[(c.id, c.kind, c.fields) for c in e.changes] for e in db.history(5)]
    return before, after, copied, peer, history


@pytest.mark.parametrize("fail", [False, True], ids=["clean", "after-a-failed-loop"])
def test_a_loop_reaching_the_same_objects_through_two_results_gives_the_general_paths_documents(tmp_path, fail):
    got, expected = _fast_and_general(_two_results, tmp_path, fail)
    assert _norm(got) == _norm(expected)
    before, after, copied, peer, _ = got
    assert copied == after == peer
    scores = {pk: b["score"] for pk, b, _ in before}
    assert 2.5 in scores.values() and 1.5 in scores.values()
    assert all(b.get("score") != -1.0 for _, b, _ in before)


@needs_sqlcipher
def test_a_loop_in_an_encrypted_file_is_read_back_after_reopening(tmp_path):
    key = bytes(range(64))
    path = tmp_path / "enc.db"
    with tidesync.open(path, schema=[BulkNote], encryption_key=key) as db:
        with db.write():
            db.create_many(BulkNote, _items(N))
        objs = list(db.objects(BulkNote).sort("_id"))
        with db.write():
            for n, o in enumerate(objs):
                o.priority = n % 3
        assert db._txn is None
    with tidesync.open(path, schema=[BulkNote], encryption_key=key) as db:
        assert [o.priority for o in db.objects(BulkNote).sort("_id")] == [n % 3 for n in range(N)]
        assert len(db.objects(BulkNote).filter("priority == 2")) == len([n for n in range(N) if n % 3 == 2])
        peer = _peer_rows(db, tmp_path / "enc.peer.db")
        assert peer == _rows(db)


def _read_modify_write(tmp: Path, name: str) -> list[Any]:
    path = tmp / f"{name}.db"
    with tidesync.open(path, schema=[BulkNote]) as a, tidesync.open(path, schema=[BulkNote]) as b:
        with a.write():
            a.create_many(BulkNote, _items(N))
        objs = list(a.objects(BulkNote).sort("_id"))
        assert sum(o.priority for o in objs) >= 0                 # every body read (cached) before b writes
        with b.write():
            for o in b.objects(BulkNote):
                o.priority += 100
                o.score = 7.0
        with a.write():                                           # read-modify-write in a loop
            for o in objs:
                o.priority = o.priority + 1
                o.title = f"{o.score}"
        with a.write():                                           # a loop, then reads of looped objects
            for o in objs:
                o.flag = not o.flag
            flags = [o.flag for o in objs]
        return [_rows(a), flags]


def test_a_loop_reading_objects_cached_before_another_connections_write_reads_that_write(tmp_path):
    got, expected = _fast_and_general(_read_modify_write, tmp_path)
    assert got == expected
    rows, flags = got
    assert [b["priority"] for _, b, _ in rows] == [i % 5 + 101 for i in range(N)]
    assert {b["title"] for _, b, _ in rows} == {"7.0"}
    assert flags == [b["flag"] for _, b, _ in rows]


def _deleted_meanwhile(tmp: Path, name: str) -> tuple[Any, ...]:
    path = tmp / f"{name}.db"
    with tidesync.open(path, schema=[BulkNote]) as a, tidesync.open(path, schema=[BulkNote]) as b:
        with a.write():
            a.create_many(BulkNote, _items(N))
        objs = list(a.objects(BulkNote).sort("_id"))
        with b.write():                                     # the other connection deletes some
            for o in list(b.objects(BulkNote).sort("_id"))[5::7]:
                b.delete(o)
        skipped = []
        with a.write():                                     # a's loop steps over the deleted ones
            for n, o in enumerate(objs):
                try:
                    o.priority = 9
                except tidesync.InvalidatedObjectError as exc:
                    skipped.append((n, str(exc)))
        return _rows(a), skipped, [(c.id, c.kind, c.fields) for e in a.history(1) for c in e.changes]


def test_a_loop_over_objects_another_connection_deleted_raises_for_those_and_writes_the_others(tmp_path):
    got, expected = _fast_and_general(_deleted_meanwhile, tmp_path)
    assert got == expected
    rows, skipped, changes = got
    assert [n for n, _ in skipped] == list(range(5, N, 7))
    assert len(changes) == N - len(skipped)
    assert all(b["priority"] == 9 for _, b, live in rows if live)


def _listened_across(tmp: Path, name: str) -> list[Any]:
    import queue

    path = tmp / f"{name}.db"
    with tidesync.open(path, schema=[BulkNote]) as a, tidesync.open(path, schema=[BulkNote]) as b:
        with a.write():
            a.create_many(BulkNote, _items(40))
        got: queue.Queue = queue.Queue()
        tokens = [
            b.objects(BulkNote).add_listener(
                lambda res, change: got.put(("title", tuple(change.modifications))), key_paths=["title"]),
            b.objects(BulkNote).filter("priority == 4").add_listener(
                lambda res, change: got.put(("p4", len(res), tuple(change.insertions), tuple(change.deletions)))),
        ]
        objs = list(a.objects(BulkNote).sort("_id"))
        seen = []
        for field, value, count in (("priority", 4, 1), ("title", "x", 2), ("priority", 3, 1)):
            with a.write():  # a loop on the other connection
                for o in objs[:30]:
                    setattr(o, field, value)
            seen.append(sorted((got.get(timeout=5) for _ in range(count)), key=repr))
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)
        for t in tokens:
            t.remove()
        return seen


def test_listeners_with_key_paths_on_another_connection_see_a_loop_as_the_general_paths_writes(tmp_path):
    got, expected = _fast_and_general(_listened_across, tmp_path)
    assert got == expected
    assert got[1][1] == ("title", tuple(range(30)))
