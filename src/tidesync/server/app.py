"""The tidesync server as an ASGI application (Starlette).

``create_app(config)`` returns the app: the HTTP auth API, the ``/api/<app_id>/sync``
WebSocket and a health check. Mount it in an existing ASGI app (FastAPI) with
``parent.mount("/", tidesync_app)``, run it with ``tidesync serve``, or start it in-process
on a free port with :func:`tidesync.server.start_server` (what the tests do).

Storage: the server is a replica like any device. By default it keeps its documents and log
in ``data_dir/sync.db`` through the same :class:`~tidesync.store.database.Database` class a
device uses (schema-less: it stores whatever plain values arrive). Storage sits behind the
``Replica`` interface of :mod:`tidesync.protocol.replica`; see docs/architecture.md for how a
MongoDB backend and several server processes fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from ..errors import AuthError
from ..store.database import Database
from .auth import TokenIssuer, UserStore
from .config import ServerConfig
from .http_api import routes_for

__all__ = ["create_app", "ServerState"]

log = logging.getLogger("tidesync.server")


class ServerState:
    """What the routes and sync sessions of one server share."""

    def __init__(self, config: ServerConfig) -> None:
        config.ensure_dirs()
        self.config = config
        self.users = UserStore(config.data_dir / "auth.db")
        self.tokens = TokenIssuer(config, self.users)
        self.backend = Database(config.data_dir / "sync.db", (), policies=config.policies,
                                partition_key=config.partition_key, bootstrap_with_snapshot=True)
        self.sessions: set[Any] = set()
        self.storage_lock = asyncio.Lock()

    async def login(self, provider: str, body: dict[str, Any]) -> str:
        if provider == "anonymous":
            if not self.config.anonymous:
                raise AuthError("anonymous login is disabled on this server", code="provider_disabled")
            return self.users.create_user("anonymous")
        raise AuthError(f"unknown or disabled login provider {provider!r}", code="provider_disabled")

    async def list_conflicts(self, limit: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.backend.conflicts, limit)

    def notify_commit(self, origin_session: Any = None) -> None:
        """Wake every sync session: the server's log grew. The session that uploaded is woken
        too, so its client's checkpoint moves past its own (filtered-out) transactions and its
        download can complete."""
        for s in list(self.sessions):
            s.local_commit()

    def close(self) -> None:
        self.backend.close()
        self.users.close()


def create_app(config: ServerConfig | None = None) -> Starlette:
    """The tidesync server as a Starlette (ASGI) application."""
    from .sync_endpoint import sync_endpoint

    config = config or ServerConfig()
    state = ServerState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for s in list(state.sessions):
            await s.shutdown()
        state.close()

    async def ws(websocket: Any) -> None:
        await sync_endpoint(state, websocket)

    app = Starlette(routes=[*routes_for(state), WebSocketRoute("/api/{app_id}/sync", ws)], lifespan=lifespan)
    app.state.tidesync = state
    return app
