"""The SQLite database as a replica: what replication reads and writes through.

:class:`ReplicaStore` is mixed into :class:`~tidesync.store.database.Database`, so a device's
file and the server's default backend are the same kind of replica and implement the same
:class:`tidesync.protocol.replica.Replica` protocol.

Scope filtering (``{"partition": {"key": k, "value": v}}``) uses the ``scope`` column of
``documents``: the canonical JSON of the document's partition value, kept in its tombstone.
A transaction read for a peer keeps only the operations on documents inside the peer's scope.

Echo suppression: ``exclude_origin`` skips the peer's own transactions *and* those this
replica received from the peer (the ``via`` column), so nothing is sent back where it came
from.

Compaction: :meth:`ReplicaStore.compact_log` drops log entries up to a seq. A peer whose
checkpoint is older than the compacted range gets ``snapshot_required`` and bootstraps from a
snapshot of document states, which it *joins* into its own (a merge: its unsynced work stays
and is uploaded as usual). A replica made with ``bootstrap_with_snapshot=True`` (the server)
also answers a peer with an empty checkpoint with a snapshot: initial sync is state-based;
except a peer with an entry of its own before any entry it would receive (it connected while
the log held nothing for it, so its checkpoint stayed 0, then uploaded): it continues from the
log, which holds only what it lacks, instead of downloading its own uploads as a snapshot.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence, Set
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from itertools import accumulate, chain, repeat
from typing import TYPE_CHECKING, Any

import msgpack

from ..core import merge
from ..core.stamp import ZERO, ReplicaId, Stamp, are_compact_metas, is_stamp, latest_by_origin
from ..core.transaction import Descriptor, Transaction
from ..core.values import canonical_json, loads_json
from ..errors import StorageError, UsageError
from ..protocol.messages import COLUMN_SEPARATOR, DocColumns, Scope, SnapshotDoc
from ..protocol.replica import (
    Checkpoint, DescriptorBatch, LogBatch, SnapshotPage, SnapshotResult,
)

from .tables import (
    INSERT_DOCUMENT, UPSERT_DOCUMENT, VALUE_FIELD, VALUES_KEPT, upsert_values_sql, value_column_sql, value_triggers_sql,
)

if TYPE_CHECKING:
    from .engine import Engine, Row

__all__ = ["ReplicaStore"]

Ref = tuple[str, str]


_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


#: Rows of the INSERT statements that store a columns page (see ``_insert_rows``): a few fixed
#: sizes, so that the connection's statement cache keeps them prepared (preparing a statement of
#: thousands of rows takes tens of milliseconds), up to 4,096 rows (a page of up to 5,000
#: documents takes at most two statements).
_INSERT_SIZES = (16, 64, 256, 1024, 2048, 4096)


def _rows_per_insert(n: int, limit: int) -> int:
    """The rows of the :func:`_insert_sql` statement for ``n`` rows: the smallest of
    :data:`_INSERT_SIZES` that holds them, at most ``limit``."""
    for size in _INSERT_SIZES:
        if size >= n or size >= limit:
            return min(size, limit)
    return min(_INSERT_SIZES[-1], limit)


@lru_cache(maxsize=16)
def _insert_sql(rows: int) -> str:
    """``INSERT_DOCUMENT`` for ``rows`` rows in one statement; rows whose collection is NULL
    (padding up to the fixed size) are left out."""
    head, _, values = INSERT_DOCUMENT.partition(" VALUES ")
    return f"{head} SELECT * FROM (VALUES {','.join([values] * rows)}) WHERE column1 IS NOT NULL"


@lru_cache(maxsize=16)
def _insert_uniform_sql(rows: int) -> str:
    """``INSERT_DOCUMENT`` for ``rows`` rows of one collection, epoch, live flag and scope
    (parameters 1 to 4, bound once), each row given as (pk, body, meta, seq); padding rows
    (pk NULL) are left out. Half the parameters of :func:`_insert_sql`: SQLite binds and
    steps through half as many values, and prepares the statement in half the time."""
    head, _, _ = INSERT_DOCUMENT.partition(" VALUES ")
    return (f"{head} SELECT ?1, column1, column2, column3, ?2, ?3, column4, ?4 "
            f"FROM (VALUES {','.join(['(?, ?, ?, ?)'] * rows)}) WHERE column1 IS NOT NULL")


@lru_cache(maxsize=64)
def _values_sql(statement: str, rows: int) -> str:
    """``statement`` (``INSERT INTO t (...) VALUES (?, ...)``, maybe an ``ON CONFLICT``
    clause after) for ``rows`` rows in one statement. SQLite inserts them in the order given,
    as the same statement run once per row would (its upsert clause applies to each as it
    comes, also to a row that an earlier one of the statement inserted)."""
    head, _, values = statement.partition(" VALUES ")
    values, conflict, tail = values.partition(" ON CONFLICT")
    # The WHERE clause is SQLite's rule for an upsert after INSERT ... SELECT (a parsing
    # ambiguity), and costs nothing: no row is NULL there.
    return f"{head} SELECT * FROM (VALUES {','.join([values] * rows)}) WHERE column1 IS NOT NULL{conflict}{tail}"


#: The rows of one :meth:`ReplicaStore._run_values` statement. Measured on this build (an
#: upload's document rows; executemany about 6 us per row of CPU at load 4): 32 or 64 rows per
#: statement save about 2 us per row alike, 16 a little less. A larger statement takes longer to
#: prepare, once per connection (0.2 ms for 16 rows, 0.3 ms for 32, 0.6 ms for 64, 100 ms for
#: 4,096; a fleet of devices pays it on each), and padding a statement with NULL rows costs about
#: as much as a row, so the rows that do not fill one go once per row.
_VALUES_ROWS = 32


def _scope_value(scope: Scope) -> str | None:
    """The canonical JSON of a partition scope's value, or None for an unfiltered scope."""
    part = scope.get("partition") if scope else None
    if part is None:
        return None
    return canonical_json(part["value"])


#: A document :meth:`ReplicaStore._seed_log_cache` was not told the scope of.
_ABSENT_SCOPE = object()


class _LogRow:
    """One log entry as read from the file; decoded on first use."""

    __slots__ = ("seq", "origin", "via", "size", "_data", "_txn", "_refs")

    def __init__(self, seq: int, origin: str, via: str | None, data: bytes) -> None:
        self.seq, self.origin, self.via, self.size = seq, origin, via, len(data)
        self._data: bytes | None = data
        self._txn: Transaction | None = None
        self._refs: frozenset[Ref] | None = None

    def refs(self) -> frozenset[Ref]:
        """The documents the entry's operations touch (filtering it to a scope), computed
        once: on fan-out every session of another scope filters the same entries."""
        if self._refs is None:
            self._refs = frozenset((op.collection, canonical_json(op.key)) for op in self.txn().ops)
        return self._refs

    def txn(self) -> Transaction:
        if self._txn is None:
            assert self._data is not None
            # Unpacked on first use: an entry sent on unfiltered (a device's upload) is only
            # spliced into its message, never decoded.
            self._txn = Transaction.stored_lazily(self._data, _unpack_stored)
            self._data = None
        return self._txn


def _unpack_stored(data: bytes) -> Any:
    """A log entry's map, as the log stores it (msgpack of ``Transaction.to_wire``)."""
    return msgpack.unpackb(data, raw=False)


class _LogCache:
    """Recently read log entries, decoded once for every peer that reads them (the server's
    fan-out: each session reads the same new entries right after they are integrated).

    A committed log entry never changes (compaction only deletes entries below the floor,
    which ``read_log`` checks first), so rows stay valid; which documents are inside a scope,
    the head and the snapshot marks can change with any write, so ``scoped`` (filtering
    results by (seq, scope)) and ``state`` are dropped whenever the file changed since.
    """

    MAX_ROWS = 4096
    MAX_BYTES = 32 << 20

    __slots__ = ("_rows", "_bytes", "scoped", "version", "state", "counts", "reads", "round_thread")

    def __init__(self) -> None:
        self._rows: dict[int, _LogRow] = {}
        self._bytes = 0
        self.scoped: dict[tuple[int, str], tuple[Transaction | None, int]] = {}
        self.version: tuple[int, int] | None = None
        #: (head, snapshot marks) as read at ``version``.
        self.state: tuple[int, tuple[int, str | None, int]] | None = None
        #: Documents per scope value (snapshot progress estimates) at ``version``.
        self.counts: dict[str | None, int] = {}
        #: read_log results at ``version`` by (after, limit, max_bytes, scope value), with the
        #: origins and vias of the entries they scanned: the same batch serves every peer that
        #: is none of those (on fan-out, every session but the writer's asks the same read).
        self.reads: dict[tuple[int, int, int, str | None], tuple[LogBatch, frozenset[str]]] = {}
        #: The thread inside ReplicaStore.read_round, if any.
        self.round_thread: int | None = None

    def rows(self, after: int, limit: int, head: int) -> list[_LogRow] | None:
        """Entries after..min(after + limit, head), or None unless all of them are cached."""
        found = []
        get = self._rows.get
        for seq in range(after + 1, min(after + limit, head) + 1):
            row = get(seq)
            if row is None:
                return None
            found.append(row)
        return found

    def add(self, rows: list[_LogRow]) -> None:
        size = sum(r.size for r in rows)
        if len(self._rows) + len(rows) > self.MAX_ROWS or self._bytes + size > self.MAX_BYTES:
            self._rows.clear()
            self._bytes = 0
            self.scoped.clear()
            self.reads.clear()
            if len(rows) > self.MAX_ROWS or size > self.MAX_BYTES:
                return
        for r in rows:
            if r.seq not in self._rows:
                self._rows[r.seq] = r
                self._bytes += r.size


#: The most "seen" stamps (one per origin) a replica keeps among its heads: the latest ones.
MAX_SEEN_ORIGINS = 256


def _seen_in(docs: Sequence[SnapshotDoc]) -> dict[str, str]:
    """The latest stamp of each origin (replica) among the writes ``docs`` hold: what a
    replica that joins them has seen of each origin's writes."""
    seen: dict[str, str] = {}
    epochs: Sequence[str]
    metas: Sequence[str]
    if type(docs) is DocColumns:
        epochs, metas = docs.epochs, docs.metas
    else:
        epochs, metas = [], []
        for doc in docs:
            form = doc.json_form
            if form is not None:
                epochs.append(form[0])
                metas.append(form[3])
            else:
                state = doc.state
                latest_by_origin(merge.stamps_of(merge.DocState(
                    epoch=state["epoch"], live=bool(state["live"]), body=state["body"], meta=state["meta"])), seen)
    received = type(docs) is DocColumns and docs.parsed is not None  # its metas checked compact
    if received or are_compact_metas(metas):  # fresh documents' metas, {"*":"<stamp>"}
        if len({m[24:40] for m in metas}) == 1:  # one origin: its latest without a loop
            latest_by_origin((max(metas)[6:40],), seen)
        else:
            latest_by_origin([m[6:40] for m in metas], seen)
        latest_by_origin([e for e in epochs if e and is_stamp(e)], seen)
    else:
        for epoch, meta in zip(epochs, metas):
            latest_by_origin(merge.stamps_of(merge.DocState(epoch=Stamp(epoch), live=True, body={},
                                                            meta=json.loads(meta))), seen)
    return seen


def _latest_of(states: Sequence[tuple[str, Ref, merge.DocState]]) -> Stamp:
    """The latest of ``merge.latest_stamp`` over ``states``: stamps sort as str (wall clock and
    counter first). A compact meta (``{"*": stamp}``, a fresh document's) is read directly
    (one with an overlay of later writes, ``"r"``, goes through ``latest_stamp``)."""
    candidates: list[str] = []
    others = []
    for _, _, st in states:
        star = st.meta.get("*")
        if type(star) is str and "r" not in st.meta:
            candidates.append(star)
            candidates.append(st.epoch)
        else:
            others.append(st)
    best = max(candidates) if candidates else ""
    if best and not is_stamp(best):  # not a stamp (latest_stamp ignores those): go the long way
        return max(merge.latest_stamp(st) for _, _, st in states)
    if others:
        best = max(best, max(merge.latest_stamp(st) for st in others))
    return Stamp(best)


class ReplicaStore:
    """Replication methods of a :class:`~tidesync.store.database.Database`."""

    _engine: Engine
    _lock: Any
    replica_id: ReplicaId
    bootstrap_with_snapshot: bool = False
    #: Rows one INSERT of a columns page may carry (from the connection's parameter limit).
    _insert_limit: int | None = None
    #: The top-level fields whose values ``documents`` keeps in columns of their own, indexed
    #: (see :meth:`add_value_column`).
    value_fields: tuple[str, ...] = ()
    #: The file's version (total_changes, data_version) at which ``Database._rows_cache``
    #: holds the stored rows of its documents; None: it holds none.
    _rows_at: tuple[int, int] | None = None

    if TYPE_CHECKING:
        def _check_open(self) -> None: ...
        def _setting(self, key: str) -> str | None: ...
        def _set_setting(self, key: str, value: str) -> None: ...
        def _integrate_locked(self, txns: Sequence[Transaction], peer: str | None,
                              peer_seq: int | None) -> Any: ...
        def _after_remote(self, changed: bool) -> None: ...

    # -- reading -----------------------------------------------------------------------------

    def head_seq(self) -> int:
        """The seq of the newest log entry (0 when the log is empty)."""
        with self._lock:
            self._check_open()
            rows = self._engine.query("SELECT seq FROM sqlite_sequence WHERE name = 'log'")
        return int(rows[0][0]) if rows else 0

    def log_floor(self) -> int:
        """Entries with seq <= this were compacted away (0: nothing was)."""
        return int(self._setting("log_floor") or 0)

    def _snapshot_marks(self) -> tuple[int, str | None, int]:
        """(log floor, peer a snapshot was joined from, log seq from which our log holds it)."""
        return self.log_floor(), self._setting("snapshot_from"), int(self._setting("snapshot_seq") or 0)

    def _needs_snapshot(self, after: int, exclude_origin: ReplicaId | None,
                        marks: tuple[int, str | None, int] | None = None, want: str | None = None) -> bool:
        floor, joined_from, snapshot_seq = self._snapshot_marks() if marks is None else marks
        if after < floor:
            return True
        if joined_from and exclude_origin != joined_from and after < snapshot_seq:
            # Part of our state arrived as a snapshot, not as log entries: a third peer that
            # has not seen it must bootstrap from our snapshot in turn.
            return True
        if after == 0 and self.bootstrap_with_snapshot:
            return not self._uploaded_first(exclude_origin, want)
        return False

    #: Log entries :meth:`_uploaded_first` looks at before it settles for a snapshot.
    _FIRST_SCAN = 256

    def _uploaded_first(self, peer: ReplicaId | None, want: str | None) -> bool:
        """Whether ``peer``, with an empty checkpoint, has an entry in our log before any
        entry it would receive (another origin's, inside scope ``want``). Such a peer was
        connected while our log held nothing for it (its checkpoint stayed 0) and uploaded:
        the log from the start is complete and holds only what it lacks, so it needs no
        bootstrap snapshot, which would send its own documents back. A fresh peer finds
        another's entry first (or only its own after too many others: a snapshot then is
        merely less lean). Call with the lock held."""
        if peer is None:
            return False
        # Origins only first (the column before the entry's data: no blob is read): a fresh
        # peer, the usual case, has no entry among them and gets its snapshot at once. Only
        # the entries before the peer's first one are decoded, to see whether they concern it.
        rows = self._engine.query("SELECT seq, origin FROM log ORDER BY seq LIMIT ?", (self._FIRST_SCAN,))
        own = next((seq for seq, origin in rows if origin == peer), None)
        if own is None:
            return False
        for seq, origin in rows:
            if seq == own:
                return True
            if want is None:
                return False
            _, via, data = self._engine.query("SELECT origin, via, data FROM log WHERE seq = ?", (seq,))[0]
            if via == peer or self._refs_in_scope(_LogRow(seq, origin, via, data).refs(), want):
                return False
        return False

    def written_elsewhere(self) -> int | None:
        """The newest log seq if another process committed to this file since the last call
        (``tidesync revert`` on a running server's file, a second server process), else None.
        The first call only takes note. Never waits: None when the replica is busy (the next
        call sees the write)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self._check_open()
            if self._engine.in_transaction():
                return None
            version = self._engine.data_version()
            last = self.__dict__.get("_ts_seen_data_version")
            self.__dict__["_ts_seen_data_version"] = version
            if last is None or version == last:
                return None
            return self.head_seq()
        except Exception:  # noqa: BLE001 - closed: the sessions' own reads report it
            return None
        finally:
            self._lock.release()

    @contextmanager
    def unless_busy(self) -> Iterator[bool]:
        """Hold this replica's lock if it is free right now (yields True), else yield False at
        once. An event loop can then make a small read itself instead of handing it to a
        thread, without ever waiting behind a write."""
        if not self._lock.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            self._lock.release()

    def read_log(self, after: int, *, limit: int, max_bytes: int, scope: Scope,
                 exclude_origin: ReplicaId | None) -> LogBatch:
        """Log entries after ``after`` for a peer with ``scope`` (see the module docstring)."""
        with self._lock:
            self._check_open()
            cache = self._log_cache()
            state = cache.state if cache is not None else None
            if state is None:
                state = (self.head_seq(), self._snapshot_marks())
                if cache is not None:
                    cache.state = state  # until the file changes
            head, marks = state
            want = _scope_value(scope)
            if after < head and self._needs_snapshot(after, exclude_origin, marks, want):
                return LogBatch((), after, head, 0, snapshot_required=True)
            memo_key = (after, limit, max_bytes, want)
            earlier = cache.reads.get(memo_key) if cache is not None else None
            if earlier is not None and (exclude_origin is None or exclude_origin not in earlier[1]):
                return earlier[0]
            entries: list[tuple[int, Transaction]] = []
            nbytes = 0
            scanned = after
            cursor = after
            sources: set[str] = set()  # origins and vias of the entries scanned
            excluded = False
            while len(entries) < limit and nbytes < max_bytes and cursor < head:
                rows = cache.rows(cursor, max(1, min(500, limit - len(entries))), head) if cache else None
                if rows is None:
                    rows = [_LogRow(seq, origin, via, data) for seq, origin, via, data in self._engine.query(
                        "SELECT seq, origin, via, data FROM log WHERE seq > ? ORDER BY seq LIMIT ?",
                        (cursor, max(1, min(500, limit - len(entries)))))]
                    if cache is not None:
                        cache.add(rows)
                if not rows:
                    scanned = head
                    break
                if want is not None and cache is not None:
                    self._prefilter(rows, want, cache, exclude_origin)
                for row in rows:
                    seq = row.seq
                    cursor = seq
                    if nbytes >= max_bytes and entries:
                        break
                    scanned = seq
                    sources.add(row.origin)
                    if row.via is not None:
                        sources.add(row.via)
                    if exclude_origin is not None and (row.origin == exclude_origin or row.via == exclude_origin):
                        excluded = True
                        continue
                    txn = row.txn()
                    size = row.size
                    if want is not None:
                        memo = cache.scoped.get((seq, want)) if cache is not None else None
                        if memo is None:
                            txn_f = self._filter_to_scope(txn, want, refs=row.refs())
                            if txn_f is not None and txn_f is not txn:
                                size = len(msgpack.packb(txn_f.to_wire(), use_bin_type=True))
                            memo = (txn_f, size)
                            if cache is not None:
                                cache.scoped[(seq, want)] = memo
                        txn_f, size = memo
                        if txn_f is None:
                            continue
                        txn = txn_f
                    entries.append((seq, txn))
                    nbytes += size
                    if len(entries) >= limit:
                        break
                else:
                    continue
                break
            if cursor >= head and not entries:
                scanned = head
            batch = LogBatch(tuple(entries), scanned, head, nbytes)
            if cache is not None and not excluded:
                # What any peer other than these sources would read too.
                cache.reads[memo_key] = (batch, frozenset(sources))
            return batch

    @contextmanager
    def read_round(self) -> Iterator[None]:
        """Log reads made inside, on this thread (the server's event loop waking its sessions
        after a commit, without waiting for anything), check whether another process wrote the
        file once, as the round begins, instead of once per read. Writes through this
        connection are still seen at once (``total_changes``); a write by another process that
        lands inside the round is seen by the next read after it, as if it had landed just
        after the round. Never waits: when the replica is busy, the reads check as usual."""
        cache: _LogCache | None = None
        if self._lock.acquire(blocking=False):
            try:
                self._check_open()
                found = self._log_cache()
                if found is not None and found.round_thread is None:  # not inside a write or a round
                    found.round_thread = threading.get_ident()
                    cache = found
            except Exception:  # noqa: BLE001 - closed: the reads themselves report it
                cache = None
            finally:
                self._lock.release()
        try:
            yield
        finally:
            if cache is not None:
                cache.round_thread = None

    def _log_cache(self) -> _LogCache | None:
        """The cache of decoded log entries, checked against the file (None inside a write
        transaction, whose entries are not committed yet). Call with the lock held."""
        if self._engine.in_transaction():
            return None
        cache: _LogCache | None = self.__dict__.get("_ts_log_cache")
        if cache is None:
            cache = self.__dict__["_ts_log_cache"] = _LogCache()
        if cache.round_thread is not None and cache.version is not None and cache.round_thread == threading.get_ident():
            version = (self._engine.connection.total_changes, cache.version[1])  # see read_round
        else:
            version = (self._engine.connection.total_changes, self._engine.data_version())
        if version != cache.version:
            # Any write may move documents in or out of a scope: filtered results are stale,
            # and so are the head and the snapshot marks.
            cache.scoped.clear()
            cache.counts.clear()
            cache.reads.clear()
            cache.state = None
            cache.version = version
        return cache

    def _seed_log_cache(self, changes_before: int, rows: Sequence[tuple[int, str, str | None, bytes]],
                        txns: Sequence[tuple[int, Transaction]] = (),
                        scopes: dict[Ref, str | None] | None = None) -> None:
        """After a commit through this connection that appended ``rows`` (seq, origin, via,
        data) to the log: put them in the log cache, so that the reads that follow at once
        (the uploading session's, or every woken session's on the server) find them decoded
        on first use instead of reading them back. When the cache was current just before
        the write (``changes_before``: ``total_changes`` then) and nobody else wrote since, its
        head moves to the last of them and it stays current (the write changed no snapshot
        mark); otherwise the next read checks the file as usual. Call with the lock held,
        after the commit.

        ``txns``: (seq, transaction) of entries whose transaction is at hand with those very
        bytes as its :meth:`~Transaction.packed`: cached as it is, never decoded. ``scopes``:
        the scope column the commit wrote for each document it wrote; an entry of ``txns``
        whose documents all got one scope is known to be whole in that scope, without the
        query :meth:`_filter_to_scope` makes (for as long as the cache stays current)."""
        cache: _LogCache | None = self.__dict__.get("_ts_log_cache")
        if cache is None or not rows or self._engine.in_transaction():
            return
        at_hand = {seq: t for seq, t in txns}
        seeded: list[_LogRow] = []
        for seq, origin, via, data in rows:
            row = _LogRow(seq, origin, via, data)
            t = at_hand.get(seq)
            if t is not None and t._packed is data:
                row._txn, row._data, row._refs = t, None, frozenset(t.refs())
            seeded.append(row)
        cache.add(seeded)
        state = cache.state
        if state is None or cache.version is None or cache.version[0] != changes_before:
            return
        data_version = self._engine.data_version()
        if data_version != cache.version[1]:
            return  # another connection wrote meanwhile: the next read refreshes everything
        cache.scoped.clear()
        cache.counts.clear()
        cache.reads.clear()
        cache.state = (max(state[0], max(r[0] for r in rows)), state[1])
        cache.version = (self._engine.total_changes(), data_version)
        if scopes:
            for row in seeded:
                refs = row._refs
                if row._txn is None or refs is None:
                    continue
                found = {scopes.get(ref, _ABSENT_SCOPE) for ref in refs}
                if len(found) == 1:
                    scope = found.pop()
                    if type(scope) is str:
                        cache.scoped[(row.seq, scope)] = (row._txn, row.size)

    def _prefilter(self, rows: list[_LogRow], want: str, cache: _LogCache,
                   exclude_origin: ReplicaId | None) -> None:
        """Filter the rows not yet filtered to ``want`` with one query for all of them (a peer
        of another scope reading many entries made one query per entry). Call with the lock."""
        todo = [row for row in rows if (row.seq, want) not in cache.scoped
                and (exclude_origin is None or (row.origin != exclude_origin and row.via != exclude_origin))]
        if len(todo) < 2:
            return
        refs: set[Ref] = set().union(*(row.refs() for row in todo))
        inside = self._refs_in_scope(refs, want)
        for row in todo:
            size = row.size
            txn = row.txn()
            txn_f = self._filter_to_scope(txn, want, inside, row.refs())
            if txn_f is not None and txn_f is not txn:
                size = len(msgpack.packb(txn_f.to_wire(), use_bin_type=True))
            cache.scoped[(row.seq, want)] = (txn_f, size)

    def _filter_to_scope(self, txn: Transaction, want: str, known: set[Ref] | None = None,
                         refs: Set[Ref] | None = None) -> Transaction | None:
        """``txn`` reduced to its operations on documents of scope ``want`` (None: none are).
        ``known``: the documents of ``want`` among them, when already looked up; ``refs``: the
        documents ``txn`` touches, when already known (``_LogRow.refs``)."""
        if refs is None:
            refs = {(op.collection, canonical_json(op.key)) for op in txn.ops}
        inside = self._refs_in_scope(refs, want) if known is None else refs & known
        if len(inside) == len(refs):
            return txn
        if not inside:
            return None
        ops = tuple(op for op in txn.ops if (op.collection, canonical_json(op.key)) in inside)
        before = tuple(b for b in txn.before if (b.collection, canonical_json(b.key)) in inside)
        return Transaction(txn.id, txn.origin, txn.stamp, txn.parents, ops, before, txn.user, txn.meta)

    def _refs_in_scope(self, refs: Set[Ref], want: str) -> set[Ref]:
        return {(coll, pk) for coll, pk in self._rows_of_refs("collection, pk", refs, "scope = ?", (want,))}

    def _rows_of_refs(self, columns: str, refs: Iterable[Ref], where: str = "",
                      params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """``SELECT columns FROM documents`` for the documents ``refs`` (and ``where``, with
        ``params``, when given), 300 documents per query. Call with the lock."""
        items = list(dict.fromkeys(refs))
        prefix = f"{where} AND " if where else ""
        for i in range(0, len(items), 300):
            chunk = items[i:i + 300]
            match = " OR ".join("(collection = ? AND pk = ?)" for _ in chunk)
            yield from self._engine.query(f"SELECT {columns} FROM documents WHERE {prefix}({match})",
                                          [*params, *(x for ref in chunk for x in ref)])

    def read_descriptors(self, after: int, *, limit: int, scope: Scope,
                         exclude_origin: ReplicaId | None) -> DescriptorBatch:
        """Descriptors of log entries after ``after`` (unfiltered by scope beyond origin)."""
        with self._lock:
            self._check_open()
            head = self.head_seq()
            rows = self._engine.query(
                "SELECT d.seq, d.data, l.via, l.origin FROM descriptors d JOIN log l ON l.seq = d.seq "
                "WHERE d.seq > ? ORDER BY d.seq LIMIT ?", (after, limit))
        entries = tuple((seq, Descriptor.from_wire(msgpack.unpackb(data, raw=False)))
                        for seq, data, via, origin in rows
                        if exclude_origin is None or (origin != exclude_origin and via != exclude_origin))
        scanned = rows[-1][0] if rows else head
        return DescriptorBatch(entries, scanned, head)

    def document_scopes(self, refs: Iterable[Ref]) -> dict[Ref, str | None]:
        """:meth:`document_scope` of many documents (tombstones keep theirs); documents never
        seen are left out."""
        with self._lock:
            self._check_open()
            return {(coll, pk): scope for coll, pk, scope in self._rows_of_refs("collection, pk, scope", refs)}

    def document_scope(self, collection: str, key: Any) -> str | None:
        """The canonical JSON of a document's partition value (None: unknown document)."""
        with self._lock:
            self._check_open()
            rows = self._engine.query("SELECT scope FROM documents WHERE collection = ? AND pk = ?",
                                      (collection, canonical_json(key)))
        return rows[0][0] if rows else None

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, peer: ReplicaId) -> Checkpoint:
        with self._lock:
            self._check_open()
            rows = self._engine.query("SELECT received, acked FROM checkpoints WHERE peer = ?", (peer,))
        return Checkpoint(int(rows[0][0]), int(rows[0][1])) if rows else Checkpoint()

    def record_ack(self, peer: ReplicaId, seq: int) -> None:
        self.record_acks({peer: seq})

    def record_acks(self, acks: dict[ReplicaId, int] | Any, *, durable: bool = True) -> None:
        """:meth:`record_ack` for several peers at once, in one transaction. ``durable=False``:
        committed without an fsync of its own (``Engine.unsynced``), made durable by the next
        durable commit; after a power loss the peers' earlier acknowledgements may be found."""
        with self._lock:
            self._check_open()
            engine = self._engine
            hand = getattr(self, "on_written", None)
            before = (engine.total_changes(), engine.data_version())
            with engine.unsynced() if not durable else nullcontext(), engine.atomic():
                engine.executemany(
                    "INSERT INTO checkpoints (peer, acked) VALUES (?, ?) ON CONFLICT(peer) "
                    "DO UPDATE SET acked = excluded.acked", list(acks.items()))
            after = (engine.total_changes(), engine.data_version())
            cache: _LogCache | None = self.__dict__.get("_ts_log_cache")
            if cache is not None and cache.version == before and after[1] == before[1]:
                # Neither the log nor a document changed: the log cache stays current (the
                # server records its peers' acknowledgements between the integrations whose
                # entries its sessions read from the cache).
                cache.version = after
            if self._rows_at == before and after[1] == before[1]:
                self._rows_at = after   # no document written: Database._rows_cache stays current
            if hand is not None:
                # No document written: what integrations handed over stays current
                # (Database.on_written).
                hand([], before, after)

    # -- snapshots ---------------------------------------------------------------------------

    def read_snapshot(self, scope: Scope, *, cursor: object | None, limit: int, max_bytes: int) -> SnapshotPage:
        """One page of document states in ``scope`` (tombstones included), by rowid; in a
        partition scope by collection, then rowid (what its index gives without a sort)."""
        want = _scope_value(scope)
        with self._lock:
            self._check_open()
            as_of = self.head_seq()
            # One row more than the page: whether more follow, without another query.
            joined = self._snapshot_joined(want, cursor, limit, max_bytes) if want is not None else None
            rows = self._snapshot_rows(want, cursor, limit + 1) if joined is None else []
            cache = self._log_cache()
            estimate = cache.counts.get(want) if cache is not None else None
            if estimate is None:  # a count per page costs as much as the page on a large scope
                estimate = int(self._engine.query(
                    "SELECT count(*) FROM documents" + (" WHERE scope = ?" if want is not None else ""),
                    [want] if want is not None else [])[0][0])
                if cache is not None:
                    cache.counts[want] = estimate
        if joined is not None:
            return SnapshotPage(joined[0], joined[1], as_of, joined[2], estimate)
        if not rows:
            return SnapshotPage((), None, as_of, 0, estimate)
        rowids, collections, pks, bodies, metas, epochs, lives = zip(*rows)
        # Up to ``limit`` documents, and up to the first one that reaches ``max_bytes``.
        sizes = list(accumulate(map(len, bodies)))
        sizes = [a + b + c for a, b, c in zip(sizes, accumulate(map(len, metas)), accumulate(map(len, pks)))]
        take = min(limit, bisect_left(sizes, max_bytes) + 1, len(rows))
        more = len(rows) > take
        if take < len(rows):
            rowids, collections, pks, bodies, metas, epochs, lives = (
                c[:take] for c in (rowids, collections, pks, bodies, metas, epochs, lives))
        # Read back from this file, where only checked plain values are stored (each key its
        # canonical JSON): kept as the stored text, parsed only if something reads the state.
        keys = loads_json("[" + ",".join(pks) + "]")
        if len(keys) != take:  # only if a stored key were not one JSON value: one at a time
            keys = list(map(loads_json, pks))
        docs = DocColumns(collections, keys, epochs, list(map(bool, lives)), bodies, metas)
        last = rowids[-1] if want is None else (collections[-1], rowids[-1])
        return SnapshotPage(docs, last if more else None, as_of, sizes[take - 1], estimate)

    def _snapshot_joined(self, want: str, cursor: object | None, limit: int,
                         max_bytes: int) -> tuple[DocColumns | tuple[()], object | None, int] | None:
        """:meth:`read_snapshot`'s page of a partition scope as (documents, cursor, bytes): the
        rows of each collection read as one row of columns (SQLite joins each column's values
        with :data:`COLUMN_SEPARATOR`, which no stored JSON text holds), split again here: no
        row tuple nor per-value conversion, most of the sender's work per document. The
        keys stay their stored JSON (``pks``), parsed only if something reads them. None (for
        the row-by-row read) when a stored value would not split back (an epoch holding the
        separator: stored JSON text never does)."""
        query = self._engine.query
        if isinstance(cursor, tuple):
            collection, after = cursor
        else:
            start = self._scope_collection(want)
            if start is None:
                return (), None, 0
            collection, after = start, 0
        sep = COLUMN_SEPARATOR
        rowids: list[str] = []
        collections: list[str] = []
        pks: list[str] = []
        bodies: list[str] = []
        metas: list[str] = []
        epochs: list[str] = []
        lives: list[bool] = []
        # One row more than the page: whether more follow, without another query.
        while len(bodies) <= limit:
            [(n, ids, keys, texts, stamps, epoch_texts, flags)] = query(
                # The separator a literal: char(30) would be called again for every row and column.
                f"SELECT count(*), group_concat(rowid), group_concat(pk, '{sep}'), group_concat(body, '{sep}'), "
                f"group_concat(meta, '{sep}'), group_concat(epoch, '{sep}'), group_concat(live, '') "
                "FROM (SELECT rowid, pk, body, meta, epoch, live FROM documents "
                "WHERE scope = ? AND collection = ? AND rowid > ? ORDER BY rowid LIMIT ?)",
                [want, collection, after, limit + 1 - len(bodies)])
            if n:
                parts = (ids.split(","), keys.split(sep), texts.split(sep), stamps.split(sep), epoch_texts.split(sep))
                if set(map(len, parts)) != {n} or len(flags) != n or flags.strip("01"):
                    return None
                rowids += parts[0]
                collections += [collection] * n
                pks += parts[1]
                bodies += parts[2]
                metas += parts[3]
                epochs += parts[4]
                lives += map("1".__eq__, flags)
                if len(bodies) > limit:
                    break
            later = self._scope_collection(want, collection)
            if later is None:
                break
            collection, after = later, 0
        if not bodies:
            return (), None, 0
        # Up to ``limit`` documents, and up to the first one that reaches ``max_bytes``.
        sizes = list(accumulate(map(len, bodies)))
        sizes = [a + b + c for a, b, c in zip(sizes, accumulate(map(len, metas)), accumulate(map(len, pks)))]
        take = min(limit, bisect_left(sizes, max_bytes) + 1, len(bodies))
        more = len(bodies) > take
        if more:
            collections, pks, bodies, metas, epochs = (c[:take] for c in (collections, pks, bodies, metas, epochs))
            lives = lives[:take]
        docs = DocColumns(collections, None, epochs, lives, bodies, metas, pks=pks)
        return docs, (collections[-1], int(rowids[take - 1])) if more else None, sizes[take - 1]

    def _scope_collection(self, want: str, after: str | None = None) -> str | None:
        """The first collection with documents in scope ``want`` (after ``after``), in the
        ``(scope, collection)`` index's order; None when there is none."""
        if after is None:
            rows = self._engine.query("SELECT collection FROM documents WHERE scope = ? ORDER BY collection LIMIT 1",
                                      [want])
        else:
            rows = self._engine.query("SELECT collection FROM documents WHERE scope = ? AND collection > ? "
                                      "ORDER BY collection LIMIT 1", [want, after])
        return rows[0][0] if rows else None

    def _snapshot_rows(self, want: str | None, cursor: object | None, limit: int) -> list[Row]:
        """Up to ``limit`` rows ``(rowid, collection, pk, body, meta, epoch, live)`` after
        ``cursor``: by rowid (the table's own order) for everything; in a partition scope by
        collection, then rowid, which the ``(scope, collection)`` index gives in order (by rowid
        alone, every page would read and sort the whole scope)."""
        columns = "rowid, collection, pk, body, meta, epoch, live"
        query = self._engine.query
        if want is None:
            after = cursor if isinstance(cursor, int) else 0
            return query(f"SELECT {columns} FROM documents WHERE rowid > ? ORDER BY rowid LIMIT ?", [after, limit])
        if isinstance(cursor, tuple):
            collection, after = cursor
        else:
            start = self._scope_collection(want)
            if start is None:
                return []
            collection, after = start, 0
        rows: list[Row] = []
        while len(rows) < limit:
            rows += query(f"SELECT {columns} FROM documents WHERE scope = ? AND collection = ? AND rowid > ? "
                          f"ORDER BY rowid LIMIT ?", [want, collection, after, limit - len(rows)])
            if len(rows) >= limit:
                break
            later = self._scope_collection(want, collection)
            if later is None:
                break
            collection, after = later, 0
        return rows

    def integrate_snapshot(self, docs: Sequence[SnapshotDoc], *, peer: ReplicaId,
                           as_of_seq: int | None) -> SnapshotResult:
        """Join snapshot documents into the local ones (a merge, never an overwrite)."""
        return self._integrate_snapshot(docs, peer, as_of_seq, unsynced=False)

    def _integrate_snapshot_download(self, docs: Sequence[SnapshotDoc], peer: ReplicaId,
                                     as_of_seq: int | None) -> SnapshotResult:
        """:meth:`integrate_snapshot` for a sync session's download: the page is committed
        without an fsync, and only the last page (``as_of_seq`` set: the one that sets the
        checkpoint) flushes the WAL, outside the lock, before it returns; its ``Ack`` is the
        only one the sender records (as this device's checkpoint). A power loss rolls back a
        suffix of the pages whole (SQLite's WAL recovery keeps a prefix of the commits), never
        the last page without the earlier ones, and before the last page is durable nothing
        records the bootstrap as done: the device connects again with its old checkpoint and
        is sent the snapshot again from its first page, joined into what it kept
        (docs/sync.md, "Durability of downloads").

        The page's commit also skips SQLite's automatic WAL checkpoint (a background thread
        checkpoints instead, as ``Database.deferred_checkpoint`` has it): a bootstrap writes
        tens of MB, and checkpoints inline would stop the page pipeline for a copy and two
        fsyncs every few pages."""
        return self._integrate_snapshot(docs, peer, as_of_seq, unsynced=True)

    def _integrate_snapshot(self, docs: Sequence[SnapshotDoc], peer: ReplicaId, as_of_seq: int | None, *,
                            unsynced: bool) -> SnapshotResult:
        changed = unchanged = 0
        policies = getattr(self, "_policies", None)
        # A device stores its server's JSON text as it came. A replica that serves others (the
        # server) re-encodes what a peer sent: its text feeds SQL queries made for every user,
        # and JSON allowed in transit (duplicate keys, spacing) must not reach them.
        verbatim = not self.bootstrap_with_snapshot
        engine = self._engine
        seen = _seen_in(docs)
        with self._lock:
            self._check_open()
            background = getattr(self, "_checkpoint_in_background", None) if unsynced else None
            checkpointer = background() if background is not None else None
            with (engine.unsynced(checkpoint=checkpointer is None) if unsynced else nullcontext()), engine.atomic():
                stored = self._store_columns(docs, peer) if type(docs) is DocColumns and verbatim else None
                if stored is not None:
                    changed = stored
                    docs = ()  # stored: nothing left for the per-document join below
                refs = [(doc.collection, canonical_json(doc.key)) for doc in docs]
                existing = self._states_of(refs)
                states: list[tuple[str, Ref, merge.DocState]] = []
                texts: dict[int, tuple[str, str]] = {}  # states stored exactly as received
                pending: dict[Ref, int] = {}
                # Documents not held here, received as text, stored as such: rows as received
                # (no merge state made), by position in ``order`` with the joined ``states``.
                rows: dict[int, tuple[SnapshotDoc, Ref]] = {}
                order: list[int] = []  # >= 0: an index in ``states``; < 0: -1 - a key of ``rows``
                stamps: list[str] = []  # the latest stamps of ``rows``' documents (compact meta)
                for doc, ref in zip(docs, refs):
                    form = doc.json_form
                    if (form is not None and verbatim and ref not in existing and ref not in pending
                            and (form[1] or form[0] != ZERO)):
                        meta = doc.state["meta"]
                        star = meta.get("*") if len(meta) == 1 else None
                        if type(star) is str:
                            pending[ref] = -1 - len(order)
                            rows[len(order)] = (doc, ref)
                            order.append(-1 - len(order))
                            stamps.append(star)
                            stamps.append(form[0])
                            changed += 1
                            continue
                    incoming = merge.DocState(epoch=doc.state["epoch"], live=bool(doc.state["live"]),
                                              body=doc.state["body"], meta=doc.state["meta"])
                    row = existing.get(ref)
                    if ref in pending:  # the same document twice in one page
                        at = pending[ref]
                        if at < 0:  # first seen as a row: now a state to join into
                            first, _ = rows.pop(-1 - at)
                            at = len(states)
                            states.append((first.collection, ref, merge.DocState(
                                epoch=first.state["epoch"], live=bool(first.state["live"]),
                                body=first.state["body"], meta=first.state["meta"])))
                            order[order.index(pending[ref])] = at
                            pending[ref] = at
                        joined = merge.join(states[at][2], incoming, policies, collection=doc.collection)
                        states[at] = (doc.collection, ref, joined)
                        texts.pop(at, None)
                        continue
                    if row is not None:
                        local = merge.DocState(epoch=Stamp(row[2]), live=bool(row[3]),
                                               body=json.loads(row[0]), meta=json.loads(row[1]))
                        joined = merge.join(local, incoming, policies, collection=doc.collection)
                        if (joined.epoch, joined.live, joined.body, joined.meta) == (local.epoch, local.live, local.body, local.meta):
                            unchanged += 1
                            continue
                    elif incoming.live or incoming.epoch != ZERO:
                        # Nothing here to join with: the join with the empty state is the
                        # incoming state itself (stored as the peer stores it, compact or not,
                        # and as the very JSON text it came in, when it came as text).
                        joined = incoming
                        if doc.json_form is not None and verbatim:
                            texts[len(states)] = (doc.json_form[2], doc.json_form[3])
                    else:
                        joined = merge.join(merge.new_state(), incoming, policies, collection=doc.collection)
                    pending[ref] = len(states)
                    order.append(len(states))
                    states.append((doc.collection, ref, joined))
                    changed += 1
                self._store_states(states, texts, rows, order)
                clock = getattr(self, "_clock", None)
                if clock is not None and (states or rows):
                    # Later local writes must stamp after everything the snapshot holds (a new
                    # list element's id must sort after the element it follows).
                    latest = _latest_of(states) if states else ZERO
                    if rows:
                        best = max(stamps)
                        # Not a stamp (latest_stamp ignores those): go the long way.
                        latest = max(latest, Stamp(best) if is_stamp(best) else max(
                            merge.latest_stamp(merge.DocState(epoch=d.state["epoch"], live=d.state["live"],
                                                              body=d.state["body"], meta=d.state["meta"]))
                            for d, _ in rows.values()))
                    clock.observe(latest)
                    self._set_setting("clock", clock.last)
                if changed and stored is None:
                    head = self.head_seq()
                    self._set_setting("snapshot_from", peer)
                    self._set_setting("snapshot_seq", str(head + 1))
                if as_of_seq is not None:
                    self._engine.execute(
                        "INSERT INTO checkpoints (peer, received) VALUES (?, ?) ON CONFLICT(peer) "
                        "DO UPDATE SET received = excluded.received", (peer, as_of_seq))
                if seen:
                    self._take_seen(seen)
            self._after_remote(changed > 0)
        if checkpointer is not None:
            checkpointer.request()
        if unsynced and as_of_seq is not None:
            engine.sync_wal()
        return SnapshotResult(changed, unchanged)

    def _take_seen(self, seen: dict[str, str]) -> None:
        """Add to the heads what joined documents showed of each origin's writes (``seen``,
        origin -> its latest stamp among them), so that this replica's next transactions name
        them as parents: a parent that is not a transaction id stands for its origin's writes
        up to that stamp (what ``Database._is_ancestor`` reads). Not this replica's own, nor
        one that a head of the same origin already reaches; an older such "seen" head of the
        same origin is replaced; at most :data:`MAX_SEEN_ORIGINS` are kept, the latest."""
        seen.pop(str(getattr(self, "replica_id", "")), None)
        if not seen:
            return
        held: dict[str, str] = {}
        pseudo: dict[str, list[str]] = {}
        for head, known in self._engine.query(
                "SELECT h.id, d.id IS NOT NULL FROM heads h LEFT JOIN descriptors d ON d.id = h.id"):
            latest_by_origin((head,), held)
            if not known:
                pseudo.setdefault(head[18:], []).append(head)
        new = [stamp for origin, stamp in seen.items() if stamp > held.get(origin, ZERO)]
        if not new:
            return
        gone = [(old,) for stamp in new for old in pseudo.pop(stamp[18:], ())]
        kept = sorted([old for olds in pseudo.values() for old in olds] + new, reverse=True)
        gone += [(old,) for old in kept[MAX_SEEN_ORIGINS:]]
        if gone:
            self._engine.executemany("DELETE FROM heads WHERE id = ?", gone)
        self._engine.executemany("INSERT OR IGNORE INTO heads (id) VALUES (?)",
                                 [(stamp,) for stamp in kept[:MAX_SEEN_ORIGINS] if stamp in new])

    def _store_columns(self, docs: DocColumns, peer: ReplicaId) -> int | None:
        """Store a page of documents none of which is held here, in their received text, column
        by column: the rows, change numbers and clock the per-document path of
        :meth:`integrate_snapshot` would give them, without an object per document. Returns how
        many were stored, or None (nothing done) when one of them is held here, or appears twice,
        or is an empty tombstone: the per-document path joins those.

        The rows go in with one ``INSERT`` (a few for a page larger than the SQLite build takes
        parameters for) instead of an ``executemany``: SQLite then writes the whole page in one
        step, without the GIL (a sync session's writer thread stores a page while its session
        thread decodes the next one), and without the interpreter's work per row. A document
        already held, or twice in the page, makes the unique key refuse the statement (the
        statement, or the savepoint of several, leaves nothing behind): None, as before."""
        n = len(docs)
        collections, keys, lives, parsed = docs.collections, docs.keys, docs.lives, docs.parsed
        if parsed is None:
            return None  # read from storage, not received: any form
        if set(map(type, keys)) == {str}:
            joined = "".join(keys)
            if '"' in joined or "\\" in joined or not joined.isprintable():
                pks = list(map(canonical_json, keys))
            else:  # canonical_json's own result for such a str
                pks = list(map('"{}"'.format, keys))
        else:
            pks = list(map(canonical_json, keys))
        if False in lives and ZERO in docs.epochs and any(
                not live and epoch == ZERO for live, epoch in zip(lives, docs.epochs)):
            return None  # a tombstone never created: joined with the empty state
        pkey = getattr(self, "partition_key", None)
        scopes: Iterable[str | None]
        scope: str | None = None  # the page's one scope, when uniform
        if pkey is None:
            scopes = repeat(None, n)
            uniform = True
        else:
            values = list(map(dict.get, parsed, repeat(pkey, n)))
            uniform = False not in lives and set(map(type, values)) == {str} and len(set(values)) == 1
            if uniform:
                scope = canonical_json(values[0])
                scopes = repeat(scope, n)
            else:
                scopes = [canonical_json(v) if live else None for v, live in zip(values, lives)]
        # The settings and the log head in one query (each statement is a GIL hand-off for
        # the writer thread: see _insert_rows).
        [(tick_text, head)] = self._engine.query(
            "SELECT (SELECT value FROM settings WHERE key = 'snapshot_tick'), "
            "(SELECT seq FROM sqlite_sequence WHERE name = 'log')")
        tick = int(tick_text or 0)
        seqs = range(tick - 1, tick - 1 - n, -1)
        kinds = set(collections)
        epochs = set(docs.epochs)
        if uniform and len(kinds) == 1 and len(epochs) == 1 and len(set(lives)) == 1:
            # The common page (one collection, fresh documents of one partition): those four
            # values bound once, four per row.
            constant = [kinds.pop(), epochs.pop(), int(lives[0]), scope]
            rows = list(chain.from_iterable(zip(pks, docs.bodies, docs.metas, seqs)))
            stored = self._insert_rows(rows, n, constant)
        else:
            rows = list(chain.from_iterable(zip(
                collections, pks, docs.bodies, docs.metas, docs.epochs, map(int, lives), seqs, scopes)))
            stored = self._insert_rows(rows, n)
        if not stored:
            return None
        # Also what integrate_snapshot writes for any page that changed something.
        settings = {"snapshot_tick": str(tick - n), "snapshot_from": peer, "snapshot_seq": str(int(head or 0) + 1)}
        clock = getattr(self, "_clock", None)
        if clock is not None:
            # The latest of the meta stamps (each checked) and the epochs ('' or a stamp).
            clock.observe(Stamp(max(max(docs.metas)[6:40], max(docs.epochs))))
            settings["clock"] = clock.last
        self._set_settings(settings)
        return n

    def _insert_rows(self, rows: list[Any], n: int, constant: list[Any] | None = None) -> bool:
        """INSERT ``n`` new document rows (``rows``: their 8 values each, flat, in
        ``INSERT_DOCUMENT``'s order) in as few statements as the SQLite build allows. With
        ``constant`` (collection, epoch, live, scope: the same for every row), ``rows`` holds
        4 values per row (pk, body, meta, seq) instead (:func:`_insert_uniform_sql`). False,
        with nothing written, if the unique key refused one (a document held here, or twice)."""
        if constant is None:
            width, head, sql = 8, [], _insert_sql
            limit = self._max_insert_rows()
        else:
            width, head, sql = 4, constant, _insert_uniform_sql
            limit = max(1, (self._max_insert_rows() * 8 - len(constant)) // width)
        cap = _rows_per_insert(n, limit)  # rows per statement, at most
        engine = self._engine
        try:
            if cap >= n:
                engine.execute(sql(cap), head + rows + [None] * (width * (cap - n)))
                return True
            with engine.atomic():  # a savepoint: a refused statement undoes the earlier ones
                for start in range(0, n, cap):
                    chunk = rows[width * start:width * (start + cap)]
                    size = _rows_per_insert(len(chunk) // width, cap)
                    engine.execute(sql(size), head + chunk + [None] * (width * size - len(chunk)))
            return True
        except StorageError as exc:
            if exc.code == "constraint":
                return False
            raise

    def _run_values(self, statement: str, rows: Sequence[Sequence[Any]], width: int,
                    fields: tuple[str, ...] | None = None) -> None:
        """``engine.run_rows(statement, rows)`` (rows of ``width`` values, the first never
        NULL), :data:`_VALUES_ROWS` rows per statement (:func:`_values_sql`, always that size,
        so it stays prepared; the rest once per row): SQLite then writes them without a return
        to the interpreter per row, and without the GIL, which the server's reader thread uses
        meanwhile. ``fields`` (``UPSERT_DOCUMENT`` only): write new rows' value columns of
        these fields too (:func:`upsert_values_sql`)."""
        n = len(rows)
        size = _VALUES_ROWS
        if fields:
            statement = upsert_values_sql(fields, 1)
        if n < size or size * width > self._max_insert_rows() * 8:
            self._engine.run_rows(statement, rows)
            return
        engine = self._engine
        sql = upsert_values_sql(fields, size) if fields else _values_sql(statement, size)
        full = n - n % size
        for start in range(0, full, size):
            engine.run(sql, [x for row in rows[start:start + size] for x in row])
        if full < n:
            engine.run_rows(statement, rows[full:])

    def _find_value_columns(self) -> None:
        """Learn which value columns the file's ``documents`` has (at open), and put back
        their triggers if the file lacks them (a copy made without them): written only then."""
        names = [str(r[0]) for r in self._engine.query(
            f"SELECT name FROM pragma_table_info('documents') WHERE name GLOB 'v_*' OR name = '{VALUES_KEPT}'")]
        fields = self.value_fields = tuple(sorted(name[2:] for name in names if name != VALUES_KEPT))
        if fields:
            want = [stmt for stmt in value_triggers_sql(fields) if stmt.startswith("CREATE")]
            have = [str(r[0]) for r in self._engine.query(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name GLOB 'documents_values_*' ORDER BY name")]
            if have != want or VALUES_KEPT not in names:
                # (A file from before VALUES_KEPT: the column first, the triggers name it.)
                with self._engine.atomic():
                    if VALUES_KEPT not in names:
                        self._engine.execute(f"ALTER TABLE documents ADD COLUMN {VALUES_KEPT}")
                    for stmt in value_triggers_sql(fields):
                        self._engine.execute(stmt)

    def add_value_column(self, field: str) -> bool:
        """Keep the values of the top-level ``field`` in an indexed column of ``documents``
        (``v_<field>``, see :mod:`tidesync.store.tables`), for queries that select documents
        by it (a server's flexible router); True when it has one. A field that is not a plain
        identifier, or that differs only in case from one that has a column (SQLite's column
        names ignore case), gets none (False)."""
        with self._lock:
            self._check_open()
            if field in self.value_fields:
                return True
            if not VALUE_FIELD.fullmatch(field) or field.lower() in {f.lower() for f in self.value_fields}:
                return False
            fields = tuple(sorted((*self.value_fields, field)))
            with self._engine.atomic():
                if not self.value_fields and not self._engine.query(
                        f"SELECT 1 FROM pragma_table_info('documents') WHERE name = '{VALUES_KEPT}'"):
                    self._engine.execute(f"ALTER TABLE documents ADD COLUMN {VALUES_KEPT}")
                for stmt in [*value_column_sql(field), *value_triggers_sql(fields)]:
                    self._engine.execute(stmt)
            self.value_fields = fields
            return True

    def _max_insert_rows(self) -> int:
        """Rows one INSERT of :func:`_insert_sql` may carry on this connection (8 parameters each)."""
        limit = getattr(self, "_insert_limit", None)
        if limit is None:
            getlimit = getattr(self._engine.connection, "getlimit", None)
            try:
                variables = int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)) if getlimit else 32766
            except Exception:  # noqa: BLE001 - a driver without limits: SQLite's default since 3.32
                variables = 32766
            limit = self._insert_limit = max(1, variables // 8)
        return limit

    def _set_settings(self, values: dict[str, str]) -> None:
        """:meth:`_set_setting` of several keys in one statement."""
        self._engine.execute(
            "INSERT INTO settings (key, value) VALUES " + ",".join(["(?, ?)"] * len(values))
            + " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [x for item in values.items() for x in item])

    def _store_state(self, collection: str, ref: Ref, state: merge.DocState) -> None:
        pkey = getattr(self, "partition_key", None)
        scope = canonical_json(state.body.get(pkey)) if pkey is not None and state.live else None
        body = json.dumps(state.body, separators=(",", ":"), ensure_ascii=False)
        meta = json.dumps(state.meta, separators=(",", ":"), ensure_ascii=False)
        self._engine.execute(
            UPSERT_DOCUMENT,
            (collection, ref[1], body, meta, state.epoch, 1 if state.live else 0, self._snapshot_tick(), scope))

    def _states_of(self, refs: Sequence[Ref],
                   scopes: dict[Ref, str | None] | None = None) -> dict[Ref, tuple[str, str, str, int]]:
        """(body, meta, epoch, live) of those of ``refs`` stored here, in a few queries;
        ``scopes``, if given, gets their scope column too."""
        by_collection: dict[str, list[str]] = {}
        for coll, pk in refs:
            by_collection.setdefault(coll, []).append(pk)
        found: dict[Ref, tuple[str, str, str, int]] = {}
        for coll, pks in by_collection.items():
            for i in range(0, len(pks), 500):
                chunk = pks[i:i + 500]
                marks = ",".join("?" * len(chunk))
                if scopes is None:
                    for pk, body, meta, epoch, live in self._engine.query(
                            f"SELECT pk, body, meta, epoch, live FROM documents WHERE collection = ? "
                            f"AND pk IN ({marks})", [coll, *chunk]):
                        found[(coll, pk)] = (body, meta, epoch, live)
                else:
                    for pk, body, meta, epoch, live, scope in self._engine.query(
                            f"SELECT pk, body, meta, epoch, live, scope FROM documents WHERE collection = ? "
                            f"AND pk IN ({marks})", [coll, *chunk]):
                        found[(coll, pk)] = (body, meta, epoch, live)
                        scopes[(coll, pk)] = scope
        return found

    def _store_states(self, states: Sequence[tuple[str, Ref, merge.DocState]],
                      texts: dict[int, tuple[str, str]] | None = None,
                      received: dict[int, tuple[SnapshotDoc, Ref]] | None = None,
                      order: Sequence[int] | None = None) -> None:
        """:meth:`_store_state` for many documents: one statement, one tick setting write.
        ``texts``: by index in ``states``, (body, meta) JSON text to store as it is.
        ``received``: documents stored as received in their JSON-text form, placed by
        ``order`` (``i >= 0``: ``states[i]``, ``i < 0``: ``received[-1 - i]``)."""
        if not states and not received:
            return
        pkey = getattr(self, "partition_key", None)
        tick = int(self._setting("snapshot_tick") or 0)
        rows = []
        for i in (order if order is not None else range(len(states))):
            tick -= 1
            if i < 0:
                doc, ref = received[-1 - i]  # type: ignore[index]
                epoch, live, body, meta = doc.json_form  # type: ignore[misc]
                scope = canonical_json(doc.state["body"].get(pkey)) if pkey is not None and live else None
                rows.append((doc.collection, ref[1], body, meta, epoch, 1 if live else 0, tick, scope))
                continue
            collection, ref, state = states[i]
            scope = canonical_json(state.body.get(pkey)) if pkey is not None and state.live else None
            text = texts.get(i) if texts else None
            body, meta = text if text is not None else (_json_encode(state.body), _json_encode(state.meta))
            rows.append((collection, ref[1], body, meta, state.epoch, 1 if state.live else 0, tick, scope))
        self._engine.executemany(UPSERT_DOCUMENT, rows)
        self._set_setting("snapshot_tick", str(tick))

    def _snapshot_tick(self) -> int:
        # Documents changed by a snapshot get a negative, ever-decreasing change number, so
        # change listeners see them as modified without taking a log seq.
        tick = int(self._setting("snapshot_tick") or 0) - 1
        self._set_setting("snapshot_tick", str(tick))
        return tick

    # -- flexible sync: documents leaving the view ---------------------------------------------

    def evict_documents(self, refs: Sequence[tuple[str, Any]]) -> int:
        """Remove documents from this file **without deleting them**: no delete is logged,
        nothing is uploaded, the documents live on at the server and on other devices.

        Flexible sync calls this for documents that left the device's view (they stopped
        matching its subscriptions, or its user may no longer read them). Change listeners see
        them go. Transactions already in the log (unsynced local work included) stay there and
        upload as usual. Returns how many documents were removed.
        """
        removed = 0
        with self._lock:
            self._check_open()
            with self._engine.atomic():
                for collection, key in refs:
                    cur = self._engine.execute("DELETE FROM documents WHERE collection = ? AND pk = ?",
                                               (collection, canonical_json(key)))
                    removed += max(0, cur.rowcount)
            self._after_remote(removed > 0)
        return removed

    # -- compaction --------------------------------------------------------------------------

    def compact_log(self, keep_last: int, *, min_drop: int = 1) -> int:
        """Drop all but the newest ``keep_last`` log entries; return the new floor seq.

        Documents, descriptors and checkpoints stay. Peers behind the floor bootstrap from a
        snapshot on their next connection. ``min_drop``: do nothing unless at least this many
        entries would go.
        """
        if keep_last < 0:
            raise UsageError(f"keep_last must be >= 0, not {keep_last}")
        with self._lock:
            self._check_open()
            with self._engine.atomic():
                head = self.head_seq()
                old_floor = self.log_floor()
                floor = max(old_floor, head - keep_last)
                if floor - old_floor < max(1, min_drop):
                    return old_floor
                if floor > 0:
                    self._engine.execute("DELETE FROM log WHERE seq <= ?", (floor,))
                    self._set_setting("log_floor", str(floor))
            return floor
