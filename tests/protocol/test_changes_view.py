"""The ``changes_view`` feature in the sans-I/O layer: a ``Changes``' view part on the wire,
what the Replicator does with it (only a flexible initiator that announced the feature takes
one), and malformed view parts refused as ``malformed_message``."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from tidesync.core.operations import CreateDoc
from tidesync.core.stamp import ReplicaId, make_stamp
from tidesync.core.transaction import Transaction
from tidesync.errors import ProtocolError, UsageError
from tidesync.protocol.actions import Fail, Integrate
from tidesync.protocol.codec import decode, encode
from tidesync.protocol.messages import (
    FEATURE_CHANGES_VIEW, FEATURE_SNAPSHOT_JSON, FEATURES, Changes, SnapshotDoc, ViewPart, Welcome,
)
from tidesync.protocol.replica import Checkpoint
from tidesync.protocol.replicator import Replicator, perform
from tidesync.protocol.states import Role

ME = ReplicaId("00000000000000a1")
PEER = ReplicaId("00000000000000b2")
FLEX = {"subscriptions": [{"set_id": 1, "version": 1, "view_seq": 0, "queries": []}]}
STAMP = make_stamp(1000, 0, PEER)


def doc(key: str, **body: Any) -> SnapshotDoc:
    return SnapshotDoc("Task", key, {"epoch": "", "live": True, "body": {"_id": key, **body}, "meta": {"*": STAMP}})


def changes_with_view() -> Changes:
    t = Transaction(STAMP, PEER, STAMP, (), (CreateDoc("Task", "k3", STAMP, "", {"_id": "k3"}, {}),))
    return Changes(4, 9, 12, ((7, t),), view=ViewPart(5, (doc("k1", n=1), doc("k2", s="x")), (("Task", "k9"),)))


def test_a_view_part_round_trips_and_is_absent_by_default() -> None:
    c = changes_with_view()
    back = decode(encode(c))
    assert back == c and back.view is not None and c.view is not None
    assert back.view.enter[0].state == c.view.enter[0].state
    assert "view" not in Changes(0, 1, 1).to_body()
    assert decode(encode(Changes(0, 1, 1))).view is None


@pytest.mark.parametrize("bad", [
    {"view_seq": 0},                                                   # view_seq >= 1
    {"view_seq": 1, "enter": "no"},                                    # not a list
    {"view_seq": 1, "enter": [["Task", "k", "", True, '{"a": NaN}', '{}']]},  # not plain JSON
    {"view_seq": 1, "enter": [["Task", "k", "", True, "[1]", "{}"]]},  # a body that is no map
    {"view_seq": 1, "enter": [["Task", "k"]]},                         # neither document form
    {"view_seq": 1, "leave": [["Task"]]},                              # a key is [collection, key]
    {"view_seq": 1, "leave": [["", "k"]]},                             # an empty collection
    [1, 2],                                                             # not a map
])
def test_malformed_view_parts_are_malformed_messages(bad: Any) -> None:
    body = Changes(0, 1, 1).to_body()
    body["view"] = bad
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb([1, "changes", 0, body], use_bin_type=True))
    assert err.value.code == "malformed_message"


def flexible_initiator(features: tuple[str, ...] = FEATURES, scope: Any = None) -> Replicator:
    r = Replicator(ME, Role.INITIATOR, scope=FLEX if scope is None else scope, expected_peer=PEER)
    r.features = features
    r.start()
    r.checkpoint_read(Checkpoint(4, 0))
    r.handle(Welcome(PEER, 0, {}))
    return r


def test_a_flexible_initiator_with_the_feature_integrates_the_view_with_the_batch() -> None:
    r = flexible_initiator()
    assert r.accepts_view
    c = changes_with_view()
    actions = r.handle(c)
    assert actions == [Integrate(tuple(c.transactions), PEER, 9, c.view)]
    with pytest.raises(UsageError):
        perform(actions[0], object(), r)  # type: ignore[arg-type]  # a plain replica cannot apply it


@pytest.mark.parametrize("features, scope", [
    ((FEATURE_SNAPSHOT_JSON,), None),                                   # did not announce it
    (FEATURES, {"partition": {"key": "_partition", "value": "p"}}),     # not flexible sync
])
def test_a_view_part_nobody_asked_for_fails_the_connection(features: tuple[str, ...], scope: Any) -> None:
    r = flexible_initiator(features, scope)
    actions = r.handle(changes_with_view())
    assert len(actions) == 1 and isinstance(actions[0], Fail)
    assert actions[0].error.code == "malformed_message"


def test_an_acceptor_never_takes_a_view_part() -> None:
    from tidesync.protocol.messages import Hello

    r = Replicator(ME, Role.ACCEPTOR)
    r.start()
    r.handle(Hello(PEER, "t", FLEX, ME, 0, features=FEATURES))
    r.checkpoint_read(Checkpoint(4, 0))
    actions = r.handle(changes_with_view())
    assert len(actions) == 1 and isinstance(actions[0], Fail)


def test_a_spliced_changes_with_a_view_part_is_the_same_payload() -> None:
    c = changes_with_view()
    (seq, t), = c.entries
    stored = Transaction.from_stored(t.to_wire(), msgpack.packb(t.to_wire(), use_bin_type=True))
    spliced = Changes(c.from_seq, c.to_seq, c.head, ((seq, stored),), c.progress, c.view)
    for threshold in (None, 0):
        assert encode(spliced, compress_threshold=threshold) == encode(c, compress_threshold=threshold)
    assert decode(encode(spliced)) == c


def test_with_view_is_the_batch_made_with_that_view_part() -> None:
    c = changes_with_view()
    assert c.view is not None
    bare = Changes(c.from_seq, c.to_seq, c.head, c.entries, c.progress)
    joined = bare.with_view(c.view)
    assert joined == c and encode(joined) == encode(c) and bare.view is None
    with pytest.raises(ValueError, match="ViewPart"):
        bare.with_view(("not", "a part"))  # type: ignore[arg-type]
