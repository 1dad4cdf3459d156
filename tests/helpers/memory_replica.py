"""An in-memory :class:`~tidesync.protocol.replica.Replica` for protocol tests.

``MemoryReplica`` keeps a log, per-peer checkpoints, a descriptor table of what it announced,
and documents merged by a small but real state-based CRDT (:class:`ToyDoc`): per top-level
field last writer wins by stamp, delete wins, and the set of transaction ids that touched the
document. Applying a transaction and joining states commute, so two replicas that saw the
same transactions, by log or by snapshot, hold equal documents: the property the protocol must
deliver. It counts how often each transaction was applied, so tests can show nothing was
applied twice.

It is deliberately independent of ``tidesync.core.merge`` (protocol tests must not depend on
the merge rules); the SQLite store and the server backends are the real implementations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidesync.core.clock import HybridClock
from tidesync.core.operations import CreateDoc, DeleteDoc, Op, SetValue, Unset
from tidesync.core.stamp import ZERO, ReplicaId, Stamp
from tidesync.core.transaction import Transaction
from tidesync.core.values import Plain, canonical_json
from tidesync.protocol.codec import encoded_size
from tidesync.protocol.messages import Scope, SnapshotDoc
from tidesync.protocol.replica import (
    Checkpoint,
    DescriptorBatch,
    IntegrateResult,
    LogBatch,
    Rejection,
    SnapshotPage,
    SnapshotResult,
)

__all__ = ["MemoryReplica", "ToyDoc", "replica_id"]

DocKey = tuple[str, str]  # (collection, canonical JSON of the key)


def replica_id(n: int) -> ReplicaId:
    """A deterministic replica id for tests."""
    return ReplicaId(f"{n:016x}")


@dataclass
class ToyDoc:
    """A document's merge state: LWW fields, delete-wins tombstone, txn-id set."""

    collection: str
    key: Plain
    fields: dict[str, tuple[Stamp, Plain]] = field(default_factory=dict)
    deleted: Stamp = ZERO
    txns: set[str] = field(default_factory=set)

    def apply(self, op: Op, txn_id: Stamp) -> None:
        self.txns.add(txn_id)
        if isinstance(op, CreateDoc):
            for name, value in op.fields.items():
                self._set(name, op.stamp, value)
        elif isinstance(op, SetValue):
            self._set(".".join(op.path), op.stamp, op.value)
        elif isinstance(op, Unset):
            self._set(".".join(op.path), op.stamp, {"$unset": 1})
        elif isinstance(op, DeleteDoc):
            self.deleted = max(self.deleted, op.stamp)

    def _set(self, name: str, stamp: Stamp, value: Plain) -> None:
        current = self.fields.get(name)
        if current is None or stamp > current[0]:
            self.fields[name] = (stamp, value)

    def join(self, other: ToyDoc) -> bool:
        """Merge ``other`` in; True when this changed."""
        before = self.to_state()
        for name, (stamp, value) in other.fields.items():
            self._set(name, stamp, value)
        self.deleted = max(self.deleted, other.deleted)
        self.txns |= other.txns
        return self.to_state() != before

    @property
    def body(self) -> dict[str, Plain]:
        return {k: v for k, (_, v) in self.fields.items() if v != {"$unset": 1}}

    def to_state(self) -> dict[str, Any]:
        return {
            "epoch": "", "live": not self.deleted, "body": self.body,
            "meta": {"stamps": {k: s for k, (s, _) in sorted(self.fields.items())},
                     "values": {k: v for k, (_, v) in sorted(self.fields.items())},
                     "deleted": self.deleted, "txns": sorted(self.txns)},
        }

    @classmethod
    def from_state(cls, collection: str, key: Plain, state: dict[str, Any]) -> ToyDoc:
        meta = state["meta"]
        doc = cls(collection, key)
        for name, stamp in meta["stamps"].items():
            doc.fields[name] = (stamp, meta["values"][name])
        doc.deleted = Stamp(meta["deleted"])
        doc.txns = set(meta["txns"])
        return doc


class MemoryReplica:
    """An in-memory replica. Not thread-safe; every method is atomic by construction.

    Args:
        rid: the replica id.
        wall_ms: the wall clock for stamps (injected; defaults to a constant, so stamps
            advance by their counter).
    """

    def __init__(self, rid: ReplicaId, *, wall_ms: Callable[[], int] | None = None) -> None:
        self._replica_id = rid
        self.clock = HybridClock(rid, wall_ms or (lambda: 1_700_000_000_000))
        self.seq = 0
        self.log: dict[int, Transaction] = {}
        self.sizes: dict[int, int] = {}
        self.ids: dict[str, int] = {}
        self.applied: Counter[str] = Counter()
        self.docs: dict[DocKey, ToyDoc] = {}
        self.checkpoints: dict[ReplicaId, Checkpoint] = {}
        self.floor = 0
        self.snapshot_marks: list[tuple[int, ReplicaId]] = []
        self.heads: tuple[Stamp, ...] = ()
        #: Called with the new head after every change of the log (drivers' local_commit).
        self.listeners: list[Callable[[int], None]] = []
        #: Set to a callable to make integrate() refuse some transactions (returns a reason).
        self.refuse: Callable[[Transaction], str | None] | None = None

    # ------------------------------------------------------------------ Replica protocol

    @property
    def replica_id(self) -> ReplicaId:
        return self._replica_id

    def head_seq(self) -> int:
        return self.seq

    def read_log(self, after: int, *, limit: int, max_bytes: int, scope: Scope,
                 exclude_origin: ReplicaId | None) -> LogBatch:
        if self._needs_snapshot(after, exclude_origin):
            return LogBatch((), after, self.seq, snapshot_required=True)
        entries: list[tuple[int, Transaction]] = []
        nbytes = 0
        scanned = after
        for seq in sorted(s for s in self.log if s > after):
            txn = self.log[seq]
            wanted = txn.origin != exclude_origin and self._in_scope(txn, scope)
            if wanted:
                if len(entries) >= limit or (entries and nbytes + self.sizes[seq] > max_bytes):
                    break
                entries.append((seq, txn))
                nbytes += self.sizes[seq]
            scanned = seq
        else:
            scanned = max(after, self.seq)
        return LogBatch(tuple(entries), scanned, self.seq, nbytes)

    def read_descriptors(self, after: int, *, limit: int, scope: Scope,
                         exclude_origin: ReplicaId | None) -> DescriptorBatch:
        if self._needs_snapshot(after, exclude_origin):
            return DescriptorBatch((), after, self.seq)
        batch = self.read_log(after, limit=limit, max_bytes=1 << 62, scope=scope,
                              exclude_origin=exclude_origin)
        return DescriptorBatch(tuple((seq, txn.descriptor(self.sizes[seq]))
                                     for seq, txn in batch.entries), batch.scanned_to, batch.head)

    def integrate(self, txns: Sequence[Transaction], *, peer: ReplicaId,
                  peer_seq: int) -> IntegrateResult:
        applied = duplicates = 0
        rejected: list[Rejection] = []
        for txn in txns:
            if txn.id in self.ids:
                duplicates += 1
                continue
            reason = self.refuse(txn) if self.refuse else None
            if reason is not None:
                rejected.append(Rejection(txn.id, "refused", reason))
                continue
            self._append(txn)
            applied += 1
        old = self.checkpoints.get(peer, Checkpoint())
        self.checkpoints[peer] = Checkpoint(peer_seq, old.acked)
        if applied:
            self._notify()
        return IntegrateResult(applied, duplicates, tuple(rejected))

    def checkpoint(self, peer: ReplicaId) -> Checkpoint:
        return self.checkpoints.get(peer, Checkpoint())

    def record_ack(self, peer: ReplicaId, seq: int) -> None:
        old = self.checkpoints.get(peer, Checkpoint())
        self.checkpoints[peer] = Checkpoint(old.received, seq)

    def read_snapshot(self, scope: Scope, *, cursor: object | None, limit: int,
                      max_bytes: int) -> SnapshotPage:
        keys = sorted(k for k, d in self.docs.items() if self._doc_in_scope(d, scope))
        if cursor is not None:
            assert isinstance(cursor, tuple)
            keys = [k for k in keys if k > cursor]
        page: list[SnapshotDoc] = []
        nbytes = 0
        for k in keys:
            doc = self.docs[k]
            item = SnapshotDoc(doc.collection, doc.key, doc.to_state())
            size = encoded_size(item.to_wire())
            if len(page) >= limit or (page and nbytes + size > max_bytes):
                break
            page.append(item)
            nbytes += size
        more = len(page) < len(keys)
        next_cursor = (page[-1].collection, canonical_json(page[-1].key)) if more and page else None
        return SnapshotPage(tuple(page), next_cursor, self.seq, nbytes, len(keys))

    def integrate_snapshot(self, docs: Sequence[SnapshotDoc], *, peer: ReplicaId,
                           as_of_seq: int | None) -> SnapshotResult:
        changed = unchanged = 0
        for item in docs:
            incoming = ToyDoc.from_state(item.collection, item.key, item.state)
            ref = (item.collection, canonical_json(item.key))
            current = self.docs.get(ref)
            if current is None:
                self.docs[ref] = incoming
                changed += 1
            elif current.join(incoming):
                changed += 1
            else:
                unchanged += 1
            for txn_id in incoming.txns:
                self.ids.setdefault(txn_id, 0)  # known now, though not in our log
        if changed:
            # Our log does not hold what the snapshot brought: peers other than `peer` that
            # are behind this point must bootstrap from a snapshot of ours.
            self.seq += 1
            self.snapshot_marks.append((self.seq, peer))
        if as_of_seq is not None:
            old = self.checkpoints.get(peer, Checkpoint())
            self.checkpoints[peer] = Checkpoint(as_of_seq, old.acked)
        if changed:
            self._notify()
        return SnapshotResult(changed, unchanged)

    # ------------------------------------------------------------------ local writes

    def write(self, collection: str, key: Plain, **fields: Plain) -> tuple[int, Transaction]:
        """Commit a local transaction that creates the document or sets its fields."""
        ref = (collection, canonical_json(key))
        ops: list[Op] = []
        if ref not in self.docs or self.docs[ref].deleted:
            base = self.docs[ref].deleted if ref in self.docs else ZERO
            ops.append(CreateDoc(collection, key, self.clock.now(), base,
                                 {"_id": key, **fields}, {}))
        else:
            for name, value in fields.items():
                ops.append(SetValue(collection, key, self.clock.now(), ZERO, (name,), (), value))
        return self._commit(ops)

    def delete(self, collection: str, key: Plain) -> tuple[int, Transaction]:
        """Commit a local transaction that deletes the document."""
        return self._commit([DeleteDoc(collection, key, self.clock.now(), ZERO)])

    def _commit(self, ops: list[Op]) -> tuple[int, Transaction]:
        first = ops[0].stamp
        txn = Transaction(first, self.replica_id, first, self.heads, tuple(ops))
        seq = self._append(txn)
        self._notify()
        return seq, txn

    def compact(self, upto: int | None = None) -> None:
        """Drop log entries up to ``upto`` (default: everything); peers behind must snapshot."""
        upto = self.seq if upto is None else upto
        for seq in [s for s in self.log if s <= upto]:
            del self.log[seq]
        self.floor = max(self.floor, upto)

    # ------------------------------------------------------------------ inspection

    def txn_ids(self) -> set[str]:
        """Ids of the transactions in this replica's log."""
        return {txn.id for txn in self.log.values()}

    def state(self) -> dict[DocKey, dict[str, Any]]:
        """Every document's merge state: equal on replicas that saw the same transactions."""
        return {k: d.to_state() for k, d in sorted(self.docs.items())}

    def bodies(self) -> dict[DocKey, dict[str, Plain]]:
        """Live documents' bodies."""
        return {k: d.body for k, d in sorted(self.docs.items()) if not d.deleted}

    # ------------------------------------------------------------------ internals

    def _append(self, txn: Transaction) -> int:
        self.clock.observe(txn.stamp)
        for op in txn.ops:
            self.clock.observe(op.stamp)
        self.seq += 1
        self.log[self.seq] = txn
        self.sizes[self.seq] = encoded_size(txn.to_wire())
        self.ids[txn.id] = self.seq
        self.applied[txn.id] += 1
        for op in txn.ops:
            ref = (op.collection, canonical_json(op.key))
            doc = self.docs.setdefault(ref, ToyDoc(op.collection, op.key))
            doc.apply(op, txn.id)
        self.heads = (txn.id,)
        return self.seq

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener(self.seq)

    def _needs_snapshot(self, after: int, peer: ReplicaId | None) -> bool:
        if after < self.floor:
            return True
        return any(mark > after and source != peer for mark, source in self.snapshot_marks)

    def _doc_in_scope(self, doc: ToyDoc, scope: Scope) -> bool:
        part = scope.get("partition")
        if part is None:
            return True
        entry = doc.fields.get(part["key"])
        return entry is not None and entry[1] == part["value"]

    def _in_scope(self, txn: Transaction, scope: Scope) -> bool:
        if "partition" not in scope:
            return True
        for op in txn.ops:
            doc = self.docs.get((op.collection, canonical_json(op.key)))
            if doc is not None and self._doc_in_scope(doc, scope):
                return True
        return False
