"""HybridClock.now_many: the same stamps as repeated now() while the wall clock stands still."""

from __future__ import annotations

from hypothesis import given, strategies as st

from tidesync.core.clock import HybridClock
from tidesync.core.stamp import MAX_COUNTER, ReplicaId, make_stamp

R = ReplicaId("00000000000000ab")


@given(n=st.integers(0, 40), start=st.integers(0, MAX_COUNTER), wall=st.integers(1, 10**12),
       behind=st.booleans())
def test_now_many_equals_repeated_now(n: int, start: int, wall: int, behind: bool) -> None:
    last = make_stamp(wall + 5 if behind else wall - 1, start, R)  # wall clock behind: counter runs
    a = HybridClock(R, lambda: wall, last)
    b = HybridClock(R, lambda: wall, last)
    many = a.now_many(n)
    assert many == [b.now() for _ in range(n)]
    assert a.last == b.last
    assert many == sorted(set(many))
    assert a.now() == b.now()


def test_now_many_borrows_the_next_millisecond_when_the_counter_runs_out() -> None:
    a = HybridClock(R, lambda: 7, make_stamp(9, MAX_COUNTER - 2, R))
    b = HybridClock(R, lambda: 7, make_stamp(9, MAX_COUNTER - 2, R))
    assert a.now_many(6) == [b.now() for _ in range(6)]


def test_top_level_set_equals_the_constructor() -> None:
    from tidesync.core.operations import SetValue, op_to_wire, top_level_set

    s = make_stamp(5, 1, R)
    for value in (None, 1, 2.5, "x", True):
        a = top_level_set("Note", "k1", s, s, "priority", value)
        b = SetValue("Note", "k1", s, s, ("priority",), (), value)
        assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
        assert op_to_wire(a) == op_to_wire(b)


def test_to_wire_with_known_operations_is_the_same() -> None:
    from tidesync.core.operations import DeleteDoc, op_to_wire, top_level_set
    from tidesync.core.transaction import Transaction

    s = [make_stamp(5, i, R) for i in range(4)]
    ops = (top_level_set("N", "a", s[0], s[0], "f", 1), DeleteDoc("N", "b", s[1], s[0]),
           top_level_set("N", "c", s[2], s[0], "g", "x"))
    t = Transaction(id=s[0], origin=R, stamp=s[0], parents=(), ops=ops)
    plain = t.to_wire()
    assert t.to_wire({0: op_to_wire(ops[0]), 2: op_to_wire(ops[2])}) == plain
    assert t.to_wire({i: op_to_wire(op) for i, op in enumerate(ops)}) == plain


def test_now_many_is_n_calls_of_now_as_the_wall_clock_moves() -> None:
    wall = [1000]
    a = HybridClock(R, lambda: wall[0])
    b = HybridClock(R, lambda: wall[0])
    for n, moved in ((1, 0), (5, 0), (0, 0), (3, 7), (40, 0)):
        wall[0] += moved
        assert a.now_many(n) == [b.now() for _ in range(n)]
        assert a.last == b.last


def test_now_many_crossing_the_counter_limit_gives_distinct_increasing_stamps() -> None:
    a = HybridClock(R, lambda: 5000, make_stamp(5000, MAX_COUNTER - 3, R))
    stamps = a.now_many(10)
    assert stamps == sorted(stamps) and len(set(stamps)) == 10
    assert stamps[-1] == make_stamp(5001, 6, R)


@given(walls=st.lists(st.integers(0, 50), min_size=1, max_size=30), start=st.integers(0, MAX_COUNTER))
def test_now_gives_make_stamp_of_the_advanced_clock(walls: list[int], start: int) -> None:
    seq = iter(walls)
    clock = HybridClock(R, lambda: next(seq), make_stamp(20, start, R))
    last_wall, last_counter = 20, start
    for wall in walls:
        if wall > last_wall:
            last_wall, last_counter = wall, 0
        elif last_counter < MAX_COUNTER:
            last_counter += 1
        else:
            last_wall, last_counter = last_wall + 1, 0
        assert clock.now() == make_stamp(last_wall, last_counter, R)
        assert clock.last == make_stamp(last_wall, last_counter, R)


def test_now_refuses_a_wall_time_out_of_range() -> None:
    import pytest

    from tidesync.core.stamp import MAX_WALL

    clock = HybridClock(R, lambda: MAX_WALL + 1)
    for _ in range(2):
        with pytest.raises(ValueError):
            clock.now()
