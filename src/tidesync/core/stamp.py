"""Stamps: the total order every write is placed in.

A stamp is (wall-clock milliseconds, counter, replica id), written as one fixed-width
lowercase hex string so that comparing two stamps as strings compares them as tuples. That
keeps stamps cheap to store in SQLite and JSON, and comparable inside SQL.

Layout (34 characters): 12 hex digits of milliseconds since the Unix epoch, 6 hex digits of
logical counter, 16 hex digits of replica id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple, NewType

__all__ = ["Stamp", "ReplicaId", "ZERO", "make_stamp", "parse_stamp", "StampParts",
           "is_stamp", "is_replica_id", "are_compact_metas", "STAMP_LENGTH", "stamp_run", "stamp_after",
           "latest_by_origin"]

Stamp = NewType("Stamp", str)
ReplicaId = NewType("ReplicaId", str)

STAMP_LENGTH = 34
WALL_DIGITS = 12
COUNTER_DIGITS = 6
MAX_WALL = 16**WALL_DIGITS - 1
MAX_COUNTER = 16**COUNTER_DIGITS - 1

#: The stamp below every real stamp: "nothing seen yet".
ZERO = Stamp("")

_STAMP_RE = re.compile(r"\A[0-9a-f]{34}\Z")
_REPLICA_RE = re.compile(r"\A[0-9a-f]{16}\Z")
#: Any number of ``{"*":"<stamp>"}``, 42 characters each.
_COMPACT_METAS_RE = re.compile(r'(?:\{"\*":"[0-9a-f]{34}"\})*')
_STAMPS_RE = re.compile(r"(?:[0-9a-f]{34})*")


class StampParts(NamedTuple):
    wall_ms: int
    counter: int
    replica: ReplicaId


def make_stamp(wall_ms: int, counter: int, replica: ReplicaId) -> Stamp:
    """Build a stamp from its parts."""
    if not 0 <= wall_ms <= MAX_WALL or not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"stamp parts out of range: {wall_ms}, {counter}")
    return Stamp(f"{wall_ms:012x}{counter:06x}{replica}")


def parse_stamp(stamp: Stamp) -> StampParts:
    """Split a stamp into (wall_ms, counter, replica)."""
    return StampParts(int(stamp[:12], 16), int(stamp[12:18], 16), ReplicaId(stamp[18:]))


def stamp_after(first: Stamp, k: int) -> Stamp:
    """The ``k``-th stamp after ``first`` in a run of stamps issued in a row by one clock
    (:meth:`~tidesync.core.clock.HybridClock.now_many`): the counter goes up by one, and after
    ``MAX_COUNTER`` the next millisecond starts at counter 0."""
    point = int(first[:18], 16) + k  # wall and counter as one number: the run's stamps are consecutive
    return make_stamp(point >> (4 * COUNTER_DIGITS), point & MAX_COUNTER, ReplicaId(first[18:]))


def stamp_run(first: Stamp, n: int) -> list[Stamp]:
    """``n`` stamps in a row from ``first`` (``first`` itself included), as
    :meth:`~tidesync.core.clock.HybridClock.now_many` issues them: ``stamp_after(first, k)``
    for ``k`` in ``range(n)``."""
    if n <= 0:
        return []
    out = [first]
    replica = first[18:]
    wall, counter = int(first[:12], 16), int(first[12:18], 16)
    while len(out) < n:
        take = min(n - len(out), MAX_COUNTER - counter)
        if take <= 0:  # the counter is exhausted: the next millisecond, from counter 0
            wall, counter = wall + 1, 0
            out.append(make_stamp(wall, 0, ReplicaId(replica)))
            continue
        if wall > MAX_WALL:
            raise ValueError(f"stamp parts out of range: {wall}, {counter}")
        start, end = counter + 1, counter + 1 + take
        if take >= 64:
            # The counter's last three hex digits with the replica come from a table made once
            # per replica: one concatenation per stamp (a % format costs several times that).
            lows = _low_texts(replica)
            head = f"{wall:012x}"
            c = start
            while c < end:
                hi, lo = divmod(c, 4096)
                stop = min(end, (hi + 1) * 4096)
                out.extend(map(f"{head}{hi:03x}".__add__, lows[lo:lo + stop - c]))  # type: ignore[arg-type]
                c = stop
        else:
            # str % int per stamp, mapped in C (the replica's text escaped for the % format)
            fmt = f"{wall:012x}%06x" + replica.replace("%", "%%")
            out.extend(map(fmt.__mod__, range(start, end)))  # type: ignore[arg-type]
        counter += take
    return out


@lru_cache(maxsize=4)
def _low_texts(replica: str) -> tuple[str, ...]:
    """A stamp's last three counter digits and its replica, for each of the 4,096 values."""
    return tuple([f"{i:03x}{replica}" for i in range(4096)])


def latest_by_origin(stamps: Iterable[str], into: dict[str, str]) -> None:
    """Keep in ``into`` (origin -> stamp) the latest of ``stamps`` of each origin (replica)."""
    stamps = list(stamps)
    origins = {s[18:] for s in stamps}
    if len(origins) == 1:  # the common case (one writer's documents): no loop in Python
        [origin] = origins
        best = max(stamps)
        if best > into.get(origin, ZERO):
            into[origin] = best
        return
    for s in stamps:
        origin = s[18:]
        if s > into.get(origin, ZERO):
            into[origin] = s


def is_stamp(value: object) -> bool:
    """True when ``value`` is a well-formed stamp string."""
    return isinstance(value, str) and _STAMP_RE.match(value) is not None


def are_compact_metas(texts: Sequence[object]) -> bool:
    """True when every one of ``texts`` is the JSON text ``{"*":"<stamp>"}`` exactly (a fresh
    document's compact meta), checked in one pass for all of them."""
    return (set(map(type, texts)) <= {str} and set(map(len, texts)) <= {42}  # type: ignore[arg-type]
            and _COMPACT_METAS_RE.fullmatch("".join(texts)) is not None)  # type: ignore[arg-type]


def are_stamps(values: Sequence[object]) -> bool:
    """True when every one of ``values`` is a well-formed stamp of type str exactly (what
    :func:`is_stamp` accepts, but a str subclass), checked in one pass for all of them."""
    return (set(map(type, values)) <= {str} and set(map(len, values)) <= {34}  # type: ignore[arg-type]
            and _STAMPS_RE.fullmatch("".join(values)) is not None)  # type: ignore[arg-type]


def is_replica_id(value: object) -> bool:
    """True when ``value`` is a well-formed replica id (16 lowercase hex digits)."""
    return isinstance(value, str) and _REPLICA_RE.match(value) is not None
