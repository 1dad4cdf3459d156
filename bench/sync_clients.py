"""A fleet of lightweight sync clients in one asyncio process, for the sync benchmarks.

Each client is a real protocol peer: a WebSocket (``websockets``' asyncio client), the same
sans-I/O :class:`~tidesync.protocol.link.Link` and :class:`~tidesync.protocol.replicator.Replicator`
a device runs, and an in-memory replica (:class:`MiniReplica`) instead of a SQLite file, so a
thousand of them fit in one process without a thread each. They bootstrap, download, integrate
and acknowledge exactly like a device; they never write.

Run as a child process, driven by JSON lines::

    python -m bench.sync_clients URL N PARTITION       (PARTITION "own": one per client)
    stdout  {"event": "ready", "connected": N, ...}      once every client is connected and synced
    stdin   {"cmd": "collect", "marker": "fan-3", "timeout": 10}
    stdout  {"marker": "fan-3", "times": [...], "missing": 0, ...}
    stdin   {"cmd": "quit"}

``times`` are ``time.monotonic()`` values (one clock for every process on Linux) taken when the
WebSocket message carrying the marker document was delivered to the client, before decoding.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from tidesync.core.operations import CreateDoc
from tidesync.core.stamp import ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.protocol.actions import (
    Announce, DownloadComplete, Fail, Notify, ReportProgress, Send, UploadComplete,
)
from tidesync.protocol.events import Closed, Failed, MessageReceived
from tidesync.protocol.link import Link
from tidesync.protocol.messages import Scope, SnapshotDoc
from tidesync.protocol.replica import (
    Checkpoint, DescriptorBatch, IntegrateResult, LogBatch, SnapshotPage, SnapshotResult,
)
from tidesync.protocol.replicator import Replicator, perform
from tidesync.protocol.states import Role

MARKER_PREFIX = "fan-"


class CheckpointBook:
    """The checkpoints of an in-memory bench replica, and its (empty) snapshot: what every
    replica of the client fleets shares."""

    def __init__(self) -> None:
        self.checkpoints: dict[ReplicaId, Checkpoint] = {}

    def checkpoint(self, peer: ReplicaId) -> Checkpoint:
        return self.checkpoints.get(peer, Checkpoint())

    def record_ack(self, peer: ReplicaId, seq: int) -> None:
        self.checkpoints[peer] = Checkpoint(self.checkpoint(peer).received, seq)

    def record_received(self, peer: ReplicaId, seq: int) -> None:
        self.checkpoints[peer] = Checkpoint(seq, self.checkpoint(peer).acked)

    def read_snapshot(self, scope: Scope, *, cursor: object | None, limit: int, max_bytes: int) -> SnapshotPage:
        return SnapshotPage((), None, 0)


class MiniReplica(CheckpointBook):
    """An in-memory replica that only receives: checkpoints, the documents' latest fields, and
    a hook called for every marker document integrated."""

    def __init__(self, rid: ReplicaId, on_marker: Callable[[str], None]) -> None:
        super().__init__()
        self.replica_id = rid
        self.docs: dict[Any, dict[str, Any]] = {}
        self.txns = 0
        self._on_marker = on_marker

    def head_seq(self) -> int:
        return 0

    def read_log(self, after: int, *, limit: int, max_bytes: int, scope: Scope,
                 exclude_origin: ReplicaId | None) -> LogBatch:
        return LogBatch((), after, max(after, 0))

    def read_descriptors(self, after: int, *, limit: int, scope: Scope,
                         exclude_origin: ReplicaId | None) -> DescriptorBatch:
        return DescriptorBatch((), after, max(after, 0))

    def integrate(self, txns: Sequence[Transaction], *, peer: ReplicaId, peer_seq: int) -> IntegrateResult:
        for txn in txns:
            self.txns += 1
            for op in txn.ops:
                key = op.key
                if isinstance(op, CreateDoc):
                    self.docs[key] = dict(op.fields)
                    if isinstance(key, str) and key.startswith(MARKER_PREFIX):
                        self._on_marker(key)
        self.record_received(peer, peer_seq)
        return IntegrateResult(len(txns))

    def integrate_snapshot(self, docs: Sequence[SnapshotDoc], *, peer: ReplicaId,
                           as_of_seq: int | None) -> SnapshotResult:
        for d in docs:
            self.docs[d.key] = d.state.get("body", {})
        if as_of_seq is not None:
            self.record_received(peer, as_of_seq)
        return SnapshotResult(len(docs))


class LightClient:
    """One connection: WebSocket + Link + Replicator + MiniReplica."""

    def __init__(self, index: int, fleet: Fleet) -> None:
        self.index = index
        self.fleet = fleet
        self.replica = MiniReplica(ReplicaId(secrets.token_hex(8)), self._marker)
        self.synced = asyncio.Event()
        self.ended = asyncio.Event()
        self.error: str | None = None
        self._frame_time = 0.0
        self._ws: Any = None

    def _marker(self, key: str) -> None:
        self.fleet.arrived(key, self.index, self._frame_time)

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        fleet = self.fleet
        try:
            async with connect(fleet.sync_url, max_size=None, compression=None, ping_interval=None,
                               open_timeout=60, close_timeout=2) as ws:
                self._ws = ws
                link = Link(Role.INITIATOR)
                replicator = Replicator(self.replica.replica_id, Role.INITIATOR, scope=fleet.scope_of(self.index),
                                        token=fleet.token, info={"sdk": "bench-light"})
                self._execute(replicator.start(), link, replicator)
                for out in link.data_to_send():
                    await ws.send(out)
                async for payload in ws:
                    self._frame_time = time.monotonic()
                    now = time.thread_time()
                    link.receive(payload if isinstance(payload, bytes) else payload.encode())
                    for event in link.events_received():
                        if isinstance(event, MessageReceived):
                            self._execute(replicator.handle(event.message), link, replicator)
                        elif isinstance(event, (Failed, Closed)):
                            replicator.stop()
                            if isinstance(event, Failed) and self.error is None:
                                self.error = f"{event.error.code}: {event.error}"
                    fleet.busy += time.thread_time() - now
                    for out in link.data_to_send():
                        await ws.send(out)
                    if link.finished:
                        break
        except Exception as exc:  # noqa: BLE001 - reported, the fleet goes on
            if self.error is None:
                self.error = repr(exc)
        finally:
            self.ended.set()
            fleet.ended += 1
            self.synced.set()  # never leave a waiter hanging

    def _execute(self, actions: list[Any], link: Link, replicator: Replicator) -> None:
        todo = deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, Send):
                if link.can_send(action.message):
                    link.send(action.message)
            elif isinstance(action, Fail):
                link.fail(action.error)
            elif isinstance(action, DownloadComplete):
                self.synced.set()
            elif isinstance(action, (ReportProgress, UploadComplete, Announce, Notify)):
                pass
            else:
                todo.extendleft(reversed(perform(action, self.replica, replicator)))

    async def close(self) -> None:
        if self._ws is not None:
            try:
                await self._ws.close()
            except Exception:  # noqa: BLE001
                pass


class Fleet:
    def __init__(self, url: str, partition: str, token: str) -> None:
        self.sync_url = "ws://" + url.split("://", 1)[1] + "/api/default/sync"
        self.partition = partition
        self.token = token
        self.clients: list[LightClient] = []
        self.arrivals: dict[str, dict[int, float]] = {}
        self.busy = 0.0  # seconds spent decoding, integrating and acknowledging
        self._waiters: dict[str, asyncio.Event] = {}
        self.ended = 0

    def scope_of(self, index: int) -> Scope:
        """Every client syncs ``partition``; with ``partition == "own"`` each its own."""
        value = f"own-{index}" if self.partition == "own" else self.partition
        return {"partition": {"key": "_partition", "value": value}}

    def arrived(self, marker: str, index: int, t: float) -> None:
        got = self.arrivals.setdefault(marker, {})
        got.setdefault(index, t)
        if len(got) >= self.live():
            ev = self._waiters.get(marker)
            if ev is not None:
                ev.set()

    def live(self) -> int:
        return len(self.clients) - self.ended

    async def connect(self, n: int, concurrency: int, timeout: float) -> float:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                c = LightClient(i, self)
                self.clients.append(c)
                asyncio.get_running_loop().create_task(c.run())
                await c.synced.wait()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout)
        return time.monotonic() - t0

    async def collect(self, marker: str, timeout: float) -> dict[str, Any]:
        ev = self._waiters.setdefault(marker, asyncio.Event())
        if len(self.arrivals.get(marker, {})) >= self.live():
            ev.set()
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            pass
        got = self.arrivals.get(marker, {})
        return {"marker": marker, "times": list(got.values()), "missing": len(self.clients) - len(got),
                "live": self.live(), "busy_s": self.busy}


def _login(url: str) -> str:
    import tidesync

    app = tidesync.App("default", base_url=url, storage_dir=tempfile.mkdtemp(prefix="tidesync-fleet-"))
    return app.log_in(tidesync.Credentials.anonymous()).access_token


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main(url: str, n: int, partition: str, concurrency: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(n + 256, soft)), hard))
    fleet = Fleet(url, partition, await asyncio.to_thread(_login, url))
    try:
        seconds = await fleet.connect(n, concurrency, timeout=max(60.0, n * 0.2))
    except TimeoutError:
        seconds = -1.0
    errors = [c.error for c in fleet.clients if c.error]
    _emit({"event": "ready", "connected": fleet.live(), "synced": sum(c.synced.is_set() for c in fleet.clients),
           "seconds": seconds, "errors": errors[:5], "pid": os.getpid()})
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "collect":
            _emit(await fleet.collect(cmd["marker"], float(cmd.get("timeout", 10))))
        elif cmd["cmd"] == "status":
            _emit({"live": fleet.live(), "busy_s": fleet.busy,
                   "errors": [c.error for c in fleet.clients if c.error][:5]})
        elif cmd["cmd"] == "quit":
            break
    await asyncio.wait_for(asyncio.gather(*(c.close() for c in fleet.clients), return_exceptions=True), 30)
    _emit({"event": "bye"})


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 50))
