"""``python -m bench.judge_replay [PASSES]``: the CPU of judging a routed entry, in memory no longer in the CPU's caches.

Runs ``bench.route_inprocess 6000 6000`` (one routing round of the routing case: 1,000 sessions, 6,000
changes), keeps each session's read (its routed entries, as ``FlexibleSession._judge`` got them),
then judges all of them again, one session after the other, PASSES times (default 10), as a round
does: each session's entries were routed long before it reads them, and between two of its
entries the CPU's caches have seen the other sessions'. Prints the best of 5 such runs, in ns per
routed entry (``time.process_time``; the documents entering views were let in by the first read,
so the replays only judge). Then the same for one read in fifty judged 200 times in a row (hot
caches), for comparison: the difference is what the objects an entry touches cost. Compare trees
back to back (``PYTHONPATH=src`` from each, the repository root on ``sys.path``). A development aid.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tidesync.server import flexible  # noqa: E402

import bench.route_inprocess as route_inprocess  # noqa: E402


def main(passes: int) -> None:
    reads: list[tuple[Any, ...]] = []
    judge = flexible.FlexibleSession._judge

    def keeping(self: Any, routed: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append((self, list(routed), args, kwargs))
        return judge(self, routed, *args, **kwargs)

    flexible.FlexibleSession._judge = keeping  # type: ignore[method-assign]
    try:
        route_inprocess.main(6000, 6000)
    finally:
        flexible.FlexibleSession._judge = judge  # type: ignore[method-assign]
    entries = sum(len(r[1]) for r in reads)
    gc.disable()
    best = float("inf")
    for _ in range(5):
        began = time.process_time()
        for _ in range(passes):
            for s, routed, args, kwargs in reads:
                s._judge(routed, *args, **kwargs)
        best = min(best, time.process_time() - began)
    hot = 0.0
    hot_entries = 0
    for s, routed, args, kwargs in reads[::50]:
        one = float("inf")
        for _ in range(3):
            began = time.process_time()
            for _ in range(200):
                s._judge(routed, *args, **kwargs)
            one = min(one, (time.process_time() - began) / 200)
        hot += one
        hot_entries += len(routed)
    gc.enable()
    print(f"judging {len(reads):,} reads ({entries:,} routed entries) in turn: {best / passes / entries * 1e9:,.0f} ns "
          f"per entry; one read repeated: {hot / max(1, hot_entries) * 1e9:,.0f} ns per entry")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
