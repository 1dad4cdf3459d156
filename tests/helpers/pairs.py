"""Two protocol stacks wired in memory (h11's ``ConnectionPair``, for replicas).

An :class:`Endpoint` is what a real driver is, minus the I/O: a :class:`~tidesync.protocol.Link`
and a :class:`~tidesync.protocol.Replicator` over a replica, executing the replicator's actions
in order. A :class:`SessionPair` connects two endpoints with two in-memory "wires" (queues of
payloads, delivered in order like a WebSocket), which a test can deliver step by step, run to
quiescence, or *cut* (payloads in flight are lost, both sides see the connection drop).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from tidesync.core.stamp import ReplicaId
from tidesync.protocol import (
    Action,
    Announce,
    Closed,
    DownloadComplete,
    Error,
    Event,
    Fail,
    Failed,
    Hello,
    Link,
    MessageReceived,
    Notify,
    ReportProgress,
    Role,
    Send,
    UploadComplete,
    perform,
)
from tidesync.protocol.replicator import Replicator
from tidesync.protocol.states import CLOSED

from .memory_replica import MemoryReplica

__all__ = ["Endpoint", "SessionPair"]

Authorize = Callable[[Hello], Error | None]


class Endpoint:
    """One side of a connection, driven synchronously.

    Args:
        replica: the replica this side syncs.
        role: INITIATOR or ACCEPTOR.
        authorize: (acceptor) called with the peer's ``Hello`` before the replicator sees it;
            return an ``Error`` to refuse the connection (what a server driver does with the
            token).
        link_options: keyword arguments for the Link (heartbeats are off unless given).
        replicator_options: keyword arguments for the Replicator.
    """

    def __init__(self, replica: MemoryReplica, role: Role, *, authorize: Authorize | None = None,
                 link_options: dict[str, Any] | None = None, **replicator_options: Any) -> None:
        self.replica = replica
        options = {"heartbeat_interval_ms": None, "handshake_timeout_ms": None, **(link_options or {})}
        self.link = Link(role, **options)
        self.replicator = Replicator(replica.replica_id, role, **replicator_options)
        self.authorize = authorize
        self.events: list[Event] = []
        self.notes: list[Action] = []
        self.sent: list[Any] = []
        self._queue: deque[Action] = deque()
        self._busy = False
        self._attached = True
        replica.listeners.append(self._on_commit)

    # -- what the test looks at

    @property
    def failure(self) -> Failed | None:
        return next((e for e in self.events if isinstance(e, Failed)), None)

    @property
    def closed(self) -> bool:
        return any(isinstance(e, Closed) for e in self.events)

    def notes_of(self, kind: type[Any]) -> list[Any]:
        return [n for n in self.notes if isinstance(n, kind)]

    @property
    def upload_complete(self) -> list[int]:
        return [n.seq for n in self.notes_of(UploadComplete)]

    @property
    def download_complete(self) -> list[int]:
        return [n.peer_seq for n in self.notes_of(DownloadComplete)]

    @property
    def progress(self) -> list[ReportProgress]:
        return self.notes_of(ReportProgress)

    # -- driver

    def start(self) -> None:
        self._run(self.replicator.start())

    def receive(self, payload: bytes) -> None:
        self.link.receive(payload)
        self._drain_events()

    def connection_lost(self) -> None:
        self.link.connection_lost()
        self._drain_events()
        self.detach()

    def detach(self) -> None:
        """Stop listening to the replica's commits (the connection is over)."""
        if self._attached:
            self.replica.listeners.remove(self._on_commit)
            self._attached = False

    def _on_commit(self, head: int) -> None:
        self._run(self.replicator.local_commit(head))

    def _drain_events(self) -> None:
        while events := self.link.events_received():
            for event in events:
                self.events.append(event)
                if isinstance(event, MessageReceived):
                    message = event.message
                    if isinstance(message, Hello) and self.authorize is not None:
                        refusal = self.authorize(message)
                        if refusal is not None:
                            self.link.send(refusal)
                            continue
                    self._run(self.replicator.handle(message))
                elif isinstance(event, (Failed, Closed)):
                    self.replicator.stop()
                    self.detach()

    def _run(self, actions: list[Action]) -> None:
        self._queue.extend(actions)
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                action = self._queue.popleft()
                if isinstance(action, Send):
                    if self.link.finished or self.link.our_state is CLOSED:
                        continue  # the connection ended under us; the next one resumes
                    self.sent.append(action.message)
                    self.link.send(action.message)
                elif isinstance(action, Fail):
                    self.link.fail(action.error)
                elif isinstance(action, (ReportProgress, UploadComplete, DownloadComplete,
                                         Announce, Notify)):
                    self.notes.append(action)
                else:
                    self._queue.extend(perform(action, self.replica, self.replicator))
        finally:
            self._busy = False
        self._drain_events()


class SessionPair:
    """Two endpoints and the two wires between them.

    ``a`` is the initiator, ``b`` the acceptor. ``a`` expects ``b``'s replica (as a device
    that synced with it before would) unless ``expected_peer`` says otherwise.
    """

    def __init__(self, a: MemoryReplica, b: MemoryReplica, *,
                 expected_peer: ReplicaId | None | bool = True,
                 a_options: dict[str, Any] | None = None, b_options: dict[str, Any] | None = None,
                 authorize: Authorize | None = None) -> None:
        expected = b.replica_id if expected_peer is True else (expected_peer or None)
        self.a = Endpoint(a, Role.INITIATOR, expected_peer=expected, **(a_options or {}))
        self.b = Endpoint(b, Role.ACCEPTOR, authorize=authorize, **(b_options or {}))
        #: payloads in flight towards each endpoint, in order
        self.wire: dict[Endpoint, deque[bytes]] = {self.a: deque(), self.b: deque()}
        self.delivered = 0
        self.cut_off = False

    def other(self, end: Endpoint) -> Endpoint:
        return self.b if end is self.a else self.a

    def start(self) -> None:
        self.a.start()
        self.b.start()
        self.collect()

    def collect(self) -> None:
        """Move what each link wants to send onto the wire towards the other."""
        if self.cut_off:
            return
        for end in (self.a, self.b):
            self.wire[self.other(end)].extend(end.link.data_to_send())

    def pending(self) -> int:
        self.collect()
        return len(self.wire[self.a]) + len(self.wire[self.b])

    def deliver(self, to: Endpoint) -> bool:
        """Deliver the oldest payload in flight towards ``to``; False if there is none."""
        self.collect()
        if not self.wire[to]:
            return False
        to.receive(self.wire[to].popleft())
        self.delivered += 1
        self.collect()
        return True

    def step(self, rng: random.Random | None = None) -> bool:
        """Deliver one payload, in a random direction if ``rng`` is given."""
        self.collect()
        ends = [e for e in (self.a, self.b) if self.wire[e]]
        if not ends:
            return False
        return self.deliver(rng.choice(ends) if rng else ends[0])

    def run(self, max_steps: int = 100_000) -> int:
        """Deliver until nothing is in flight; return the number of payloads delivered."""
        n = 0
        while n < max_steps:
            progressed = False
            for end in (self.a, self.b):
                if self.deliver(end):
                    progressed = True
                    n += 1
            if not progressed:
                return n
        raise AssertionError(f"no quiescence after {max_steps} payloads")

    def cut(self) -> None:
        """The connection drops: payloads in flight are lost, both sides learn it."""
        self.cut_off = True
        for end in (self.a, self.b):
            end.link.data_to_send()
            self.wire[end].clear()
            end.connection_lost()

    def close(self) -> None:
        """``a`` closes cleanly; run until both sides have closed."""
        from tidesync.protocol import Close

        self.a.link.send(Close("done"))
        self.run()
        for end in (self.a, self.b):
            end.detach()

    @property
    def live(self) -> bool:
        return not self.cut_off and not self.a.link.finished and not self.b.link.finished
