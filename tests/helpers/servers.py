"""Real servers and synced databases for tests: everything on 127.0.0.1, free ports, tmp dirs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tidesync
from tidesync.server import RunningServer, ServerConfig, start_server

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(data_dir: Path, **options: Any) -> Iterator[RunningServer]:
    """A server in a thread of this process."""
    server = start_server(ServerConfig(data_dir=data_dir, port=0, **options))
    try:
        yield server
    finally:
        server.stop()


class ServerProcess:
    """A server in its own process (``python -m tidesync serve``), for kill tests.

    ``launcher``: the interpreter arguments before ``serve`` (the benchmarks run the server under
    a profiler module this way, with the repository root also on ``PYTHONPATH``)."""

    def __init__(self, data_dir: Path, port: int | None = None, extra: list[str] | None = None,
                 launcher: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = extra or []
        self.launcher = launcher
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> ServerProcess:
        path = [str(ROOT / "src")] if self.launcher is None else [str(ROOT / "src"), str(ROOT)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        self.proc = subprocess.Popen(
            [sys.executable, *(self.launcher or ["-m", "tidesync"]), "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--data", str(self.data_dir), *self.extra],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("the server process exited at start")
                time.sleep(0.05)
        raise RuntimeError("the server process did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def synced_db(path: Path, url: str, schema: list[type[tidesync.Model]], *, partition: Any = "p1",
              storage: Path | None = None, **config: Any) -> tidesync.Database:
    """Open a database synced to ``partition`` as the file's user (logged in anonymously the
    first time and persisted beside the file: a database file syncs as one user)."""
    app = tidesync.App("default", base_url=url, storage_dir=storage or path.with_suffix(".users"))
    user = app.current_user or app.log_in(tidesync.Credentials.anonymous())
    return tidesync.open(path, schema=schema, sync=tidesync.SyncConfig(user=user, partition=partition, **config))
