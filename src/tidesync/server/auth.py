"""Users and tokens on the server.

Access tokens are short-lived signed JWTs (HS256 with the server's secret; 30 minutes by
default) carrying the user id. Refresh tokens are long random strings, stored only as their
SHA-256 hash, revocable (log out) and long-lived (60 days by default).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from ..errors import AuthError
from ..store.engine import Engine
from .config import ServerConfig

__all__ = ["UserStore", "TokenIssuer", "Tokens", "AuthenticatedUser"]

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY, created REAL NOT NULL, disabled INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE IF NOT EXISTS identities (
        provider TEXT NOT NULL, subject TEXT NOT NULL, user_id TEXT NOT NULL,
        PRIMARY KEY (provider, subject))""",
    """CREATE TABLE IF NOT EXISTS refresh_tokens (
        hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, expires REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0)""",
]


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """Who a valid access token speaks for."""

    id: str
    provider: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    user_id: str
    expires_in: int


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserStore:
    """Users, identities and refresh tokens, in ``data_dir/auth.db``."""

    def __init__(self, path: Path) -> None:
        self._engine = Engine(path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._engine.atomic():
            for stmt in _SCHEMA:
                self._engine.execute(stmt)

    def close(self) -> None:
        with self._lock:
            self._engine.close()

    def create_user(self, provider: str, subject: str | None = None, data: dict[str, Any] | None = None) -> str:
        """Make a user (or, for a known identity, return its user id)."""
        with self._lock, self._engine.atomic():
            if subject is not None:
                rows = self._engine.query("SELECT user_id FROM identities WHERE provider = ? AND subject = ?",
                                          (provider, subject))
                if rows:
                    return str(rows[0][0])
            uid = secrets.token_hex(12)
            self._engine.execute("INSERT INTO users (id, created, data) VALUES (?, ?, ?)",
                                 (uid, time.time(), json.dumps(data or {})))
            self._engine.execute("INSERT INTO identities (provider, subject, user_id) VALUES (?, ?, ?)",
                                 (provider, subject or uid, uid))
            return uid

    def user(self, uid: str) -> dict[str, Any] | None:
        with self._lock:
            rows = self._engine.query("SELECT id, disabled, data FROM users WHERE id = ?", (uid,))
        if not rows:
            return None
        return {"id": rows[0][0], "disabled": bool(rows[0][1]), "data": json.loads(rows[0][2])}

    def store_refresh(self, token: str, uid: str, ttl: int) -> None:
        with self._lock, self._engine.atomic():
            self._engine.execute("INSERT INTO refresh_tokens (hash, user_id, expires) VALUES (?, ?, ?)",
                                 (_hash(token), uid, time.time() + ttl))

    def check_refresh(self, token: str) -> str:
        with self._lock:
            rows = self._engine.query("SELECT user_id, expires, revoked FROM refresh_tokens WHERE hash = ?",
                                      (_hash(token),))
        if not rows or rows[0][2] or rows[0][1] < time.time():
            raise AuthError("the refresh token is unknown, expired or revoked", code="invalid_refresh_token")
        return str(rows[0][0])

    def revoke_refresh(self, token: str) -> None:
        with self._lock, self._engine.atomic():
            self._engine.execute("UPDATE refresh_tokens SET revoked = 1 WHERE hash = ?", (_hash(token),))


class TokenIssuer:
    """Signs and checks access tokens; issues refresh tokens."""

    def __init__(self, config: ServerConfig, users: UserStore) -> None:
        assert config.secret is not None
        self._secret = config.secret
        self._config = config
        self._users = users

    def issue(self, uid: str, provider: str) -> Tokens:
        refresh = secrets.token_urlsafe(32)
        self._users.store_refresh(refresh, uid, self._config.refresh_token_ttl)
        return Tokens(self.access_token(uid, provider), refresh, uid, self._config.access_token_ttl)

    def access_token(self, uid: str, provider: str) -> str:
        now = int(time.time())
        claims = {"sub": uid, "iat": now, "exp": now + self._config.access_token_ttl,
                  "aud": self._config.app_id, "typ": "access", "prv": provider}
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
        user = self._users.user(str(claims["sub"]))
        if user is None or user["disabled"]:
            raise AuthError("the user no longer exists or is disabled", code="invalid_token", advice="log in again")
        return AuthenticatedUser(user["id"], str(claims.get("prv", "")), user["data"])
