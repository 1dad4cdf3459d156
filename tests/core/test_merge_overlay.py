"""The compact meta's overlay (``overlay_write``) against forced expansion.

A store writes a plain LWW register field of a compact (fast-created) document without
expanding its meta: the field's key goes to the overlay ``meta["r"]``. These properties check,
over random histories, that a state built that way is the state the general path builds: the
same body, the same canonical meta, the same merges (further operations, joins, JSON round
trips) and the same latest stamp.
"""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidesync.core.merge import (
    DocState, Policies, canonical_state, integrate, join, latest_stamp, new_state, overlay_write,
)
from tidesync.core.merge.create import expand
from tidesync.core.merge.state import write_key
from tidesync.core.operations import Op, SetValue
from tidesync.core.values import canonical_json

from tests.helpers.merge_writer import COLLECTION, apply_ops, make_policies, simulate, summary

LAWS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

seeds = st.integers(min_value=0, max_value=2**32 - 1)
replica_counts = st.integers(min_value=3, max_value=5)


def _apply_expanded(ops: list[Op], policies: Policies | None,
                    start: dict[str, DocState] | None = None) -> dict[str, DocState]:
    """``apply_ops`` with every state expanded before each operation: the general path only
    (``integrate`` itself writes a winning top-level register value of a compact document
    into the overlay)."""
    docs = {k: v.copy() for k, v in (start or {}).items()}
    for op in ops:
        ref = canonical_json(op.key)
        s = docs.get(ref)
        if s is not None:
            expand(s)
        docs[ref], _ = integrate(s, op, policies)
    return docs


def _apply_with_overlay(ops: list[Op], policies: Policies | None, rng: random.Random,
                        counter: list[int]) -> dict[str, DocState]:
    """``apply_ops``, but a one-field SetValue of the current incarnation of a compact document
    goes through ``overlay_write`` when the field is LWW (as the store's fast path does)."""
    docs: dict[str, DocState] = {}
    for op in ops:
        ref = canonical_json(op.key)
        s = docs.get(ref)
        if (s is not None and type(op) is SetValue and len(op.path) == 1 and op.base == s.epoch
                and (policies is None or policies.lookup(op.collection, op.path) == "lww")
                and "*" in s.meta):
            if overlay_write(s, op.path[0], write_key(op.stamp, op.default), op.value):
                counter[0] += 1
                continue
        if s is not None and rng.random() < 0.3:  # the store's JSON round trip
            s = DocState(s.epoch, s.live, json.loads(json.dumps(s.body)), json.loads(json.dumps(s.meta)))
        docs[ref], _ = integrate(s, op, policies)
    return docs


@LAWS
@given(seed=seeds, n=replica_counts, with_policies=st.booleans())
def test_overlay_gives_the_state_of_forced_expansion(seed: int, n: int, with_policies: bool) -> None:
    _check_overlay_against_forced_expansion(seed, n, with_policies)


def test_overlay_gives_the_state_of_forced_expansion_for_an_id_only_re_create() -> None:
    _check_overlay_against_forced_expansion(264, 4, False)


def _check_overlay_against_forced_expansion(seed: int, n: int, with_policies: bool) -> None:
    policies = make_policies() if with_policies else None
    ops = simulate(seed, n, steps=30, policies=policies).ops
    rng = random.Random(seed)
    counter = [0]
    for order in (ops, rng.sample(ops, len(ops))):
        over = _apply_with_overlay(order, policies, rng, counter)
        general = _apply_expanded(order, policies)
        assert summary(over) == summary(general)
        for ref, state in over.items():
            assert latest_stamp(state) == latest_stamp(general[ref])
            # Merges see the same document whatever the form.
            other = general[ref].copy()
            assert canonical_state(join(state.copy(), other, policies, collection=COLLECTION)) == canonical_state(other)
            assert canonical_state(join(other, state.copy(), policies, collection=COLLECTION)) == canonical_state(other)


@LAWS
@given(seed=seeds, n=replica_counts, with_policies=st.booleans())
def test_overlay_then_later_operations_merge_the_same(seed: int, n: int, with_policies: bool) -> None:
    policies = make_policies() if with_policies else None
    ops = simulate(seed, n, steps=30, policies=policies).ops
    rng = random.Random(seed ^ 1)
    cut = rng.randint(0, len(ops))
    counter = [0]
    over = _apply_with_overlay(ops[:cut], policies, rng, counter)
    general = _apply_expanded(ops[:cut], policies)
    # The rest (and some of the first part again) through the general path on both.
    rest = ops[cut:] + rng.sample(ops[:cut], min(cut, 5))
    assert summary(_apply_expanded(rest, policies, over)) == summary(_apply_expanded(rest, policies, general))
    # A join with a partial state of another replica, both ways.
    part = apply_ops(rng.sample(ops, len(ops) // 2), policies)
    for ref in set(over) | set(part):
        a = join(over.get(ref, new_state()).copy(), part.get(ref, new_state()).copy(), policies, collection=COLLECTION)
        b = join(general.get(ref, new_state()).copy(), part.get(ref, new_state()).copy(), policies, collection=COLLECTION)
        assert canonical_state(a) == canonical_state(b)


def test_overlay_is_used_and_expands_to_the_written_key() -> None:
    from tidesync.core.operations import CreateDoc

    create = CreateDoc(COLLECTION, "k", "0" * 33 + "1", "", {"title": "a", "prio": 1}, {}, ("prio",))
    state, _ = integrate(None, create)
    assert overlay_write(state, "title", write_key("0" * 33 + "2"), "b")
    assert state.meta == {"*": "0" * 33 + "1", "*d": ["prio"], "r": {"title": "1" + "0" * 33 + "2"}}
    # An older write and the key, and a container value, are refused.
    assert not overlay_write(state, "title", write_key("0" * 33 + "1"), "c")
    assert not overlay_write(state, "_id", write_key("0" * 33 + "3"), "c")
    assert not overlay_write(state, "prio", write_key("0" * 33 + "3"), [1])
    set_op = SetValue(COLLECTION, "k", "0" * 33 + "2", "", ("title",), (), "b")
    general, _ = integrate(None, create)
    expand(general)
    general, _ = integrate(general, set_op)
    assert "*" not in general.meta
    assert canonical_state(state) == canonical_state(general)
    # integrate() itself writes it into the overlay; an older write still expands (and loses).
    via, conflicts = integrate(integrate(None, create)[0], set_op)
    assert via.meta == state.meta and via.body == state.body and not conflicts
    old = SetValue(COLLECTION, "k", "0" * 33 + "1", "", ("title",), (), "z")
    lost, conflicts = integrate(via.copy(), old)
    assert "*" not in lost.meta and lost.body["title"] == "b" and [c.rule for c in conflicts] == ["lww"]


@LAWS
@given(seed=seeds, n=replica_counts, with_policies=st.booleans())
def test_integrate_takes_the_overlay_with_the_state_and_conflicts_of_forced_expansion(
        seed: int, n: int, with_policies: bool) -> None:
    """``integrate`` itself writes a winning top-level LWW value of a compact document into the
    overlay: operation by operation, in random orders, the same state (canonically) and the
    same conflicts as integrating into the expanded state, and the meta stays compact then."""
    policies = make_policies() if with_policies else None
    ops = simulate(seed, n, steps=30, policies=policies).ops
    rng = random.Random(seed ^ 2)
    for order in (ops, rng.sample(ops, len(ops))):
        docs: dict[str, DocState] = {}
        for op in order:
            ref = canonical_json(op.key)
            s = docs.get(ref)
            expanded = None
            if s is not None:
                expanded = s.copy()
                expand(expanded)
            got, conflicts = integrate(s.copy() if s is not None else None, op, policies)
            want, want_conflicts = integrate(expanded, op, policies)
            assert canonical_state(got) == canonical_state(want)
            assert conflicts == want_conflicts
            docs[ref] = got
