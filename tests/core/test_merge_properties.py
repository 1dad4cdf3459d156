"""Merge laws, checked on random histories of 3 to 5 simulated replicas.

Each example runs :func:`tests.helpers.merge_writer.simulate` from a seed: replicas write
random transactions (creates, deletes, re-creates, nested sets, list, set, dictionary and
counter operations, container assignments, policy-governed fields, empty transactions)
against their local state, and exchange them at random in random order. The laws:

* every permutation of the operations, with duplicates, gives one state (body, live,
  epoch and meta, compared canonically), which is also what every replica holds after a
  full exchange (strong eventual consistency, CR-32);
* integrating any operation again changes nothing;
* ``join`` of two partial states equals applying the union of their operations, and join
  is commutative, associative and idempotent;
* the fast create path gives the state the general path gives;
* a state survives the JSON round trip the store puts it through.
"""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidesync.core.merge import DocState, Policies, canonical_state, integrate, join, new_state
from tidesync.core.merge.conflicts import Context
from tidesync.core.merge.create import create_general
from tidesync.core.operations import CreateDoc, Op
from tidesync.core.values import canonical_json

from tests.helpers.merge_writer import COLLECTION, apply_ops, make_policies, simulate, summary

LAWS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

seeds = st.integers(min_value=0, max_value=2**32 - 1)
replica_counts = st.integers(min_value=3, max_value=5)


def _policies(flag: bool) -> Policies | None:
    return make_policies() if flag else None


def _join_docs(a: dict[str, DocState], b: dict[str, DocState], policies: Policies | None) -> dict[str, DocState]:
    return {k: join(a.get(k, new_state()), b.get(k, new_state()), policies, collection=COLLECTION)
            for k in set(a) | set(b)}


@LAWS
@given(seed=seeds, n=replica_counts, with_policies=st.booleans())
def test_every_order_with_duplicates_converges_to_one_state(seed: int, n: int, with_policies: bool) -> None:
    policies = _policies(with_policies)
    sim = simulate(seed, n, steps=30, policies=policies)
    sim.sync_all()
    ops = sim.ops
    expected = summary(apply_ops(ops, policies))
    for replica in sim.replicas:
        assert summary(replica.docs) == expected
    rng = random.Random(seed)
    for _ in range(3):
        order = ops + rng.sample(ops, len(ops) // 3)
        rng.shuffle(order)
        assert summary(apply_ops(order, policies)) == expected
    txns = list(sim.transactions)
    rng.shuffle(txns)
    assert summary(apply_ops([op for t in txns for op in t], policies)) == expected


@LAWS
@given(seed=seeds, n=replica_counts, with_policies=st.booleans())
def test_integrating_an_operation_again_changes_nothing(seed: int, n: int, with_policies: bool) -> None:
    policies = _policies(with_policies)
    ops = simulate(seed, n, steps=30, policies=policies).ops
    rng = random.Random(seed)
    state: dict[str, DocState] = {}
    for op in ops:
        ref = canonical_json(op.key)
        state[ref], _ = integrate(state.get(ref), op, policies)
        before = canonical_state(state[ref])
        again = rng.choice(ops[: ops.index(op) + 1])
        if canonical_json(again.key) == ref:
            # Any operation already integrated, again: nothing changes.
            state[ref], _ = integrate(state[ref], again, policies)
            assert canonical_state(state[ref]) == before


@LAWS
@given(seed=seeds, n=replica_counts, with_policies=st.booleans())
def test_join_equals_applying_the_union(seed: int, n: int, with_policies: bool) -> None:
    policies = _policies(with_policies)
    ops = simulate(seed, n, steps=30, policies=policies).ops
    rng = random.Random(seed)
    cut = rng.randint(0, len(ops))
    common = apply_ops(ops[:cut], policies)
    rest = ops[cut:]
    x = [op for op in rest if rng.random() < 0.6]
    y = [op for op in rest if rng.random() < 0.6]
    union = x + [op for op in y if op not in x]
    sx, sy = apply_ops(x, policies, common), apply_ops(y, policies, common)
    assert summary(_join_docs(sx, sy, policies)) == summary(apply_ops(union, policies, common))


@LAWS
@given(seed=seeds, n=replica_counts, with_policies=st.booleans())
def test_join_is_commutative_associative_idempotent(seed: int, n: int, with_policies: bool) -> None:
    policies = _policies(with_policies)
    ops = simulate(seed, n, steps=30, policies=policies).ops
    rng = random.Random(seed)
    a, b, c = (apply_ops([op for op in ops if rng.random() < 0.5], policies) for _ in range(3))
    assert summary(_join_docs(a, b, policies)) == summary(_join_docs(b, a, policies))
    assert (summary(_join_docs(_join_docs(a, b, policies), c, policies))
            == summary(_join_docs(a, _join_docs(b, c, policies), policies)))
    assert summary(_join_docs(a, a, policies)) == summary(a)
    assert summary(_join_docs(a, {}, policies)) == summary(a)


@LAWS
@given(seed=seeds, n=replica_counts)
def test_fast_create_gives_the_state_of_the_general_path(seed: int, n: int) -> None:
    creates = [op for op in simulate(seed, n, steps=30).ops if isinstance(op, CreateDoc)]
    for op in creates:
        fast, _ = integrate(None, op)
        general = DocState(op.base, True, {"_id": op.key}, {})
        create_general(Context(op, None), general, op)
        assert canonical_state(fast) == canonical_state(general)
        # And from the compact form, later operations see the same document.
        assert canonical_state(join(fast, general)) == canonical_state(general)


@LAWS
@given(seed=seeds, n=replica_counts, with_policies=st.booleans())
def test_states_survive_the_json_round_trip(seed: int, n: int, with_policies: bool) -> None:
    policies = _policies(with_policies)
    ops = simulate(seed, n, steps=30, policies=policies).ops
    rng = random.Random(seed)
    stored: dict[str, DocState] = {}
    for op in ops:
        ref = canonical_json(op.key)
        s = stored.get(ref)
        if s is not None and rng.random() < 0.5:
            s = DocState(s.epoch, s.live, json.loads(json.dumps(s.body)), json.loads(json.dumps(s.meta)))
        stored[ref], _ = integrate(s, op, policies)
    assert summary(stored) == summary(apply_ops(ops, policies))


def test_a_long_history_converges() -> None:
    """One bigger, fixed history (more replicas, more steps) as a smoke test of scale."""
    policies = make_policies()
    sim = simulate(20260101, 5, steps=200, policies=policies, max_ops=6)
    sim.sync_all()
    ops: list[Op] = sim.ops
    expected = summary(apply_ops(ops, policies))
    rng = random.Random(7)
    order = ops + ops[: len(ops) // 2]
    rng.shuffle(order)
    assert summary(apply_ops(order, policies)) == expected
    assert all(summary(r.docs) == expected for r in sim.replicas)


@LAWS
@given(seed=seeds, n=replica_counts)
def test_latest_stamp_is_the_latest_stamp_integrated(seed: int, n: int) -> None:
    from tidesync.core.merge import latest_stamp
    from tidesync.core.operations import DeleteDoc

    ops = simulate(seed, n, steps=30).ops
    docs = apply_ops(ops, None)
    for ref, state in docs.items():
        mine = [op.stamp for op in ops if canonical_json(op.key) == ref]
        latest = latest_stamp(state)
        assert latest <= max(mine)
        # Everything integrated after the last delete leaves its stamp somewhere in the state.
        last = [op for op in ops if canonical_json(op.key) == ref and op.base == state.epoch
                and not isinstance(op, DeleteDoc)]
        if state.live and last:
            assert latest >= min(op.stamp for op in last)


@LAWS
@given(seed=seeds, n=replica_counts)
def test_stamps_of_a_state_are_stamps_of_writes_it_integrated(seed: int, n: int) -> None:
    # What a replica that joins the state claims to have seen (docs/sync.md): only real writes,
    # and per origin at most the latest of that origin's writes to the document.
    from tidesync.core.merge import latest_stamp, stamps_of
    from tidesync.core.stamp import latest_by_origin

    ops = simulate(seed, n, steps=30).ops
    for ref, state in apply_ops(ops, None).items():
        mine = {op.stamp for op in ops if canonical_json(op.key) == ref}
        found = stamps_of(state)
        assert set(found) <= mine
        assert max(found, default="") == latest_stamp(state)
        by_origin: dict[str, str] = {}
        latest_by_origin(found, by_origin)
        for origin, stamp in by_origin.items():
            assert stamp == max(s for s in found if s[18:] == origin)


@LAWS
@given(seed=seeds, n=replica_counts, with_policies=st.booleans())
def test_latest_stamp_holds_every_create_of_the_incarnation(seed: int, n: int, with_policies: bool) -> None:
    # A create's stamp stays in the state even when no key carries it (a create of _id alone,
    # empty containers, defaults that lost), compact or expanded, after a join too: what a
    # replica that takes the state observes with its clock and claims as seen (docs/sync.md).
    from tidesync.core.merge import latest_stamp
    from tidesync.core.merge.create import expand

    policies = _policies(with_policies)
    ops = simulate(seed, n, steps=30, policies=policies).ops
    rng = random.Random(seed)
    order = rng.sample(ops, len(ops))
    docs = apply_ops(order, policies)
    part = apply_ops([op for op in order if rng.random() < 0.5], policies)
    for ref, state in docs.items():
        creates = [op.stamp for op in ops if isinstance(op, CreateDoc) and canonical_json(op.key) == ref
                   and op.base == state.epoch]
        if not creates:
            continue
        expanded = state.copy()
        expand(expanded)
        joined = join(part.get(ref, new_state()), state, policies, collection=COLLECTION)
        for s in (state, expanded, joined):
            assert latest_stamp(s) >= max(creates)
