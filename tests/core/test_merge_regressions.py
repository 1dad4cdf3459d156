"""Failures the merge property tests found, kept as named regressions (one test each)."""

from __future__ import annotations

from tidesync.core.merge import Policies, canonical_state, integrate_all
from tidesync.core.operations import SetContainer, SetValue
from tidesync.core.stamp import ZERO

from tests.helpers.merge_pairs import COLL, stamp, start


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
