"""Hypothesis strategies for protocol messages."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tidesync.core.operations import CreateDoc, DeleteDoc, Op, SetValue
from tidesync.core.stamp import ReplicaId, Stamp, make_stamp
from tidesync.core.transaction import Transaction
from tidesync.protocol import (
    Ack,
    Changes,
    Close,
    CompensatedWrite,
    CompensatingWrite,
    Descriptors,
    Error,
    ErrorAction,
    Hello,
    Message,
    Ping,
    Pong,
    Progress,
    Snapshot,
    SnapshotDoc,
    Subscribe,
    SubscriptionQuery,
    SubscriptionState,
    SubscriptionStatus,
    ViewAck,
    ViewUpdate,
    Welcome,
)

seqs = st.integers(0, 2**63 - 1)
small_seqs = st.integers(0, 1000)
replica_ids = st.integers(0, 2**64 - 1).map(lambda n: ReplicaId(f"{n:016x}"))
stamps = st.builds(make_stamp, st.integers(0, 2**40), st.integers(0, 2**24 - 1), replica_ids)
names = st.text(st.characters(codec="utf-8", exclude_characters="$."), min_size=1, max_size=8)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
plain = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)
keys = st.one_of(st.text(min_size=1, max_size=10), st.integers(-1000, 1000))
scopes = st.one_of(
    st.just({}),
    st.builds(lambda k, v: {"partition": {"key": k, "value": v}}, names, scalars),
)


@st.composite
def ops(draw: Any) -> Op:
    collection = draw(names)
    key = draw(keys)
    stamp: Stamp = draw(stamps)
    kind = draw(st.sampled_from(["create", "set", "delete"]))
    if kind == "create":
        return CreateDoc(collection, key, stamp, "", {"_id": key, **draw(st.dictionaries(names, plain, max_size=3))}, {})
    if kind == "set":
        return SetValue(collection, key, stamp, "", (draw(names),), (), draw(plain))
    return DeleteDoc(collection, key, stamp, "")


@st.composite
def transactions(draw: Any) -> Transaction:
    first: Stamp = draw(stamps)
    return Transaction(first, draw(replica_ids), first, tuple(draw(st.lists(stamps, max_size=2))),
                       tuple(draw(st.lists(ops(), min_size=1, max_size=3))),
                       user=draw(st.none() | st.text(max_size=5)))


progresses = st.builds(Progress, small_seqs, small_seqs, small_seqs, small_seqs)


@st.composite
def changes(draw: Any) -> Changes:
    start = draw(small_seqs)
    gaps = draw(st.lists(st.integers(1, 5), max_size=4))
    entries, seq = [], start
    for gap in gaps:
        seq += gap
        entries.append((seq, draw(transactions())))
    to_seq = seq + draw(st.integers(0, 5))
    head = to_seq + draw(st.integers(0, 5))
    return Changes(start, to_seq, head, tuple(entries), draw(progresses))


@st.composite
def descriptors(draw: Any) -> Descriptors:
    txns = draw(st.lists(transactions(), max_size=3))
    return Descriptors(tuple((i + 1, t.descriptor(draw(small_seqs))) for i, t in enumerate(txns)))


doc_states = st.builds(
    lambda live, body, meta, epoch: {"epoch": epoch, "live": live, "body": body, "meta": meta},
    st.booleans(), st.dictionaries(names, plain, max_size=3), st.dictionaries(names, plain, max_size=2),
    st.one_of(st.just(""), stamps),
)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, replica_ids, st.none() | st.text(max_size=20), scopes, st.none(), st.just(0),
              st.dictionaries(names, st.text(max_size=5), max_size=2)),
    st.builds(lambda r, a, c: Hello(r, None, {}, a, c), replica_ids, replica_ids, seqs),
    st.builds(Welcome, replica_ids, seqs, scopes, st.dictionaries(names, plain, max_size=2)),
    changes(),
    descriptors(),
    st.builds(Ack, seqs, st.none() | small_seqs),
    st.builds(Snapshot, small_seqs,
              st.lists(st.builds(SnapshotDoc, names, keys, doc_states), max_size=3).map(tuple),
              seqs, st.booleans(), progresses),
    st.builds(CompensatingWrite, st.lists(st.builds(
        CompensatedWrite, stamps, names, keys, st.sampled_from(["create", "update", "delete"]),
        names, st.text(max_size=10), st.none() | doc_states), min_size=1, max_size=2).map(tuple)),
    st.builds(Subscribe, small_seqs, small_seqs, st.lists(st.builds(
        SubscriptionQuery, st.text(max_size=5), names,
        st.one_of(st.text(max_size=10), st.dictionaries(names, plain, max_size=2)),
        st.none() | st.dictionaries(names, plain, max_size=2)), max_size=2).map(tuple)),
    st.builds(SubscriptionState, small_seqs, small_seqs, st.sampled_from(list(SubscriptionStatus)),
              st.none() | st.text(max_size=10)),
    st.builds(ViewUpdate, small_seqs.map(lambda n: n + 1), small_seqs,
              st.lists(st.builds(SnapshotDoc, names, keys, doc_states), max_size=2).map(tuple),
              st.lists(st.tuples(names, keys), max_size=2).map(tuple), progresses),
    st.builds(ViewAck, seqs),
    st.builds(Error, names, st.text(max_size=20), st.none() | st.sampled_from(list(ErrorAction)),
              st.none() | small_seqs),
    st.builds(Ping, seqs),
    st.builds(Pong, seqs),
    st.builds(Close, st.text(max_size=10)),
)
