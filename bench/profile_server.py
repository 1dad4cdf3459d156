"""``python -m bench.profile_server OUT.prof ARGS...``: ``python -m tidesync ARGS...`` under
cProfile (its main thread: the event loop; CPU time, not wall time), the statistics written to OUT.prof when the process
is terminated (SIGTERM). SIGUSR1 starts the profile afresh (the bench sends it when its
measured phase begins, so that connecting and bootstrapping are left out).

The sync bench starts its servers this way when ``TIDESYNC_BENCH_PROFILE=DIR`` is set (one
file per server, DIR/NAME.prof); read them with ``python -m pstats``. cProfile slows the
server down by about half, so figures of such a run are not comparable with the others.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from typing import Any


def main(argv: list[str]) -> None:
    out, args = argv[0], argv[1:]
    prof = cProfile.Profile(time.thread_time)  # CPU time: other processes share the cores

    def stop(signum: int, frame: Any) -> None:
        prof.disable()
        prof.dump_stats(out)
        raise SystemExit(0)

    def restart(signum: int, frame: Any) -> None:
        prof.disable()
        prof.clear()
        prof.enable()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, restart)
    from tidesync.cli.main import main as cli_main

    sys.argv = ["tidesync", *args]
    prof.enable()
    try:
        cli_main()
    finally:
        prof.disable()
        prof.dump_stats(out)


if __name__ == "__main__":
    main(sys.argv[1:])
