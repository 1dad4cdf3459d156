"""The auth routes of the HTTP API, under ``/api/<app_id>/auth/``.

Log in (every provider), refresh, log out, the user's profile and custom data, linking
identities, deleting oneself, the email/password account flows and the user's API keys.
Login, link and email actions go through the rate limiter (per account and per address).
Blocking work (argon2, JWKS fetches, SQLite) runs in worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import AuthError, UsageError
from .email_address import normalize_email
from .http_api import Handler, HttpError, bearer, client_address, json_body

if TYPE_CHECKING:
    from .app import ServerState
    from .auth import AuthenticatedUser
    from .providers import Identity
    from .providers.email_password import EmailPasswordProvider

__all__ = ["auth_routes"]

Router = Callable[[str, Handler, str], Route]
_PREFIX = "/api/{app_id}/auth"


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise HttpError(400, "bad_request", f"{key} must be a string")
    return value


def auth_routes(state: ServerState, route: Router) -> list[Route]:
    """The auth routes; ``route(path, handler, method)`` wraps each handler."""

    async def authenticate(request: Request, body: dict[str, Any]) -> Identity:
        provider = state.providers.get(body.get("provider"))
        claimed = provider.account(body)
        account = f"{provider.name}:{claimed}" if claimed else None
        address = client_address(request)
        state.limiter.check("login", account=account, address=address)
        try:
            identity = await asyncio.to_thread(provider.authenticate, body)
        except (AuthError, UsageError):
            state.limiter.record("login", account=account, address=address, failed=True)
            raise
        state.limiter.record("login", account=account, address=address, failed=False)
        return identity

    def me(request: Request) -> AuthenticatedUser:
        return state.tokens.verify(bearer(request))

    async def login(request: Request) -> Response:
        """Log in with any enabled provider."""
        body = await json_body(request)
        identity = await authenticate(request, body)
        uid = await asyncio.to_thread(state.user_for_identity, identity)
        tokens = await asyncio.to_thread(state.tokens.issue, uid, identity.provider)
        profile = await asyncio.to_thread(state.profile, uid)
        return JSONResponse({"user_id": tokens.user_id, "access_token": tokens.access_token,
                             "refresh_token": tokens.refresh_token, "expires_in": tokens.expires_in,
                             "provider": identity.provider, **profile})

    async def refresh(request: Request) -> Response:
        """A new access token for a refresh token."""
        token = _string(await json_body(request), "refresh_token")
        access, _uid = await asyncio.to_thread(state.tokens.refresh, token)
        return JSONResponse({"access_token": access, "expires_in": state.config.access_token_ttl})

    async def logout(request: Request) -> Response:
        """Revoke a refresh token (and the access tokens made from it)."""
        token = _string(await json_body(request), "refresh_token")
        try:
            session = await asyncio.to_thread(state.users.refresh_session, token)
        except AuthError:
            return JSONResponse({"ok": True})  # already unusable
        await asyncio.to_thread(state.users.revoke_refresh, token)
        state.recheck_sessions(session.user_id)
        return JSONResponse({"ok": True})

    async def profile(request: Request) -> Response:
        """The caller's profile, identities and custom data."""
        user = me(request)
        return JSONResponse(await asyncio.to_thread(state.profile, user.id))

    async def link(request: Request) -> Response:
        """Link another identity to the caller."""
        user = me(request)
        body = await json_body(request)
        identity = await authenticate(request, body)
        if not identity.linkable or identity.subject is None:
            raise HttpError(400, "cannot_link", f"{body.get('provider')} credentials cannot be linked to a user")
        await asyncio.to_thread(state.users.link_identity, user.id, identity.provider, identity.subject,
                                identity.data)
        return JSONResponse(await asyncio.to_thread(state.profile, user.id))

    async def delete_user(request: Request) -> Response:
        """Delete the caller."""
        user = me(request)
        await state.delete_user(user.id)
        return JSONResponse({"ok": True})

    # -- email/password ----------------------------------------------------------------------

    def email_provider() -> EmailPasswordProvider:
        provider = state.providers.email_password
        if provider is None:
            raise AuthError("email/password login is disabled on this server", code="provider_disabled")
        return provider

    def email_limit(request: Request, email: object) -> tuple[str | None, str]:
        try:
            account: str | None = "email:" + normalize_email(email) if email is not None else None
        except UsageError:
            account = None
        address = client_address(request)
        state.limiter.check("email", account=account, address=address)
        state.limiter.record("email", account=account, address=address, failed=True)
        return account, address

    async def register(request: Request) -> Response:
        """Register an email address and password; a confirmation token is sent."""
        provider = email_provider()
        body = await json_body(request)
        email_limit(request, body.get("email"))
        await asyncio.to_thread(provider.register, body.get("email"), body.get("password"))
        return JSONResponse({"ok": True}, status_code=201)

    async def confirm(request: Request) -> Response:
        """Confirm an address with its token."""
        provider = email_provider()
        body = await json_body(request)
        email_limit(request, None)
        await asyncio.to_thread(provider.confirm, body.get("token"))
        return JSONResponse({"ok": True})

    async def resend(request: Request) -> Response:
        """Send a new confirmation token."""
        provider = email_provider()
        body = await json_body(request)
        email_limit(request, body.get("email"))
        await asyncio.to_thread(provider.resend_confirmation, body.get("email"))
        return JSONResponse({"ok": True})

    async def send_reset(request: Request) -> Response:
        """Send a password-reset token."""
        provider = email_provider()
        body = await json_body(request)
        email_limit(request, body.get("email"))
        await asyncio.to_thread(provider.send_reset, body.get("email"))
        return JSONResponse({"ok": True})

    async def reset(request: Request) -> Response:
        """Set a new password with a reset token."""
        provider = email_provider()
        body = await json_body(request)
        email_limit(request, None)
        await asyncio.to_thread(provider.reset, body.get("token"), body.get("password"))
        return JSONResponse({"ok": True})

    # -- API keys of the caller --------------------------------------------------------------

    def keys_owner(request: Request) -> str:
        cfg = state.config.auth.api_keys
        if not (cfg.enabled and cfg.user_keys):
            raise AuthError("user API keys are disabled on this server", code="provider_disabled")
        return me(request).id

    async def list_keys(request: Request) -> Response:
        """The caller's API keys (never the keys themselves)."""
        owner = keys_owner(request)
        keys = await asyncio.to_thread(state.providers.api_keys.list, owner)
        return JSONResponse({"api_keys": [k.to_json() for k in keys]})

    async def create_key(request: Request) -> Response:
        """Make an API key; the answer is the only time the key is shown."""
        owner = keys_owner(request)
        body = await json_body(request)
        info, key = await asyncio.to_thread(state.providers.api_keys.create, owner, body.get("name"))
        return JSONResponse({**info.to_json(), "key": key}, status_code=201)

    async def get_key(request: Request) -> Response:
        """One of the caller's API keys."""
        owner = keys_owner(request)
        info = await asyncio.to_thread(state.providers.api_keys.get, owner, request.path_params["key_id"])
        return JSONResponse(info.to_json())

    async def delete_key(request: Request) -> Response:
        """Delete one of the caller's API keys (its sessions end)."""
        owner = keys_owner(request)
        await asyncio.to_thread(state.providers.api_keys.delete, owner, request.path_params["key_id"])
        state.recheck_sessions(owner)
        return JSONResponse({"ok": True})

    def toggle(disabled: bool) -> Handler:
        async def handler(request: Request) -> Response:
            owner = keys_owner(request)
            info = await asyncio.to_thread(state.providers.api_keys.set_disabled, owner,
                                           request.path_params["key_id"], disabled)
            state.recheck_sessions(owner)
            return JSONResponse(info.to_json())

        handler.__name__ = "disable_key" if disabled else "enable_key"
        handler.__doc__ = "Disable one of the caller's API keys." if disabled else "Enable one of the caller's API keys."
        return handler

    p = _PREFIX
    return [
        route(f"{p}/login", login, "POST"),
        route(f"{p}/refresh", refresh, "POST"),
        route(f"{p}/logout", logout, "POST"),
        route(f"{p}/profile", profile, "GET"),
        route(f"{p}/link", link, "POST"),
        route(f"{p}/user", delete_user, "DELETE"),
        route(f"{p}/email/register", register, "POST"),
        route(f"{p}/email/confirm", confirm, "POST"),
        route(f"{p}/email/confirm/resend", resend, "POST"),
        route(f"{p}/email/reset/send", send_reset, "POST"),
        route(f"{p}/email/reset", reset, "POST"),
        route(f"{p}/api_keys", list_keys, "GET"),
        route(f"{p}/api_keys", create_key, "POST"),
        route(f"{p}/api_keys/{{key_id}}", get_key, "GET"),
        route(f"{p}/api_keys/{{key_id}}", delete_key, "DELETE"),
        route(f"{p}/api_keys/{{key_id}}/enable", toggle(False), "POST"),
        route(f"{p}/api_keys/{{key_id}}/disable", toggle(True), "POST"),
    ]
