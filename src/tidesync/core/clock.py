"""The hybrid logical clock that stamps every write on a replica.

A hybrid logical clock (Kulkarni et al., 2014) follows the wall clock while it moves forward
and falls back on a counter when it does not, so stamps are unique, increase on every call,
and never fall behind a stamp the replica has seen from another replica: a write made after
seeing another write always carries a later stamp, even when the two wall clocks disagree.
"""

from __future__ import annotations

from collections.abc import Callable

from .stamp import MAX_COUNTER, MAX_WALL, ReplicaId, Stamp, make_stamp, parse_stamp, stamp_run

__all__ = ["HybridClock"]


class HybridClock:
    """Issues stamps for one replica.

    Args:
        replica: this replica's id.
        wall_ms: a callable returning the wall clock in milliseconds (injected: the core
            never reads the clock itself).
        last: the last stamp this replica issued or observed, to resume after a restart.
    """

    def __init__(self, replica: ReplicaId, wall_ms: Callable[[], int], last: Stamp | None = None) -> None:
        self.replica = replica
        self._wall_ms = wall_ms
        self._last_wall = 0
        self._last_counter = 0
        # The hex of the wall time last stamped: most stamps in a row share it.
        self._head_wall = -1
        self._head = ""
        if last:
            self.observe(last)

    def now(self) -> Stamp:
        """Return a new stamp, later than every stamp issued or observed before."""
        wall = self._wall_ms()
        last = self._last_wall
        if wall > last:
            last = self._last_wall = wall
            counter = self._last_counter = 0
        elif self._last_counter < MAX_COUNTER:
            counter = self._last_counter = self._last_counter + 1
        else:
            # The counter is exhausted within one millisecond: borrow the next millisecond.
            last = self._last_wall = last + 1
            counter = self._last_counter = 0
        if last != self._head_wall:
            if last > MAX_WALL:
                raise ValueError(f"stamp parts out of range: {last}, {counter}")
            self._head, self._head_wall = f"{last:012x}", last
        return Stamp(f"{self._head}{counter:06x}{self.replica}")

    def now_many(self, n: int) -> list[Stamp]:
        """Return ``n`` new stamps in increasing order: what ``n`` calls of :meth:`now` give
        while the wall clock stands still (one wall-clock read, then the counter)."""
        if n <= 0:
            return []
        first = self.now()
        if n == 1:
            return [first]
        out = stamp_run(first, n)
        last = parse_stamp(out[-1])
        self._last_wall, self._last_counter = last.wall_ms, last.counter
        return out

    def observe(self, stamp: Stamp) -> None:
        """Take note of a stamp seen elsewhere so later stamps sort after it."""
        if not stamp:
            return
        wall, counter, _ = parse_stamp(stamp)
        if (wall, counter) > (self._last_wall, self._last_counter):
            self._last_wall, self._last_counter = wall, counter

    @property
    def last(self) -> Stamp:
        """The latest stamp issued or observed (for persisting)."""
        return make_stamp(self._last_wall, self._last_counter, self.replica)
