"""What replication reads and writes through: the :class:`Replica` protocol.

The device's SQLite store and each of the server's backends implement exactly this, so
"every peer is equal" is a type-checked fact. The :class:`~.replicator.Replicator` never
calls a Replica itself; it asks its driver to, with actions
(:mod:`tidesync.protocol.actions`), and the driver feeds the results back
(:func:`~.replicator.perform` does both for the common case).

Terms:

*log*
    Every replica numbers the transactions it integrates, whatever their origin, 1, 2, 3...:
    its local change sequence (``seq``). The log is that sequence of (seq, transaction).
*checkpoint*
    Per peer, persisted with the data (automerge's "survives reconnection" state):
    ``received``, the peer's seq up to which this replica has integrated the peer's log
    (filtered to this replica's scope), and ``acked``, this replica's seq up to which the peer
    acknowledged having integrated ours.
*scope*
    What a replica wants to receive (:func:`~.messages.check_scope`). A Replica filters its
    log and snapshots to the *peer's* scope when reading for the peer.

Implementations keep one connection per peer at a time; two simultaneous connections between
the same pair of replicas would race on the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..core.stamp import ReplicaId, Stamp
from ..core.transaction import Descriptor, Transaction
from .messages import DocColumns, Scope, SnapshotDoc

__all__ = [
    "Replica",
    "Checkpoint",
    "LogBatch",
    "DescriptorBatch",
    "Rejection",
    "IntegrateResult",
    "SnapshotPage",
    "SnapshotResult",
]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where replication with one peer stands (see the module docstring)."""

    received: int = 0
    acked: int = 0


@dataclass(frozen=True, slots=True)
class LogBatch:
    """The answer to :meth:`Replica.read_log`.

    Attributes:
        entries: ``(seq, transaction)`` in increasing seq order, every seq in
            ``(after, scanned_to]``.
        scanned_to: how far the read looked: every entry in ``(after, scanned_to]`` that is
            not in ``entries`` was filtered out (outside the scope, or from the excluded origin).
            Equals ``after`` only when there was nothing to read.
        head: the replica's head seq at the time of the read (``>= scanned_to``).
        nbytes: the encoded size of ``entries`` (for progress; 0 if unknown).
        snapshot_required: the log after ``after`` was compacted away: the peer must be
            bootstrapped with a snapshot (``entries`` is then empty).
    """

    entries: tuple[tuple[int, Transaction], ...]
    scanned_to: int
    head: int
    nbytes: int = 0
    snapshot_required: bool = False

    @property
    def more(self) -> bool:
        """True when the log holds entries after ``scanned_to``."""
        return self.scanned_to < self.head


@dataclass(frozen=True, slots=True)
class DescriptorBatch:
    """The answer to :meth:`Replica.read_descriptors`: like :class:`LogBatch`, descriptors
    instead of transactions (each with its transaction's encoded size)."""

    entries: tuple[tuple[int, Descriptor], ...]
    scanned_to: int
    head: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A transaction a replica refused to integrate (malformed, or refused by a rule)."""

    txn_id: Stamp
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class IntegrateResult:
    """The answer to :meth:`Replica.integrate`."""

    applied: int = 0
    duplicates: int = 0
    rejected: tuple[Rejection, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotPage:
    """The answer to :meth:`Replica.read_snapshot`.

    Attributes:
        docs: documents in scope, in the replica's stable order.
        cursor: where the next page starts (opaque to the replicator), or None: this was the
            last page.
        as_of_seq: the replica's head when the page was read; the page reflects every entry
            of the log up to it.
        nbytes: the encoded size of ``docs`` (0 if unknown).
        estimate: an estimate of the number of documents in scope, for progress (0 if unknown).
    """

    docs: tuple[SnapshotDoc, ...] | DocColumns
    cursor: object | None
    as_of_seq: int
    nbytes: int = 0
    estimate: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """The answer to :meth:`Replica.integrate_snapshot`."""

    changed: int = 0
    unchanged: int = 0


@runtime_checkable
class Replica(Protocol):
    """A replica as replication sees it: a log to read, transactions to integrate,
    checkpoints per peer, and snapshots for bootstrapping.

    Every method is atomic: it sees one consistent state and its writes are durable when it
    returns. None may be called concurrently with another on the same replica unless the
    implementation says so.
    """

    @property
    def replica_id(self) -> ReplicaId:
        """This replica's id (16 lowercase hex digits), random and persisted."""
        ...

    def head_seq(self) -> int:
        """The seq of the latest entry of the local log (0 when empty)."""
        ...

    def read_log(self, after: int, *, limit: int, max_bytes: int, scope: Scope,
                 exclude_origin: ReplicaId | None) -> LogBatch:
        """Read log entries with seq > ``after``, in seq order.

        Args:
            after: the peer's checkpoint (or where the previous read ended).
            limit: at most this many entries.
            max_bytes: stop once the entries' encoded size reaches this (but return at least
                one entry if there is one, however large).
            scope: the peer's scope: skip transactions outside it.
            exclude_origin: skip transactions whose origin is this replica (the peer, which
                has them already).

        Returns:
            The entries and how far the read scanned. If the log after ``after`` has been
            compacted away, ``LogBatch(snapshot_required=True)``.
        """
        ...

    def read_descriptors(self, after: int, *, limit: int, scope: Scope,
                         exclude_origin: ReplicaId | None) -> DescriptorBatch:
        """Like :meth:`read_log`, returning descriptors (cheap: no operations are read)."""
        ...

    def integrate(self, txns: Sequence[Transaction], *, peer: ReplicaId,
                  peer_seq: int) -> IntegrateResult:
        """Integrate transactions received from ``peer`` and record its checkpoint, atomically.

        In one storage transaction: every transaction not already known (by id) is merged
        into the documents and appended to the local log (getting a new local seq); known ones
        are counted as duplicates and change nothing; then ``checkpoint(peer).received`` is
        set to ``peer_seq`` (set, not raised: a peer whose log was reset starts again from 0).
        If the call fails, nothing of it is stored. Integrating a transaction whose effects
        the documents already reflect through a joined snapshot must change nothing.
        """
        ...

    def checkpoint(self, peer: ReplicaId) -> Checkpoint:
        """The checkpoint for ``peer`` (all zeros for a peer never seen)."""
        ...

    def record_ack(self, peer: ReplicaId, seq: int) -> None:
        """Record that ``peer`` has durably integrated this replica's log up to ``seq``."""
        ...

    def read_snapshot(self, scope: Scope, *, cursor: object | None, limit: int,
                      max_bytes: int) -> SnapshotPage:
        """Read one page of the documents in ``scope`` (full merge states, tombstones
        included), starting at ``cursor`` (None: from the start)."""
        ...

    def integrate_snapshot(self, docs: Sequence[SnapshotDoc], *, peer: ReplicaId,
                           as_of_seq: int | None) -> SnapshotResult:
        """Join snapshot documents from ``peer`` into the local ones, atomically.

        A join is a merge, never an overwrite: local changes the peer has not seen are kept.
        When ``as_of_seq`` is not None (the last page), also set
        ``checkpoint(peer).received = as_of_seq`` in the same storage transaction.

        The changes a snapshot makes must still reach this replica's *other* peers, which
        read this replica's log: an implementation either logs them (as entries counted as
        coming from ``peer``, so that ``read_log(exclude_origin=peer)`` skips them) or makes
        its other peers bootstrap from a snapshot in turn.
        """
        ...
