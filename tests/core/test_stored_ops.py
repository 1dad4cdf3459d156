"""Operations read back from a replica's own log (``op_from_stored``) equal those parsed and
validated from the wire (``op_from_wire``), whichever path rebuilds them."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import msgpack
import pytest

from tidesync.core.clock import HybridClock
from tidesync.core.operations import SetValue, Unset, op_from_stored, op_from_wire, op_to_wire
from tidesync.core.stamp import ReplicaId


def _clock() -> HybridClock:
    return HybridClock(ReplicaId("abcdef0123456789"), lambda: 1_700_000_000_000)


@pytest.mark.parametrize("value", [1, "x", None, 2.5, True, [1, {"a": [2]}], {"$decimal": "1.5"}])
@pytest.mark.parametrize("default", [False, True])
def test_a_field_set_read_back_equals_the_parsed_one(value: object, default: bool) -> None:
    c = _clock()
    for path, epochs in ((("n",), ()), (("site", "city"), (c.now(),))):
        op = SetValue("Doc", {"k": [1]}, c.now(), "", path, epochs, value, default)
        stored = msgpack.unpackb(msgpack.packb(op_to_wire(op)), raw=False)   # as a log holds it
        fast, checked = op_from_stored(stored), op_from_wire(stored)
        assert type(fast) is SetValue
        assert fast == checked == op and repr(fast) == repr(checked)
        assert type(fast.path) is tuple and type(fast.epochs) is tuple
        with pytest.raises(FrozenInstanceError):
            fast.value = 0  # type: ignore[misc]


def test_other_operations_read_back_go_through_the_parser() -> None:
    c = _clock()
    op = Unset("Doc", "k", c.now(), "", ("a",), ())
    assert op_from_stored(msgpack.unpackb(msgpack.packb(op_to_wire(op)), raw=False)) == op
    with pytest.raises(ValueError):
        op_from_stored(["S", "Doc", "k"])   # not a stored field set: validated, refused
