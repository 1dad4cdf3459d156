"""``make run``: start the sync server on the embedded SQLite default, with a demo.

Starts the server on http://127.0.0.1:8765 (data in ./data, development mode), then two demo
"devices" (database files in ./data/demo) log in anonymously, write work orders, go offline,
make conflicting edits and sync, printing what happens. The server keeps running until
Ctrl-C. ``python -m tidesync.demo --once`` runs the demo and exits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import tidesync
from tidesync.server import ServerConfig, start_server


class WorkOrder(tidesync.Model):
    _id: tidesync.ObjectId = tidesync.field(primary_key=True, default_factory=tidesync.ObjectId)
    title: str = tidesync.field(indexed=True)
    status: str = "open"
    priority: int = 0
    tags: list[str] = tidesync.field(default_factory=list)
    visits: tidesync.Counter = tidesync.field(default_factory=tidesync.Counter)


def _device(name: str, url: str, folder: Path) -> tidesync.Database:
    app = tidesync.App("default", base_url=url, storage_dir=folder / f"{name}-users")
    user = app.current_user or app.log_in(tidesync.Credentials.anonymous())
    return tidesync.open(folder / f"{name}.db", schema=[WorkOrder],
                         sync=tidesync.SyncConfig(user=user, partition="demo"))


def _show(label: str, db: tidesync.Database) -> None:
    rows = [f"{w.title!r} status={w.status} priority={w.priority} tags={list(w.tags)} visits={int(w.visits)}"
            for w in db.objects(WorkOrder).sort("title")]
    print(f"  {label}: " + ("; ".join(rows) if rows else "(empty)"))


def run_demo(url: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    a, b = _device("tablet", url, folder), _device("phone", url, folder)
    try:
        with a.write():
            wo = a.create(WorkOrder, title=f"Fix pump {time.strftime('%H:%M:%S')}", priority=1, tags=["pump"])
        a.sync_session.wait_for_upload_completion(timeout=10)
        b.sync_session.wait_for_download_completion(timeout=10)
        print("1. the tablet created a work order; the phone received it:")
        _show("phone", b)
        a.sync_session.pause()
        b.sync_session.pause()
        on_a, on_b = a.get(WorkOrder, wo._id), b.get(WorkOrder, wo._id)
        assert on_a is not None and on_b is not None
        with a.write():
            on_a.status = "in progress"
            on_a.tags.append("tablet")
            on_a.visits.increment(1)
        with b.write():
            on_b.priority = 3
            on_b.tags.append("phone")
            on_b.visits.increment(1)
        print("2. both went offline and edited the same work order:")
        _show("tablet", a)
        _show("phone ", b)
        for db in (a, b):
            db.sync_session.resume()
            db.sync_session.wait_for_upload_completion(timeout=10)
        for db in (a, b):
            db.sync_session.wait_for_download_completion(timeout=10)
        print("3. back online, merged with no conflict code (fields by last writer, lists keep both, counters add):")
        _show("tablet", a)
        _show("phone ", b)
    finally:
        a.close()
        b.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--data", default="data")
    parser.add_argument("--once", action="store_true", help="run the demo and exit")
    args = parser.parse_args(argv)
    config = ServerConfig(data_dir=Path(args.data), port=args.port)
    server = start_server(config)
    print("tidesync: DEVELOPMENT MODE (no config file): app id 'default', anonymous login on, "
          "every user may read and write all data, partition key '_partition'")
    print(f"tidesync: serving app 'default' at {server.url} (data in {args.data})")
    try:
        run_demo(server.url, Path(args.data) / "demo")
        if args.once:
            return 0
        print("The server keeps running; press Ctrl-C to stop.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
