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
from collections.abc import AsyncIterator, Iterable, Set
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute

from ..errors import AuthError
from ..store.database import Database
from .auth import TokenIssuer, UserStore
from .config import ServerConfig
from .custom_data import CustomData
from .http_api import error_response, routes_for
from .providers import Identity, Providers
from .ratelimit import RateLimiter
from .schemas import SchemaLearner

__all__ = ["create_app", "ServerState"]

log = logging.getLogger("tidesync.server")


class ServerState:
    """What the routes and sync sessions of one server share."""

    def __init__(self, config: ServerConfig) -> None:
        config.ensure_dirs()
        self.config = config
        self.users = UserStore(config.data_dir / "auth.db")
        self.tokens = TokenIssuer(config, self.users)
        self.providers = Providers(config, self.users, self.users.db)
        self.limiter = RateLimiter(config.auth.rate_limits)
        self.backend = Database(config.data_dir / "sync.db", (), policies=config.policies,
                                partition_key=config.partition_key, bootstrap_with_snapshot=True)
        self.custom_data = CustomData(self.backend, config.auth.custom_data)
        self.schema_learner = SchemaLearner(config.data_dir / "schema.json")
        self.sessions: set[Any] = set()
        #: Sync sessions whose peer is in the middle of an upload: the last batch it sent
        #: ended before its head (``Changes.to_seq < head``), so more is on its way. A
        #: flexible-sync routing round spacing itself out under a stream of commits starts
        #: at once when the stream has ended and this is empty (``Router._spacing``).
        self.uploading: set[Any] = set()
        self.storage_lock = asyncio.Lock()

    # -- users (blocking methods: call them from a worker thread on the event loop) ---------

    def user_for_identity(self, identity: Identity) -> str:
        """The user an authenticated identity logs in as (made on first login).

        Raises:
            AuthError: (``user_disabled``) the user is disabled.
        """
        if identity.user_id is not None:
            uid = identity.user_id
        else:
            uid = self.users.user_for_identity(identity.provider, identity.subject, identity.data)
        if not self.users.active(uid):
            raise AuthError("this user is disabled", code="user_disabled", advice="ask the app's operator")
        return uid

    def profile(self, uid: str) -> dict[str, Any]:
        """``{"user_id", "identities", "data", "custom_data"}`` of a user."""
        rec = self.users.record(uid)
        return {"user_id": uid, "identities": self.users.identities(uid),
                "data": rec.data if rec is not None else {}, "custom_data": self.custom_data.for_user(uid)}

    def recheck_sessions(self, uid: str) -> None:
        """Make the open sync connections of a user check their token again now (after a log
        out, a disabled key...). Call on the event loop."""
        for s in list(self.sessions):
            if getattr(getattr(s, "user", None), "id", None) == uid and hasattr(s, "recheck_auth"):
                s.recheck_auth()

    async def disable_user(self, uid: str, disabled: bool = True) -> bool:
        """Disable (or enable) a user; its open sync connections close."""
        found = await asyncio.to_thread(self.users.set_disabled, uid, disabled)
        self.recheck_sessions(uid)
        return found

    async def delete_user(self, uid: str) -> bool:
        """Delete a user and its identities, sessions and keys; its open sync connections close."""
        found = await asyncio.to_thread(self.users.delete_user, uid)
        self.recheck_sessions(uid)
        return found

    async def list_conflicts(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(lambda: self.backend.conflicts(limit, before=before))

    def notify_commit(self, origin_session: Any = None, first: Iterable[Any] = (),
                      skip: Set[Any] = frozenset()) -> None:
        """Wake every sync session: the server's log grew. The session that uploaded is woken
        too (``own_commit``: a partition session about a second later, once for
        several uploads), so its client's checkpoint moves past its own (filtered-out)
        transactions and its download can complete.

        Order matters for propagation latency, since a woken session may read, encode and send
        right here: ``first`` (the sessions the new entries concern) first, the uploading
        session last. Sessions in ``skip`` are left out: the caller knows a wake-up is already
        scheduled for them and the new entries do not concern them (so with a thousand idle
        connections of other partitions a write does not loop over all of them)."""
        sessions = self.sessions
        rest = sessions.difference(skip, first) if (skip or first) else set(sessions)
        rest.discard(origin_session)
        for s in list(first):
            if s is not origin_session and s in sessions:
                s.local_commit()
        for s in rest:
            s.local_commit()
        if origin_session is not None and origin_session in sessions:
            origin_session.own_commit()

    def close(self) -> None:
        if self.providers.email_password is not None:
            self.providers.email_password.close()
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

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error" if status < 500 else "internal")
        detail = exc.detail if isinstance(exc, HTTPException) else "internal server error"
        return error_response(status, code, str(detail))

    app = Starlette(routes=[*routes_for(state), WebSocketRoute("/api/{app_id}/sync", ws)], lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: http_error})
    app.state.tidesync = state
    return app
