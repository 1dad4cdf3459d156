"""The client's view of a tidesync app: log in, users, tokens.

``App`` talks to the server's HTTP API with the standard library only (``urllib``), so the
client core stays light. Logged-in users are persisted in ``storage_dir`` (a JSON file), so
an app can start offline with its last user: an expired access token never blocks local
reads and writes; the sync session refreshes it when the server is reachable again.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuthError, ConnectionClosedError, UsageError

__all__ = ["App", "Credentials", "User"]


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
        return cls("email_password", {"email": email, "password": password})

    @classmethod
    def api_key(cls, key: str) -> Credentials:
        return cls("api_key", {"key": key})

    @classmethod
    def jwt(cls, token: str) -> Credentials:
        return cls("jwt", {"token": token})

    def __repr__(self) -> str:  # never show secrets
        return f"Credentials({self.provider!r})"


class User:
    """A logged-in user of an :class:`App`."""

    def __init__(self, app: App, user_id: str, provider: str, access_token: str, refresh_token: str) -> None:
        self.app = app
        self.id = user_id
        self.provider = provider
        self._access_token = access_token
        self._refresh_token = refresh_token
        self._lock = threading.Lock()
        self.logged_in = True

    @property
    def access_token(self) -> str:
        return self._access_token

    @property
    def refresh_token(self) -> str:
        return self._refresh_token

    def refresh_access_token(self) -> str:
        """Get a new access token with the refresh token.

        Raises:
            AuthError: the refresh token was revoked or expired: log in again.
            ConnectionClosedError: the server cannot be reached (try later).
        """
        with self._lock:
            data = self.app._post("auth/refresh", {"refresh_token": self._refresh_token})
            self._access_token = str(data["access_token"])
        self.app._save_users()
        return self._access_token

    def log_out(self) -> None:
        """Revoke the refresh token on the server (when reachable) and forget the user here."""
        try:
            self.app._post("auth/logout", {"refresh_token": self._refresh_token})
        except ConnectionClosedError:
            pass
        self.logged_in = False
        self.app._forget(self)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "provider": self.provider, "access_token": self._access_token,
                "refresh_token": self._refresh_token}

    def __repr__(self) -> str:
        return f"<User {self.id} ({self.provider})>"


class App:
    """A tidesync app on a server.

    Args:
        app_id: the server's app id (``default`` in development mode).
        base_url: the server's URL, e.g. ``http://127.0.0.1:8765``.
        storage_dir: where users are persisted (default ``~/.tidesync/<app_id>``).
        ca_file: a CA bundle to verify the server's TLS certificate with (default: the system's).
        timeout: seconds for each HTTP request.
    """

    def __init__(self, app_id: str, *, base_url: str = "http://127.0.0.1:8765",
                 storage_dir: str | os.PathLike[str] | None = None, ca_file: str | None = None,
                 timeout: float = 10.0) -> None:
        self.app_id = app_id
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.ca_file = ca_file
        self._ssl = ssl.create_default_context(cafile=ca_file) if base_url.startswith("https") else None
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
        return self._ssl

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/api/{self.app_id}/{path}"
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
            except ValueError:
                err = {"error": exc.reason, "code": "http_error"}
            code = str(err.get("code", "http_error"))
            if exc.code in (401, 403):
                raise AuthError(str(err.get("error", "unauthorized")), code=code) from None
            raise UsageError(f"server said {exc.code}: {err.get('error')}", code=code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionClosedError(f"cannot reach {self.base_url}: {exc}",
                                        advice="check the server is running; local work goes on") from exc

    # -- users -----------------------------------------------------------------------------

    def log_in(self, credentials: Credentials) -> User:
        """Log in and make the user current.

        Raises:
            AuthError: the server refused the credentials.
            ConnectionClosedError: the server cannot be reached.
        """
        data = self._post("auth/login", {"provider": credentials.provider, **credentials.payload})
        user = User(self, str(data["user_id"]), credentials.provider, str(data["access_token"]),
                    str(data["refresh_token"]))
        with self._lock:
            self._users[user.id] = user
            self._current = user
        self._save_users()
        return user

    @property
    def current_user(self) -> User | None:
        return self._current

    @property
    def all_users(self) -> list[User]:
        return list(self._users.values())

    def switch_user(self, user: User) -> None:
        if user.id not in self._users:
            raise UsageError("that user is not logged in to this app")
        self._current = user
        self._save_users()

    def remove_user(self, user: User) -> None:
        user.log_out()

    def _forget(self, user: User) -> None:
        with self._lock:
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
            user = User(self, u["id"], u["provider"], u["access_token"], u["refresh_token"])
            self._users[user.id] = user
        cur = data.get("current")
        self._current = self._users.get(cur) if cur else None

    def _save_users(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        path = self._users_file()
        tmp = path.with_suffix(".tmp")
        payload = {"users": [u.to_json() for u in self._users.values()],
                   "current": self._current.id if self._current else None}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
