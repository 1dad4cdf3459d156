"""Checkpointing a database file's WAL in a thread of its own, off the committer's path.

SQLite checkpoints a WAL file automatically inside the ``COMMIT`` that takes it past 1,000
pages: that commit copies every page of the WAL into the database file and fsyncs it before it
returns. For a server integrating a large upload batch, that is about a third of the commit's
time, on the way to the batch's ``Ack``. :meth:`Database.deferred_checkpoint
<tidesync.store.database.Database.deferred_checkpoint>` lets such commits skip it and has a
:class:`Checkpointer` make a passive checkpoint right after, on its own connection: the copy
runs while the server receives and decodes the next batch. Durability does not change: every
commit fsyncs the WAL before it returns, as before; a checkpoint only copies committed pages
(SQLite keeps both files consistent if the process stops in the middle of one).
"""

from __future__ import annotations

import logging
import os
import threading

from .engine import Engine

__all__ = ["Checkpointer"]

log = logging.getLogger("tidesync.store")


class Checkpointer:
    """A daemon thread that runs ``PRAGMA wal_checkpoint(PASSIVE)`` on the file at ``path``
    each time :meth:`request` is called (requests made while one runs are served by one more
    run). A passive checkpoint never waits for, nor blocks, the writer or the readers."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._wake = threading.Condition()
        self._pending = False
        self._running = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        #: Completed runs (for tests).
        self.runs = 0
        #: Pages in the WAL after the last run (SQLite reuses the WAL from its start only when
        #: a write begins after a complete checkpoint; one that overlaps every write lets it
        #: grow): the caller stops deferring beyond a bound (Database.deferred_checkpoint).
        self.wal_pages = 0

    @property
    def stopped(self) -> bool:
        """Whether the thread ended (closed, or it could not open the file)."""
        return self._stopped

    def request(self) -> None:
        """Have a checkpoint made soon (returns at once)."""
        with self._wake:
            if self._stopped:
                return
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tidesync-checkpoint", daemon=True)
                self._thread.start()
            self._wake.notify()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no checkpoint is pending or running (for tests). False on timeout."""
        with self._wake:
            return self._wake.wait_for(lambda: not (self._pending or self._running) or self._stopped, timeout)

    def close(self) -> None:
        """Stop the thread (after the run under way, if any)."""
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)

    def _run(self) -> None:
        engine: Engine | None = None
        try:
            engine = Engine(self.path, check_same_thread=False)
            while True:
                with self._wake:
                    self._wake.wait_for(lambda: self._pending or self._stopped)
                    if self._stopped:
                        return
                    self._pending = False
                    self._running = True
                try:
                    rows = engine.query("PRAGMA wal_checkpoint(PASSIVE)")
                    if rows and rows[0][1] is not None:
                        self.wal_pages = int(rows[0][1])
                except Exception:  # noqa: BLE001 - the next commit past 1,000 pages checkpoints itself
                    log.debug("background checkpoint failed", exc_info=True)
                with self._wake:
                    self.runs += 1
                    self._running = False
                    self._wake.notify_all()
        except Exception:  # noqa: BLE001 - as above: SQLite's automatic checkpoint remains
            log.debug("background checkpointer stopped", exc_info=True)
        finally:
            with self._wake:
                self._stopped = True
                self._pending = self._running = False
                self._wake.notify_all()
            if engine is not None:
                engine.close()
