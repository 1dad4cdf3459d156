"""The server's HTTP API: the plumbing every route shares, and the non-auth routes.

Every error is JSON ``{"error": message, "code": stable_code}`` with a fitting status (the
table is in docs/auth.md and in ``GET /openapi.json``). Status by error:

* :class:`~tidesync.errors.RateLimitedError` -> 429 with ``Retry-After``;
* :class:`~tidesync.errors.AuthError` -> 401 (403 for ``provider_disabled``);
* :class:`~tidesync.errors.UsageError` -> 400 (404 for ``*_not_found``, 409 for ``*_in_use``
  and ``too_many_api_keys``);
* anything unexpected -> 500 ``internal`` (details only in the server log).

The auth routes are in :mod:`tidesync.server.auth_routes`; the OpenAPI document in
:mod:`tidesync.server.openapi`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import AuthError, RateLimitedError, TidesyncError, UsageError

if TYPE_CHECKING:
    from .app import ServerState

__all__ = ["routes_for", "error_response", "HttpError", "json_body", "bearer", "client_address", "endpoint",
           "status_for"]

log = logging.getLogger("tidesync.server.http")

_MAX_BODY = 64 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


class HttpError(Exception):
    """Answer with ``status`` and a JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message



async def json_body(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object (at most 64 KiB).

    Raises:
        HttpError: 413 ``payload_too_large``, 400 ``bad_request``.
    """
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise HttpError(413, "payload_too_large", "request body too large")
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise HttpError(400, "bad_request", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "bad_request", "the body must be a JSON object")
    return data


def bearer(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def client_address(request: Request) -> str:
    """The client's IP address (the peer of the connection, or what uvicorn's proxy-headers
    support took from a trusted proxy's ``X-Forwarded-For``)."""
    return request.client.host if request.client else "unknown"


def status_for(exc: TidesyncError) -> int:
    """The HTTP status of an error raised by a handler."""
    if isinstance(exc, RateLimitedError):
        return 429
    if isinstance(exc, AuthError):
        return 403 if exc.code == "provider_disabled" else 401
    if isinstance(exc, UsageError):
        if exc.code.endswith("_not_found"):
            return 404
        if exc.code.endswith("_in_use") or exc.code == "too_many_api_keys":
            return 409
        return 400
    return 400


def endpoint(state: ServerState, handler: Handler) -> Handler:
    """Wrap a handler: check the app id in the path, turn errors into JSON answers."""

    async def run(request: Request) -> Response:
        app_id = request.path_params.get("app_id")
        if app_id is not None and app_id != state.config.app_id:
            return error_response(404, "app_not_found", f"no app {str(app_id)[:64]!r} here")
        try:
            return await handler(request)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except RateLimitedError as exc:
            return error_response(429, exc.code, exc.message, {"Retry-After": str(int(exc.retry_after))})
        except TidesyncError as exc:
            return error_response(status_for(exc), exc.code, exc.message)
        except Exception:  # noqa: BLE001 - the client learns only that it happened
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            return error_response(500, "internal", "internal server error")

    run.__name__ = getattr(handler, "__name__", "endpoint")
    run.__doc__ = handler.__doc__
    return run


#: With rules, ``GET .../conflicts`` looks for the caller's readable records among at most
#: this many of the newest (so one request's work stays bounded).
CONFLICTS_SCANNED = 10_000


def routes_for(state: ServerState) -> list[Route]:
    """Every HTTP route of the server (the sync WebSocket is added by the app)."""
    from .auth_routes import auth_routes
    from .openapi import openapi_document

    async def conflicts(request: Request) -> Response:
        """Resolved conflicts, newest first: the newest ``limit`` of documents and fields the
        caller may read (the rules, as for sync), looked for among the newest
        ``CONFLICTS_SCANNED`` records."""
        from .enforcement import readable_conflicts

        user = state.tokens.verify(bearer(request))
        try:
            limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise HttpError(400, "bad_request", "limit must be an integer") from None
        if state.config.rules is None:
            return JSONResponse({"conflicts": await state.list_conflicts(limit)})
        listed: list[dict[str, Any]] = []
        before: int | None = None
        scanned = 0
        while len(listed) < limit and scanned < CONFLICTS_SCANNED:
            page = await state.list_conflicts(min(max(limit, 200), CONFLICTS_SCANNED - scanned), before)
            if not page:
                break
            scanned += len(page)
            before = page[-1]["id"]
            listed += await asyncio.to_thread(readable_conflicts, state, user, page)
        return JSONResponse({"conflicts": listed[:limit]})

    async def sync_head(request: Request) -> Response:
        """The server's log position."""
        from .sync_endpoint import download_wanted

        user = state.tokens.verify(bearer(request))
        head = await asyncio.to_thread(state.backend.head_seq)
        # The caller waits for its download to reach that head (wait_for_download_completion):
        # its idle sync sessions stream now, not at their lazy wake-up.
        download_wanted(state, user.id, head)
        return JSONResponse({"head": head})

    async def health(request: Request) -> Response:
        """Liveness and a few facts."""
        return JSONResponse({"ok": True, "app_id": state.config.app_id,
                             "development_mode": state.config.development_mode,
                             "connections": len(state.sessions)})

    async def openapi(request: Request) -> Response:
        """This API, as an OpenAPI 3.1 document."""
        return JSONResponse(openapi_document(state.config.app_id))

    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, endpoint(state, handler), methods=[method])

    return [
        *auth_routes(state, route),
        route("/api/{app_id}/conflicts", conflicts, "GET"),
        route("/api/{app_id}/sync/head", sync_head, "GET"),
        route("/health", health, "GET"),
        route("/openapi.json", openapi, "GET"),
    ]
