"""Helpers for the flexible-sync tests: users, flexible databases, waiting."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import tidesync
from tests.helpers.waiting import eventually  # noqa: F401 - the flexible tests import it from here

T = 20


def login(url: str, tmp: Path, name: str) -> tidesync.User:
    app = tidesync.App("default", base_url=url, storage_dir=tmp / f"{name}-users")
    # The device's user, persisted beside it: a database file syncs as one user.
    return app.current_user or app.log_in(tidesync.Credentials.anonymous())


class Device:
    """A user's app with a flexible-sync database and the errors its handler received."""

    def __init__(self, url: str, tmp: Path, name: str, schema: list[type[tidesync.Model]],
                 user: tidesync.User | None = None, **config: Any) -> None:
        self.name = name
        self.url = url
        self.tmp = tmp
        self.schema = schema
        self.user = user or login(url, tmp, name)
        self.path = tmp / f"{name}.db"
        self.errors: list[tidesync.SyncError] = []
        self.error_seen = threading.Event()
        self.config = config
        self.db = self._open()

    def _open(self) -> tidesync.Database:
        return tidesync.open(self.path, schema=self.schema, sync=tidesync.SyncConfig(
            user=self.user, flexible=True, error_handler=self._on_error, **self.config))

    def _on_error(self, session: Any, error: tidesync.SyncError) -> None:
        self.errors.append(error)
        self.error_seen.set()

    def reopen(self) -> None:
        self.db.close()
        self.db = self._open()

    def subscribe(self, **queries: tuple[type[tidesync.Model], str]) -> None:
        """Replace the subscriptions with named ones and wait until they are complete."""
        with self.db.subscriptions.update() as subs:
            subs.remove_all()
            for name, (model, query) in queries.items():
                subs.add(self.db.objects(model).filter(query), name=name)
        self.db.subscriptions.wait_for_synchronization(timeout=T)

    def sync(self) -> None:
        self.db.sync_session.wait_for_upload_completion(timeout=T)
        self.db.sync_session.wait_for_download_completion(timeout=T)

    def ids(self, model: type[tidesync.Model]) -> set[Any]:
        # Objects are live: one that a download removes while the results are iterated raises
        # on access (docs/data-model.md, "Live objects"); such a read is simply made again.
        for _ in range(100):
            try:
                return {o._id for o in self.db.objects(model)}
            except tidesync.InvalidatedObjectError:
                time.sleep(0.01)
        raise AssertionError("the results kept changing under every read for a second")

    def compensated(self) -> list[dict[str, Any]]:
        assert self.error_seen.wait(T), "no compensating write reached the error handler"
        self.error_seen.clear()
        writes = [w for e in self.errors if isinstance(e, tidesync.CompensatingWriteError) for w in e.writes]
        self.errors.clear()
        return writes

    def close(self) -> None:
        self.db.close()




def flexible_sessions(server: Any) -> list[Any]:
    """The server's flexible sessions (in-process servers only)."""
    return [s.flexible for s in server.app.state.tidesync.sessions if getattr(s, "flexible", None) is not None]
