"""The replication decision-maker, the same class on both sides of a connection.

A :class:`Replicator` knows nothing about bytes, sockets or storage. Inputs come in as calls
(messages from the :class:`~.link.Link`, ``local_commit(seq)``, and the results of actions it
asked for); decisions go out as lists of actions (:mod:`tidesync.protocol.actions`), which a
driver executes in order. It is the one place where the replication algorithm lives, written
once for the device, the server and device-to-device sync.

The algorithm
=============

Handshake. The initiator sends ``Hello`` with its checkpoint for the acceptor it expects
(``expected_peer``, read with :class:`~.actions.ReadCheckpoint`); the acceptor answers
``Welcome`` with its checkpoint for the initiator. From then on both directions run the same
code, independently: each side *streams* its log to the peer and *receives* the peer's.

Streaming (our log -> peer). Start from the peer's checkpoint for us. Read the log in batches
(``batch_limit`` transactions, ``batch_bytes`` bytes), filtered to the peer's scope and
skipping the peer's own transactions; send each as ``Changes(from_seq, to_seq, head)``, at
most ``window`` batches unacknowledged and one read at a time. The first batch is sent even
when empty, so the peer learns our head; later empty reads are sent only when they advance
``to_seq``. Each ``Ack`` is recorded (:class:`~.actions.RecordAck`); when everything up to
our head is acknowledged, :class:`~.actions.UploadComplete`. A ``local_commit(seq)`` restarts
reading. With ``descriptor_lookahead`` > 0, descriptors of up to that many transactions are
announced ahead of the data, and a transaction is never sent before its descriptor.

If the log after the peer's checkpoint was compacted, stream a snapshot instead: pages of
document states (``Snapshot``, acknowledged per page), then continue the log from the
snapshot's ``as_of_seq``.

Receiving (peer's log -> us). Each ``Changes`` must start where the previous one ended (the
first one at or before our checkpoint): a gap is a protocol error. Each batch becomes one
:class:`~.actions.Integrate` (transactions and checkpoint in one storage transaction); once it
is done, ``Ack(to_seq)``. When ``to_seq`` reached the head the peer announced,
:class:`~.actions.DownloadComplete`.

Nothing here knows which side is "the server": authority (tokens, rules, fan-out) is the
driver's business, between receiving an event and executing an action.

State kept here lasts one connection; everything that must survive a reconnection
(checkpoints, the log) is in the Replica.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from ..core.stamp import ReplicaId, is_replica_id
from ..errors import ProtocolError, UsageError
from .actions import (
    DOWNLOAD,
    UPLOAD,
    Action,
    Announce,
    DownloadComplete,
    Fail,
    Integrate,
    IntegrateSnapshot,
    Notify,
    ReadCheckpoint,
    ReadDescriptors,
    ReadLog,
    ReadSnapshot,
    RecordAck,
    ReportProgress,
    Send,
    UploadComplete,
)
from .codes import ErrorCode
from .messages import (
    Ack,
    Changes,
    Close,
    CompensatingWrite,
    FEATURE_CHANGES_VIEW,
    FEATURE_SNAPSHOT_COLUMNS,
    FEATURE_SNAPSHOT_JSON,
    FEATURES,
    Descriptors,
    Error,
    Hello,
    Message,
    Progress,
    Scope,
    Snapshot,
    Subscribe,
    SubscriptionState,
    ViewAck,
    ViewUpdate,
    Welcome,
    check_scope,
)
from .replica import (
    Checkpoint,
    DescriptorBatch,
    IntegrateResult,
    LogBatch,
    Replica,
    SnapshotPage,
    SnapshotResult,
)
from .states import Role

__all__ = ["Replicator", "perform"]


def _gap(message: str) -> Fail:
    return Fail(ProtocolError(message, code=ErrorCode.SEQUENCE_GAP))


class Replicator:
    """Replication with one peer over one connection.

    Args:
        replica_id: this replica's id.
        role: this side's role on the connection (only the handshake depends on it).
        scope: what this replica wants to receive (sent in ``Hello`` or ``Welcome``).
        token: the access token to put in ``Hello`` (initiator only).
        info: ``client_info`` for ``Hello`` (initiator) or ``session`` for ``Welcome``
            (acceptor).
        expected_peer: (initiator) the replica id of the acceptor it expects, remembered from
            a previous session; its checkpoint goes in ``Hello``. None on first contact.
        batch_limit: at most this many transactions per ``Changes``.
        batch_bytes: stop filling a ``Changes`` at about this many bytes (keep it well under
            the Link's ``max_message_size``).
        window: at most this many ``Changes``/``Snapshot`` messages unacknowledged.
        descriptor_lookahead: announce up to this many transactions ahead of their data;
            0 sends no ``Descriptors``.
        snapshot_limit: at most this many documents per ``Snapshot`` page.
        snapshot_window: at most this many ``Snapshot`` pages unacknowledged (default:
            ``window``). A receiver that stores one page while it decodes the next keeps up
            with a window of 3 without waiting for the sender's next read.
    """

    def __init__(
        self,
        replica_id: ReplicaId,
        role: Role,
        *,
        scope: Scope | None = None,
        token: str | None = None,
        info: Mapping[str, Any] | None = None,
        expected_peer: ReplicaId | None = None,
        batch_limit: int = 500,
        batch_bytes: int = 1 << 20,
        window: int = 2,
        descriptor_lookahead: int = 0,
        snapshot_limit: int = 500,
        snapshot_window: int | None = None,
    ) -> None:
        if not is_replica_id(replica_id):
            raise UsageError(f"not a replica id: {replica_id!r}")
        if expected_peer is not None and not is_replica_id(expected_peer):
            raise UsageError(f"not a replica id: {expected_peer!r}")
        if snapshot_window is None:
            snapshot_window = window
        if min(batch_limit, batch_bytes, window, snapshot_limit, snapshot_window) < 1 or descriptor_lookahead < 0:
            raise UsageError("batch_limit, batch_bytes, window, snapshot_limit and snapshot_window must be >= 1")
        self.replica_id = replica_id
        self.role = role
        try:
            self.scope: Scope = check_scope({} if scope is None else dict(scope))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.token = token
        self.info = dict(info or {})
        self.expected_peer = expected_peer
        self.batch_limit = batch_limit
        self.batch_bytes = batch_bytes
        self.window = window
        self.descriptor_lookahead = descriptor_lookahead
        self.snapshot_limit = snapshot_limit
        self.snapshot_window = snapshot_window

        #: Optional protocol features announced in our Hello/Welcome.
        self.features: tuple[str, ...] = FEATURES
        #: Those the peer announced (empty until the handshake, and for older peers).
        self.peer_features: frozenset[str] = frozenset()
        #: The peer's replica id, once the handshake told it.
        self.peer: ReplicaId | None = None
        #: True between the end of the handshake and the end of the connection.
        self.active = False
        #: True once the connection ended (Close or Error seen); later inputs are ignored.
        self.closed = False
        self._phase = "new"  # new -> (reading_checkpoint ->) hello_sent | hello_received -> active
        self._hello_checkpoint = 0

        # -- streaming: our log -> peer
        self._peer_scope: Scope = {}
        self._head: int | None = None      # our latest known head; None until the first read
        self._read_to = 0                  # next read starts after this
        self._sent_to = 0                  # to_seq of the last Changes sent
        self._first_sent = False
        self._reading = False
        self._inflight: deque[tuple[int, int, int]] = deque()  # (to_seq, txns, bytes)
        self._sent_txns = 0
        self._sent_bytes = 0
        self._acked_txns = 0
        self._acked_bytes = 0
        self._acked_seq = 0
        self._upload_complete_at: int | None = None
        # descriptors
        self._announced_to = 0
        self._announced: deque[int] = deque()  # seqs announced, not yet sent as data
        self._reading_descriptors = False
        self._descriptors_after = 0
        self._descriptors_stuck_at: int | None = None
        # outgoing snapshot
        self._snapshotting = False
        self._snap_cursor: object | None = None
        self._snap_page = 0
        self._snap_as_of: int | None = None
        self._snap_reading = False
        self._snap_inflight: deque[tuple[int, bool, int]] = deque()  # (page, done, as_of)
        self._snap_sent_docs = 0
        self._snap_sent_bytes = 0

        # -- receiving: peer's log -> us
        self._in_checkpoint = 0            # what we told the peer we hold
        self._in_expected: int | None = None  # from_seq the next Changes must have
        self._in_durable = 0               # checkpoint after the last finished integration
        self._in_pending: deque[tuple[str, int, int, Progress, bool]] = deque()
        self._in_snap_next: int | None = None  # next Snapshot page expected, None: no snapshot
        self._in_progress = Progress()
        self._in_integrated = Progress()
        #: True when everything the peer announced has been integrated.
        self.download_complete = False

    # ================================================================== handshake

    def start(self) -> list[Action]:
        """Begin. The initiator gets the actions that lead to its ``Hello``; the acceptor
        gets nothing (it waits for the ``Hello``)."""
        if self._phase != "new":
            raise UsageError("start() was already called")
        if self.role is Role.ACCEPTOR:
            self._phase = "awaiting_hello"
            return []
        if self.expected_peer is not None:
            self._phase = "reading_checkpoint"
            return [ReadCheckpoint(self.expected_peer)]
        return self._send_hello(0)

    def _send_hello(self, checkpoint: int) -> list[Action]:
        self._phase = "hello_sent"
        self._hello_checkpoint = checkpoint
        info = {str(k): str(v) for k, v in self.info.items()}
        return [Send(Hello(self.replica_id, self.token, self.scope, self.expected_peer,
                           checkpoint if self.expected_peer is not None else 0, info, self.features))]

    def checkpoint_read(self, checkpoint: Checkpoint) -> list[Action]:
        """The result of a :class:`~.actions.ReadCheckpoint`."""
        if self._phase == "reading_checkpoint":
            return self._send_hello(checkpoint.received)
        if self._phase == "reading_peer_checkpoint":
            assert self.peer is not None
            self._in_checkpoint = self._in_durable = checkpoint.received
            self._phase = "active"
            self.active = True
            welcome = Welcome(self.replica_id, checkpoint.received, self.scope, dict(self.info), self.features)
            return [Send(welcome), *self._start_streaming(self._hello_checkpoint)]
        raise UsageError("checkpoint_read() without a pending ReadCheckpoint")

    def _on_hello(self, hello: Hello) -> list[Action]:
        if self.role is not Role.ACCEPTOR or self._phase != "awaiting_hello":
            return [Fail(ProtocolError("unexpected Hello", code=ErrorCode.UNEXPECTED_MESSAGE))]
        if hello.replica_id == self.replica_id:
            return [Fail(ProtocolError("the peer has this replica's id",
                                       code=ErrorCode.SAME_REPLICA))]
        self.peer = hello.replica_id
        self.peer_features = frozenset(hello.features)
        self._peer_scope = hello.scope
        self._hello_checkpoint = hello.checkpoint if hello.acceptor_id == self.replica_id else 0
        self._phase = "reading_peer_checkpoint"
        return [ReadCheckpoint(hello.replica_id)]

    def _on_welcome(self, welcome: Welcome) -> list[Action]:
        if self.role is not Role.INITIATOR or self._phase != "hello_sent":
            return [Fail(ProtocolError("unexpected Welcome", code=ErrorCode.UNEXPECTED_MESSAGE))]
        if welcome.replica_id == self.replica_id:
            return [Fail(ProtocolError("the peer has this replica's id",
                                       code=ErrorCode.SAME_REPLICA))]
        self.peer = welcome.replica_id
        self.peer_features = frozenset(welcome.features)
        self._peer_scope = welcome.scope
        # Our Hello's checkpoint only counted if we were talking to the replica we expected.
        held = self._hello_checkpoint if welcome.replica_id == self.expected_peer else 0
        self._in_checkpoint = self._in_durable = held
        self._phase = "active"
        self.active = True
        return self._start_streaming(welcome.checkpoint)

    @property
    def accepts_view(self) -> bool:
        """Whether a received ``Changes`` may carry a view part: this side asked for
        flexible sync and announced :data:`FEATURE_CHANGES_VIEW`."""
        return FEATURE_CHANGES_VIEW in self.features and self.scope.get("subscriptions") is not None

    # ================================================================== inputs

    def handle(self, message: Message) -> list[Action]:
        """A message received from the peer (``MessageReceived.message``)."""
        if self.closed:
            return []
        if type(message) is Ack and self.active:
            return self._on_ack(message)   # (the usual message: what the checks below reach)
        if isinstance(message, (Close, Error)):
            self.closed = True
            self.active = False
            return []
        if isinstance(message, Hello):
            return self._on_hello(message)
        if isinstance(message, Welcome):
            return self._on_welcome(message)
        if isinstance(message, (CompensatingWrite, Subscribe, SubscriptionState, ViewUpdate, ViewAck)):
            return [Notify(message)]
        if not self.active:
            return [Fail(ProtocolError(f"{message.TAG} before the handshake",
                                       code=ErrorCode.UNEXPECTED_MESSAGE))]
        if isinstance(message, Changes):
            return self._on_changes(message)
        if isinstance(message, Snapshot):
            return self._on_snapshot(message)
        if isinstance(message, Ack):
            return self._on_ack(message)
        if isinstance(message, Descriptors):
            assert self.peer is not None
            return [Announce(self.peer, message.entries)] if message.entries else []
        return []  # Ping and Pong are the Link's

    def stop(self) -> None:
        """The connection ended (the Link reported ``Failed`` or ``Closed``, or the transport
        is gone): send nothing more. Results of actions already issued may still be fed in;
        they produce no ``Send``."""
        self.closed = True
        self.active = False

    def local_commit(self, seq: int) -> list[Action]:
        """The local log grew to ``seq`` (a local write, or transactions integrated from
        another peer): stream the new entries."""
        if self._head is None or seq > self._head:
            self._head = seq
        if not self.active or self.closed:
            return []
        return self._pump()

    # ================================================================== streaming out

    def _start_streaming(self, checkpoint: int) -> list[Action]:
        assert self.peer is not None
        self._read_to = self._sent_to = self._acked_seq = checkpoint
        self._announced_to = checkpoint
        return [RecordAck(self.peer, checkpoint), *self._pump()]

    def _pump(self) -> list[Action]:
        """Issue the reads the window allows."""
        if self.closed or not self.active:
            return []
        assert self.peer is not None
        if not self.descriptor_lookahead and not self._snapshotting:
            # Only the data stream (the server's case): what the general path below does then.
            if self._reading or len(self._inflight) >= self.window or (
                    self._first_sent and self._head is not None and self._read_to >= self._head):
                return []
            self._reading = True
            return [ReadLog(self._read_to, self.batch_limit, self.batch_bytes, self._peer_scope, self.peer)]
        actions: list[Action] = []
        if self._snapshotting:
            if (not self._snap_reading and self._snap_as_of_done() is None
                    and len(self._snap_inflight) + len(self._inflight) < self.snapshot_window):
                self._snap_reading = True
                actions.append(ReadSnapshot(self._peer_scope, self._snap_cursor,
                                            self.snapshot_limit, self.batch_bytes))
            return actions
        caught_up = self._head is not None and self._read_to >= self._head
        start = max(self._announced_to, self._read_to)
        if (self.descriptor_lookahead and not self._reading_descriptors
                and len(self._announced) < self.descriptor_lookahead
                and (self._head is None or start < self._head)
                and start != self._descriptors_stuck_at):
            self._reading_descriptors = True
            self._descriptors_after = start
            actions.append(ReadDescriptors(start, self.descriptor_lookahead - len(self._announced),
                                           self._peer_scope, self.peer))
        if (not self._reading and len(self._inflight) < self.window
                and (not caught_up or not self._first_sent)):
            self._reading = True
            actions.append(ReadLog(self._read_to, self.batch_limit, self.batch_bytes,
                                   self._peer_scope, self.peer))
        return actions

    def log_read(self, batch: LogBatch) -> list[Action]:
        """The result of a :class:`~.actions.ReadLog`."""
        if not self._reading:
            raise UsageError("log_read() without a pending ReadLog")
        self._reading = False
        if self.closed:
            return []
        assert self.peer is not None
        if batch.snapshot_required:
            self._snapshotting = True
            self._snap_cursor, self._snap_page, self._snap_as_of = None, 0, None
            return self._pump()
        if not self._first_sent and batch.head < self._read_to:
            # The peer holds more of our log than we have: our log was reset (restored from
            # an old backup). Send it all again; the peer drops what it already has.
            self._head = batch.head
            self._read_to = self._sent_to = self._announced_to = 0
            self._announced.clear()
            return self._pump()
        if batch.scanned_to < self._read_to or (
                batch.scanned_to == self._read_to and batch.more and not batch.entries):
            raise UsageError(f"read_log after {self._read_to} made no progress (scanned to "
                             f"{batch.scanned_to}, head {batch.head}): a Replica bug")
        if self._head is None or batch.head > self._head:
            self._head = batch.head
        actions: list[Action] = []
        if self.descriptor_lookahead:
            fresh = tuple((seq, txn.descriptor()) for seq, txn in batch.entries
                          if seq > self._announced_to)
            if fresh:
                actions.append(Send(Descriptors(fresh)))
            self._announced_to = max(self._announced_to, batch.scanned_to)
            while self._announced and self._announced[0] <= batch.scanned_to:
                self._announced.popleft()
        if batch.entries or batch.scanned_to > self._sent_to or not self._first_sent:
            head = max(self._head, batch.scanned_to)
            self._sent_txns += len(batch.entries)
            self._sent_bytes += batch.nbytes
            remaining = head - batch.scanned_to
            per_txn = self._sent_bytes // self._sent_txns if self._sent_txns else 0
            progress = Progress(self._sent_txns, self._sent_txns + remaining,
                                self._sent_bytes, self._sent_bytes + per_txn * remaining)
            changes = Changes(self._sent_to, batch.scanned_to, head, batch.entries, progress)
            self._inflight.append((batch.scanned_to, len(batch.entries), batch.nbytes))
            self._sent_to = batch.scanned_to
            self._first_sent = True
            actions.append(Send(changes))
        self._read_to = batch.scanned_to
        actions.extend(self._pump())
        return actions

    def descriptors_read(self, batch: DescriptorBatch) -> list[Action]:
        """The result of a :class:`~.actions.ReadDescriptors`."""
        if not self._reading_descriptors:
            raise UsageError("descriptors_read() without a pending ReadDescriptors")
        self._reading_descriptors = False
        if self.closed:
            return []
        if self._head is None or batch.head > self._head:
            self._head = batch.head
        if batch.scanned_to <= self._descriptors_after:
            # Nothing readable from there (e.g. compacted: the data stream will snapshot);
            # do not ask again from the same place.
            self._descriptors_stuck_at = self._descriptors_after
        fresh = tuple((seq, d) for seq, d in batch.entries if seq > self._announced_to)
        actions: list[Action] = []
        if fresh:
            actions.append(Send(Descriptors(fresh)))
            self._announced.extend(seq for seq, _ in fresh)
        self._announced_to = max(self._announced_to, batch.scanned_to)
        actions.extend(self._pump())
        return actions

    def _on_ack(self, ack: Ack) -> list[Action]:
        assert self.peer is not None
        if ack.snapshot_page is not None:
            return self._on_snapshot_ack(ack)
        if not self._inflight or self._inflight[0][0] != ack.seq:
            expected = self._inflight[0][0] if self._inflight else None
            return [_gap(f"Ack({ack.seq}) does not match the oldest unacknowledged batch "
                         f"(to_seq {expected})")]
        seq, txns, nbytes = self._inflight.popleft()
        self._acked_seq = seq
        self._acked_txns += txns
        self._acked_bytes += nbytes
        assert self._head is not None
        remaining = max(0, self._head - self._sent_to)
        per_txn = self._sent_bytes // self._sent_txns if self._sent_txns else 0
        actions: list[Action] = [
            RecordAck(self.peer, seq),
            ReportProgress(UPLOAD, self._acked_txns, self._sent_txns + remaining,
                           self._acked_bytes, self._sent_bytes + per_txn * remaining),
        ]
        if (not self._inflight and not self._reading and not self._snapshotting
                and self._sent_to >= self._head):
            self._upload_complete_at = seq
            actions.append(UploadComplete(seq))
        actions.extend(self._pump())
        return actions

    @property
    def upload_complete(self) -> bool:
        """True when the peer has acknowledged everything up to our latest known head."""
        return (self._upload_complete_at is not None and self._head is not None
                and self._upload_complete_at >= self._head and not self._inflight)

    # -- outgoing snapshot

    def _snap_as_of_done(self) -> int | None:
        """The as_of of the final page once it has been read, else None."""
        if self._snap_inflight and self._snap_inflight[-1][1]:
            return self._snap_inflight[-1][2]
        return None

    def snapshot_read(self, page: SnapshotPage) -> list[Action]:
        """The result of a :class:`~.actions.ReadSnapshot`."""
        if not self._snap_reading:
            raise UsageError("snapshot_read() without a pending ReadSnapshot")
        self._snap_reading = False
        if self.closed:
            return []
        as_of = page.as_of_seq if self._snap_as_of is None else min(self._snap_as_of, page.as_of_seq)
        self._snap_as_of = as_of
        done = page.cursor is None
        self._snap_sent_docs += len(page.docs)
        self._snap_sent_bytes += page.nbytes
        total = max(page.estimate, self._snap_sent_docs)
        message = Snapshot(self._snap_page, page.docs, as_of, done,
                           Progress(self._snap_sent_docs, total, self._snap_sent_bytes,
                                    self._snap_sent_bytes),
                           json_docs=FEATURE_SNAPSHOT_JSON in self.peer_features,
                           columns=FEATURE_SNAPSHOT_COLUMNS in self.peer_features)
        self._snap_inflight.append((self._snap_page, done, as_of))
        self._snap_page += 1
        self._snap_cursor = page.cursor
        actions: list[Action] = [Send(message)]
        actions.extend(self._pump())
        return actions

    def _on_snapshot_ack(self, ack: Ack) -> list[Action]:
        assert self.peer is not None
        if not self._snap_inflight or self._snap_inflight[0][0] != ack.snapshot_page:
            return [_gap(f"Ack of snapshot page {ack.snapshot_page} was not expected")]
        _, done, as_of = self._snap_inflight.popleft()
        if not done:
            return self._pump()
        if ack.seq != as_of:
            return [_gap(f"Ack of the last snapshot page says {ack.seq}, expected {as_of}")]
        # The snapshot is in; continue with the log after it.
        self._snapshotting = False
        self._read_to = self._sent_to = self._acked_seq = self._announced_to = as_of
        self._announced.clear()
        self._first_sent = False
        return [RecordAck(self.peer, as_of), *self._pump()]

    # ================================================================== receiving

    def _on_changes(self, changes: Changes) -> list[Action]:
        assert self.peer is not None
        if changes.view is not None and not self.accepts_view:
            return [Fail(ProtocolError("a changes message with a view part, which this side did not ask for",
                                       code=ErrorCode.MALFORMED_MESSAGE))]
        if self._in_snap_next is not None:
            return [_gap("Changes in the middle of a snapshot")]
        if self._in_expected is None:
            if changes.from_seq > self._in_checkpoint:
                return [_gap(f"the first Changes starts at {changes.from_seq}, after our "
                             f"checkpoint {self._in_checkpoint}")]
        elif changes.from_seq != self._in_expected:
            return [_gap(f"Changes starts at {changes.from_seq}, expected {self._in_expected}")]
        self._in_expected = changes.to_seq
        self._in_progress = changes.progress
        self._in_pending.append(("changes", changes.to_seq, changes.head, changes.progress, False))
        return [Integrate(tuple(changes.transactions), self.peer, changes.to_seq, changes.view)]

    def integrated(self, result: IntegrateResult) -> list[Action]:
        """The result of an :class:`~.actions.Integrate` (in issue order)."""
        if not self._in_pending or self._in_pending[0][0] != "changes":
            raise UsageError("integrated() without a pending Integrate")
        _, to_seq, head, progress, _ = self._in_pending.popleft()
        self._in_durable = to_seq
        self._in_integrated = progress
        actions: list[Action] = []
        if not self.closed:
            actions.append(Send(Ack(to_seq)))
        latest = self._in_progress
        actions.append(ReportProgress(DOWNLOAD, progress.sent, max(latest.total, progress.sent),
                                      progress.sent_bytes,
                                      max(latest.total_bytes, progress.sent_bytes)))
        if to_seq >= head and not self._in_pending:
            self.download_complete = True
            actions.append(DownloadComplete(to_seq))
        else:
            self.download_complete = False
        return actions

    def _on_snapshot(self, snap: Snapshot) -> list[Action]:
        assert self.peer is not None
        expected = 0 if self._in_snap_next is None else self._in_snap_next
        if snap.page != expected:
            return [_gap(f"Snapshot page {snap.page}, expected page {expected}")]
        self._in_snap_next = None if snap.done else snap.page + 1
        if snap.done:
            self._in_expected = snap.as_of_seq
        self.download_complete = False
        self._in_pending.append(("snapshot", snap.page, snap.as_of_seq, snap.progress, snap.done))
        return [IntegrateSnapshot(snap.docs, self.peer, snap.as_of_seq if snap.done else None)]

    def snapshot_integrated(self, result: SnapshotResult) -> list[Action]:
        """The result of an :class:`~.actions.IntegrateSnapshot` (in issue order)."""
        if not self._in_pending or self._in_pending[0][0] != "snapshot":
            raise UsageError("snapshot_integrated() without a pending IntegrateSnapshot")
        _, page, as_of, progress, done = self._in_pending.popleft()
        if done:
            self._in_durable = as_of
        report = ReportProgress(DOWNLOAD, progress.sent, max(progress.total, progress.sent),
                                progress.sent_bytes, max(progress.total_bytes, progress.sent_bytes))
        if self.closed:
            return [report]
        return [Send(Ack(self._in_durable, snapshot_page=page)), report]


def perform(action: Action, replica: Replica, replicator: Replicator) -> list[Action]:
    """Execute one storage action against ``replica`` and feed the result to ``replicator``.

    Returns:
        The replicator's follow-up actions. Non-storage actions (Send, notifications, Fail)
        are not handled here: they return an empty list untouched.
    """
    if isinstance(action, ReadCheckpoint):
        return replicator.checkpoint_read(replica.checkpoint(action.peer))
    if isinstance(action, ReadLog):
        return replicator.log_read(replica.read_log(
            action.after, limit=action.limit, max_bytes=action.max_bytes, scope=action.scope,
            exclude_origin=action.exclude_origin))
    if isinstance(action, ReadDescriptors):
        return replicator.descriptors_read(replica.read_descriptors(
            action.after, limit=action.limit, scope=action.scope,
            exclude_origin=action.exclude_origin))
    if isinstance(action, Integrate):
        if action.view is not None:
            raise UsageError("an Integrate with a view part needs the flexible-sync layer to apply it")
        return replicator.integrated(replica.integrate(
            action.txns, peer=action.peer, peer_seq=action.peer_seq))
    if isinstance(action, ReadSnapshot):
        return replicator.snapshot_read(replica.read_snapshot(
            action.scope, cursor=action.cursor, limit=action.limit, max_bytes=action.max_bytes))
    if isinstance(action, IntegrateSnapshot):
        return replicator.snapshot_integrated(replica.integrate_snapshot(
            action.docs, peer=action.peer, as_of_seq=action.as_of_seq))
    if isinstance(action, RecordAck):
        replica.record_ack(action.peer, action.seq)
    return []
