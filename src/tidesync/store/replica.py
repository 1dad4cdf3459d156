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
also answers a peer with an empty checkpoint with a snapshot: initial sync is state-based.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from ..core import merge
from ..core.stamp import ReplicaId
from ..core.transaction import Descriptor, Transaction
from ..core.values import canonical_json
from ..protocol.messages import Scope, SnapshotDoc
from ..protocol.replica import (
    Checkpoint, DescriptorBatch, IntegrateResult, LogBatch, SnapshotPage, SnapshotResult,
)

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["ReplicaStore"]

Ref = tuple[str, str]


def _scope_value(scope: Scope) -> str | None:
    """The canonical JSON of a partition scope's value, or None for an unfiltered scope."""
    part = scope.get("partition") if scope else None
    if part is None:
        return None
    return canonical_json(part["value"])


class ReplicaStore:
    """Replication methods of a :class:`~tidesync.store.database.Database`."""

    _engine: Engine
    _lock: Any
    replica_id: ReplicaId
    bootstrap_with_snapshot: bool = False

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

    def _needs_snapshot(self, after: int, exclude_origin: ReplicaId | None) -> bool:
        floor = self.log_floor()
        if after < floor:
            return True
        if after == 0 and self.bootstrap_with_snapshot:
            return True
        joined_from = self._setting("snapshot_from")
        if joined_from and exclude_origin != joined_from and after < int(self._setting("snapshot_seq") or 0):
            # Part of our state arrived as a snapshot, not as log entries: a third peer that
            # has not seen it must bootstrap from our snapshot in turn.
            return True
        return False

    def read_log(self, after: int, *, limit: int, max_bytes: int, scope: Scope,
                 exclude_origin: ReplicaId | None) -> LogBatch:
        """Log entries after ``after`` for a peer with ``scope`` (see the module docstring)."""
        with self._lock:
            self._check_open()
            head = self.head_seq()
            if after < head and self._needs_snapshot(after, exclude_origin):
                return LogBatch((), after, head, 0, snapshot_required=True)
            want = _scope_value(scope)
            entries: list[tuple[int, Transaction]] = []
            nbytes = 0
            scanned = after
            cursor = after
            while len(entries) < limit and nbytes < max_bytes and cursor < head:
                rows = self._engine.query(
                    "SELECT seq, origin, via, data FROM log WHERE seq > ? ORDER BY seq LIMIT ?",
                    (cursor, max(1, min(500, limit - len(entries)))))
                if not rows:
                    scanned = head
                    break
                for seq, origin, via, data in rows:
                    cursor = seq
                    if nbytes >= max_bytes and entries:
                        break
                    scanned = seq
                    if exclude_origin is not None and (origin == exclude_origin or via == exclude_origin):
                        continue
                    txn = Transaction.from_wire(msgpack.unpackb(data, raw=False))
                    if want is not None:
                        txn_f = self._filter_to_scope(txn, want)
                        if txn_f is None:
                            continue
                        if txn_f is not txn:
                            txn = txn_f
                            data = msgpack.packb(txn.to_wire(), use_bin_type=True)
                    entries.append((seq, txn))
                    nbytes += len(data)
                    if len(entries) >= limit:
                        break
                else:
                    continue
                break
            if cursor >= head and not entries:
                scanned = head
            return LogBatch(tuple(entries), scanned, head, nbytes)

    def _filter_to_scope(self, txn: Transaction, want: str) -> Transaction | None:
        refs = {(op.collection, canonical_json(op.key)) for op in txn.ops}
        inside = self._refs_in_scope(refs, want)
        if len(inside) == len(refs):
            return txn
        if not inside:
            return None
        ops = tuple(op for op in txn.ops if (op.collection, canonical_json(op.key)) in inside)
        before = tuple(b for b in txn.before if (b.collection, canonical_json(b.key)) in inside)
        return Transaction(txn.id, txn.origin, txn.stamp, txn.parents, ops, before, txn.user, txn.meta)

    def _refs_in_scope(self, refs: set[Ref], want: str) -> set[Ref]:
        inside: set[Ref] = set()
        items = list(refs)
        for i in range(0, len(items), 300):
            chunk = items[i:i + 300]
            where = " OR ".join("(collection = ? AND pk = ?)" for _ in chunk)
            params: list[Any] = [x for ref in chunk for x in ref]
            for coll, pk in self._engine.query(
                    f"SELECT collection, pk FROM documents WHERE scope = ? AND ({where})", [want, *params]):
                inside.add((coll, pk))
        return inside

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
        with self._lock:
            self._check_open()
            with self._engine.atomic():
                self._engine.execute(
                    "INSERT INTO checkpoints (peer, acked) VALUES (?, ?) ON CONFLICT(peer) "
                    "DO UPDATE SET acked = excluded.acked", (peer, seq))

    # -- snapshots ---------------------------------------------------------------------------

    def read_snapshot(self, scope: Scope, *, cursor: object | None, limit: int, max_bytes: int) -> SnapshotPage:
        """One page of document states in ``scope`` (tombstones included), by rowid."""
        want = _scope_value(scope)
        after = int(cursor) if isinstance(cursor, int) else 0
        with self._lock:
            self._check_open()
            as_of = self.head_seq()
            where = "rowid > ?" + (" AND scope = ?" if want is not None else "")
            params: list[Any] = [after] + ([want] if want is not None else [])
            rows = self._engine.query(
                f"SELECT rowid, collection, pk, body, meta, epoch, live FROM documents WHERE {where} "
                f"ORDER BY rowid LIMIT ?", [*params, limit])
            estimate = int(self._engine.query(
                "SELECT count(*) FROM documents" + (" WHERE scope = ?" if want is not None else ""),
                [want] if want is not None else [])[0][0])
        docs: list[SnapshotDoc] = []
        nbytes = 0
        last = after
        for rowid, coll, pk, body, meta, epoch, live in rows:
            docs.append(SnapshotDoc(coll, json.loads(pk), {"epoch": epoch, "live": bool(live),
                                                          "body": json.loads(body), "meta": json.loads(meta)}))
            nbytes += len(body) + len(meta) + len(pk)
            last = rowid
            if nbytes >= max_bytes:
                break
        more = len(docs) == limit or (nbytes >= max_bytes and len(docs) < len(rows))
        if len(docs) == limit:
            with self._lock:
                more = bool(self._engine.query(
                    f"SELECT 1 FROM documents WHERE {where} LIMIT 1", [last] + params[1:]))
        return SnapshotPage(tuple(docs), last if more else None, as_of, nbytes, estimate)

    def integrate_snapshot(self, docs: Sequence[SnapshotDoc], *, peer: ReplicaId,
                           as_of_seq: int | None) -> SnapshotResult:
        """Join snapshot documents into the local ones (a merge, never an overwrite)."""
        changed = unchanged = 0
        with self._lock:
            self._check_open()
            with self._engine.atomic():
                for doc in docs:
                    ref = (doc.collection, canonical_json(doc.key))
                    incoming = merge.DocState(epoch=doc.state["epoch"], live=bool(doc.state["live"]),
                                              body=doc.state["body"], meta=doc.state["meta"])
                    rows = self._engine.query(
                        "SELECT body, meta, epoch, live FROM documents WHERE collection = ? AND pk = ?", ref)
                    if rows:
                        local = merge.DocState(epoch=rows[0][2], live=bool(rows[0][3]),
                                               body=json.loads(rows[0][0]), meta=json.loads(rows[0][1]))
                        joined = merge.join(local, incoming, getattr(self, "_policies", None))
                        if (joined.epoch, joined.live, joined.body, joined.meta) == (local.epoch, local.live, local.body, local.meta):
                            unchanged += 1
                            continue
                    else:
                        joined = merge.join(merge.new_state(), incoming, getattr(self, "_policies", None))
                    self._store_state(doc.collection, ref, joined)
                    changed += 1
                if changed:
                    head = self.head_seq()
                    self._set_setting("snapshot_from", peer)
                    self._set_setting("snapshot_seq", str(head + 1))
                if as_of_seq is not None:
                    self._engine.execute(
                        "INSERT INTO checkpoints (peer, received) VALUES (?, ?) ON CONFLICT(peer) "
                        "DO UPDATE SET received = excluded.received", (peer, as_of_seq))
            self._after_remote(changed > 0)
        return SnapshotResult(changed, unchanged)

    def _store_state(self, collection: str, ref: Ref, state: merge.DocState) -> None:
        pkey = getattr(self, "partition_key", None)
        scope = canonical_json(state.body.get(pkey)) if pkey is not None and state.live else None
        body = json.dumps(state.body, separators=(",", ":"), ensure_ascii=False)
        meta = json.dumps(state.meta, separators=(",", ":"), ensure_ascii=False)
        self._engine.execute(
            "INSERT INTO documents (collection, pk, body, meta, epoch, live, seq, scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(collection, pk) DO UPDATE SET body = excluded.body, meta = excluded.meta, "
            "epoch = excluded.epoch, live = excluded.live, seq = excluded.seq, "
            "scope = coalesce(excluded.scope, documents.scope)",
            (collection, ref[1], body, meta, state.epoch, 1 if state.live else 0, self._snapshot_tick(), scope))

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

    def compact_log(self, keep_last: int) -> int:
        """Drop all but the newest ``keep_last`` log entries; return the new floor seq.

        Documents, descriptors and checkpoints stay. Peers behind the floor bootstrap from a
        snapshot on their next connection.
        """
        with self._lock:
            self._check_open()
            with self._engine.atomic():
                head = self.head_seq()
                floor = max(self.log_floor(), head - keep_last)
                if floor > 0:
                    self._engine.execute("DELETE FROM log WHERE seq <= ?", (floor,))
                    self._set_setting("log_floor", str(floor))
            return floor
