"""``python -m bench.profiled_serve OUT.prof ARGS...``: ``python -m tidesync ARGS...`` under
cProfile (CPU time of each thread, so waiting for a lock costs nothing), every thread
included (the event loop and the worker threads storage calls run in). SIGUSR2 clears what was
collected so far (the start of a measured phase), SIGUSR1 writes OUT.prof. A development aid
for ``python -m bench flexible --profile``; CPU time under a profiler is inflated, so compare
profiles with profiles, never with unprofiled figures."""

from __future__ import annotations

import cProfile
import pstats
import signal
import sys
import threading
import time
from typing import Any

_profiles: list[cProfile.Profile] = []
_original_run = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    prof = cProfile.Profile(time.thread_time)
    _profiles.append(prof)
    prof.enable()
    try:
        _original_run(self)
    finally:
        prof.disable()


def _dump(out: str) -> None:
    stats: pstats.Stats | None = None
    for p in list(_profiles):
        try:
            p.snapshot_stats()
            if stats is None:
                stats = pstats.Stats(p)
            else:
                stats.add(p)
        except (TypeError, ValueError, AttributeError):
            pass
    if stats is not None:
        stats.dump_stats(out)


def _clear() -> None:
    for p in list(_profiles):
        p.clear()


def main() -> Any:
    out, args = sys.argv[1], sys.argv[2:]
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, lambda *_: _dump(out))
    signal.signal(signal.SIGUSR2, lambda *_: _clear())
    from tidesync.cli.main import main as tidesync_main

    prof = cProfile.Profile(time.thread_time)
    _profiles.append(prof)
    prof.enable()
    return tidesync_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
