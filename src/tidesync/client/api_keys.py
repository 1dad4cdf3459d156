"""A user's API keys from the client: ``user.api_keys``.

A user key logs in as its user (``Credentials.api_key(key)``), typically on a device with no
person to type a password (a kiosk, a sensor). The key is in the answer to :meth:`create`
and never again: store it then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import User

__all__ = ["ApiKey", "UserApiKeys"]


@dataclass(frozen=True)
class ApiKey:
    """An API key. ``key`` is set only in the answer to ``create``."""

    id: str
    name: str
    disabled: bool
    created: float
    key: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApiKey:
        key = data.get("key")
        return cls(str(data["id"]), str(data["name"]), bool(data.get("disabled")), float(data.get("created", 0)),
                   str(key) if key is not None else None)

    def __repr__(self) -> str:  # the key stays out of logs
        return f"ApiKey({self.id!r}, {self.name!r}, disabled={self.disabled})"


class UserApiKeys:
    """The API keys of one user. Every call is authenticated as the user (refreshing its access
    token when needed) and raises ``AuthError``, ``UsageError`` (``api_key_not_found``,
    ``api_key_name_in_use``, ``too_many_api_keys``) or ``ConnectionClosedError``."""

    def __init__(self, user: User) -> None:
        self.user = user

    def create(self, name: str) -> ApiKey:
        """Make a key named ``name`` (unique for the user); its ``key`` is shown only here."""
        return ApiKey.from_json(self.user._call("POST", "auth/api_keys", {"name": name}))

    def fetch(self, key_id: str) -> ApiKey:
        return ApiKey.from_json(self.user._call("GET", f"auth/api_keys/{_segment(key_id)}"))

    def fetch_all(self) -> list[ApiKey]:
        data = self.user._call("GET", "auth/api_keys")
        return [ApiKey.from_json(k) for k in data.get("api_keys", [])]

    def enable(self, key_id: str) -> ApiKey:
        return ApiKey.from_json(self.user._call("POST", f"auth/api_keys/{_segment(key_id)}/enable"))

    def disable(self, key_id: str) -> ApiKey:
        """Disable a key: it cannot log in, and the sessions made with it end."""
        return ApiKey.from_json(self.user._call("POST", f"auth/api_keys/{_segment(key_id)}/disable"))

    def delete(self, key_id: str) -> None:
        self.user._call("DELETE", f"auth/api_keys/{_segment(key_id)}")


def _segment(key_id: str) -> str:
    from urllib.parse import quote

    return quote(str(key_id), safe="")
