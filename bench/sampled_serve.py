"""``python -m bench.sampled_serve OUT ARGS...``: ``python -m tidesync ARGS...`` under a
sampling profiler: every millisecond of the process's CPU time (``ITIMER_PROF``), each
thread's stack is charged with the CPU time that thread used since the last sample
(``pthread_getcpuclockid``). Unlike cProfile it does not inflate code made of many small
calls, so its shares are those of an unprofiled run. SIGUSR2 clears what was collected (the
start of a measured phase), SIGUSR1 writes OUT: one line per stack, ``seconds frame;frame;...``
(outermost first), heaviest first. Used by ``python -m bench flexible --profile FILE`` when
``TIDESYNC_BENCH_SAMPLE=1`` is set (a development aid)."""

from __future__ import annotations

import gc
import signal
import sys
import threading
import time
from typing import Any

_stacks: dict[tuple[str, ...], float] = {}
_last: dict[int, float] = {}
#: Per generation: collections and their CPU seconds (of the collecting thread).
_gc: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
_gc_began = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_began[0] = time.thread_time()
    else:
        got = _gc[info["generation"]]
        got[0] += 1
        got[1] += time.thread_time() - _gc_began[0]


def _stack(frame: Any) -> tuple[str, ...]:
    out = []
    while frame is not None:
        code = frame.f_code
        out.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}")
        frame = frame.f_back
    return tuple(reversed(out))


_busy = [False]


def _sample(signum: int, frame: Any) -> None:
    # Not re-entered: sys._current_frames() holds the interpreter's thread-list lock while it
    # makes frame objects; one of those allocations may run a collection, whose callback
    # (_on_gc, Python code) handles the next pending SIGPROF, and a nested _current_frames()
    # then waited for that lock forever, with the GIL held (the whole server stopped).
    if _busy[0]:
        return
    _busy[0] = True
    try:
        _sample_now()
    finally:
        _busy[0] = False


def _sample_now() -> None:
    frames = sys._current_frames()
    for tid, f in frames.items():
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(tid))
        except (OSError, ProcessLookupError):
            continue
        used = cpu - _last.get(tid, cpu)
        _last[tid] = cpu
        if used > 0:
            key = _stack(f)
            _stacks[key] = _stacks.get(key, 0.0) + used


def _dump(out: str) -> None:
    with open(out, "w") as fh:
        for gen, (n, secs) in _gc.items():
            fh.write(f"{secs:.6f} gc-generation-{gen} ({int(n)} collections)\n")
        for key, secs in sorted(_stacks.items(), key=lambda kv: -kv[1]):
            fh.write(f"{secs:.6f} {';'.join(key)}\n")


def main() -> Any:
    out, args = sys.argv[1], sys.argv[2:]
    signal.signal(signal.SIGUSR1, lambda *_: _dump(out))
    signal.signal(signal.SIGUSR2, lambda *_: (_stacks.clear(), [v.__setitem__(slice(None), [0, 0.0])
                                                                for v in _gc.values()]))
    gc.callbacks.append(_on_gc)
    signal.signal(signal.SIGPROF, _sample)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
    from tidesync.cli.main import main as tidesync_main

    return tidesync_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
