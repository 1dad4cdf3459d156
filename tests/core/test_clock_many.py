"""``HybridClock.now_many``: the stamps ``n`` calls of ``now`` in a row would give."""

from __future__ import annotations

from tidesync.core.clock import HybridClock
from tidesync.core.stamp import MAX_COUNTER, Stamp, make_stamp

REPLICA = "0123456789abcdef"


def test_now_many_is_n_calls_of_now():
    wall = [1000]
    a = HybridClock(REPLICA, lambda: wall[0])  # type: ignore[arg-type]
    b = HybridClock(REPLICA, lambda: wall[0])  # type: ignore[arg-type]
    for n, moved in ((1, 0), (5, 0), (0, 0), (3, 7), (40, 0)):
        wall[0] += moved
        assert a.now_many(n) == [b.now() for _ in range(n)]
        assert a.last == b.last


def test_now_many_borrows_the_next_millisecond_when_the_counter_runs_out():
    a = HybridClock(REPLICA, lambda: 5000, Stamp(make_stamp(5000, MAX_COUNTER - 3, REPLICA)))  # type: ignore[arg-type]
    b = HybridClock(REPLICA, lambda: 5000, Stamp(make_stamp(5000, MAX_COUNTER - 3, REPLICA)))  # type: ignore[arg-type]
    stamps = a.now_many(10)
    assert stamps == [b.now() for _ in range(10)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 10
    assert stamps[-1] == make_stamp(5001, 6, REPLICA)  # type: ignore[arg-type]
    assert a.now() == b.now()
