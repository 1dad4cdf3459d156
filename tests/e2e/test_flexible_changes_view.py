"""Flexible sync's ``changes_view`` feature over real connections: documents entering and
leaving a device's view ride in the round's ``changes`` (one ``ack`` for both) instead of a
``view_update`` and its ``view_ack``; a peer without the feature is served the old way; a view
part where none belongs is refused with a typed error and changes nothing; a connection (or the
server) lost in the middle of a round loses and duplicates nothing. Real server on 127.0.0.1."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import tidesync
from tests.helpers.flexible import T, Device, eventually, login
from tests.helpers.servers import running_server
from tidesync.server import ServerConfig, start_server
from tests.models import WorkOrder
from tidesync.core.operations import CreateDoc, DeleteDoc, SetValue
from tidesync.core.stamp import ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.core.values import canonical_json as ck
from tidesync.core.values import to_plain
from tidesync.protocol.actions import Fail, Integrate, Notify, Send
from tidesync.protocol.codec import decode, encode
from tidesync.protocol.events import Failed, MessageReceived
from tidesync.protocol.link import Link
from tidesync.protocol.messages import (
    FEATURE_SNAPSHOT_JSON, Changes, Error, Hello, SnapshotDoc, SubscriptionQuery, SubscriptionState, ViewAck,
    ViewPart, ViewUpdate,
)
from tidesync.protocol.replica import Checkpoint, IntegrateResult
from tidesync.protocol.replicator import Replicator, perform
from tidesync.protocol.states import Role

pytestmark = pytest.mark.slow


class RawFlex:
    """A flexible-sync peer on a raw WebSocket: the real Link and Replicator, an in-memory
    view (documents' latest fields), and counts of the messages it received by type.
    ``features=None``: the Replicator's own (``changes_view`` included)."""

    def __init__(self, user: tidesync.User, url: str, query: str, features: tuple[str, ...] | None = None) -> None:
        self.user, self.url, self.query, self.features = user, url, query, features
        self.replica_id = ReplicaId(secrets.token_hex(8))
        self.docs: dict[Any, dict[str, Any]] = {}
        self.view_seq = 0
        self.server: ReplicaId | None = None
        self.received = 0
        self.tags: Counter[str] = Counter()
        self.entered: Counter[Any] = Counter()
        self.ws: Any = None
        self.error: Error | None = None

    # the Replica protocol (what perform() needs)
    def checkpoint(self, peer: ReplicaId) -> Checkpoint:
        return Checkpoint(self.received, 0)

    def record_ack(self, peer: ReplicaId, seq: int) -> None:
        pass

    def integrate(self, txns: Sequence[Transaction], *, peer: ReplicaId, peer_seq: int) -> IntegrateResult:
        for txn in txns:
            for op in txn.ops:
                if isinstance(op, SetValue):
                    if ck(op.key) in self.docs:
                        self.docs[ck(op.key)][op.path[0]] = op.value
                elif isinstance(op, CreateDoc):
                    self.docs[ck(op.key)] = dict(op.fields)
                elif isinstance(op, DeleteDoc):
                    self.docs.pop(ck(op.key), None)
        self.received = peer_seq
        return IntegrateResult(len(txns))

    def apply_view(self, part: ViewUpdate | ViewPart) -> None:
        for d in part.enter:
            self.docs[ck(d.key)] = dict(d.state["body"])
            self.entered[ck(d.key)] += 1
        for _, key in part.leave:
            self.docs.pop(ck(key), None)
        self.view_seq = part.view_seq

    # the connection
    def open(self) -> None:
        self._cm = connect(self.url, max_size=None, compression=None)
        self.ws = self._cm.__enter__()
        self.link = Link(Role.INITIATOR)
        scope = {"subscriptions": [{"set_id": 1, "version": 1, "view_seq": self.view_seq,
                                    "queries": [SubscriptionQuery("q", "WorkOrder", self.query).to_wire()]}]}
        self.replicator = Replicator(self.replica_id, Role.INITIATOR, scope=scope, token=self.user.access_token,
                                     expected_peer=self.server)
        if self.features is not None:
            self.replicator.features = self.features
        self._run(self.replicator.start())
        self._flush()

    def close(self) -> None:
        if self.ws is not None:
            self._cm.__exit__(None, None, None)
            self.ws = None

    def _flush(self) -> None:
        for out in self.link.data_to_send():
            self.ws.send(out)

    def _run(self, actions: list[Any]) -> None:
        todo = list(actions)
        while todo:
            action = todo.pop(0)
            if isinstance(action, Send):
                if self.link.can_send(action.message):
                    self.link.send(action.message)
            elif isinstance(action, Fail):
                self.link.fail(action.error)
            elif isinstance(action, Notify):
                m = action.message
                if isinstance(m, ViewUpdate):
                    self.apply_view(m)
                    self.link.send(ViewAck(m.view_seq))
            elif isinstance(action, Integrate) and action.view is not None:
                # One step, as a device's one local transaction: the view part, then the batch.
                self.apply_view(action.view)
                todo[0:0] = self.replicator.integrated(
                    self.integrate(action.txns, peer=action.peer, peer_seq=action.peer_seq))
            elif type(action).__name__ in ("ReadCheckpoint", "Integrate", "RecordAck"):
                todo[0:0] = perform(action, self, self.replicator)  # type: ignore[arg-type]
        if self.replicator.peer is not None:
            self.server = self.replicator.peer

    def pump(self, until: Callable[[], bool], timeout: float = T,
             drop_on: Callable[[Any], bool] | None = None) -> bool:
        """Receive and answer until ``until()``; ``drop_on(message)``: close the connection
        instead of handling that message (returns False then)."""
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"not reached in {timeout} s: {self.tags}"
            try:
                data = self.ws.recv(timeout=0.1)
            except TimeoutError:
                continue
            self.link.receive(data if isinstance(data, bytes) else data.encode())
            for event in self.link.events_received():
                if isinstance(event, MessageReceived):
                    m = event.message
                    self.tags[m.TAG] += 1
                    if drop_on is not None and drop_on(m):
                        self.close()
                        return False
                    self._run(self.replicator.handle(m))
                elif isinstance(event, Failed):
                    self.error = event.error  # type: ignore[assignment]
            self._flush()
        return True


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "server") as s:
        yield s


def writer(server: Any, tmp_path: Any) -> tidesync.Database:
    user = login(server.url, tmp_path, "writer")
    return tidesync.open(tmp_path / "writer.db", schema=[WorkOrder], sync=tidesync.SyncConfig(user=user))


def seed(w: tidesync.Database, n: int = 12) -> dict[str, str]:
    ids = {}
    with w.write():
        for i in range(n):
            o = w.create(WorkOrder, title=f"wo{i}", status="open" if i % 2 else "closed", priority=i)
            ids[f"wo{i}"] = o._id
    w.sync_session.wait_for_upload_completion(timeout=T)
    return ids


def one_round(w: tidesync.Database, ids: dict[str, str]) -> None:
    """In one write (one upload batch, one routing round): a held order changes and stays,
    one enters, one leaves, one is created in the view, one created and closed at once (never
    enters), one leaves and comes back (stays)."""
    objs = {o.title: o for o in w.objects(WorkOrder)}
    with w.write():
        objs["wo1"].priority = 101                 # open, stays
        objs["wo2"].status = "open"                # enters
        objs["wo3"].status = "closed"              # leaves
        w.create(WorkOrder, title="new-open", status="open", priority=200)
        gone = w.create(WorkOrder, title="new-closed", status="open", priority=201)
        gone.status = "closed"
        objs["wo5"].status = "closed"
        objs["wo5"].status = "open"                # back in: stays
        objs["wo5"].priority = 105
    w.sync_session.wait_for_upload_completion(timeout=T)


def expected(w: tidesync.Database) -> dict[str, int]:
    return {o.title: o.priority for o in w.objects(WorkOrder) if o.status == "open"}


def held(docs: dict[Any, dict[str, Any]]) -> dict[str, int]:
    return {d["title"]: d["priority"] for d in docs.values()}


def test_a_device_gets_entering_and_leaving_documents_in_the_rounds_changes(server, tmp_path, monkeypatch):
    w = writer(server, tmp_path)
    ids = seed(w)
    dev = Device(server.url, tmp_path, "dev", [WorkOrder])
    dev.subscribe(open=(WorkOrder, "status == 'open'"))
    assert {o.title for o in dev.db.objects(WorkOrder)} == set(expected(w))
    calls: Counter[str] = Counter()
    subs_cls = type(dev.db.subscriptions)
    apply_view, apply_part = subs_cls._apply_view, subs_cls._apply_view_part

    def spy_view(self: Any, *a: Any) -> Any:
        calls["view_update"] += 1
        return apply_view(self, *a)

    def spy_part(self: Any, *a: Any) -> Any:
        calls["view_part"] += 1
        return apply_part(self, *a)

    monkeypatch.setattr(subs_cls, "_apply_view", spy_view)
    monkeypatch.setattr(subs_cls, "_apply_view_part", spy_part)
    one_round(w, ids)
    want = expected(w)
    eventually(lambda: {o.title: o.priority for o in dev.db.objects(WorkOrder)} == want, what="the device exact")
    assert calls["view_part"] >= 1 and calls["view_update"] == 0, calls
    view_seq = int(dev.db._setting("flexible_view_seq") or 0)
    # Reconnecting changes nothing: the view_seq the device names covers what it applied.
    dev.reopen()
    dev.sync()
    assert {o.title: o.priority for o in dev.db.objects(WorkOrder)} == want
    assert int(dev.db._setting("flexible_view_seq") or 0) >= view_seq
    dev.close()
    w.close()


def test_an_older_peer_without_the_feature_gets_view_updates(server, tmp_path):
    w = writer(server, tmp_path)
    ids = seed(w)
    url = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "raw-users").sync_url
    old = RawFlex(login(server.url, tmp_path, "old"), url, "status == 'open'", features=(FEATURE_SNAPSHOT_JSON,))
    new = RawFlex(login(server.url, tmp_path, "new"), url, "status == 'open'")
    for c in (old, new):
        c.open()
        c.pump(lambda c=c: held(c.docs) == expected(w))
    boot = {c: c.tags["view_update"] for c in (old, new)}
    parts: list[ViewPart] = []
    new_run = new._run

    def run(actions: list[Any]) -> None:
        parts.extend(a.view for a in actions if isinstance(a, Integrate) and a.view is not None)
        new_run(actions)

    new._run = run  # type: ignore[method-assign]
    one_round(w, ids)
    want = expected(w)
    for c in (old, new):
        c.pump(lambda c=c: held(c.docs) == want)
    assert old.tags["view_update"] > boot[old]           # the old way: view_update + view_ack
    assert new.tags["view_update"] == boot[new] and parts  # the new way: inside changes
    entered = {d.state["body"]["title"] for p in parts for d in p.enter}
    assert entered == {"wo2", "new-open"} and sum(len(p.leave) for p in parts) == 1, parts
    assert max(new.entered.values()) == 1 and max(old.entered.values()) == 1  # nothing sent twice
    for c in (old, new):
        c.close()
    w.close()


def test_a_view_part_sent_to_the_server_is_refused_and_changes_nothing(server, tmp_path):
    w = writer(server, tmp_path)
    seed(w, 4)
    backend = server.app.state.tidesync.backend
    head = backend.head_seq()
    user = login(server.url, tmp_path, "bad")
    url = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "raw-users").sync_url
    rid = ReplicaId(secrets.token_hex(8))
    other = w.objects(WorkOrder)[0]
    doc = SnapshotDoc.trusted("WorkOrder", "x1", {"epoch": "", "live": True, "body": {"_id": "x1"}, "meta": {}})
    good_view = Changes(0, 1, 1, (), view=ViewPart(1, (doc,), (("WorkOrder", to_plain(other._id)),)))
    # A view part where none belongs (an upload), then one that does not parse.
    for payload in (encode(good_view), _with_bad_body_json(good_view)):
        with connect(url, max_size=None, compression=None) as ws:
            scope = {"subscriptions": [{"set_id": 1, "version": 1, "view_seq": 0, "queries": []}]}
            ws.send(encode(Hello(rid, user.access_token, scope)))
            decode(ws.recv(timeout=T))  # welcome
            ws.send(payload)
            error = None
            try:
                while error is None:
                    m = decode(ws.recv(timeout=T))
                    error = m if isinstance(m, Error) else None
            except ConnectionClosed:
                pass
            assert error is not None and error.code == "malformed_message", error
    assert backend.head_seq() == head
    assert {o.title for o in w.objects(WorkOrder)} == {f"wo{i}" for i in range(4)}
    w.close()


def _with_bad_body_json(changes: Changes) -> bytes:
    import msgpack

    body = changes.to_body()
    body["view"]["enter"][0][4] = '{"_id": NaN}'
    return msgpack.packb([1, "changes", 0, body], use_bin_type=True)


@pytest.mark.parametrize("restart", [False, True])
def test_a_round_lost_before_its_ack_loses_and_duplicates_nothing(tmp_path, restart):
    server = start_server(ServerConfig(data_dir=tmp_path / "server", port=0))
    try:
        w = writer(server, tmp_path)
        ids = seed(w)
        url = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "raw-users").sync_url
        c = RawFlex(login(server.url, tmp_path, "dev"), url, "status == 'open'")
        c.open()
        c.pump(lambda: held(c.docs) == expected(w))
        before = dict(c.entered)
        one_round(w, ids)
        want = expected(w)
        # The round's changes (with its view part) arrives; the device goes before applying it.
        dropped = not c.pump(lambda: False, drop_on=lambda m: isinstance(m, Changes) and m.view is not None)
        assert dropped
        if restart:
            port = int(server.url.rsplit(":", 1)[1])
            server.stop()
            server = start_server(ServerConfig(data_dir=tmp_path / "server", port=port))
        c.open()
        c.pump(lambda: held(c.docs) == want)
        settle = time.monotonic() + 0.5
        c.pump(lambda: time.monotonic() > settle)
        assert held(c.docs) == want
        # What the lost round carried comes again once (the server's uncertain rows), no more.
        again = {k: n - before.get(k, 0) for k, n in c.entered.items() if n > before.get(k, 0)}
        assert again and all(n == 1 for n in again.values()), again
        c.close()
        w.close()
    finally:
        server.stop()


def test_a_disabled_user_is_dropped_while_routed_changes_keep_coming(tmp_path):
    """A session woken by every routing round still has its account rechecked: the periodic
    check due at a wake-up is made in the shared batch, and a failed one ends the connection."""
    from tests.helpers.auth import auth_config
    from tidesync.cli.main import main as cli

    with running_server(tmp_path / "server", auth=auth_config(session_recheck_interval=0.3)) as server:
        w = writer(server, tmp_path)
        seed(w, 4)
        dev = Device(server.url, tmp_path, "dev", [WorkOrder])
        dev.subscribe(all=(WorkOrder, "TRUEPREDICATE"))
        order = w.objects(WorkOrder)[0]
        assert cli(["users", "disable", dev.user.id, "--data", str(server.config.data_dir)]) == 0
        deadline = time.monotonic() + T
        n = 0
        while dev.db.sync_session.state != "inactive":
            assert time.monotonic() < deadline, "the disabled user's connection is still open"
            n += 1
            with w.write():
                order.priority = n
            time.sleep(0.05)
        assert isinstance(dev.db.sync_session.last_error, tidesync.AuthError)
        dev.close()
        w.close()
