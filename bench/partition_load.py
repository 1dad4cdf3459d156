"""What idle connections of other partitions cost the server while one partition writes.

``python -m bench.partition_load [--others 100] [--rate 20] [--seconds 10] [--storage-root DIR]``

A server process on 127.0.0.1; ``--others`` lightweight clients (bench/sync_clients.py), each
synced to its own partition, stay connected; one real device writes a one-field update to
partition ``p`` ``--rate`` times a second for ``--seconds``. The server's CPU (user + system,
from /proc) over that window is reported per second and per write, next to the same run with no
other client (the baseline, measured first in the same invocation): the difference is what the
idle connections cost, mostly their wake-ups about a second after other partitions' writes
(``ServerSession.local_commit``: each reads the log, sends a ``Changes`` and receives an ``Ack``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sync_bench import FleetProcess, SyncDoc, cpu_s, login, make_doc, open_synced, start_server


def measure(others: int, rate: float, seconds: float, root: str | None) -> dict[str, Any]:
    """One run: the server's CPU while a device writes ``rate`` times a second."""
    work = Path(tempfile.mkdtemp(prefix="tidesync-partition-load-", dir=root))
    server = start_server(work / "server", f"partition-load-{others}")
    fleet = None
    db = None
    try:
        fleet = FleetProcess(server.url, others, "own", timeout=120) if others else None
        db = open_synced(work / "a.db", login(server.url, work), "p")
        with db.write():
            db.create(SyncDoc, make_doc(0))
        db.sync_session.wait_for_upload_completion(timeout=30)
        obj = db.get(SyncDoc, "item-0000000")
        assert obj is not None
        time.sleep(2.0)  # the connections settle (their first wake-ups)
        c0, t0, n = cpu_s(server.proc.pid), time.monotonic(), 0
        while time.monotonic() - t0 < seconds:
            with db.write():
                obj.priority = n
            n += 1
            time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
        db.sync_session.wait_for_upload_completion(timeout=30)
        c1, t1 = cpu_s(server.proc.pid), time.monotonic()
        return {"others": others, "writes": n, "seconds": t1 - t0,
                "server_ms_per_s": (c1 - c0) / (t1 - t0) * 1000, "server_ms_per_write": (c1 - c0) / n * 1000}
    finally:
        if db is not None:
            db.close()
        if fleet is not None:
            fleet.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--others", type=int, default=100)
    p.add_argument("--rate", type=float, default=20.0, help="writes per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--storage-root", default=None, help="where the files live (default: the temp dir)")
    a = p.parse_args()
    base = measure(0, a.rate, a.seconds, a.storage_root)
    loaded = measure(a.others, a.rate, a.seconds, a.storage_root)
    extra = loaded["server_ms_per_s"] - base["server_ms_per_s"]
    print(f"server CPU, {a.rate:g} writes/s: {base['server_ms_per_s']:.0f} ms/s alone, "
          f"{loaded['server_ms_per_s']:.0f} ms/s with {a.others} idle others "
          f"({loaded['server_ms_per_s'] / base['server_ms_per_s']:.2f}x; {extra:.0f} ms/s for them, "
          f"{extra / a.others:.2f} ms per connection per second)")
    print(json.dumps({"baseline": base, "loaded": loaded}))


if __name__ == "__main__":
    main()
