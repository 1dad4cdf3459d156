"""Two full stacks (Link + Replicator + MemoryReplica) wired in memory."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from tidesync.errors import AuthError, ProtocolError
from tidesync.protocol import (
    Announce,
    Changes,
    Descriptors,
    Error,
    Hello,
    MessageReceived,
    Notify,
    Snapshot,
    State,
)

from ..helpers.memory_replica import MemoryReplica, replica_id
from ..helpers.pairs import SessionPair

PART = {"partition": {"key": "_partition", "value": "store-42"}}


def replicas(n: int = 2, **kwargs: Any) -> list[MemoryReplica]:
    return [MemoryReplica(replica_id(i + 1), **kwargs) for i in range(n)]


def sync(a: MemoryReplica, b: MemoryReplica, **kwargs: Any) -> SessionPair:
    pair = SessionPair(a, b, **kwargs)
    pair.start()
    pair.run()
    return pair


def received(pair_end: Any, kind: type) -> list[Any]:
    return [e.message for e in pair_end.events
            if isinstance(e, MessageReceived) and isinstance(e.message, kind)]


def txns_received(pair_end: Any) -> int:
    return sum(len(m.entries) for m in received(pair_end, Changes))


@pytest.mark.parametrize("model", ["toy", "core"])
def test_both_directions_converge(model: str) -> None:
    a, b = replicas(model=model)
    for i in range(7):
        a.write("tasks", f"a{i}", title=f"from a {i}", n=i)
        b.write("tasks", f"b{i}", title=f"from b {i}")
    a.write("tasks", "shared", title="a's")
    b.write("tasks", "shared", title="b's", extra=1)
    pair = sync(a, b, a_options={"batch_limit": 3}, b_options={"batch_limit": 2})
    assert a.state() == b.state()
    assert len(a.bodies()) == 15
    assert a.txn_ids() == b.txn_ids()
    assert max(a.applied.values()) == max(b.applied.values()) == 1
    for end in (pair.a, pair.b):
        assert end.failure is None
        assert end.upload_complete[-1] == end.replica.head_seq()
        assert end.download_complete


def test_progress_is_reported_and_ends_complete() -> None:
    a, b = replicas()
    for i in range(10):
        a.write("tasks", i, title="x" * 100)
    pair = sync(a, b, a_options={"batch_limit": 3})
    up = [p for p in pair.a.progress if p.direction == "upload"]
    down = [p for p in pair.b.progress if p.direction == "download"]
    assert [p.transferred for p in up] == [3, 6, 9, 10]
    assert [p.transferred for p in down] == [3, 6, 9, 10]
    assert up[-1].transferred == up[-1].transferable == 10
    assert down[-1].transferred_bytes == down[-1].transferable_bytes > 1000
    assert all(p.transferable >= p.transferred for p in up + down)


def test_reconnection_resumes_from_the_checkpoint() -> None:
    a, b = replicas()
    for i in range(5):
        a.write("tasks", i, v=i)
    sync(a, b).close()
    a.write("tasks", 99, v=99)
    b.write("tasks", 98, v=98)
    pair = sync(a, b)
    assert txns_received(pair.b) == 1 and txns_received(pair.a) == 1
    assert a.state() == b.state()
    assert a.checkpoint(b.replica_id).received == b.head_seq()
    assert b.checkpoint(a.replica_id).received == a.head_seq()
    assert a.checkpoint(b.replica_id).acked == a.head_seq()


def test_first_contact_and_a_stranger_resend_everything_without_double_apply() -> None:
    a, b = replicas()
    for i in range(4):
        b.write("tasks", i, v=i)
    sync(a, b, expected_peer=None)
    b.write("tasks", 10, v=10)
    # a believes it talks to some other replica: b ignores a's checkpoint and resends all
    pair = sync(a, b, expected_peer=replica_id(77))
    assert txns_received(pair.a) == 5
    assert max(a.applied.values()) == 1 and a.state() == b.state()


def test_partition_scope_filters_and_still_advances() -> None:
    server, device = replicas()
    server.write("tasks", 1, _partition="store-42", v=1)
    server.write("tasks", 2, _partition="store-7", v=2)
    server.write("tasks", 3, _partition="store-7", v=3)
    pair = sync(device, server, a_options={"scope": PART, "batch_limit": 1})
    assert list(device.bodies()) == [("tasks", "1")]
    changes = received(pair.a, Changes)
    assert [len(c.entries) for c in changes] == [1, 0] or [len(c.entries) for c in changes] == [1]
    assert changes[-1].to_seq == server.head_seq() == device.checkpoint(server.replica_id).received
    assert pair.a.download_complete[-1] == server.head_seq()
    # the device's own writes go up; a delete in the partition comes down
    device.write("tasks", 4, _partition="store-42", v=4)
    server.delete("tasks", 1)
    pair.run()
    assert ("tasks", "4") in server.bodies()
    assert list(device.bodies()) == [("tasks", "4")]


@pytest.mark.parametrize("model", ["toy", "core"])
def test_compacted_log_bootstraps_by_snapshot_and_keeps_local_work(model: str) -> None:
    server, device, other = replicas(3, model=model)
    for i in range(6):
        server.write("tasks", i, v=i)
    sync(device, server).close()
    device.write("tasks", "offline", v="kept")  # unsynced local work
    for i in range(6, 12):
        server.write("tasks", i, v=i)
        server.write("tasks", i - 6, v=-i)
    server.compact()
    pair = sync(device, server, b_options={"snapshot_limit": 5})
    snapshots = received(pair.a, Snapshot)
    assert [s.page for s in snapshots] == [0, 1, 2] and snapshots[-1].done
    assert device.state() == server.state()
    assert ("tasks", '"offline"') in server.bodies()
    assert device.checkpoint(server.replica_id).received == server.head_seq()
    # after the snapshot the log flows again
    server.write("tasks", 100, v=100)
    pair.run()
    assert ("tasks", "100") in device.bodies() and not received(pair.a, Snapshot)[3:]
    # a third replica can still learn everything from the device that bootstrapped
    sync(other, device)
    assert other.state() == device.state() == server.state()


def test_refused_hello_fails_both_sides_with_the_right_blame() -> None:
    a, b = replicas()
    a.write("tasks", 1, v=1)

    def authorize(hello: Hello) -> Error | None:
        return None if hello.token == "good" else Error("auth_failed", "unknown token")

    pair = sync(a, b, authorize=authorize, a_options={"token": "bad"})
    failure = pair.a.failure
    assert failure is not None and failure.remote
    assert isinstance(failure.error, AuthError) and failure.error.action == "reauthenticate"
    assert pair.a.link.state is State.ERROR and not b.docs
    pair = sync(a, b, authorize=authorize, a_options={"token": "good"})
    assert pair.a.failure is None and b.state() == a.state()


@pytest.mark.parametrize("initiator", [0, 1])
def test_device_to_device_either_role(initiator: int) -> None:
    d1, d2 = replicas()
    d1.write("notes", "x", text="from d1")
    d2.write("notes", "y", text="from d2")
    first, second = (d1, d2) if initiator == 0 else (d2, d1)
    sync(first, second)
    assert d1.state() == d2.state() and len(d1.bodies()) == 2


def test_roles_may_swap_between_sessions() -> None:
    d1, d2 = replicas()
    d1.write("notes", 1, v=1)
    sync(d1, d2).close()
    d2.write("notes", 2, v=2)
    d1.write("notes", 3, v=3)
    pair = sync(d2, d1)  # d2 initiates this time, expecting d1
    assert txns_received(pair.a) == 1 and txns_received(pair.b) == 1
    assert d1.state() == d2.state()


def test_relay_through_a_server_fans_out() -> None:
    server, d1, d2 = replicas(3)
    p1, p2 = sync(d1, server), sync(d2, server)
    d1.write("tasks", "t", v=1)
    # d1 -> server, then the server's session with d2 wakes up on the server's commit
    for _ in range(5):
        p1.run()
        p2.run()
    assert d2.state() == d1.state() == server.state()
    assert p2.a.download_complete[-1] == server.head_seq()


def test_descriptors_arrive_before_their_transactions() -> None:
    a, b = replicas()
    for i in range(9):
        a.write("tasks", i, v=i)
    pair = SessionPair(a, b, a_options={"descriptor_lookahead": 100, "batch_limit": 2})
    pair.start()
    pair.run()
    announced: set[str] = set()
    for event in pair.b.events:
        if not isinstance(event, MessageReceived):
            continue
        if isinstance(event.message, Descriptors):
            announced |= {d.id for _, d in event.message.entries}
        elif isinstance(event.message, Changes):
            assert {t.id for t in event.message.transactions} <= announced
    assert len(announced) == 9
    assert sum(len(n.entries) for n in pair.b.notes_of(Announce)) == 9
    first_descriptors = next(i for i, e in enumerate(pair.b.events)
                             if isinstance(e, MessageReceived) and isinstance(e.message, Descriptors))
    last_descriptors = max(i for i, e in enumerate(pair.b.events)
                           if isinstance(e, MessageReceived) and isinstance(e.message, Descriptors))
    first_changes = next(i for i, e in enumerate(pair.b.events)
                         if isinstance(e, MessageReceived) and isinstance(e.message, Changes)
                         and e.message.entries)
    assert first_descriptors < first_changes and last_descriptors < first_changes  # all ahead
    assert a.state() == b.state()


def test_big_transactions_pass_one_per_batch_and_compressed() -> None:
    a, b = replicas()
    for i in range(3):
        a.write("blobs", i, data="z" * 200_000)
    pair = SessionPair(a, b, a_options={"batch_bytes": 1000})
    pair.start()
    sizes: list[int] = []
    while pair.pending():
        pair.collect()
        sizes += [len(p) for p in pair.wire[pair.b]]
        pair.deliver(pair.b) or pair.deliver(pair.a)
    assert a.state() == b.state()
    assert [len(c.entries) for c in received(pair.b, Changes)] == [1, 1, 1]
    assert max(sizes) < 10_000  # 200 kB documents, compressed on the wire


def test_refused_transactions_are_acknowledged_not_integrated() -> None:
    a, b = replicas()
    a.write("tasks", "ok", v=1)
    a.write("forbidden", "no", v=2)
    b.refuse = lambda txn: "read-only" if txn.ops[0].collection == "forbidden" else None
    pair = sync(a, b)
    assert list(b.bodies()) == [("tasks", '"ok"')]
    assert pair.a.upload_complete[-1] == a.head_seq()  # acknowledged: it will not be resent


def test_driver_messages_reach_the_driver() -> None:
    from tidesync.protocol import CompensatedWrite, CompensatingWrite

    a, b = replicas()
    _, txn = a.write("tasks", 1, v=1)
    pair = sync(a, b)
    cw = CompensatingWrite((CompensatedWrite(txn.id, "tasks", 1, "create", "write_filter", "no"),))
    pair.b.link.send(cw)
    pair.run()
    assert pair.a.notes_of(Notify) == [Notify(cw)]


def test_a_hostile_peer_cannot_crash_the_other_side() -> None:
    a, b = replicas()
    pair = sync(a, b)
    pair.b.receive(msgpack.packb([1, "changes", 0, {"from_seq": 50, "to_seq": 60, "head": 60}]))
    failure = pair.b.failure
    assert failure is not None and isinstance(failure.error, ProtocolError)
    assert failure.error.code == "sequence_gap"
    pair.run()
    assert pair.a.failure is not None and pair.a.failure.remote
    assert pair.a.link.finished and pair.b.link.finished


def test_cut_mid_batch_loses_nothing() -> None:
    a, b = replicas()
    for i in range(20):
        a.write("tasks", i, v=i)
    pair = SessionPair(a, b, a_options={"batch_limit": 4, "window": 3})
    pair.start()
    for _ in range(5):
        pair.deliver(pair.b) or pair.deliver(pair.a)
    pair.cut()
    assert pair.a.failure is not None and pair.a.failure.error.code == "connection_lost"
    partial = len(b.bodies())
    assert 0 < partial < 20
    sync(a, b)
    assert a.state() == b.state() and max(b.applied.values()) == 1


def test_clean_close() -> None:
    a, b = replicas()
    pair = sync(a, b)
    pair.close()
    assert pair.a.closed and pair.b.closed
    assert pair.a.link.error is None and pair.b.link.error is None
