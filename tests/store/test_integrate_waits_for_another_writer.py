"""An integration that waits for another connection's write transaction (SQLite's busy timeout:
``tidesync revert`` on a running server's file, a second server process) must see what that
connection committed. What the integration kept from before it began (the documents an upload
batch's checks read, ``Database.preload``; the file's version it hands to ``on_written``) was
current when it began, not once it holds the file: the commit in between must void it.

Here the other connection takes the write lock first (``BEGIN IMMEDIATE``), the integration
starts in a thread and waits for it, and the other connection then commits a change to a
document: real SQLite connections on one file, as two processes would."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tidesync.core.clock import HybridClock
from tidesync.core.operations import CreateDoc, SetValue
from tidesync.core.stamp import ZERO, ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database

A = ReplicaId("a" * 16)


def _clock() -> HybridClock:
    ticks = itertools.count(1_700_000_000_000, 7)
    return HybridClock(A, lambda: next(ticks))


def _seeded(path: Path, clock: HybridClock) -> tuple[Database, Transaction]:
    db = Database(path, (), partition_key="_partition")
    s = clock.now()
    seed = Transaction(s, A, s, (), tuple(
        CreateDoc("c", key, s if i == 0 else clock.now(), ZERO,
                  {"_id": key, "n": 0, "status": "open", "_partition": "p1"}, {})
        for i, key in enumerate(("x", "y"))))
    db.integrate([seed], peer="w", peer_seq=1)
    return db, seed


def _set(clock: HybridClock, parent: Transaction, key: str, field: str, value: Any) -> Transaction:
    t = clock.now()
    return Transaction(t, A, t, (parent.id,), (SetValue("c", key, t, ZERO, (field,), (), value),))


def _body(path: Path, key: str) -> dict[str, Any]:
    con = sqlite3.connect(path)
    try:
        return json.loads(con.execute("SELECT body FROM documents WHERE collection = 'c' AND pk = ?",
                                      (json.dumps(key),)).fetchone()[0])
    finally:
        con.close()


def _integrate_behind_another_writer(db: Database, path: Path, change_key: str, **integrate: Any) -> None:
    """``db.integrate(**integrate)`` started while another connection holds the write lock; that
    connection then sets ``change_key``'s status to "closed" and commits."""
    other = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        other.execute("BEGIN IMMEDIATE")
        errors: list[BaseException] = []

        def run() -> None:
            try:
                db.integrate(**integrate)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        # (The integration can only be held up by the other connection's lock: still running
        # after this, it waits in BEGIN for the commit below.)
        time.sleep(0.5)
        assert thread.is_alive(), "the integration did not wait for the other connection's lock"
        other.execute("UPDATE documents SET body = json_set(body, '$.status', 'closed') "
                      "WHERE collection = 'c' AND pk = ?", (json.dumps(change_key),))
        other.execute("COMMIT")
        thread.join(30)
        assert not thread.is_alive() and not errors, errors
    finally:
        other.close()


def test_an_upload_batch_read_before_another_connections_commit_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "sync.db"
    clock = _clock()
    db, seed = _seeded(path, clock)
    try:
        batch = [_set(clock, seed, "x", "n", 1)]
        pre = db.preload(batch)   # (what the server's checks read, before the integration)
        _integrate_behind_another_writer(db, path, "x", transactions=batch, peer="w", peer_seq=2, preloaded=pre)
        assert _body(path, "x") == {"_id": "x", "n": 1, "status": "closed", "_partition": "p1"}, \
            "the integration wrote the document as read before the other connection's commit"
    finally:
        db.close()


def test_the_rows_handed_over_after_another_connections_commit_say_so(tmp_path: Path) -> None:
    path = tmp_path / "sync.db"
    clock = _clock()
    db, seed = _seeded(path, clock)
    handed: list[tuple[Any, tuple[int, int], tuple[int, int]]] = []
    db.on_written = lambda rows, before, after: handed.append((rows, before, after))
    try:
        db.integrate([_set(clock, seed, "x", "n", 1)], peer="w", peer_seq=2)
        # The next batch writes y only; the other connection changes x meanwhile.
        _integrate_behind_another_writer(db, path, "x", transactions=[_set(clock, seed, "y", "n", 1)],
                                         peer="w", peer_seq=3)
        (_, _, after_first), (_, before_second, _) = handed
        # A receiver keeping the rows handed over so far (the flexible router's) keeps them
        # only while each hand-over begins where the last one ended: here it must not.
        assert before_second != after_first, "another connection's commit went unnoticed"
    finally:
        db.close()


def test_an_upload_batch_read_while_another_connection_commits_is_read_again(tmp_path: Path) -> None:
    # The other connection commits right after the batch's documents were read (as a second
    # process may, between the reads and the integration): the read is stale, though the file
    # changes no more until the integration begins.
    path = tmp_path / "sync.db"
    clock = _clock()
    db, seed = _seeded(path, clock)
    read = db._load_docs_of_txns

    def read_then_another_commit(*args: Any, **kwargs: Any) -> Any:
        docs = read(*args, **kwargs)
        other = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            other.execute("UPDATE documents SET body = json_set(body, '$.status', 'closed') "
                          "WHERE collection = 'c' AND pk = ?", (json.dumps("x"),))
        finally:
            other.close()
        return docs

    try:
        batch = [_set(clock, seed, "x", "n", 1)]
        db._load_docs_of_txns = read_then_another_commit  # type: ignore[method-assign]
        pre = db.preload(batch)
        del db._load_docs_of_txns
        db.integrate(batch, peer="w", peer_seq=2, preloaded=pre)
        assert _body(path, "x") == {"_id": "x", "n": 1, "status": "closed", "_partition": "p1"}, \
            "the integration wrote the document as read before the other connection's commit"
    finally:
        db.close()


def test_a_recheck_is_asked_for_another_connections_commit_only(tmp_path: Path) -> None:
    # integrate(recheck=True) (the server's rules decided on the preloaded documents): another
    # connection's commit in between raises StaleReadError with nothing written; this
    # connection's own writes in between (the server's acknowledgements) do not.
    from tidesync.store.database import StaleReadError

    path = tmp_path / "sync.db"
    clock = _clock()
    db, seed = _seeded(path, clock)
    try:
        batch = [_set(clock, seed, "x", "n", 1)]
        pre = db.preload(batch)
        db.record_acks({ReplicaId("b" * 16): 1})
        db.integrate(batch, peer="w", peer_seq=2, preloaded=pre, recheck=True)
        batch = [_set(clock, seed, "x", "n", 2)]
        pre = db.preload(batch)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("UPDATE documents SET body = json_set(body, '$.status', 'closed') WHERE pk = '\"y\"'")
        finally:
            other.close()
        head = db.head_seq()
        with pytest.raises(StaleReadError):
            db.integrate(batch, peer="w", peer_seq=3, preloaded=pre, recheck=True)
        assert db.head_seq() == head and _body(path, "x")["n"] == 1
    finally:
        db.close()
