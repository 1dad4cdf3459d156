"""The server's HTTP API: log in, refresh, log out, conflicts, health.

Every error is JSON ``{"error": message, "code": stable_code}`` with a fitting status.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import AuthError, TidesyncError

if TYPE_CHECKING:
    from .app import ServerState

__all__ = ["routes_for", "error_response"]

_MAX_BODY = 64 * 1024


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise _HttpError(413, "payload_too_large", "request body too large")
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise _HttpError(400, "bad_request", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise _HttpError(400, "bad_request", "the body must be a JSON object")
    return data


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def routes_for(state: ServerState) -> list[Any]:
    from starlette.routing import Route

    async def guarded(request: Request, handler: Any) -> JSONResponse:
        if request.path_params.get("app_id") != state.config.app_id:
            return error_response(404, "app_not_found", f"no app {request.path_params.get('app_id')!r} here")
        try:
            response: JSONResponse = await handler(request)
            return response
        except _HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except AuthError as exc:
            return error_response(401, exc.code, exc.message)
        except TidesyncError as exc:
            return error_response(400, exc.code, exc.message)

    async def login(request: Request) -> JSONResponse:
        async def handle(request: Request) -> JSONResponse:
            body = await _json_body(request)
            provider = body.get("provider")
            if not isinstance(provider, str):
                raise _HttpError(400, "bad_request", "provider must be a string")
            uid = await state.login(provider, body)
            tokens = state.tokens.issue(uid, provider)
            return JSONResponse({"user_id": tokens.user_id, "access_token": tokens.access_token,
                                 "refresh_token": tokens.refresh_token, "expires_in": tokens.expires_in})
        return await guarded(request, handle)

    async def refresh(request: Request) -> JSONResponse:
        async def handle(request: Request) -> JSONResponse:
            body = await _json_body(request)
            token = body.get("refresh_token")
            if not isinstance(token, str):
                raise _HttpError(400, "bad_request", "refresh_token must be a string")
            uid = state.users.check_refresh(token)
            user = state.users.user(uid)
            if user is None or user["disabled"]:
                raise AuthError("the user no longer exists or is disabled", code="invalid_token")
            return JSONResponse({"access_token": state.tokens.access_token(uid, "refresh"),
                                 "expires_in": state.config.access_token_ttl})
        return await guarded(request, handle)

    async def logout(request: Request) -> JSONResponse:
        async def handle(request: Request) -> JSONResponse:
            body = await _json_body(request)
            token = body.get("refresh_token")
            if not isinstance(token, str):
                raise _HttpError(400, "bad_request", "refresh_token must be a string")
            state.users.revoke_refresh(token)
            return JSONResponse({"ok": True})
        return await guarded(request, handle)

    async def conflicts(request: Request) -> JSONResponse:
        async def handle(request: Request) -> JSONResponse:
            state.tokens.verify(_bearer(request))
            try:
                limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
            except ValueError:
                raise _HttpError(400, "bad_request", "limit must be an integer") from None
            return JSONResponse({"conflicts": await state.list_conflicts(limit)})
        return await guarded(request, handle)

    async def sync_head(request: Request) -> JSONResponse:
        async def handle(request: Request) -> JSONResponse:
            state.tokens.verify(_bearer(request))
            import asyncio

            return JSONResponse({"head": await asyncio.to_thread(state.backend.head_seq)})
        return await guarded(request, handle)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "app_id": state.config.app_id,
                             "development_mode": state.config.development_mode,
                             "connections": len(state.sessions)})

    return [
        Route("/api/{app_id}/auth/login", login, methods=["POST"]),
        Route("/api/{app_id}/auth/refresh", refresh, methods=["POST"]),
        Route("/api/{app_id}/auth/logout", logout, methods=["POST"]),
        Route("/api/{app_id}/conflicts", conflicts, methods=["GET"]),
        Route("/api/{app_id}/sync/head", sync_head, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None
