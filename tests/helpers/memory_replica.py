"""An in-memory :class:`~tidesync.protocol.replica.Replica` for protocol tests.

``MemoryReplica`` keeps a log, per-peer checkpoints and documents. Documents are merged by
one of two *doc models*:

* ``"toy"`` (default), :class:`ToyDoc`: a small but real state-based CRDT (per top-level field
  last writer wins by stamp, delete wins, plus the set of transaction ids that touched the
  document). Protocol tests use it so that they do not depend on the merge rules.
* ``"core"``: the real merge core, :mod:`tidesync.core.merge` (``integrate`` per operation,
  ``join`` for snapshots), for end-to-end checks of protocol and merge together.

Either way, replicas that saw the same transactions, by log or by snapshot, hold equal
documents: the property the protocol must deliver. The replica counts how often each
transaction was applied, so tests can show nothing was applied twice. The SQLite store and
the server backends are the real implementations of the Replica protocol.
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


class ToyModel:
    """Documents as :class:`ToyDoc`."""

    name = "toy"

    def new(self, collection: str, key: Plain) -> ToyDoc:
        return ToyDoc(collection, key)

    def apply(self, doc: ToyDoc, op: Op, txn_id: Stamp) -> ToyDoc:
        doc.apply(op, txn_id)
        return doc

    def join(self, doc: ToyDoc, state: dict[str, Any], collection: str, key: Plain) -> tuple[ToyDoc, bool]:
        return doc, doc.join(ToyDoc.from_state(collection, key, state))

    def from_state(self, collection: str, key: Plain, state: dict[str, Any]) -> ToyDoc:
        return ToyDoc.from_state(collection, key, state)

    def to_state(self, doc: ToyDoc) -> dict[str, Any]:
        return doc.to_state()

    def txns(self, state: dict[str, Any]) -> list[str]:
        return list(state["meta"]["txns"])

    def live(self, doc: ToyDoc) -> bool:
        return not doc.deleted

    def body(self, doc: ToyDoc) -> dict[str, Plain]:
        return doc.body

    def comparable(self, doc: ToyDoc) -> Any:
        return doc.to_state()


class CoreModel:
    """Documents as :class:`tidesync.core.merge.DocState`, merged by the real merge core."""

    name = "core"

    def new(self, collection: str, key: Plain) -> Any:
        return None

    def apply(self, doc: Any, op: Op, txn_id: Stamp) -> Any:
        from tidesync.core import merge

        state, _ = merge.integrate(doc, op)
        return state

    def join(self, doc: Any, state: dict[str, Any], collection: str, key: Plain) -> tuple[Any, bool]:
        from tidesync.core import merge

        incoming = self.from_state(collection, key, state)
        if doc is None:
            return incoming, True
        joined = merge.join(doc, incoming, collection=collection)
        return joined, merge.canonical_state(joined) != merge.canonical_state(doc)

    def from_state(self, collection: str, key: Plain, state: dict[str, Any]) -> Any:
        from tidesync.core import merge

        return merge.DocState(state["epoch"], state["live"], state["body"], state["meta"]).copy()

    def to_state(self, doc: Any) -> dict[str, Any]:
        copy = doc.copy()
        return {"epoch": copy.epoch, "live": copy.live, "body": copy.body, "meta": copy.meta}

    def txns(self, state: dict[str, Any]) -> list[str]:
        return []

    def live(self, doc: Any) -> bool:
        return bool(doc is not None and doc.live)

    def body(self, doc: Any) -> dict[str, Plain]:
        return dict(doc.body) if doc is not None else {}

    def comparable(self, doc: Any) -> Any:
        from tidesync.core import merge

        return merge.canonical_state(doc) if doc is not None else None


MODELS = {"toy": ToyModel, "core": CoreModel}


class MemoryReplica:
    """An in-memory replica. Not thread-safe; every method is atomic by construction.

    Args:
        rid: the replica id.
        wall_ms: the wall clock for stamps (injected; defaults to a constant, so stamps
            advance by their counter).
        model: ``"toy"`` or ``"core"`` (see the module docstring).
    """

    def __init__(self, rid: ReplicaId, *, wall_ms: Callable[[], int] | None = None,
                 model: str = "toy") -> None:
        self._replica_id = rid
        self.model: Any = MODELS[model]()
        self.clock = HybridClock(rid, wall_ms or (lambda: 1_700_000_000_000))
        self.seq = 0
        self.log: dict[int, Transaction] = {}
        self.sizes: dict[int, int] = {}
        self.ids: dict[str, int] = {}
        self.applied: Counter[str] = Counter()
        self.docs: dict[DocKey, Any] = {}
        self.doc_names: dict[DocKey, tuple[str, Plain]] = {}
        self.created_fields: dict[DocKey, dict[str, Plain]] = {}
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
        keys = sorted(k for k in self.docs if self._doc_in_scope(k, scope))
        if cursor is not None:
            assert isinstance(cursor, tuple)
            keys = [k for k in keys if k > cursor]
        page: list[SnapshotDoc] = []
        nbytes = 0
        for k in keys:
            collection, key = self.doc_names[k]
            item = SnapshotDoc(collection, key, self.model.to_state(self.docs[k]))
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
            ref = (item.collection, canonical_json(item.key))
            self.doc_names.setdefault(ref, (item.collection, item.key))
            if ref in self.docs:
                self.docs[ref], did = self.model.join(self.docs[ref], item.state, item.collection, item.key)
            else:
                self.docs[ref], did = self.model.from_state(item.collection, item.key, item.state), True
            changed += did
            unchanged += not did
            for txn_id in self.model.txns(item.state):
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
        doc = self.docs.get(ref)
        if doc is None or not self.model.live(doc):
            base = self._epoch(ref)
            ops.append(CreateDoc(collection, key, self.clock.now(), base,
                                 {"_id": key, **fields}, {}))
        else:
            base = self._epoch(ref)
            for name, value in fields.items():
                ops.append(SetValue(collection, key, self.clock.now(), base, (name,), (), value))
        return self._commit(ops)

    def delete(self, collection: str, key: Plain) -> tuple[int, Transaction]:
        """Commit a local transaction that deletes the document."""
        ref = (collection, canonical_json(key))
        return self._commit([DeleteDoc(collection, key, self.clock.now(), self._epoch(ref))])

    def _epoch(self, ref: DocKey) -> Stamp:
        doc = self.docs.get(ref)
        if doc is None:
            return ZERO
        if isinstance(doc, ToyDoc):
            return doc.deleted if not self.model.live(doc) else ZERO
        return Stamp(doc.epoch)

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

    def state(self) -> dict[DocKey, Any]:
        """Every document's merge state: equal on replicas that saw the same transactions."""
        return {k: self.model.comparable(d) for k, d in sorted(self.docs.items())}

    def bodies(self) -> dict[DocKey, dict[str, Plain]]:
        """Live documents' bodies."""
        return {k: self.model.body(d) for k, d in sorted(self.docs.items()) if self.model.live(d)}

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
            self.doc_names.setdefault(ref, (op.collection, op.key))
            if isinstance(op, CreateDoc):
                self.created_fields.setdefault(ref, dict(op.fields))
            doc = self.docs.get(ref)
            if doc is None:
                doc = self.model.new(op.collection, op.key)
            self.docs[ref] = self.model.apply(doc, op, txn.id)
        self.heads = (txn.id,)
        return self.seq

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener(self.seq)

    def _needs_snapshot(self, after: int, peer: ReplicaId | None) -> bool:
        if after < self.floor:
            return True
        return any(mark > after and source != peer for mark, source in self.snapshot_marks)

    def _doc_in_scope(self, ref: DocKey, scope: Scope) -> bool:
        part = scope.get("partition")
        if part is None:
            return True
        # A partition field is fixed at creation (as in Device Sync); a document known only
        # from a snapshot is placed by its body.
        fields = self.created_fields.get(ref)
        if fields is None:
            doc = self.docs.get(ref)
            fields = self.model.body(doc) if doc is not None else {}
        return part["key"] in fields and fields[part["key"]] == part["value"]

    def _in_scope(self, txn: Transaction, scope: Scope) -> bool:
        if "partition" not in scope:
            return True
        return any(self._doc_in_scope((op.collection, canonical_json(op.key)), scope)
                   for op in txn.ops)
