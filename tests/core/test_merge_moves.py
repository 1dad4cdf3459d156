"""List moves under concurrency: three replicas insert, set, erase and (mostly) move the
elements of one list, exchanging operations at random. Whatever the order and repetition of
delivery, every replica ends with one state; an element is never duplicated by moves (what a
remove and an insert would do), every element not erased shows exactly once, and a join of two
partial states equals applying the union of their operations."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidesync.core.merge import canonical_state, integrate_all, join, list_element_ids
from tidesync.core.operations import ListErase, ListInsert, ListMove, Op

from tests.helpers.merge_pairs import Writer, start

CASES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PATH = ("l",)


def _history(seed: int) -> tuple[list[Op], list[Writer]]:
    rng = random.Random(seed)
    base = start({"l": ["a", "b", "c", "d"]}, {"l": "list"})
    writers = [Writer(who, base) for who in ("A", "B", "S")]
    ops: list[Op] = []
    t = 100
    for _ in range(rng.randint(5, 40)):
        w = rng.choice(writers)
        n = len(w.state.body["l"])
        t += 1
        r = rng.random()
        if r < 0.5 and n:
            ops.append(w.move(t, PATH, rng.randrange(n), rng.randrange(n)))
        elif r < 0.65 or not n:
            ops.append(w.insert(t, PATH, rng.randint(0, n), f"v{t}"))
        elif r < 0.8:
            ops.append(w.lset(t, PATH, rng.randrange(n), f"s{t}"))
        else:
            ops.append(w.erase(t, PATH, rng.randrange(n)))
        if rng.random() < 0.3:  # a partial exchange: one replica catches up on some operations
            other = rng.choice(writers)
            other.receive(*rng.sample(ops, rng.randint(0, len(ops))))
    return ops, writers


@CASES
@given(seed=st.integers(0, 2**32 - 1))
def test_every_order_with_duplicates_gives_one_list_without_duplicated_elements(seed: int) -> None:
    ops, writers = _history(seed)
    base = start({"l": ["a", "b", "c", "d"]}, {"l": "list"})
    expected, _ = integrate_all(base.copy(), ops)
    rng = random.Random(seed)
    for _ in range(4):
        order = ops + rng.sample(ops, len(ops) // 3)
        rng.shuffle(order)
        got, _ = integrate_all(base.copy(), order)
        assert canonical_state(got) == canonical_state(expected)
    for w in writers:
        w.receive(*ops)
        assert canonical_state(w.state) == canonical_state(expected)
    # Each element not erased shows once, moved or not; the erased ones do not show.
    ids = list_element_ids(expected, PATH)
    assert len(ids) == len(set(ids))
    inserted = set(list_element_ids(base, PATH)) | {op.elem for op in ops if isinstance(op, ListInsert)}
    erased = {op.elem for op in ops if isinstance(op, ListErase)}
    assert set(ids) == inserted - erased
    assert len(expected.body["l"]) == len(ids)


@CASES
@given(seed=st.integers(0, 2**32 - 1), cut=st.floats(0, 1))
def test_join_of_two_partial_states_equals_the_union_of_their_operations(seed: int, cut: float) -> None:
    ops, _ = _history(seed)
    base = start({"l": ["a", "b", "c", "d"]}, {"l": "list"})
    rng = random.Random(seed)
    left = [op for op in ops if rng.random() < cut]
    right = [op for op in ops if rng.random() >= cut] + left[: len(left) // 2]
    a, _ = integrate_all(base.copy(), left)
    b, _ = integrate_all(base.copy(), right)
    union, _ = integrate_all(base.copy(), left + right)
    assert canonical_state(join(a, b)) == canonical_state(union)
    assert canonical_state(join(b, a)) == canonical_state(union)
    assert canonical_state(join(join(a, b), b)) == canonical_state(union)


def test_moves_that_arrive_before_their_anchor_or_element_wait_for_them() -> None:
    base = start({"l": ["a", "b"]}, {"l": "list"})
    w = Writer("A", base)
    insert = w.insert(100, PATH, 2, "c")          # c after b
    move = w.move(110, PATH, 0, 2)                 # a after c: anchored at c's insert
    again = w.move(120, PATH, 2, 0)                # a to the head again
    assert w.state.body["l"] == ["a", "b", "c"]
    for order in ([again, move, insert], [move, again, insert], [move, insert, again], [again, insert, move]):
        got, _ = integrate_all(base.copy(), order)
        assert got.body["l"] == ["a", "b", "c"], order
    got, _ = integrate_all(base.copy(), [move, insert])
    assert got.body["l"] == ["b", "c", "a"]
    assert isinstance(move, ListMove) and move.after == insert.elem  # type: ignore[attr-defined]
