"""Lightweight flexible-sync protocol clients for the flexible-sync benchmarks.

Each :class:`FlexClient` is a real protocol peer: a WebSocket (``websockets``' asyncio client),
the same sans-I/O :class:`~tidesync.protocol.link.Link` and
:class:`~tidesync.protocol.replicator.Replicator` a device runs, a flexible ``Hello`` scope,
and an in-memory replica (:class:`ViewReplica`) that applies ``ViewUpdate`` messages and the view part of ``Changes`` (documents
entering whole, leaving by key) and the operations of ``Changes``, and answers ``ViewAck`` --
so a thousand of them fit in one process. It counts the bytes of every payload it receives, by
message type. :class:`Writer` uploads a prepared list of transactions as fast as the server
acknowledges them.

Run as a child process (the routing benchmark's fleet), driven by JSON lines::

    python -m bench.flexible_clients URL N JSON-WORKLOAD
    stdout  {"event": "ready", "connected": N, "synced": N, "seconds": s, ...}
    stdin   {"cmd": "final", "timeout": 120}
    stdout  {"converged": N, "done_at": t, "wrong": 0, ...}   once every client holds exactly
                                                                the documents it should, with
                                                                their final values
    stdin   {"cmd": "quit"}
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import secrets
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from bench.sync_clients import CheckpointBook
from tidesync.core.clock import HybridClock
from tidesync.core.operations import CreateDoc, DeleteDoc, SetValue
from tidesync.core.stamp import ZERO, ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.protocol.actions import (
    Announce, DownloadComplete, Fail, Integrate, Notify, ReportProgress, Send, UploadComplete,
)
from tidesync.protocol.events import Closed, Failed, MessageReceived
from tidesync.protocol.link import Link
from tidesync.protocol.messages import (
    Scope, SnapshotDoc, Subscribe, SubscriptionQuery, SubscriptionState, ViewAck, ViewPart, ViewUpdate,
)
from tidesync.protocol.replica import (
    DescriptorBatch, IntegrateResult, LogBatch, SnapshotResult,
)
from tidesync.protocol.replicator import Replicator, perform
from tidesync.protocol.states import Role

COLLECTION = "Task"


# -- the routing workload (shared by the bench process and the fleet) -----------------------------


def workload_doc(k: int, clients: int) -> dict[str, Any]:
    return {"_id": f"t{k:06d}", "owner": f"u{k % clients}", "region": f"r{(k * 7 + 3) % clients}",
            "team": f"g{k % 100}", "status": "urgent" if (k // 100) % 20 == 0 else "normal", "n": 0,
            "pad": "x" * 60}


def workload_queries(i: int) -> list[tuple[str, str]]:
    """Client ``i``'s three subscriptions."""
    return [("own", f'owner == "u{i}"'), ("region", f'region == "r{i}"'),
            ("team", f'team == "g{i % 100}" AND status == "urgent"')]


def workload_changes(changes: int, docs: int, seed: int, flip: float) -> list[tuple[int, bool]]:
    """(document, whether its status flips) for each change, deterministic."""
    rng = random.Random(seed)
    return [(rng.randrange(docs), rng.random() < flip) for _ in range(changes)]


def final_states(w: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """Every document's (n, status) after the workload."""
    docs = {f"t{k:06d}": [0, workload_doc(k, w["clients"])["status"]] for k in range(w["docs"])}
    for k, flip in workload_changes(w["changes"], w["docs"], w["seed"], w["flip"]):
        d = docs[f"t{k:06d}"]
        d[0] += 1
        if flip:
            d[1] = "normal" if d[1] == "urgent" else "urgent"
    return {key: (n, status) for key, (n, status) in docs.items()}


def expected_view(i: int, w: dict[str, Any], final: dict[str, tuple[int, str]]) -> dict[str, int]:
    """Client ``i``'s documents after the workload: id -> n."""
    out = {}
    c = w["clients"]
    for k in range(w["docs"]):
        key = f"t{k:06d}"
        n, status = final[key]
        if k % c == i or (k * 7 + 3) % c == i or (k % 100 == i % 100 and status == "urgent"):
            out[key] = n
    return out


def writer_transactions(w: dict[str, Any], rid: ReplicaId, parents: tuple[str, ...]) -> list[Transaction]:
    """The workload as transactions of the replica ``rid`` that created the documents (so no
    write overwrites another replica's value: what is measured is routing, not conflict
    detection), one per change, continuing its history after ``parents``."""
    clock = HybridClock(rid, lambda: time.time_ns() // 1_000_000)
    n = [0] * w["docs"]
    status = [workload_doc(k, w["clients"])["status"] for k in range(w["docs"])]
    txns = []
    for k, flip in workload_changes(w["changes"], w["docs"], w["seed"], w["flip"]):
        key = f"t{k:06d}"
        n[k] += 1
        s = clock.now()
        ops: list[Any] = [SetValue(COLLECTION, key, s, ZERO, ("n",), (), n[k])]
        if flip:
            status[k] = "normal" if status[k] == "urgent" else "urgent"
            ops.append(SetValue(COLLECTION, key, clock.now(), ZERO, ("status",), (), status[k]))
        t = Transaction(s, rid, s, parents, tuple(ops))  # type: ignore[arg-type]
        parents = (t.id,)
        txns.append(t)
    return txns


# -- an in-memory flexible replica ------------------------------------------------------------------


class ViewReplica(CheckpointBook):
    """Receives only: checkpoints, documents (their latest fields) and the view's number."""

    def __init__(self, rid: ReplicaId) -> None:
        super().__init__()
        self.replica_id = rid
        self.docs: dict[Any, dict[str, Any]] = {}
        self.view_seq = 0
        self.changes = 0          # operations applied from Changes
        self.entered = 0
        self.left = 0

    def head_seq(self) -> int:
        return 0

    def read_log(self, after: int, *, limit: int, max_bytes: int, scope: Scope,
                 exclude_origin: ReplicaId | None) -> LogBatch:
        return LogBatch((), after, max(after, 0))

    def read_descriptors(self, after: int, *, limit: int, scope: Scope,
                         exclude_origin: ReplicaId | None) -> DescriptorBatch:
        return DescriptorBatch((), after, max(after, 0))

    def integrate(self, txns: Sequence[Transaction], *, peer: ReplicaId, peer_seq: int) -> IntegrateResult:
        docs = self.docs
        for txn in txns:
            for op in txn.ops:
                if isinstance(op, SetValue):
                    body = docs.get(op.key)
                    if body is not None:
                        body[op.path[0]] = op.value
                    self.changes += 1
                elif isinstance(op, CreateDoc):
                    docs[op.key] = dict(op.fields)
                    self.changes += 1
                elif isinstance(op, DeleteDoc):
                    docs.pop(op.key, None)
                    self.changes += 1
        self.record_received(peer, peer_seq)
        return IntegrateResult(len(txns))

    def integrate_snapshot(self, docs: Sequence[SnapshotDoc], *, peer: ReplicaId,
                           as_of_seq: int | None) -> SnapshotResult:
        for d in docs:
            self.docs[d.key] = dict(d.state.get("body", {}))
        if as_of_seq is not None:
            self.record_received(peer, as_of_seq)
        return SnapshotResult(len(docs))

    def apply_view(self, update: ViewUpdate | ViewPart) -> None:
        for d in update.enter:
            self.docs[d.key] = dict(d.state["body"])
        for _, key in update.leave:
            self.docs.pop(key, None)
        self.entered += len(update.enter)
        self.left += len(update.leave)
        self.view_seq = update.view_seq


# -- clients --------------------------------------------------------------------------------------


def sync_url(url: str, app_id: str = "default") -> str:
    return ("wss://" if url.startswith("https") else "ws://") + url.split("://", 1)[1] + f"/api/{app_id}/sync"


def queries_of(pairs: Sequence[tuple[str, str]]) -> tuple[SubscriptionQuery, ...]:
    return tuple(SubscriptionQuery(name, COLLECTION, text) for name, text in pairs)


class FlexClient:
    """One flexible-sync connection: WebSocket + Link + Replicator + ViewReplica."""

    def __init__(self, url: str, token: str, queries: Sequence[tuple[str, str]], *,
                 on_change: Any = None) -> None:
        self.url = url
        self.token = token
        self.replica = ViewReplica(ReplicaId(secrets.token_hex(8)))
        self.version = 1
        self.queries = queries_of(queries)
        self.states: dict[int, tuple[str, str | None]] = {}
        self.state_changed = asyncio.Event()
        self.ready = asyncio.Event()       # the first set is complete
        self.ended = asyncio.Event()
        self.error: str | None = None
        self.bytes_by_type: dict[str, int] = {}
        self.messages_by_type: dict[str, int] = {}
        self.busy = 0.0
        self._on_change = on_change
        self._ws: Any = None
        self._link: Link | None = None
        self._replicator: Replicator | None = None

    @property
    def bytes_received(self) -> int:
        return sum(self.bytes_by_type.values())

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        try:
            async with connect(self.url, max_size=None, compression=None, ping_interval=None,
                               open_timeout=120, close_timeout=2) as ws:
                self._ws = ws
                link = self._link = Link(Role.INITIATOR)
                scope = {"subscriptions": [{"set_id": 1, "version": self.version, "view_seq": 0,
                                            "queries": [q.to_wire() for q in self.queries]}]}
                replicator = self._replicator = Replicator(self.replica.replica_id, Role.INITIATOR, scope=scope,
                                                           token=self.token, info={"sdk": "bench-flex"})
                self._execute(replicator.start(), link, replicator)
                for out in link.data_to_send():
                    await ws.send(out)
                async for payload in ws:
                    now = time.thread_time()
                    data = payload if isinstance(payload, bytes) else payload.encode()
                    link.receive(data)
                    for event in link.events_received():
                        if isinstance(event, MessageReceived):
                            tag = event.message.TAG
                            self.bytes_by_type[tag] = self.bytes_by_type.get(tag, 0) + len(data)
                            self.messages_by_type[tag] = self.messages_by_type.get(tag, 0) + 1
                            self._execute(replicator.handle(event.message), link, replicator)
                        elif isinstance(event, (Failed, Closed)):
                            replicator.stop()
                            if isinstance(event, Failed) and self.error is None:
                                self.error = f"{event.error.code}: {event.error}"
                    self.busy += time.thread_time() - now
                    for out in link.data_to_send():
                        await ws.send(out)
                    if self._on_change is not None:
                        self._on_change(self)
                    if link.finished:
                        break
        except Exception as exc:  # noqa: BLE001 - reported, the fleet goes on
            if self.error is None:
                self.error = repr(exc)
        finally:
            self.ended.set()
            self.ready.set()
            self.state_changed.set()

    async def subscribe(self, queries: Sequence[tuple[str, str]]) -> int:
        """Send a new subscription set version; returns its number."""
        assert self._link is not None and self._ws is not None
        self.version += 1
        self.queries = queries_of(queries)
        self._link.send(Subscribe(1, self.version, self.queries))
        for out in self._link.data_to_send():
            await self._ws.send(out)
        return self.version

    async def wait_state(self, version: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.states.get(version, ("pending", None))[0]
            if state in ("complete", "error") or self.ended.is_set():
                return state
            self.state_changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"subscription set v{version} still {state}")
            try:
                await asyncio.wait_for(self.state_changed.wait(), remaining)
            except TimeoutError:
                pass

    def _execute(self, actions: list[Any], link: Link, replicator: Replicator) -> None:
        todo = deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, Send):
                if link.can_send(action.message):
                    link.send(action.message)
            elif isinstance(action, Fail):
                link.fail(action.error)
            elif isinstance(action, Notify):
                m = action.message
                if isinstance(m, ViewUpdate):
                    self.replica.apply_view(m)
                    if link.can_send(ViewAck):
                        link.send(ViewAck(m.view_seq))
                elif isinstance(m, SubscriptionState):
                    self.states[m.version] = (m.state.value, m.message)
                    if m.version == 1 and m.state.value in ("complete", "error"):
                        self.ready.set()
                    self.state_changed.set()
            elif isinstance(action, (ReportProgress, UploadComplete, DownloadComplete, Announce)):
                pass
            elif isinstance(action, Integrate) and action.view is not None:
                # changes_view: the view part first, then the batch, acknowledged by its Ack.
                self.replica.apply_view(action.view)
                todo.extendleft(reversed(replicator.integrated(
                    self.replica.integrate(action.txns, peer=action.peer, peer_seq=action.peer_seq))))
            else:
                todo.extendleft(reversed(perform(action, self.replica, replicator)))

    async def close(self) -> None:
        if self._ws is not None:
            try:
                await self._ws.close()
            except Exception:  # noqa: BLE001
                pass


class _WriterReplica(CheckpointBook):
    """Holds a prepared log; only sends."""

    def __init__(self, rid: ReplicaId, txns: list[Transaction], server_id: ReplicaId | None = None,
                 held: int = 0) -> None:
        super().__init__()
        if server_id is not None:
            self.record_received(server_id, held)
        self.replica_id = rid
        self.txns = txns
        self.first_read: float | None = None

    def head_seq(self) -> int:
        return len(self.txns)

    def read_log(self, after: int, *, limit: int, max_bytes: int, scope: Scope,
                 exclude_origin: ReplicaId | None) -> LogBatch:
        if self.first_read is None and after < len(self.txns):
            self.first_read = time.monotonic()
        upto = min(len(self.txns), after + limit)
        return LogBatch(tuple((i + 1, self.txns[i]) for i in range(after, upto)), upto, len(self.txns),
                        120 * (upto - after))

    def read_descriptors(self, after: int, *, limit: int, scope: Scope,
                         exclude_origin: ReplicaId | None) -> DescriptorBatch:
        return DescriptorBatch((), after, len(self.txns))

    def integrate(self, txns: Sequence[Transaction], *, peer: ReplicaId, peer_seq: int) -> IntegrateResult:
        self.record_received(peer, peer_seq)
        return IntegrateResult(0)

    def integrate_snapshot(self, docs: Sequence[SnapshotDoc], *, peer: ReplicaId,
                           as_of_seq: int | None) -> SnapshotResult:
        if as_of_seq is not None:
            self.record_received(peer, as_of_seq)
        return SnapshotResult(0)


class Writer:
    """Uploads prepared transactions (scope ``{}``: a development-mode server's unrestricted
    peer) and reports when the server acknowledged the last one."""

    def __init__(self, url: str, token: str, txns: list[Transaction], *, server_id: ReplicaId | None = None,
                 held: int = 0) -> None:
        """``server_id``, ``held``: the server's replica id and how much of its log the
        writer already holds (its own seeded transactions), said in its ``Hello``."""
        self.url = url
        self.token = token
        self.server_id = server_id
        self.replica = _WriterReplica(txns[0].origin if txns else ReplicaId(secrets.token_hex(8)), txns,
                                      server_id, held)
        self.uploaded = asyncio.Event()
        self.uploaded_at = 0.0
        self.error: str | None = None

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        try:
            async with connect(self.url, max_size=None, compression=None, ping_interval=None,
                               open_timeout=60, close_timeout=2) as ws:
                link = Link(Role.INITIATOR)
                replicator = Replicator(self.replica.replica_id, Role.INITIATOR, scope={}, token=self.token,
                                        info={"sdk": "bench-writer"}, expected_peer=self.server_id)
                todo = deque(replicator.start())

                def run_actions() -> None:
                    while todo:
                        action = todo.popleft()
                        if isinstance(action, Send):
                            if link.can_send(action.message):
                                link.send(action.message)
                        elif isinstance(action, Fail):
                            link.fail(action.error)
                        elif isinstance(action, UploadComplete):
                            if action.seq >= len(self.replica.txns) and not self.uploaded.is_set():
                                self.uploaded_at = time.monotonic()
                                self.uploaded.set()
                        elif isinstance(action, (ReportProgress, DownloadComplete, Announce, Notify)):
                            pass
                        else:
                            todo.extendleft(reversed(perform(action, self.replica, replicator)))

                run_actions()
                for out in link.data_to_send():
                    await ws.send(out)
                async for payload in ws:
                    link.receive(payload if isinstance(payload, bytes) else payload.encode())
                    for event in link.events_received():
                        if isinstance(event, MessageReceived):
                            todo.extend(replicator.handle(event.message))
                        elif isinstance(event, (Failed, Closed)):
                            replicator.stop()
                            if isinstance(event, Failed):
                                self.error = f"{event.error.code}: {event.error}"
                    run_actions()
                    for out in link.data_to_send():
                        await ws.send(out)
                    if link.finished:
                        break
        except Exception as exc:  # noqa: BLE001
            if self.error is None:
                self.error = repr(exc)
        finally:
            self.uploaded.set()


def login(url: str) -> str:
    import tidesync

    app = tidesync.App("default", base_url=url, storage_dir=tempfile.mkdtemp(prefix="tidesync-flex-"))
    return app.log_in(tidesync.Credentials.anonymous()).access_token  # type: ignore[no-any-return]


# -- the fleet process ----------------------------------------------------------------------------


class Fleet:
    def __init__(self, url: str, token: str, w: dict[str, Any], first: int, count: int) -> None:
        self.url = sync_url(url)
        self.token = token
        self.w = w
        self.first = first
        self.count = count
        self.clients: list[FlexClient] = []
        self.expected: list[dict[str, int]] = []
        self.converged_at: dict[int, float] = {}
        self.all_converged = asyncio.Event()

    def _check(self, c: FlexClient) -> None:
        i = c.index  # type: ignore[attr-defined]
        if i in self.converged_at:
            return
        exp = self.expected[i - self.first]
        docs = c.replica.docs
        if len(docs) != len(exp):
            return
        for key, n in exp.items():
            body = docs.get(key)
            if body is None or body.get("n") != n:
                return
        self.converged_at[i] = time.monotonic()
        if len(self.converged_at) >= len(self.clients):
            self.all_converged.set()

    async def connect(self, concurrency: int, timeout: float) -> float:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(concurrency)
        final = final_states(self.w)
        self.expected = [expected_view(i, self.w, final) for i in range(self.first, self.first + self.count)]

        async def one(i: int) -> None:
            async with sem:
                c = FlexClient(self.url, self.token, workload_queries(i), on_change=self._maybe_check)
                c.index = i  # type: ignore[attr-defined]
                self.clients.append(c)
                asyncio.get_running_loop().create_task(c.run())
                await c.ready.wait()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(self.first, self.first + self.count))),
                               timeout)
        return time.monotonic() - t0

    def _maybe_check(self, c: FlexClient) -> None:
        if self.watching:
            self._check(c)

    watching = False

    async def final(self, timeout: float) -> dict[str, Any]:
        self.watching = True
        before: dict[str, int] = {}
        for c in self.clients:
            for tag, n in c.messages_by_type.items():
                before[tag] = before.get(tag, 0) + n
        for c in self.clients:
            self._check(c)
        try:
            await asyncio.wait_for(self.all_converged.wait(), timeout)
        except TimeoutError:
            pass
        wrong = missing = 0
        for c in self.clients:
            exp = self.expected[c.index - self.first]  # type: ignore[attr-defined]
            docs = c.replica.docs
            wrong += sum(1 for k in docs if k not in exp)
            missing += sum(1 for k, n in exp.items() if k not in docs or docs[k].get("n") != n)
        messages: dict[str, int] = {}
        for c in self.clients:
            for tag, n in c.messages_by_type.items():
                messages[tag] = messages.get(tag, 0) + n
        times = list(self.converged_at.values())
        return {"converged": len(times), "clients": len(self.clients), "done_at": max(times) if times else 0.0,
                "wrong_docs": wrong, "missing_or_stale": missing,
                "entered": sum(c.replica.entered for c in self.clients),
                "left": sum(c.replica.left for c in self.clients),
                "ops": sum(c.replica.changes for c in self.clients),
                "bytes": sum(c.bytes_received for c in self.clients),
                "busy_s": sum(c.busy for c in self.clients),
                "messages": {tag: n - before.get(tag, 0) for tag, n in sorted(messages.items())},
                "errors": [c.error for c in self.clients if c.error][:5]}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main(url: str, first: int, count: int, w: dict[str, Any]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(count + 256, soft)), hard))
    fleet = Fleet(url, await asyncio.to_thread(login, url), w, first, count)
    try:
        seconds = await fleet.connect(50, timeout=max(120.0, count * 0.3))
    except TimeoutError:
        seconds = -1.0
    _emit({"event": "ready", "connected": sum(not c.ended.is_set() for c in fleet.clients),
           "synced": sum(c.states.get(1, ("", None))[0] == "complete" for c in fleet.clients),
           "seconds": seconds, "docs": sum(len(c.replica.docs) for c in fleet.clients),
           "bytes": sum(c.bytes_received for c in fleet.clients),
           "errors": [c.error for c in fleet.clients if c.error][:5], "pid": os.getpid()})
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "final":
            _emit(await fleet.final(float(cmd.get("timeout", 60))))
        elif cmd["cmd"] == "quit":
            break
    await asyncio.wait_for(asyncio.gather(*(c.close() for c in fleet.clients), return_exceptions=True), 30)
    _emit({"event": "bye"})


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])))
