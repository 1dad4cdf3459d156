"""Commits whose WAL checkpoint is left to a background thread (``Database.deferred_checkpoint``,
used by the server for large upload batches), and the GC pause that promotes what it made."""

from __future__ import annotations

import gc
import sqlite3

from tidesync.core.operations import CreateDoc
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database, _gc_paused

ORIGIN = "00000000000000ab"


def _txn(first: int, n: int) -> Transaction:
    ops = tuple(CreateDoc("Doc", f"d{i}", f"{i + 1:016x}00{ORIGIN}", "",
                          {"_id": f"d{i}", "_partition": "p", "text": "x" * 300}, {})
                for i in range(first, first + n))
    return Transaction(ops[0].stamp, ORIGIN, ops[0].stamp, (), ops)


def _autocheckpoint(db: Database) -> int:
    return int(db._engine.query("PRAGMA wal_autocheckpoint")[0][0])


def _wal_state(path) -> tuple[int, int]:
    """(frames in the WAL, frames of it copied into the file), read by a passive checkpoint
    of a connection of its own (which copies nothing new if all is copied)."""
    con = sqlite3.connect(path)
    try:
        busy, log, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return log, done
    finally:
        con.close()


def test_a_deferred_commit_skips_the_inline_checkpoint_and_the_thread_makes_it(tmp_path):
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        assert _autocheckpoint(db) == Database.AUTOCHECKPOINT_PAGES
        with db.deferred_checkpoint():
            assert _autocheckpoint(db) == 0
            with db.deferred_checkpoint():  # nested (two sessions' batches): still deferred
                assert _autocheckpoint(db) == 0
            assert _autocheckpoint(db) == 0
            # More than 1,000 WAL pages: an ordinary commit would checkpoint inside COMMIT.
            db.integrate([_txn(0, 6000)], peer="00000000000000cd", peer_seq=1)
        assert _autocheckpoint(db) == Database.AUTOCHECKPOINT_PAGES
        checkpointer = db._checkpointer
        assert checkpointer is not None
        assert checkpointer.wait_idle()
        assert checkpointer.runs >= 1
        log, done = _wal_state(tmp_path / "server.db")
        assert log == done  # everything committed is in the file
        assert db._engine.query("SELECT count(*) FROM documents")[0][0] == 6000
    finally:
        db.close()
    assert checkpointer.stopped
    # Reopened (the WAL replayed or already copied): the same rows.
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        assert db._engine.query("SELECT count(*) FROM documents")[0][0] == 6000
    finally:
        db.close()


def test_an_error_in_the_block_restores_the_inline_checkpoint(tmp_path):
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        try:
            with db.deferred_checkpoint():
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert _autocheckpoint(db) == Database.AUTOCHECKPOINT_PAGES
    finally:
        db.close()


def test_after_a_close_of_the_checkpointer_commits_checkpoint_inline_again(tmp_path):
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        with db.deferred_checkpoint():
            pass
        assert db._checkpointer is not None
        db._checkpointer.close()
        with db.deferred_checkpoint():
            assert _autocheckpoint(db) == Database.AUTOCHECKPOINT_PAGES  # nothing would copy the WAL
    finally:
        db.close()


def test_gc_pause_with_promote_leaves_the_young_generation_empty():
    assert gc.isenabled()
    with _gc_paused(promote=True):
        assert not gc.isenabled()
        kept = [[i] for i in range(5000)]
    assert gc.isenabled()
    assert gc.get_count()[0] < 100  # they were moved on, not left for a young collection
    assert all(gc.is_tracked(x) for x in kept[:10])
    with _gc_paused():
        pass
    assert gc.isenabled()


def test_overlapping_gc_pauses_of_two_threads_promote_each_and_resume_after_the_last():
    import threading

    assert gc.isenabled()
    inside, release, done = threading.Event(), threading.Event(), threading.Event()

    def integration() -> None:   # a worker thread's step, overlapping the one below
        with _gc_paused():
            inside.set()
            release.wait(10)
        done.set()

    worker = threading.Thread(target=integration)
    worker.start()
    try:
        assert inside.wait(10)
        with _gc_paused(promote=True):   # a decode, begun inside the worker's pause
            assert not gc.isenabled()
            kept = [[i] for i in range(5000)]
        # Promoted although the collector was paused already, and still paused for the worker.
        assert gc.get_count()[0] < 100
        assert not gc.isenabled()
        release.set()
        assert done.wait(10)
        assert gc.isenabled()
        # The other order: the worker ends first, the collector waits for the last step.
        inside.clear(), release.clear(), done.clear()
        with _gc_paused():
            worker = threading.Thread(target=integration)
            worker.start()
            assert inside.wait(10)
            release.set()
            assert done.wait(10)
            assert not gc.isenabled()
        assert gc.isenabled()
        assert all(gc.is_tracked(x) for x in kept[:10])
    finally:
        release.set()
        worker.join(10)
        gc.enable()


def test_a_collector_disabled_by_someone_else_stays_disabled():
    gc.disable()
    try:
        with _gc_paused(promote=True):
            kept = [[i] for i in range(1000)]
        assert not gc.isenabled() and kept
    finally:
        gc.enable()


def test_a_wal_grown_past_the_bound_is_checkpointed_inline_until_it_starts_over(tmp_path, monkeypatch):
    monkeypatch.setattr(Database, "MAX_DEFERRED_WAL_PAGES", 50)
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        with db.deferred_checkpoint():
            db.integrate([_txn(0, 2000)])
        checkpointer = db._checkpointer
        assert checkpointer is not None and checkpointer.wait_idle()
        assert checkpointer.wal_pages > 50  # as a checkpoint overlapping the next writes leaves it
        with db.deferred_checkpoint():
            assert _autocheckpoint(db) == Database.AUTOCHECKPOINT_PAGES  # inline this time
            db.integrate([_txn(2000, 10)])  # starts the WAL over (all of it was copied)
        assert checkpointer.wait_idle()
        assert checkpointer.wal_pages <= 50
        with db.deferred_checkpoint():
            assert _autocheckpoint(db) == 0  # deferred again
        assert db._engine.query("SELECT count(*) FROM documents")[0][0] == 2010
    finally:
        db.close()


def test_upload_batches_of_a_hundred_operations_or_more_promote_what_lives_on(tmp_path, monkeypatch):
    """server/enforcement.py: a batch as a flexible writer sends it (500 one-document
    transactions) is below the deferred checkpoint's size, yet what lives on after its
    integration is promoted; a small one (propagation) leaves it to the young collections."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from tidesync.server import enforcement
    from tidesync.server.config import ServerConfig

    asked: list[bool] = []
    real = enforcement._gc_paused

    @contextmanager
    def recorded(*, promote=False):
        asked.append(promote)
        with real(promote=promote):
            yield

    monkeypatch.setattr(enforcement, "_gc_paused", recorded)
    db = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        state = SimpleNamespace(backend=db, config=ServerConfig(data_dir=tmp_path, development_mode=True),
                                schema_learner=None)
        enforcer = enforcement.Enforcer(state, None)
        enforcer.integrate([_txn(0, enforcement.PROMOTE_OPS - 1)], "peer", 1)
        enforcer.integrate([_txn(1000, enforcement.PROMOTE_OPS)], "peer", 2)
        assert asked == [False, True]
        assert enforcement.PROMOTE_OPS < enforcement.DEFER_CHECKPOINT_OPS
    finally:
        db.close()
