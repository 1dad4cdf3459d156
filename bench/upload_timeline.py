"""``python -m bench.upload_timeline [SHAPES]``: a timeline of the sync bench's uploads.

Runs the upload case's shapes (``0,1,2``: 1 x 10,000, 100 x 100, 1,000 x 10; default all) against
a server in its own process and prints, per shape, every message sent and received by either
side, the server's decode ahead (``ahead``), integrations and commits, with the time since
``resume()`` (one clock: ``time.monotonic``, shared by the processes) and the thread's CPU
seconds. A development aid, to see where either side waits: the figures are those of an
instrumented run, compare them with each other only.

The server runs as ``python -m bench.upload_timeline --serve OUT serve ...`` (this module as
the launcher), which patches the same points and writes its events to OUT at exit.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_events: list[tuple[float, int, str, int, float]] = []


def _rec(what: str, n: int = 0) -> None:
    _events.append((time.monotonic(), threading.get_ident() % 10000, what, n, time.thread_time()))


def _wrap(cls: Any, name: str, label: Any) -> None:
    original = getattr(cls, name)

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        what, n = label(self, *args, **kwargs)
        _rec(what + "-start", n)
        try:
            return original(self, *args, **kwargs)
        finally:
            _rec(what + "-end")

    setattr(cls, name, wrapped)


def _install(server: bool) -> None:
    from tidesync.protocol.link import Link

    _wrap(Link, "receive", lambda self, payload, decoded=None: ("recv" + ("(pre)" if decoded is not None else ""),
                                                                len(payload)))
    _wrap(Link, "send", lambda self, message, encoded=None: (f"send:{type(message).__name__}",
                                                             len(getattr(message, "entries", ()) or ())))
    if hasattr(Link, "decode_ahead"):
        _wrap(Link, "decode_ahead", lambda self, payload: ("ahead", len(payload)))
    if server:
        from tidesync.server.enforcement import Enforcer
        from tidesync.store.engine import Engine

        _wrap(Enforcer, "integrate", lambda self, txns, peer, peer_seq: ("integrate", sum(len(t.ops) for t in txns)))
        original_run = Engine._run

        def run(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            if sql != "COMMIT":
                return original_run(self, sql, *args, **kwargs)
            _rec("commit-start")
            try:
                return original_run(self, sql, *args, **kwargs)
            finally:
                _rec("commit-end")

        Engine._run = run  # type: ignore[method-assign]


def _write(path: str) -> None:
    with open(path, "a") as f:
        for t, th, what, n, cpu in _events:
            f.write(f"{t:.6f} {th} {what} {n} {cpu:.6f}\n")
    _events.clear()


def _serve(out: str, args: list[str]) -> Any:
    _install(True)
    atexit.register(_write, out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from tidesync.cli.main import main as cli_main

    return cli_main(args)


def _read(path: str, side: str) -> list[tuple[float, str, str, str, int, float]]:
    rows = []
    if os.path.exists(path):
        for line in open(path):
            t, th, what, n, cpu = line.split()
            rows.append((float(t), side, th, what, int(n), float(cpu)))
    return rows


def main(argv: list[str]) -> None:
    from tests.helpers.servers import ServerProcess

    from .sync_bench import SyncDoc, login, make_doc, open_synced

    shapes = [(1, 10_000), (100, 100), (1_000, 10)]
    if argv:
        shapes = [shapes[int(x)] for x in argv[0].split(",")]
    work = Path(tempfile.mkdtemp(prefix="tidesync-timeline-", dir=Path(__file__).resolve().parent))
    server_out = str(work / "server-events.txt")
    _install(False)
    server = ServerProcess(work / "server", launcher=["-m", "bench.upload_timeline", "--serve", server_out]).start()
    marks: list[tuple[str, float, float]] = []
    try:
        user = login(server.url, work)
        for k, (txns, per) in enumerate(shapes):
            partition = f"u{k}"
            db = open_synced(work / f"upload{k}.db", user, partition)
            try:
                db.sync_session.wait_for_download_completion(timeout=30)
                db.sync_session.pause()
                i = k * 10_000
                for _ in range(txns):
                    with db.write():
                        for _ in range(per):
                            db.create(SyncDoc, make_doc(i, partition))
                            i += 1
                gc.collect()
                time.sleep(0.3)
                t0 = time.monotonic()
                db.sync_session.resume()
                db.sync_session.wait_for_upload_completion(timeout=60)
                marks.append((f"{txns} x {per}", t0, time.monotonic()))
            finally:
                db.close()
    finally:
        server.stop()
    client_out = str(work / "client-events.txt")
    _write(client_out)
    rows = sorted(_read(client_out, "C") + _read(server_out, "S"))
    for label, t0, t1 in marks:
        print(f"-- {label}: {(t1 - t0) * 1000:.1f} ms until acknowledged")
        for t, side, th, what, n, cpu in rows:
            if t0 <= t <= t1 and not what.endswith("-end"):
                print(f"{(t - t0) * 1000:8.1f} {side} {th:>5} {what:24} {n:9d} cpu={cpu:.4f}")
            elif t0 <= t <= t1:
                print(f"{(t - t0) * 1000:8.1f} {side} {th:>5} {what:24} {'':9} cpu={cpu:.4f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        sys.exit(_serve(sys.argv[2], sys.argv[3:]))
    main(sys.argv[1:])
