"""What a :class:`~tidesync.protocol.replicator.Replicator` asks its driver to do.

Actions are small frozen dataclasses, easy to log, compare and replay. A driver executes
each action, in order, and nothing else:

* :class:`Send` -- ``link.send(action.message)``.
* storage actions (:data:`StorageAction`) -- call the :class:`~.replica.Replica` and feed the
  result back to the replicator (``checkpoint_read``, ``log_read``, ``descriptors_read``,
  ``integrated``, ``snapshot_read``, ``snapshot_integrated``); :func:`~.replicator.perform`
  does exactly that. A server driver may check an :class:`Integrate` against its rules first.
* notifications (:class:`ReportProgress`, :class:`UploadComplete`, :class:`DownloadComplete`,
  :class:`Announce`, :class:`Notify`) -- update progress, wake waiters, show or store.
* :class:`Fail` -- ``link.fail(action.error)``: the peer broke the replication rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from ..core.stamp import ReplicaId
from ..core.transaction import Descriptor, Transaction
from ..errors import SyncError
from .messages import Message, Scope, SnapshotDoc, ViewPart

__all__ = [
    "Direction",
    "UPLOAD",
    "DOWNLOAD",
    "Send",
    "ReadCheckpoint",
    "ReadLog",
    "ReadDescriptors",
    "Integrate",
    "ReadSnapshot",
    "IntegrateSnapshot",
    "RecordAck",
    "ReportProgress",
    "UploadComplete",
    "DownloadComplete",
    "Announce",
    "Notify",
    "Fail",
    "Action",
    "StorageAction",
]


class Direction(StrEnum):
    """Which way a transfer goes, seen from this replica."""

    UPLOAD = "upload"
    DOWNLOAD = "download"


UPLOAD, DOWNLOAD = Direction.UPLOAD, Direction.DOWNLOAD


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to the peer: ``link.send(message)``."""

    message: Message


@dataclass(frozen=True, slots=True)
class ReadCheckpoint:
    """Call ``replica.checkpoint(peer)``; feed the result to ``checkpoint_read``."""

    peer: ReplicaId


@dataclass(frozen=True, slots=True)
class ReadLog:
    """Call ``replica.read_log(...)`` with these arguments; feed the result to ``log_read``."""

    after: int
    limit: int
    max_bytes: int
    scope: Scope
    exclude_origin: ReplicaId | None


@dataclass(frozen=True, slots=True)
class ReadDescriptors:
    """Call ``replica.read_descriptors(...)``; feed the result to ``descriptors_read``."""

    after: int
    limit: int
    scope: Scope
    exclude_origin: ReplicaId | None


@dataclass(frozen=True, slots=True)
class Integrate:
    """Call ``replica.integrate(txns, peer=peer, peer_seq=peer_seq)`` (atomically with the
    checkpoint); feed the result to ``integrated``, in the order the actions were issued.

    ``view`` (flexible sync, only on a connection where this side announced
    ``changes_view``): the batch's view part, applied in the same local transaction before
    the transactions (the device's flexible-sync layer does it; a plain replica never gets one).
    """

    txns: tuple[Transaction, ...]
    peer: ReplicaId
    peer_seq: int
    view: ViewPart | None = None


@dataclass(frozen=True, slots=True)
class ReadSnapshot:
    """Call ``replica.read_snapshot(...)``; feed the result to ``snapshot_read``."""

    scope: Scope
    cursor: object | None
    limit: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class IntegrateSnapshot:
    """Call ``replica.integrate_snapshot(docs, peer=peer, as_of_seq=as_of_seq)``; feed the
    result to ``snapshot_integrated``, in issue order (interleaved with ``Integrate``)."""

    docs: Sequence[SnapshotDoc]
    peer: ReplicaId
    as_of_seq: int | None


@dataclass(frozen=True, slots=True)
class RecordAck:
    """Call ``replica.record_ack(peer, seq)``; no result."""

    peer: ReplicaId
    seq: int


@dataclass(frozen=True, slots=True)
class ReportProgress:
    """Progress of one direction on this connection (counts of transactions and bytes; while
    a snapshot is being received, of its documents).

    ``transferred`` counts what the receiving side has integrated (for uploads: acknowledged);
    ``transferable`` is ``transferred`` plus the sender's estimate of what remains.
    """

    direction: Direction
    transferred: int
    transferable: int
    transferred_bytes: int
    transferable_bytes: int


@dataclass(frozen=True, slots=True)
class UploadComplete:
    """The peer has acknowledged this replica's log up to ``seq``, which was its head: there
    is nothing more to upload. Resolves ``wait_for_upload_completion`` calls made at head
    ``<= seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class DownloadComplete:
    """This replica has integrated the peer's log up to ``peer_seq``, which was the peer's
    head when it sent it: there is nothing more to download for now."""

    peer_seq: int


@dataclass(frozen=True, slots=True)
class Announce:
    """The peer announced transactions it will send (descriptors); a driver may store them
    as pending (optimistic UI) or ignore them."""

    peer: ReplicaId
    entries: tuple[tuple[int, Descriptor], ...]


@dataclass(frozen=True, slots=True)
class Notify:
    """A message for the driver or the app rather than for replication:
    ``CompensatingWrite``, ``Subscribe``, ``SubscriptionState``, ``ViewUpdate``, ``ViewAck``
    (flexible sync's views are the drivers' business: the replicator passes them through, in
    order with the actions of the messages around them)."""

    message: Message


@dataclass(frozen=True, slots=True)
class Fail:
    """The peer broke the replication rules: ``link.fail(error)``."""

    error: SyncError


StorageAction: TypeAlias = (
    ReadCheckpoint | ReadLog | ReadDescriptors | Integrate | ReadSnapshot | IntegrateSnapshot
    | RecordAck
)
Action: TypeAlias = (
    Send | StorageAction | ReportProgress | UploadComplete | DownloadComplete | Announce
    | Notify | Fail
)
