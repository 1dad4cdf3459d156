"""Access and refresh tokens on the server.

Access tokens are short-lived signed JWTs (HS256 with the server's secret; 30 minutes by
default) carrying the user id, the login provider and the login session id (``sid``).
Refresh tokens are long random strings, stored only as their SHA-256 hash, revocable (log
out) and long-lived (60 days by default); see :mod:`tidesync.server.users`.

An access token is refused everywhere (HTTP and the sync ``Hello``) when it expired, when its
user was disabled or deleted, or when its login session was revoked (log out, password
reset, a disabled API key): :meth:`TokenIssuer.verify` checks all of that, every time.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from ..errors import AuthError
from .config import ServerConfig
from .users import UserStore

__all__ = ["UserStore", "TokenIssuer", "Tokens", "AuthenticatedUser"]


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """Who a valid access token speaks for.

    Attributes:
        id: the user id.
        provider: how the user logged in (``anonymous``, ``email_password``, ``api_key:<id>``...).
        data: the user's profile data (what its identity providers said about it).
        expires: when the access token expires (seconds since the epoch).
        sid: the login session (refresh token) the access token was made from.
    """

    id: str
    provider: str
    data: dict[str, Any]
    expires: float = 0.0
    sid: str | None = None


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    user_id: str
    expires_in: int


class TokenIssuer:
    """Signs and checks access tokens; issues refresh tokens."""

    def __init__(self, config: ServerConfig, users: UserStore) -> None:
        assert config.secret is not None
        self._secret = config.secret
        self._config = config
        self._users = users

    def issue(self, uid: str, provider: str) -> Tokens:
        """A new login session: a refresh token and an access token."""
        refresh = secrets.token_urlsafe(32)
        sid = self._users.store_refresh(refresh, uid, self._config.refresh_token_ttl, provider)
        return Tokens(self.access_token(uid, provider, sid), refresh, uid, self._config.access_token_ttl)

    def refresh(self, refresh_token: str) -> tuple[str, str]:
        """A new access token for a valid refresh token of an active user: (token, user id).

        Raises:
            AuthError: ``invalid_refresh_token`` (unknown, expired, revoked) or
                ``invalid_token`` (the user was disabled or deleted).
        """
        session = self._users.refresh_session(refresh_token)
        if not self._users.active(session.user_id):
            raise AuthError("the user no longer exists or is disabled", code="invalid_token")
        return self.access_token(session.user_id, session.provider, session.sid or None), session.user_id

    def access_token(self, uid: str, provider: str, sid: str | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": uid, "iat": now, "exp": now + self._config.access_token_ttl,
                                  "aud": self._config.app_id, "typ": "access", "prv": provider}
        if sid:
            claims["sid"] = sid
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str | None) -> AuthenticatedUser:
        """Check an access token: signature, expiry, audience, and that the user still exists.

        Raises:
            AuthError: with code ``invalid_token`` or ``expired_token``.
        """
        if not token:
            raise AuthError("no access token", code="invalid_token")
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], audience=self._config.app_id,
                                options={"require": ["exp", "sub", "aud"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the access token expired", code="expired_token", advice="refresh the token") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid access token: {exc}", code="invalid_token") from exc
        if claims.get("typ") != "access":
            raise AuthError("not an access token", code="invalid_token")
        user = self._users.record(str(claims["sub"]))
        if user is None or user.disabled:
            raise AuthError("the user no longer exists or is disabled", code="invalid_token", advice="log in again")
        sid = claims.get("sid")
        if sid is not None and not self._users.session_active(str(sid)):
            raise AuthError("this login session has ended (logged out)", code="invalid_token", advice="log in again")
        return AuthenticatedUser(user.id, str(claims.get("prv", "")), user.data, float(claims["exp"]),
                                 str(sid) if sid is not None else None)

    def still_valid(self, user: AuthenticatedUser) -> AuthError | None:
        """Whether an earlier verified user may go on (a long sync connection): None, or why not."""
        if time.time() >= user.expires > 0:
            return AuthError("the access token expired", code="expired_token", advice="refresh the token")
        if not self._users.active(user.id):
            return AuthError("the user no longer exists or is disabled", code="invalid_token", advice="log in again")
        if user.sid is not None and not self._users.session_active(user.sid):
            return AuthError("this login session has ended (logged out)", code="invalid_token", advice="log in again")
        return None
