"""Failures the merge property tests found, kept as named regressions (one test each)."""

from __future__ import annotations

from tidesync.core.merge import (
    DocState, Policies, canonical_state, integrate_all, join, latest_stamp, new_state, stamps_of,
)
from tidesync.core.merge.create import expand
from tidesync.core.operations import SetContainer, SetValue
from tidesync.core.stamp import ZERO

from tests.helpers.merge_pairs import COLL, Writer, converge, stamp, start


def test_union_field_an_empty_container_replaced_by_a_value_leaves_no_trace() -> None:
    # Found by test_every_order_with_duplicates_converges_to_one_state (seed 746795): the
    # empty set was kept hidden when the value arrived second, not when it arrived first.
    pol = Policies({(COLL, "us"): "union"})
    base = start({"v": 1}, policies=pol)
    assign = SetContainer(COLL, 1, stamp(100), ZERO, ("us",), (), "set", stamp(100))
    value = SetValue(COLL, 1, stamp(101), ZERO, ("us",), (), "b")
    one, _ = integrate_all(base.copy(), [assign, value], pol)
    other, _ = integrate_all(base.copy(), [value, assign], pol)
    assert canonical_state(one) == canonical_state(other)
    assert one.body["us"] == "b"


def test_expanding_a_create_that_no_key_carries_keeps_the_create_stamp() -> None:
    # Found by test_overlay_gives_the_state_of_forced_expansion (seed 264): the expanded meta
    # of a create of _id alone held no key with the create's stamp, so latest_stamp fell back
    # to the epoch (the clock's observation and the "seen" stamps came out too low). Empty
    # containers leave no key with it either.
    for fields, kinds in (({}, {}), ({"l": [], "s": [], "o": {}}, {"l": "list", "s": "set", "o": "object"})):
        w = Writer("B")
        delete = w.delete(5)
        create = w.create(20, fields, kinds)
        compact, _ = integrate_all(None, [delete, create])
        assert "*" in compact.meta
        expanded = compact.copy()
        expand(expanded)
        assert expanded.meta.get("t") == stamp(20, "B")
        assert latest_stamp(expanded) == latest_stamp(compact) == stamp(20, "B")
        assert canonical_state(join(new_state(), compact)) == canonical_state(expanded)


def test_a_create_whose_keys_all_lose_keeps_its_stamp_in_every_order() -> None:
    # The create's default loses to an earlier explicit write (a key may beat a later stamp):
    # the state keeps the create's stamp whichever arrives first, and the orders agree.
    a, b = Writer("A"), Writer("B")
    create = a.create(20, {"d": 1}, defaults=("d",))
    explicit = b.set(15, ("d",), 2)
    got = converge(None, [create], [explicit])
    assert got.body == {"_id": 1, "d": 2}
    assert latest_stamp(got) == stamp(20, "A")
    # The same when the create is a second one (create_general into an existing document).
    first = b.create(10, {})
    got = converge(None, [create], [first], [explicit])
    assert latest_stamp(got) == stamp(20, "A") and got.meta["t"] == stamp(20, "A")


def test_meta_without_the_create_stamp_reads_as_before_and_joins_take_the_later_one() -> None:
    # Metas written before the create stamp had a place (no "t"): the same stamps as then.
    old = DocState(ZERO, True, {"_id": 1, "a": "x"}, {"r": {"a": "1" + stamp(12)}})
    assert stamps_of(old) == [stamp(12)] and latest_stamp(old) == stamp(12)
    new = DocState(ZERO, True, {"_id": 1}, {"t": stamp(30, "B")})
    for x, y in ((old, new), (new, old)):
        joined = join(x, y)
        assert joined.meta["t"] == stamp(30, "B") and latest_stamp(joined) == stamp(30, "B")
        assert joined.body == {"_id": 1, "a": "x"}
    later = DocState(ZERO, True, {"_id": 1}, {"t": stamp(40)})
    assert join(new, later).meta["t"] == join(later, new).meta["t"] == stamp(40)
