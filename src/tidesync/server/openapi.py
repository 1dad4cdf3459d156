"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Written by hand, next to the routes: a test checks that every route of the app is documented
here (method and path) and that nothing here is missing from the app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["openapi_document", "OPERATIONS", "Operation"]

_S: dict[str, Any] = {"type": "string"}
_B: dict[str, Any] = {"type": "boolean"}
_N: dict[str, Any] = {"type": "number"}
_I: dict[str, Any] = {"type": "integer"}
_OBJ: dict[str, Any] = {"type": "object"}


def _obj(required: list[str] | None = None, **props: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


_OK = _obj(["ok"], ok=_B)
_PROFILE_FIELDS: dict[str, dict[str, Any]] = {
    "user_id": _S,
    "identities": {"type": "array", "items": _obj(["provider", "id"], provider=_S, id=_S)},
    "data": {**_OBJ, "description": "profile data from the identity providers (email, name...)"},
    "custom_data": {**_OBJ, "description": "the user's custom data document (plain form), {} if none"},
}
_PROFILE = _obj(list(_PROFILE_FIELDS), **_PROFILE_FIELDS)
_LOGIN_BODY = {
    "type": "object", "required": ["provider"],
    "description": "provider plus its credentials: anonymous {}; email_password {email, password}; "
                   "api_key {key}; jwt {token}; oidc {token, name?, nonce?}",
    "properties": {"provider": {"type": "string", "enum": ["anonymous", "email_password", "api_key", "jwt", "oidc"]},
                   "email": _S, "password": _S, "key": _S, "token": _S, "name": _S, "nonce": _S},
}
_TOKENS = _obj(["user_id", "access_token", "refresh_token", "expires_in"], access_token=_S, refresh_token=_S,
               expires_in={**_I, "description": "seconds the access token lives"}, provider=_S, **_PROFILE_FIELDS)
_KEY = _obj(["id", "name", "kind", "disabled", "created"], id=_S, name=_S,
            kind={"type": "string", "enum": ["user", "server"]}, user_id=_S, disabled=_B, created=_N)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    ok: tuple[int, dict[str, Any]]
    body: dict[str, Any] | None = None
    bearer: bool = False
    errors: dict[int, list[str]] = field(default_factory=dict)
    description: str = ""


_A = "/api/{app_id}/auth"
_LOGIN_ERRORS = {400: ["bad_request", "invalid_email"],
                 401: ["invalid_credentials", "email_not_confirmed", "user_disabled"],
                 403: ["provider_disabled"], 429: ["rate_limited"]}
_TOKEN_ERRORS = {401: ["invalid_token", "expired_token"]}

OPERATIONS: list[Operation] = [
    Operation("post", f"{_A}/login", "Log in", "auth", (200, _TOKENS), _LOGIN_BODY, errors=_LOGIN_ERRORS,
              description="Checks the credentials with the named provider and starts a login session: "
                          "a refresh token and an access token. Rate-limited per account and address."),
    Operation("post", f"{_A}/refresh", "Get a new access token", "auth",
              (200, _obj(["access_token", "expires_in"], access_token=_S, expires_in=_I)),
              _obj(["refresh_token"], refresh_token=_S), errors={401: ["invalid_refresh_token", "invalid_token"]}),
    Operation("post", f"{_A}/logout", "Log out (revoke a refresh token)", "auth", (200, _OK),
              _obj(["refresh_token"], refresh_token=_S),
              description="The refresh token and every access token made from it stop working at once."),
    Operation("get", f"{_A}/profile", "The caller's profile and custom data", "users", (200, _PROFILE),
              bearer=True, errors=_TOKEN_ERRORS),
    Operation("post", f"{_A}/link", "Link another identity to the caller", "users", (200, _PROFILE), _LOGIN_BODY,
              bearer=True, errors={**_LOGIN_ERRORS, 400: ["bad_request", "cannot_link"], 409: ["identity_in_use"],
                                   401: ["invalid_token", "expired_token", "invalid_credentials"]}),
    Operation("delete", f"{_A}/user", "Delete the caller", "users", (200, _OK), bearer=True, errors=_TOKEN_ERRORS),
    Operation("post", f"{_A}/email/register", "Register an email address and password", "email_password",
              (201, _OK), _obj(["email", "password"], email=_S, password=_S),
              errors={400: ["invalid_email", "weak_password"], 403: ["provider_disabled"], 429: ["rate_limited"]},
              description="Answers the same whether or not the address already has an account; a "
                          "confirmation token (or an 'account exists' notice) is sent to the address."),
    Operation("post", f"{_A}/email/confirm", "Confirm an address with its token", "email_password", (200, _OK),
              _obj(["token"], token=_S), errors={400: ["invalid_email_token"], 429: ["rate_limited"]}),
    Operation("post", f"{_A}/email/confirm/resend", "Send a new confirmation token", "email_password", (200, _OK),
              _obj(["email"], email=_S), errors={400: ["invalid_email"], 429: ["rate_limited"]}),
    Operation("post", f"{_A}/email/reset/send", "Send a password-reset token", "email_password", (200, _OK),
              _obj(["email"], email=_S), errors={400: ["invalid_email"], 429: ["rate_limited"]}),
    Operation("post", f"{_A}/email/reset", "Set a new password with a reset token", "email_password", (200, _OK),
              _obj(["token", "password"], token=_S, password=_S),
              errors={400: ["invalid_email_token", "weak_password"], 429: ["rate_limited"]},
              description="Also confirms the address and ends every login session of the user."),
    Operation("get", f"{_A}/api_keys", "The caller's API keys", "api_keys",
              (200, _obj(["api_keys"], api_keys={"type": "array", "items": _KEY})), bearer=True,
              errors={**_TOKEN_ERRORS, 403: ["provider_disabled"]}),
    Operation("post", f"{_A}/api_keys", "Make an API key (shown once)", "api_keys",
              (201, {**_KEY, "properties": {**_KEY["properties"], "key": _S},
                     "required": [*_KEY["required"], "key"]}),
              _obj(["name"], name=_S), bearer=True,
              errors={**_TOKEN_ERRORS, 400: ["bad_request"], 403: ["provider_disabled"],
                      409: ["api_key_name_in_use", "too_many_api_keys"]}),
    Operation("get", f"{_A}/api_keys/{{key_id}}", "One of the caller's API keys", "api_keys", (200, _KEY),
              bearer=True, errors={**_TOKEN_ERRORS, 404: ["api_key_not_found"]}),
    Operation("delete", f"{_A}/api_keys/{{key_id}}", "Delete an API key", "api_keys", (200, _OK), bearer=True,
              errors={**_TOKEN_ERRORS, 404: ["api_key_not_found"]}),
    Operation("post", f"{_A}/api_keys/{{key_id}}/enable", "Enable an API key", "api_keys", (200, _KEY),
              bearer=True, errors={**_TOKEN_ERRORS, 404: ["api_key_not_found"]}),
    Operation("post", f"{_A}/api_keys/{{key_id}}/disable", "Disable an API key (its sessions end)", "api_keys",
              (200, _KEY), bearer=True, errors={**_TOKEN_ERRORS, 404: ["api_key_not_found"]}),
    Operation("get", "/api/{app_id}/conflicts", "Resolved conflicts, newest first (those the caller may read)", "sync",
              (200, _obj(["conflicts"], conflicts={"type": "array", "items": _OBJ})), bearer=True,
              errors={**_TOKEN_ERRORS, 400: ["bad_request"]}),
    Operation("get", "/api/{app_id}/sync/head", "The server's log position", "sync", (200, _obj(["head"], head=_I)),
              bearer=True, errors=_TOKEN_ERRORS),
    Operation("get", "/api/{app_id}/sync", "The sync WebSocket", "sync",
              (101, _OBJ), description="Upgrade to a WebSocket speaking the sync protocol (docs/protocol.md); "
                                       "the access token travels in the protocol's Hello."),
    Operation("get", "/health", "Liveness", "server",
              (200, _obj(["ok"], ok=_B, app_id=_S, development_mode=_B, connections=_I))),
    Operation("get", "/openapi.json", "This document", "server", (200, _OBJ)),
]


def openapi_document(app_id: str) -> dict[str, Any]:
    """The OpenAPI document, with ``app_id`` as the example value of the path parameter."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        params: list[dict[str, Any]] = []
        if "{app_id}" in op.path:
            params.append({"name": "app_id", "in": "path", "required": True, "schema": _S, "example": app_id})
        if "{key_id}" in op.path:
            params.append({"name": "key_id", "in": "path", "required": True, "schema": _S})
        if op.path.endswith("/conflicts"):
            params.append({"name": "limit", "in": "query", "schema": {**_I, "minimum": 1, "maximum": 1000}})
        status, schema = op.ok
        responses: dict[str, Any] = {str(status): {
            "description": "Switching Protocols" if status == 101 else "OK",
            **({} if status == 101 else {"content": {"application/json": {"schema": schema}}})}}
        errors = {**op.errors, 404: sorted({*op.errors.get(404, []), "app_not_found"})} if "{app_id}" in op.path \
            else dict(op.errors)
        errors[500] = ["internal"]
        for err_status, codes in sorted(errors.items()):
            responses[str(err_status)] = {
                "description": "error; code is one of: " + ", ".join(codes),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                **({"headers": {"Retry-After": {"schema": _I, "description": "seconds"}}} if err_status == 429 else {}),
            }
        operation: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "operationId": re.sub(r"[^a-z0-9]+", "_", f"{op.method} {op.path}".lower()).strip("_"),
                                     "responses": responses}
        if op.description:
            operation["description"] = op.description
        if params:
            operation["parameters"] = params
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
        if op.bearer:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidesync server", "version": "1",
                 "description": "Auth, users and sync endpoints of a tidesync server. Every error is JSON "
                                "{error, code} with a stable code. See docs/auth.md and docs/server.md."},
        "paths": paths,
        "components": {
            "schemas": {"Error": _obj(["error", "code"], error={**_S, "description": "for people"},
                                      code={**_S, "description": "stable, for programs"})},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                           "description": "an access token from /auth/login or /auth/refresh"}},
        },
    }
