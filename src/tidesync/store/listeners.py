"""Change listeners on results and objects.

Each database has one notifier thread (named ``tidesync-notifier``), started with the first
listener. It wakes after every local commit (this database object's own writes, sync
downloads included) and polls every 50 ms for commits made through other connections — other
threads' or processes' databases on the same file (SQLite's ``PRAGMA data_version``). It then
re-runs each listened query, diffs the (key, change-seq) list against the previous one and
calls the callbacks **on the notifier thread**. A GUI app should hand the call over to its own
event loop; asyncio code can use ``async for changes in results.changes()``, which does that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .database import Database
    from .results import Results

__all__ = ["ChangeSet", "ObjectChange", "ListenerToken", "ListenerHub"]

log = logging.getLogger("tidesync.listeners")

_POLL_SECONDS = 0.05
_NOT_HANDED = object()


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """How results changed with one commit (indices as Realm reports them).

    Attributes:
        deletions: indices, in the previous results, of objects no longer there.
        insertions: indices, in the new results, of objects that are new there.
        modifications: indices, in the new results, of objects that changed.
    """

    deletions: tuple[int, ...] = ()
    insertions: tuple[int, ...] = ()
    modifications: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.deletions or self.insertions or self.modifications)


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """How one object changed: ``deleted``, or the names of the fields that changed."""

    deleted: bool
    changed_fields: tuple[str, ...] = ()


class ListenerToken:
    """Returned by ``add_listener``: call ``remove()`` to stop the calls."""

    def __init__(self, hub: ListenerHub, entry: _Entry) -> None:
        self._hub = hub
        self._entry = entry

    def remove(self) -> None:
        """Stop calling this listener (safe to call twice, and from inside the callback)."""
        self._hub._remove(self._entry)

    def __enter__(self) -> ListenerToken:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _extract(body: Any, path: str) -> Any:
    cur = body
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


@dataclass(eq=False)
class _Entry:
    callback: Callable[..., None]
    key_paths: tuple[str, ...] | None
    results: Results[Any] | None = None
    obj: Any = None
    keys: list[tuple[str, int]] = field(default_factory=list)
    values: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    removed: bool = False
    #: Results: the one collection its query reads (None: it follows links into others).
    collection: str | None = None
    #: Results: the database's commit generation its last snapshot was taken at (or after).
    generation: int = 0


class ListenerHub:
    """The notifier of one database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._data_version = -1
        #: The generation being delivered when it is this database's own commit (else None).
        self._handed_for: int | None = None
        #: The collections the commit being delivered changed, when it is known to be the one
        #: commit since the last delivery, a small sync download (else None: any).
        self._changed: frozenset[str] | None = None

    # -- registration ----------------------------------------------------------------------

    def add_results(self, results: Results[Any], callback: Callable[..., None],
                    key_paths: Sequence[str] | None) -> ListenerToken:
        entry = _Entry(callback, tuple(key_paths) if key_paths else None, results=results,
                       collection=results._only_collection())
        entry.generation = self._db._generation  # read before the snapshot: never too recent
        self._snapshot_results(entry)
        return self._add(entry)

    def add_object(self, obj: Any, callback: Callable[..., None], key_paths: Sequence[str] | None) -> ListenerToken:
        entry = _Entry(callback, tuple(key_paths) if key_paths else None, obj=obj)
        entry.body = self._read_body(obj)
        return self._add(entry)

    def _add(self, entry: _Entry) -> ListenerToken:
        with self._lock:
            self._entries.append(entry)
            if self._thread is None:
                with self._db._lock:
                    self._data_version = self._db._engine.data_version()
                self._thread = threading.Thread(target=self._run, name="tidesync-notifier", daemon=True)
                self._thread.start()
        return ListenerToken(self, entry)

    def _remove(self, entry: _Entry) -> None:
        with self._lock:
            entry.removed = True
            if entry in self._entries:
                self._entries.remove(entry)

    def results_changes(self, results: Results[Any], key_paths: Sequence[str] | None,
                        max_queue: int) -> AsyncIterator[ChangeSet]:
        hub = self

        async def gen() -> AsyncIterator[ChangeSet]:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[ChangeSet] = asyncio.Queue(max_queue)

            def put(_: Any, changes: ChangeSet) -> None:
                def deliver() -> None:
                    if queue.full():
                        queue.get_nowait()  # drop the oldest: a slow consumer sees the latest state
                    queue.put_nowait(changes)

                loop.call_soon_threadsafe(deliver)

            token = hub.add_results(results, put, key_paths)
            try:
                while True:
                    yield await queue.get()
            finally:
                token.remove()

        return gen()

    # -- the notifier thread -----------------------------------------------------------------

    def notify(self) -> None:
        """Wake the notifier (after a local commit)."""
        self._wake.set()

    @property
    def listening(self) -> bool:
        """Whether any listener is registered (a delivery may call back into the app)."""
        return bool(self._entries)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def _run(self) -> None:
        # A wake-up can be lost between wait() returning and clear(); the database's commit
        # generation cannot, so it decides (with data_version for other connections' commits).
        seen_generation = self._db._generation
        while not self._stop:
            self._wake.wait(_POLL_SECONDS)
            if self._stop:
                return
            self._wake.clear()
            generation = self._db._generation
            if generation != seen_generation:
                # This database committed: deliver without asking the file first (no lock, no
                # query). A commit by another connection meanwhile is seen by this delivery's
                # reads, and data_version, not updated here, makes the next poll check again.
                if self._db.is_closed:
                    return
                single = generation == seen_generation + 1
                seen_generation = generation
                self._handed_for = generation
                handed = self._db._handed
                self._changed = (frozenset(ref[0] for ref in handed[1])
                                 if single and handed is not None and handed[0] == generation else None)
            else:
                try:
                    with self._db._lock:
                        if self._db.is_closed:
                            return
                        dv = self._db._engine.data_version()
                        generation = self._db._generation
                except Exception:  # the database closed under us
                    return
                if dv == self._data_version and generation == seen_generation:
                    continue
                self._data_version, seen_generation = dv, generation
                self._handed_for = None  # maybe another connection's commit: read everything
                self._changed = None
            try:
                self._deliver()
            except Exception:
                if self._db.is_closed:
                    return
                log.exception("tidesync listener delivery failed")

    def _deliver(self) -> None:
        with self._lock:
            entries = list(self._entries)
        generation, changed = self._handed_for, self._changed
        for entry in entries:
            if entry.removed:
                continue
            if entry.results is not None:
                if (changed is not None and generation is not None and entry.collection is not None
                        and entry.collection not in changed and entry.generation >= generation - 1):
                    # The one commit since its last snapshot was a download of other
                    # collections: its query cannot give other rows (another connection's
                    # commit meanwhile is seen by the next data_version poll).
                    entry.generation = generation
                    continue
                if generation is not None:
                    entry.generation = generation
                changes = self._diff_results(entry)
                if changes is not None and not entry.removed:
                    self._call(entry, entry.results, changes)
            else:
                change = self._diff_object(entry)
                if change is not None and not entry.removed:
                    self._call(entry, entry.obj, change)

    def _call(self, entry: _Entry, subject: Any, changes: Any) -> None:
        try:
            entry.callback(subject, changes)
        except Exception:
            log.exception("a tidesync change listener raised; it stays registered")

    # -- diffing -------------------------------------------------------------------------

    def _key_values(self, entry: _Entry) -> dict[str, tuple[Any, ...]]:
        assert entry.results is not None and entry.key_paths is not None
        rows = entry.results._select("documents.pk, documents.body")
        return {pk: tuple(_extract(json.loads(body), p) for p in entry.key_paths) for pk, body in rows}

    def _snapshot_results(self, entry: _Entry) -> None:
        assert entry.results is not None
        entry.keys = entry.results._snapshot_keys()
        if entry.key_paths:
            entry.values = self._key_values(entry)

    def _diff_results(self, entry: _Entry) -> ChangeSet | None:
        assert entry.results is not None
        old_keys, old_values = entry.keys, entry.values
        self._snapshot_results(entry)
        new_keys = entry.keys
        old_pos = {pk: i for i, (pk, _) in enumerate(old_keys)}
        old_seq = dict(old_keys)
        new_pos = {pk: i for i, (pk, _) in enumerate(new_keys)}
        deletions = tuple(sorted(i for pk, i in old_pos.items() if pk not in new_pos))
        insertions = tuple(i for i, (pk, _) in enumerate(new_keys) if pk not in old_pos)
        modifications = []
        for i, (pk, seq) in enumerate(new_keys):
            if pk in old_seq and old_seq[pk] != seq:
                if entry.key_paths and old_values.get(pk) == entry.values.get(pk):
                    continue
                modifications.append(i)
        changes = ChangeSet(deletions, insertions, tuple(modifications))
        return None if changes.empty else changes

    def _read_body(self, obj: Any) -> dict[str, Any] | None:
        binding = obj._ts_binding
        handed = self._db._handed
        if handed is not None and handed[0] == self._handed_for:
            # Delivering this database's own download commit: the rows it wrote, as committed
            # (a later commit of another connection is seen by the next data_version poll).
            body = handed[1].get(binding.ref, _NOT_HANDED)
            if body is not _NOT_HANDED:
                return body  # type: ignore[return-value]
        with self._db._lock:
            if self._db.is_closed:
                return None
            rows = self._db._engine.query(
                "SELECT body FROM documents WHERE collection = ? AND pk = ? AND live = 1", binding.ref)
        return json.loads(rows[0][0]) if rows else None

    def _diff_object(self, entry: _Entry) -> ObjectChange | None:
        if entry.body is None:
            return None
        body = self._read_body(entry.obj)
        if body is None:
            entry.body = None  # the last call: later rounds skip this entry
            return ObjectChange(True)
        names = sorted(set(entry.body) | set(body))
        changed = tuple(n for n in names if entry.body.get(n) != body.get(n))
        entry.body = body
        if entry.key_paths:
            top = {p.split(".")[0] for p in entry.key_paths}
            changed = tuple(n for n in changed if n in top)
        return ObjectChange(False, changed) if changed else None
