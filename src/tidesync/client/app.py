"""The client's view of a tidesync app: log in, users, tokens.

``App`` talks to the server's HTTP API with the standard library only (``urllib``, see
:mod:`tidesync.client.http`), so the client core stays light. Logged-in users are persisted
in ``storage_dir`` (a JSON file, mode 0600), so an app can start offline with its last user:
an expired access token never blocks local reads and writes; the sync session and the HTTP
calls refresh it when the server is reachable again.

Several users may be logged in on one device: ``app.all_users``, ``app.current_user``,
``app.switch_user(user)``, ``app.remove_user(user)``.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..core.values import from_plain
from ..errors import AuthError, ConnectionClosedError, UsageError
from .http import request_json

if TYPE_CHECKING:
    from .api_keys import UserApiKeys
    from .email_password import EmailPasswordAuth

__all__ = ["App", "Credentials", "User"]

#: An access token is refreshed before use when it expires within this many seconds.
REFRESH_MARGIN = 10.0
_RETRY_CODES = ("expired_token", "invalid_token")


@dataclass(frozen=True)
class Credentials:
    """How to log in. Make one with a classmethod: ``Credentials.anonymous()``."""

    provider: str
    payload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def anonymous(cls) -> Credentials:
        """A new anonymous user (each call makes a new user)."""
        return cls("anonymous")

    @classmethod
    def email_password(cls, email: str, password: str) -> Credentials:
        """An email address registered with ``app.email_password_auth`` and its password."""
        return cls("email_password", {"email": email, "password": password})

    @classmethod
    def api_key(cls, key: str) -> Credentials:
        """A server API key (from the operator) or a user API key (``user.api_keys.create``)."""
        return cls("api_key", {"key": key})

    @classmethod
    def jwt(cls, token: str) -> Credentials:
        """A JWT issued by the app's own auth system (custom JWT provider)."""
        return cls("jwt", {"token": token})

    @classmethod
    def oidc(cls, id_token: str, provider: str | None = None, *, nonce: str | None = None) -> Credentials:
        """An OpenID Connect ID token from an identity provider (Google, Apple, Microsoft,
        Auth0, Keycloak...). ``provider`` is the name of its ``[auth.oidc.<name>]`` table on the
        server (optional when the server has only one); ``nonce``, if the app asked the
        provider for one, is checked against the token's."""
        payload: dict[str, Any] = {"token": id_token}
        if provider is not None:
            payload["name"] = provider
        if nonce is not None:
            payload["nonce"] = nonce
        return cls("oidc", payload)

    def __repr__(self) -> str:  # never show secrets
        return f"Credentials({self.provider!r})"


UserState = Literal["logged_in", "logged_out", "removed"]


class User:
    """A logged-in user of an :class:`App`.

    Attributes:
        id: the user's id on the server.
        provider: how it logged in (``anonymous``, ``email_password``, ``oidc:google``...).
        state: ``logged_in``, ``logged_out`` (after :meth:`log_out`) or ``removed``.
    """

    def __init__(self, app: App, user_id: str, provider: str, access_token: str, refresh_token: str, *,
                 profile: dict[str, Any] | None = None, identities: list[dict[str, str]] | None = None,
                 custom_data: dict[str, Any] | None = None, expires_at: float = 0.0) -> None:
        self.app = app
        self.id = user_id
        self.provider = provider
        self._access_token = access_token
        self._refresh_token = refresh_token
        self._expires_at = expires_at
        self._lifetime = 0.0
        self._profile = dict(profile or {})
        self._identities = list(identities or [])
        self._custom_data = dict(custom_data or {})
        self._lock = threading.Lock()
        self.state: UserState = "logged_in"

    # -- what the user is --------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self.state == "logged_in"

    @property
    def profile(self) -> dict[str, Any]:
        """What the user's identity providers said about it (email, name, mapped JWT claims)."""
        return dict(self._profile)

    @property
    def identities(self) -> list[dict[str, str]]:
        """The identities linked to this user: ``[{"provider": ..., "id": ...}]``."""
        return [dict(i) for i in self._identities]

    @property
    def custom_data(self) -> dict[str, Any]:
        """The user's custom data document (from the server's configured collection), as of
        the login or the last :meth:`refresh_custom_data`; ``{}`` if none."""
        value = from_plain(self._custom_data)
        return value if isinstance(value, dict) else {}

    @property
    def access_token(self) -> str:
        return self._access_token

    @property
    def refresh_token(self) -> str:
        return self._refresh_token

    @property
    def api_keys(self) -> UserApiKeys:
        """This user's API keys: ``create(name)``, ``fetch(id)``, ``fetch_all()``,
        ``enable(id)``, ``disable(id)``, ``delete(id)``."""
        from .api_keys import UserApiKeys

        return UserApiKeys(self)

    # -- tokens ------------------------------------------------------------------------------

    def refresh_access_token(self) -> str:
        """Get a new access token with the refresh token.

        Raises:
            AuthError: the refresh token was revoked or expired: log in again.
            ConnectionClosedError: the server cannot be reached (try later).
        """
        with self._lock:
            data = self.app._post("auth/refresh", {"refresh_token": self._refresh_token})
            self._access_token = str(data["access_token"])
            self._lifetime = float(data.get("expires_in", 0))
            self._expires_at = time.time() + self._lifetime
        self.app._save_users()
        return self._access_token

    def fresh_access_token(self, margin: float | None = None) -> str:
        """The access token, refreshed first if it expires within ``margin`` seconds (default:
        10 s, or a quarter of the token's lifetime if shorter) and the server can be reached
        (offline, the old one is returned)."""
        if margin is None:
            margin = min(REFRESH_MARGIN, self._lifetime / 4) if self._lifetime > 0 else REFRESH_MARGIN
        if self._expires_at and time.time() >= self._expires_at - margin:
            try:
                return self.refresh_access_token()
            except ConnectionClosedError:
                pass
        return self._access_token

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """An authenticated call: refresh the access token before it if it expired, and once
        more (then retry once) if the server says it expired or is invalid."""
        if not self.logged_in:
            raise AuthError("this user is logged out", code="logged_out")
        try:
            return self.app._request(method, path, body, token=self.fresh_access_token())
        except AuthError as exc:
            if exc.code not in _RETRY_CODES:
                raise
        self.refresh_access_token()
        return self.app._request(method, path, body, token=self._access_token)

    # -- profile and identities --------------------------------------------------------------

    def _adopt_profile(self, data: dict[str, Any]) -> None:
        if isinstance(data.get("data"), dict):
            self._profile = dict(data["data"])
        if isinstance(data.get("identities"), list):
            self._identities = [dict(i) for i in data["identities"] if isinstance(i, dict)]
        if isinstance(data.get("custom_data"), dict):
            self._custom_data = dict(data["custom_data"])

    def refresh_profile(self) -> dict[str, Any]:
        """Fetch the profile, identities and custom data again; return the profile."""
        self._adopt_profile(self._call("GET", "auth/profile"))
        self.app._save_users()
        return self.profile

    def refresh_custom_data(self) -> dict[str, Any]:
        """Fetch the custom data again (and the profile); return it."""
        self.refresh_profile()
        return self.custom_data

    def link_credentials(self, credentials: Credentials) -> User:
        """Add the identity of ``credentials`` to this user, so that logging in with them
        later logs in as this user (e.g. keep an anonymous user's data by linking an email).

        Raises:
            AuthError: the credentials are not valid.
            UsageError: ``identity_in_use`` (linked to another user) or ``cannot_link``
                (anonymous credentials and API keys cannot be linked).
        """
        self._adopt_profile(self._call("POST", "auth/link", {"provider": credentials.provider,
                                                             **credentials.payload}))
        self.app._save_users()
        return self

    def log_out(self) -> None:
        """Revoke the refresh token on the server (when reachable; its access tokens stop
        working too) and forget the user on this device."""
        try:
            self.app._post("auth/logout", {"refresh_token": self._refresh_token})
        except ConnectionClosedError:
            pass
        self.state = "logged_out"
        self.app._forget(self)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "provider": self.provider, "access_token": self._access_token,
                "refresh_token": self._refresh_token, "expires_at": self._expires_at,
                "profile": self._profile, "identities": self._identities, "custom_data": self._custom_data}

    def __repr__(self) -> str:
        return f"<User {self.id} ({self.provider})>"


class App:
    """A tidesync app on a server.

    Args:
        app_id: the server's app id (``default`` in development mode).
        base_url: the server's URL, e.g. ``http://127.0.0.1:8765`` or ``https://sync.example.com``.
        storage_dir: where users are persisted (default ``~/.tidesync/<app_id>``).
        ca_file: a CA bundle to verify the server's TLS certificate with, for HTTPS and the
            sync WebSocket (default: the system's). Certificates are always verified.
        timeout: seconds for each HTTP request.
    """

    def __init__(self, app_id: str, *, base_url: str = "http://127.0.0.1:8765",
                 storage_dir: str | os.PathLike[str] | None = None, ca_file: str | os.PathLike[str] | None = None,
                 timeout: float = 10.0) -> None:
        self.app_id = app_id
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.ca_file = str(ca_file) if ca_file is not None else None
        self._ssl = ssl.create_default_context(cafile=self.ca_file) if base_url.startswith("https") else None
        self.storage_dir = Path(storage_dir) if storage_dir else Path.home() / ".tidesync" / app_id
        self._users: dict[str, User] = {}
        self._current: User | None = None
        self._lock = threading.Lock()
        self._load_users()

    # -- HTTP ------------------------------------------------------------------------------

    @property
    def sync_url(self) -> str:
        """The WebSocket URL of the sync endpoint."""
        scheme = "wss" if self.base_url.startswith("https") else "ws"
        return f"{scheme}://{self.base_url.split('://', 1)[1]}/api/{self.app_id}/sync"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for HTTPS and WSS (verifying, with ``ca_file`` if given)."""
        return self._ssl

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                 token: str | None = None) -> dict[str, Any]:
        return request_json(method, f"{self.base_url}/api/{self.app_id}/{path}", body=body, token=token,
                            ssl_context=self._ssl, timeout=self.timeout)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, body)

    @property
    def email_password_auth(self) -> EmailPasswordAuth:
        """Register, confirm and reset email/password accounts."""
        from .email_password import EmailPasswordAuth

        return EmailPasswordAuth(self)

    # -- users -----------------------------------------------------------------------------

    def log_in(self, credentials: Credentials) -> User:
        """Log in and make the user current.

        Raises:
            AuthError: the server refused the credentials (code ``invalid_credentials``,
                ``email_not_confirmed``, ``provider_disabled``, ``user_disabled``...).
            RateLimitedError: too many attempts; ``retry_after`` says when to try again.
            CertificateError: the server's TLS certificate could not be verified.
            ConnectionClosedError: the server cannot be reached.
        """
        data = self._post("auth/login", {"provider": credentials.provider, **credentials.payload})
        uid, provider = str(data["user_id"]), str(data.get("provider", credentials.provider))
        expires_at = time.time() + float(data.get("expires_in", 0))
        with self._lock:
            user = self._users.get(uid)
            if user is None:  # a user already here is the same object, with the new session
                user = self._users[uid] = User(self, uid, provider, "", "")
            old_refresh = user._refresh_token
            with user._lock:
                user.provider, user._access_token = provider, str(data["access_token"])
                user._refresh_token, user._expires_at = str(data["refresh_token"]), expires_at
                user._lifetime = float(data.get("expires_in", 0))
                user.state = "logged_in"
            user._adopt_profile(data)
            self._current = user
        self._save_users()
        if old_refresh:  # the session it replaces is of no more use: end it on the server
            try:
                self._post("auth/logout", {"refresh_token": old_refresh})
            except (AuthError, ConnectionClosedError, UsageError):
                pass
        return user

    @property
    def current_user(self) -> User | None:
        """The user the app works as (the last one logged in or switched to)."""
        return self._current

    @property
    def all_users(self) -> list[User]:
        """Every user logged in on this device."""
        return list(self._users.values())

    def switch_user(self, user: User) -> None:
        """Make ``user`` (logged in on this device) the current user."""
        if user.id not in self._users:
            raise UsageError("that user is not logged in to this app")
        self._current = self._users[user.id]
        self._save_users()

    def remove_user(self, user: User) -> None:
        """Log the user out (revoking its session on the server) and remove it from this device."""
        user.log_out()
        user.state = "removed"

    def delete_user(self, user: User) -> None:
        """Delete the user on the server (its identities, sessions and keys; not its documents)
        and remove it from this device."""
        user._call("DELETE", "auth/user")
        user.state = "removed"
        self._forget(user)

    def _forget(self, user: User) -> None:
        with self._lock:
            if self._users.get(user.id) is user:
                self._users.pop(user.id, None)
            if self._current is user:
                self._current = next(iter(self._users.values()), None)
        self._save_users()

    def _users_file(self) -> Path:
        return self.storage_dir / "users.json"

    def _load_users(self) -> None:
        path = self._users_file()
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        for u in data.get("users", []):
            try:
                user = User(self, u["id"], u["provider"], u["access_token"], u["refresh_token"],
                            profile=u.get("profile"), identities=u.get("identities"),
                            custom_data=u.get("custom_data"), expires_at=float(u.get("expires_at", 0.0)))
            except (KeyError, TypeError, ValueError):
                continue
            self._users[user.id] = user
        cur = data.get("current")
        self._current = self._users.get(cur) if cur else None

    def _save_users(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        path = self._users_file()
        tmp = path.with_suffix(".tmp")
        with self._lock:
            payload = {"users": [u.to_json() for u in self._users.values()],
                       "current": self._current.id if self._current else None}
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f)
            os.replace(tmp, path)
