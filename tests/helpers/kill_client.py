"""A synced client in its own process, for SIGKILL tests (tests/e2e/test_kill.py).

    python -m tests.helpers.kill_client write URL DB N
        Open DB synced to URL (partition "kill"), write N transactions with the session
        paused, resume it, then keep writing one transaction at a time until killed. Prints
        ``written N`` once the backlog is committed and ``progress T/U`` on every upload
        progress report, so the parent can kill it mid-upload.
    python -m tests.helpers.kill_client finish URL DB
        Open DB again, wait for upload completion, print ``uploaded``.
    python -m tests.helpers.kill_client follow URL DB
        Open DB, download, print ``synced``, pause; on a line ``resume`` on stdin, resume
        and print ``progress T/U`` on every download progress report, until killed.
    python -m tests.helpers.kill_client listen URL DB
        Open DB, download, listen to the Technician results, print ``synced``; then print
        ``seen N`` from the listener whenever the results change (N: how many), until killed.
    python -m tests.helpers.kill_client bootstrap URL DB
        Open a fresh DB (its first sync is a snapshot of the partition's documents) and print
        ``progress T/U`` on every download progress report, until killed.
    python -m tests.helpers.kill_client catch-up URL DB
        Open DB again, wait for download completion, print ``downloaded``.

Every transaction creates one ``Technician`` and increments the shared ``WorkOrder``'s
``visits`` counter, so the parent can check counters as well as transaction ids.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tidesync
from tests.models import Technician, WorkOrder

COUNTER_ID = tidesync.ObjectId("5f00000000000000000000aa")


def amount(i: int) -> int:
    return i % 7 + 1


def open_db(url: str, path: Path) -> tidesync.Database:
    app = tidesync.App("default", base_url=url, storage_dir=path.with_suffix(".users"))
    user = app.current_user or app.log_in(tidesync.Credentials.anonymous())
    config = tidesync.SyncConfig(user=user, partition="kill", batch_limit=3, min_backoff=0.02, max_backoff=0.3)
    return tidesync.open(path, schema=[Technician, WorkOrder], sync=config)


def write_one(db: tidesync.Database, i: int) -> None:
    with db.write():
        db.create(Technician, _id=f"t{i}", name="x" * 50)
        counter = db.get(WorkOrder, COUNTER_ID)
        if counter is None:
            counter = db.create(WorkOrder, _id=COUNTER_ID, title="the counter")
        counter.visits.increment(amount(i))


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    mode, url, path = argv[0], argv[1], Path(argv[2])
    db = open_db(url, path)
    if mode == "write":
        n = int(argv[3])
        db.sync_session.pause()
        for i in range(n):
            write_one(db, i)
        say(f"written {n}")
        db.sync_session.add_progress_notifier(lambda p: say(f"progress {p.transferred}/{p.transferable}"), "upload")
        db.sync_session.resume()
        i = n
        while True:  # until killed
            write_one(db, i)
            i += 1
    elif mode == "finish":
        db.sync_session.wait_for_upload_completion(timeout=60)
        say("uploaded")
        db.close()
    elif mode == "follow":
        db.sync_session.wait_for_download_completion(timeout=60)
        db.sync_session.pause()
        say("synced")
        if sys.stdin.readline().strip() == "resume":
            db.sync_session.add_progress_notifier(lambda p: say(f"progress {p.transferred}/{p.transferable}"),
                                                  "download")
            db.sync_session.resume()
            sys.stdin.readline()  # until killed
    elif mode == "listen":
        db.sync_session.wait_for_download_completion(timeout=60)
        results = db.objects(Technician)
        token = results.add_listener(lambda res, changes: say(f"seen {len(res)}"))
        say("synced")
        sys.stdin.readline()  # until killed
        token.remove()
    elif mode == "bootstrap":
        db.sync_session.add_progress_notifier(lambda p: say(f"progress {p.transferred}/{p.transferable}"), "download")
        sys.stdin.readline()  # until killed
    elif mode == "catch-up":
        db.sync_session.wait_for_download_completion(timeout=60)
        say("downloaded")
        db.close()
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
