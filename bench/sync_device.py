"""Device B of the propagation case in a process of its own (``b_process``), as a real second
device is: A's ``Ack`` and A's next write no longer share B's interpreter and GIL.

Run as a child process, driven by JSON lines (bench/sync_bench.py's ``LineProcess``)::

    python -m bench.sync_device URL DB_PATH USERS_DIR PARTITION
    stdout  {"event": "ready"}                   once B holds item-0000000 and listens to it
    stdout  {"v": PRIORITY, "t": MONOTONIC}      each time B's object listener sees the object
    stdin   {"cmd": "status"}  ->  {"cpu_s": ...} (this process's CPU, every thread)
    stdin   {"cmd": "quit"}    ->  {"event": "bye"}

``t`` is ``time.monotonic()`` in the listener's callback, the same clock as the bench
process's (system-wide on Linux), so A's side can subtract its own timestamps.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.sync_bench import SyncDoc, login, open_synced


def main() -> None:
    url, db_path, users, partition = sys.argv[1:5]
    out_lock = threading.Lock()

    def say(msg: dict[str, Any]) -> None:
        line = json.dumps(msg) + "\n"
        with out_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    db = open_synced(Path(db_path), login(url, Path(users)), partition)
    try:
        db.sync_session.wait_for_download_completion(timeout=60)
        obj = db.get(SyncDoc, "item-0000000")
        if obj is None:
            say({"event": "failed", "why": "item-0000000 not downloaded"})
            return

        armed = threading.Event()  # nothing before "ready" (the driver's first line)

        def on_change(changed: Any, change: Any) -> None:
            t = time.monotonic()
            if armed.is_set() and not change.deleted:
                say({"v": changed.priority, "t": t})

        token = obj.add_listener(on_change)
        with out_lock:
            armed.set()
            sys.stdout.write(json.dumps({"event": "ready"}) + "\n")
            sys.stdout.flush()
        for line in sys.stdin:
            cmd = json.loads(line).get("cmd")
            if cmd == "status":
                say({"cpu_s": time.process_time()})
            elif cmd == "quit":
                break
        token.remove()
    finally:
        db.close()
    say({"event": "bye"})


if __name__ == "__main__":
    main()
