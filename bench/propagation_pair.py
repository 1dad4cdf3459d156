"""``python -m bench.propagation_pair [WRITES] [ROOT]``: CPU per lone write of the server and of
device B, without the 100 other clients.

A steadier companion of ``python -m bench sync --only propagation`` for before/after
comparisons on a loaded machine: a server in its own process (files under ROOT, default
/dev/shm), device A in this process, device B in its own (``bench.sync_device``). A writes
WRITES (default 250) one-field edits of one document, 25 ms apart, and waits for B's listener
to see each. Prints one JSON line: the server's CPU per write (all threads, and its main
thread: the event loop), B's CPU per write (``/proc``), and the p50 latency (ms). Compare trees
back to back (``PYTHONPATH=src`` from each), alternated: the machine's load moves the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from .sync_bench import DeviceProcess, SyncDoc, cpu_s, login, make_doc, open_synced, start_server


def _main_thread_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(writes: int, root: Path) -> dict[str, float]:
    work = root / f"tidesync-pair-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = start_server(work / "server", "pair")
    try:
        a = open_synced(work / "a.db", login(server.url, work), "p")
        try:
            with a.write():
                a.create(SyncDoc, make_doc(0))
            a.sync_session.wait_for_upload_completion(timeout=30)
            b = DeviceProcess(server.url, work / "b.db", work / "users-b", "p", timeout=120)
            obj = a.get(SyncDoc, "item-0000000")
            assert obj is not None
            time.sleep(1.0)  # the connections settle
            pid, bpid = server.proc.pid, b.proc.pid
            s0, m0, b0 = cpu_s(pid), _main_thread_cpu(pid), cpu_s(bpid)
            lat: list[float] = []
            for i in range(1, writes + 1):
                with a.write():
                    obj.priority = i
                t0 = time.monotonic()
                seen = b.seen(i, 5.0)
                if seen is not None:
                    lat.append((seen - t0) * 1000)
                time.sleep(0.025)
            s1, m1, b1 = cpu_s(pid), _main_thread_cpu(pid), cpu_s(bpid)
            b.send({"cmd": "quit"})
            b.proc.wait(30)
        finally:
            a.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"server_ms": round((s1 - s0) / writes * 1000, 3), "server_loop_ms": round((m1 - m0) / writes * 1000, 3),
            "b_ms": round((b1 - b0) / writes * 1000, 3),
            "p50_ms": round(statistics.median(lat), 2) if lat else float("nan"), "seen": len(lat)}


def main(argv: list[str]) -> None:
    writes = int(argv[0]) if argv else 250
    root = Path(argv[1]) if len(argv) > 1 else Path("/dev/shm")
    print(json.dumps(run(writes, root)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
