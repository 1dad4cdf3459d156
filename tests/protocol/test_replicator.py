"""The Replicator's decisions, one input at a time (no Link, no storage)."""

from __future__ import annotations

import json

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidesync.core.operations import CreateDoc
from tidesync.core.stamp import ReplicaId, make_stamp
from tidesync.core.transaction import Transaction
from tidesync.errors import UsageError
from tidesync.protocol import (
    Ack,
    Announce,
    Changes,
    Checkpoint,
    Close,
    CompensatedWrite,
    CompensatingWrite,
    DescriptorBatch,
    Descriptors,
    DownloadComplete,
    Fail,
    Hello,
    Integrate,
    IntegrateResult,
    IntegrateSnapshot,
    LogBatch,
    Notify,
    Progress,
    ReadCheckpoint,
    ReadDescriptors,
    ReadLog,
    ReadSnapshot,
    RecordAck,
    ReportProgress,
    Role,
    Send,
    Snapshot,
    SnapshotDoc,
    SnapshotPage,
    SnapshotResult,
    UploadComplete,
    Welcome,
)
from tidesync.protocol.actions import DOWNLOAD, UPLOAD
from tidesync.protocol.messages import FEATURES
from tidesync.protocol.replicator import Replicator

ME = ReplicaId("00000000000000a1")
PEER = ReplicaId("00000000000000b2")
SCOPE = {"partition": {"key": "_partition", "value": "store-42"}}
STATE = {"epoch": "", "live": True, "body": {}, "meta": {}}


def txn(n: int, origin: ReplicaId = ME) -> Transaction:
    stamp = make_stamp(1000 + n, 0, origin)
    return Transaction(stamp, origin, stamp, (), (CreateDoc("c", n, stamp, "", {"_id": n}, {}),))


def entries(*seqs: int) -> tuple[tuple[int, Transaction], ...]:
    return tuple((s, txn(s)) for s in seqs)


def sends(actions: list[Any]) -> list[Any]:
    return [a.message for a in actions if isinstance(a, Send)]


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def active_acceptor(peer_checkpoint: int = 0, our_checkpoint: int = 0, **options: Any) -> tuple[Replicator, list[Any]]:
    r = Replicator(ME, Role.ACCEPTOR, **options)
    assert r.start() == []
    assert r.handle(Hello(PEER, "t", SCOPE, ME, peer_checkpoint)) == [ReadCheckpoint(PEER)]
    actions = r.checkpoint_read(Checkpoint(received=our_checkpoint, acked=0))
    return r, actions


# ---------------------------------------------------------------- handshake


def test_initiator_without_expected_peer_says_hello_at_once() -> None:
    r = Replicator(ME, Role.INITIATOR, scope=SCOPE, token="tok", info={"app": "x"})
    assert r.start() == [Send(Hello(ME, "tok", SCOPE, None, 0, {"app": "x"}, FEATURES))]


def test_initiator_reads_its_checkpoint_for_the_expected_peer() -> None:
    r = Replicator(ME, Role.INITIATOR, expected_peer=PEER)
    assert r.start() == [ReadCheckpoint(PEER)]
    assert r.checkpoint_read(Checkpoint(17, 5)) == [Send(Hello(ME, None, {}, PEER, 17, features=FEATURES))]
    actions = r.handle(Welcome(PEER, checkpoint=9, scope=SCOPE))
    assert r.active and r.peer == PEER
    assert actions == [RecordAck(PEER, 9), ReadLog(9, 500, 1 << 20, SCOPE, PEER)]
    # the peer streams from our checkpoint 17: a first batch from 17 is fine, from 18 a gap
    assert of(r.handle(Changes(17, 18, 18, entries(18))), Integrate)


def test_initiator_talking_to_an_unexpected_peer_expects_everything() -> None:
    r = Replicator(ME, Role.INITIATOR, expected_peer=PEER)
    r.start()
    r.checkpoint_read(Checkpoint(17, 0))
    other = ReplicaId("00000000000000c3")
    r.handle(Welcome(other))
    [fail] = r.handle(Changes(17, 18, 18, entries(18)))
    assert isinstance(fail, Fail) and fail.error.code == "sequence_gap"


def test_acceptor_welcomes_and_streams_from_the_hello_checkpoint() -> None:
    r, actions = active_acceptor(peer_checkpoint=7, our_checkpoint=3, info={"session_id": "s1"})
    assert actions == [
        Send(Welcome(ME, 3, {}, {"session_id": "s1"}, FEATURES)),
        RecordAck(PEER, 7),
        ReadLog(7, 500, 1 << 20, SCOPE, PEER),
    ]


def test_acceptor_ignores_a_checkpoint_meant_for_another_replica() -> None:
    r = Replicator(ME, Role.ACCEPTOR)
    r.start()
    r.handle(Hello(PEER, None, {}, ReplicaId("00000000000000c3"), 50))
    actions = r.checkpoint_read(Checkpoint())
    assert of(actions, ReadLog)[0].after == 0


@pytest.mark.parametrize("role", [Role.INITIATOR, Role.ACCEPTOR])
def test_talking_to_oneself_is_refused(role: Role) -> None:
    r = Replicator(ME, role)
    r.start()
    message = Hello(ME) if role is Role.ACCEPTOR else Welcome(ME)
    [fail] = r.handle(message)
    assert isinstance(fail, Fail) and fail.error.code == "same_replica"


def test_data_before_handshake_is_refused() -> None:
    r = Replicator(ME, Role.ACCEPTOR)
    r.start()
    [fail] = r.handle(Ack(1))
    assert isinstance(fail, Fail) and fail.error.code == "unexpected_message"


def test_results_without_a_request_are_usage_errors() -> None:
    r, _ = active_acceptor()
    with pytest.raises(UsageError):
        r.integrated(IntegrateResult())
    with pytest.raises(UsageError):
        r.descriptors_read(DescriptorBatch((), 0, 0))
    with pytest.raises(UsageError):
        r.checkpoint_read(Checkpoint())
    r.log_read(LogBatch((), 0, 0))
    with pytest.raises(UsageError):
        r.log_read(LogBatch((), 0, 0))


# ---------------------------------------------------------------- streaming out


def test_first_batch_is_sent_even_when_empty_and_completes_the_upload() -> None:
    r, _ = active_acceptor()
    actions = r.log_read(LogBatch((), 0, 0))
    assert sends(actions) == [Changes(0, 0, 0, (), Progress())]
    actions = r.handle(Ack(0))
    assert actions == [RecordAck(PEER, 0), ReportProgress(UPLOAD, 0, 0, 0, 0), UploadComplete(0)]
    assert r.upload_complete


def test_batches_follow_the_window_and_acks() -> None:
    r, _ = active_acceptor(window=2, batch_limit=2)
    actions = r.log_read(LogBatch(entries(1, 2), 2, 6, 200))
    [changes] = sends(actions)
    assert changes == Changes(0, 2, 6, entries(1, 2), Progress(2, 6, 200, 600))
    assert of(actions, ReadLog) == [ReadLog(2, 2, 1 << 20, SCOPE, PEER)]
    actions = r.log_read(LogBatch(entries(3, 4), 4, 6, 200))
    assert sends(actions)[0].from_seq == 2
    assert of(actions, ReadLog) == []  # two batches unacknowledged: wait
    actions = r.handle(Ack(2))
    assert actions[:2] == [RecordAck(PEER, 2), ReportProgress(UPLOAD, 2, 6, 200, 600)]
    assert of(actions, ReadLog) == [ReadLog(4, 2, 1 << 20, SCOPE, PEER)]
    assert of(actions, UploadComplete) == []
    actions = r.log_read(LogBatch(entries(6), 6, 6, 100))  # 5 was filtered out
    assert sends(actions) == [Changes(4, 6, 6, entries(6), Progress(5, 5, 500, 500))]
    r.handle(Ack(4))
    actions = r.handle(Ack(6))
    assert of(actions, UploadComplete) == [UploadComplete(6)]
    assert of(actions, ReadLog) == []  # caught up


def test_a_range_filtered_out_entirely_still_advances() -> None:
    r, _ = active_acceptor()
    r.log_read(LogBatch((), 0, 0))
    r.handle(Ack(0))
    assert r.local_commit(3) == [ReadLog(0, 500, 1 << 20, SCOPE, PEER)]
    assert sends(r.log_read(LogBatch((), 3, 3))) == [Changes(0, 3, 3, (), Progress())]


def test_nothing_new_sends_nothing() -> None:
    r, _ = active_acceptor()
    r.log_read(LogBatch(entries(1), 1, 1))
    assert r.local_commit(1) == []  # already read up to 1


def test_wrong_ack_is_a_sequence_gap() -> None:
    r, _ = active_acceptor()
    r.log_read(LogBatch(entries(1), 1, 1))
    [fail] = r.handle(Ack(5))
    assert isinstance(fail, Fail) and fail.error.code == "sequence_gap"


def test_reset_log_is_sent_again_from_the_start() -> None:
    r, actions = active_acceptor(peer_checkpoint=40)
    assert of(actions, ReadLog)[0].after == 40
    actions = r.log_read(LogBatch((), 40, 12))  # we only have 12 entries: our log was reset
    assert actions == [ReadLog(0, 500, 1 << 20, SCOPE, PEER)]
    assert sends(r.log_read(LogBatch(entries(1, 2), 12, 12)))[0].from_seq == 0


def test_local_commit_before_handshake_is_remembered() -> None:
    r = Replicator(ME, Role.ACCEPTOR)
    r.start()
    assert r.local_commit(5) == []


# ---------------------------------------------------------------- descriptors


def test_descriptors_travel_ahead_of_their_data() -> None:
    r, actions = active_acceptor(descriptor_lookahead=10, batch_limit=2)
    assert of(actions, ReadDescriptors) == [ReadDescriptors(0, 10, SCOPE, PEER)]
    announced = tuple((s, txn(s).descriptor(50)) for s in (1, 2, 3))
    actions_d = r.descriptors_read(DescriptorBatch(announced, 3, 3))
    assert sends(actions_d) == [Descriptors(announced)]
    # data for 1..2 needs no new descriptors; 4 (committed since) gets one inline, first
    actions = r.log_read(LogBatch(entries(1, 2), 2, 3))
    assert [type(m) for m in sends(actions)] == [Changes]
    r.local_commit(4)
    actions = r.log_read(LogBatch(entries(3, 4), 4, 4))
    messages = sends(actions)
    assert messages[0] == Descriptors(((4, txn(4).descriptor()),))
    assert isinstance(messages[1], Changes)


def test_stale_descriptor_reads_are_not_resent() -> None:
    r, _ = active_acceptor(descriptor_lookahead=10)
    r.log_read(LogBatch(entries(1, 2), 2, 2))  # the data overtook the descriptor read
    actions = r.descriptors_read(DescriptorBatch(tuple((s, txn(s).descriptor()) for s in (1, 2)), 2, 2))
    assert sends(actions) == []


def test_received_descriptors_are_announced_to_the_driver() -> None:
    r, _ = active_acceptor()
    d = ((5, txn(5, PEER).descriptor()),)
    assert r.handle(Descriptors(d)) == [Announce(PEER, d)]


# ---------------------------------------------------------------- receiving


def test_receiving_integrates_then_acks_then_completes() -> None:
    r, _ = active_acceptor(our_checkpoint=4)
    batch = Changes(4, 6, 9, ((5, txn(5, PEER)), (6, txn(6, PEER))), Progress(2, 5, 20, 50))
    assert r.handle(batch) == [Integrate((txn(5, PEER), txn(6, PEER)), PEER, 6)]
    last = Changes(6, 9, 9, ((9, txn(9, PEER)),), Progress(3, 3, 30, 30))
    assert r.handle(last) == [Integrate((txn(9, PEER),), PEER, 9)]  # pipelined
    assert r.integrated(IntegrateResult(2)) == [
        Send(Ack(6)), ReportProgress(DOWNLOAD, 2, 3, 20, 30)]
    assert not r.download_complete
    assert r.integrated(IntegrateResult(1)) == [
        Send(Ack(9)), ReportProgress(DOWNLOAD, 3, 3, 30, 30), DownloadComplete(9)]
    assert r.download_complete


@pytest.mark.parametrize(("first", "second"), [((5, 6), None), ((0, 2), (3, 4)), ((0, 2), (1, 4))])
def test_gaps_are_refused(first: tuple[int, int], second: tuple[int, int] | None) -> None:
    r, _ = active_acceptor(our_checkpoint=4)
    actions = r.handle(Changes(first[0], first[1], 9))
    if second is not None:
        assert of(actions, Integrate)
        actions = r.handle(Changes(second[0], second[1], 9))
    [fail] = actions
    assert isinstance(fail, Fail) and fail.error.code == "sequence_gap"


def test_resending_from_before_the_checkpoint_is_allowed() -> None:
    r, _ = active_acceptor(our_checkpoint=4)
    assert of(r.handle(Changes(0, 5, 5)), Integrate)


def test_after_close_results_are_accepted_but_nothing_is_sent() -> None:
    r, _ = active_acceptor()
    r.handle(Changes(0, 1, 1, ((1, txn(1, PEER)),)))
    assert r.handle(Close()) == []
    actions = r.integrated(IntegrateResult(1))
    assert sends(actions) == []
    assert r.local_commit(10) == []
    assert r.handle(Changes(1, 2, 2)) == []


def test_driver_messages_are_passed_through() -> None:
    r, _ = active_acceptor()
    cw = CompensatingWrite((CompensatedWrite(txn(1).id, "c", 1, "update", "write_filter", "no"),))
    assert r.handle(cw) == [Notify(cw)]


# ---------------------------------------------------------------- snapshots


def doc(n: int) -> SnapshotDoc:
    return SnapshotDoc("c", n, STATE)


def test_compacted_log_is_streamed_as_a_snapshot_then_the_log_continues() -> None:
    r, _ = active_acceptor(window=2, snapshot_limit=2)
    actions = r.log_read(LogBatch((), 0, 30, snapshot_required=True))
    assert actions == [ReadSnapshot(SCOPE, None, 2, 1 << 20)]
    actions = r.snapshot_read(SnapshotPage((doc(1), doc(2)), "k2", 30, 100, 3))
    assert sends(actions) == [Snapshot(0, (doc(1), doc(2)), 30, False, Progress(2, 3, 100, 100))]
    assert of(actions, ReadSnapshot) == [ReadSnapshot(SCOPE, "k2", 2, 1 << 20)]
    actions = r.snapshot_read(SnapshotPage((doc(3),), None, 31, 50, 3))
    assert sends(actions) == [Snapshot(1, (doc(3),), 30, True, Progress(3, 3, 150, 150))]
    assert of(actions, ReadSnapshot) == []  # that was the last page
    assert r.handle(Ack(0, snapshot_page=0)) == []
    actions = r.handle(Ack(30, snapshot_page=1))
    assert actions == [RecordAck(PEER, 30), ReadLog(30, 500, 1 << 20, SCOPE, PEER)]
    assert sends(r.log_read(LogBatch((), 31, 31)))[0].from_seq == 30


def test_snapshot_pages_follow_their_own_window() -> None:
    r, _ = active_acceptor(window=2, snapshot_window=3, snapshot_limit=1)
    actions = r.log_read(LogBatch((), 0, 30, snapshot_required=True))
    for page in range(3):
        assert of(actions, ReadSnapshot) == [ReadSnapshot(SCOPE, f"k{page}" if page else None, 1, 1 << 20)]
        actions = r.snapshot_read(SnapshotPage((doc(page),), f"k{page + 1}", 30, 10, 9))
        assert [m.page for m in sends(actions)] == [page]
    assert of(actions, ReadSnapshot) == []  # three pages unacknowledged: the window is full
    assert of(r.handle(Ack(0, snapshot_page=0)), ReadSnapshot) == [ReadSnapshot(SCOPE, "k3", 1, 1 << 20)]
    with pytest.raises(UsageError):
        Replicator(ME, Role.ACCEPTOR, snapshot_window=0)


def test_receiving_a_snapshot() -> None:
    r, _ = active_acceptor(our_checkpoint=2)
    assert r.handle(Snapshot(0, (doc(1),), 40, False)) == [IntegrateSnapshot((doc(1),), PEER, None)]
    [fail] = r.handle(Changes(2, 3, 3))  # no log in the middle of a snapshot
    assert isinstance(fail, Fail)


def test_receiving_a_snapshot_acks_pages_and_resumes_after_it() -> None:
    r, _ = active_acceptor(our_checkpoint=2)
    r.handle(Snapshot(0, (doc(1),), 40, False))
    r.handle(Snapshot(1, (doc(2),), 38, True))
    assert sends(r.snapshot_integrated(SnapshotResult(1))) == [Ack(2, snapshot_page=0)]
    assert sends(r.snapshot_integrated(SnapshotResult(1))) == [Ack(38, snapshot_page=1)]
    assert of(r.handle(Changes(38, 41, 41)), Integrate)


def test_snapshot_documents_go_as_json_text_only_to_a_peer_that_announced_it() -> None:
    # an older peer (no features in its Hello) gets the map form it knows
    r, _ = active_acceptor(snapshot_limit=2)
    r.log_read(LogBatch((), 0, 30, snapshot_required=True))
    [old] = sends(r.snapshot_read(SnapshotPage((doc(1),), None, 30, 10, 1)))
    assert not old.json_docs and old.to_body()["docs"] == [["c", 1, STATE]]
    # a peer announcing snapshot_json gets [collection, key, epoch, live, body_json, meta_json]
    r = Replicator(ME, Role.ACCEPTOR, snapshot_limit=2)
    r.start()
    r.handle(Hello(PEER, "t", SCOPE, ME, 0, features=("snapshot_json", "some_future_feature")))
    r.checkpoint_read(Checkpoint())
    r.log_read(LogBatch((), 0, 30, snapshot_required=True))
    [new] = sends(r.snapshot_read(SnapshotPage((doc(1),), None, 30, 10, 1)))
    assert new.json_docs and new == old
    [wire] = new.to_body()["docs"]
    assert wire[:4] == ["c", 1, STATE["epoch"], STATE["live"]]
    assert json.loads(wire[4]) == STATE["body"] and json.loads(wire[5]) == STATE["meta"]
    # the initiator learns the acceptor's features from its Welcome
    i = Replicator(ME, Role.INITIATOR)
    i.start()
    i.handle(Welcome(PEER, features=("snapshot_json",)))
    assert i.peer_features == {"snapshot_json"}


def test_a_page_read_as_columns_goes_as_columns_only_to_a_peer_that_announced_it() -> None:
    from tidesync.protocol import DocColumns

    meta = '{"*":"' + "0" * 18 + "a" * 16 + '"}'
    page = DocColumns(["c", "c"], None, ["", ""], [True, False], ['{"a":1}', "{}"], [meta, meta], pks=['"k1"', "2"])
    for features, form in ((("snapshot_json",), "docs"), (("snapshot_json", "snapshot_columns"), "cols")):
        r = Replicator(ME, Role.ACCEPTOR, snapshot_limit=2)
        r.start()
        r.handle(Hello(PEER, "t", SCOPE, ME, 0, features=features))
        r.checkpoint_read(Checkpoint())
        r.log_read(LogBatch((), 0, 30, snapshot_required=True))
        [sent] = sends(r.snapshot_read(SnapshotPage(page, None, 30, 10, 2)))
        body = sent.to_body()
        assert form in body and ("docs" if form == "cols" else "cols") not in body
        if form == "cols":
            assert body["cols"] == {"n": 2, "c": "c\x1ec", "k": '["k1",2]', "e": "\x1e", "l": "10",
                                    "b": '{"a":1}\x1e{}', "m": meta + "\x1e" + meta}
        else:
            assert body["docs"] == [["c", "k1", "", True, '{"a":1}', meta], ["c", 2, "", False, "{}", meta]]


def test_snapshot_pages_must_be_in_order() -> None:
    r, _ = active_acceptor()
    [fail] = r.handle(Snapshot(1, (), 4, True))
    assert isinstance(fail, Fail) and fail.error.code == "sequence_gap"


# ---------------------------------------------------------------- regressions


def test_descriptor_lookahead_does_not_spin_on_a_compacted_range() -> None:
    """Found by test_simulation (seed 1): read_descriptors on a compacted range returns no
    progress; the replicator asked again from the same place, forever."""
    r, actions = active_acceptor(descriptor_lookahead=4)
    assert of(actions, ReadDescriptors) == [ReadDescriptors(0, 4, SCOPE, PEER)]
    assert r.descriptors_read(DescriptorBatch((), 0, 30)) == []  # stuck: do not ask again
    assert of(r.local_commit(31), ReadDescriptors) == []
    # the data stream snapshots, then continues; lookahead resumes from the new position
    r.log_read(LogBatch((), 0, 31, snapshot_required=True))
    r.snapshot_read(SnapshotPage((doc(1),), None, 31))
    r.handle(Ack(31, snapshot_page=0))
    assert of(r.local_commit(35), ReadDescriptors) == [ReadDescriptors(31, 4, SCOPE, PEER)]


def test_a_replica_read_that_makes_no_progress_is_a_local_bug() -> None:
    r, _ = active_acceptor()
    with pytest.raises(UsageError):
        r.log_read(LogBatch((), 0, 10))


class _ZeroButTrue(int):
    """A ``descriptor_lookahead`` of 0 that is truthy: the general ``_pump`` path, with no
    descriptor reads (``len(announced) < 0`` never holds)."""

    def __bool__(self) -> bool:
        return True


class _GeneralPump(Replicator):
    """A Replicator whose ``_pump`` takes its general path (only there)."""

    def _pump(self) -> list[Any]:
        self.descriptor_lookahead = _ZeroButTrue(0)
        try:
            return super()._pump()
        finally:
            self.descriptor_lookahead = 0


@given(st.lists(st.tuples(st.sampled_from(["commit", "read", "ack"]), st.integers(0, 6), st.integers(0, 3)),
                max_size=30),
       st.integers(1, 3), st.one_of(st.none(), st.integers(0, 3)))
def test_the_data_streams_pump_issues_the_reads_the_general_path_issues(steps: list[tuple[str, int, int]],
                                                                       window: int, head: int | None) -> None:
    """``_pump`` without descriptors or a snapshot (the server's streaming) takes its own path:
    over random commits, reads (of any size, some empty) and acks, a twin taking the general
    path issues the same actions and ends in the same state."""
    twins = []
    started = []
    for general in (False, True):
        r = Replicator(ME, Role.ACCEPTOR, window=window)
        if general:
            r.__class__ = _GeneralPump
        if head is not None:
            r.local_commit(head)     # (the head known before the handshake: caught up at once)
        r.start()
        r.handle(Hello(PEER, "t", SCOPE, ME, head or 0))
        started.append(r.checkpoint_read(Checkpoint(received=0, acked=0)))
        twins.append(r)
    assert started[0] == started[1]
    for kind, n, m in steps:
        outs = []
        for r in twins:
            if kind == "commit":
                out: Any = r.local_commit(r._read_to + n)
            elif kind == "read":
                if not r._reading:
                    out = "not reading"
                else:
                    upto = r._read_to + n
                    head = max(upto, r._head or 0)
                    try:
                        out = r.log_read(LogBatch(entries(*range(r._read_to + 1, upto + 1))[:m], upto, head,
                                                  10 * min(m, n)))
                    except UsageError as exc:
                        out = ("error", str(exc))
            elif r._inflight:
                out = r.handle(Ack(r._inflight[0][0]))
            else:
                out = "nothing in flight"
            outs.append((out, r._reading, r._read_to, r._sent_to, list(r._inflight), r._head, r._first_sent))
        assert outs[0] == outs[1]
