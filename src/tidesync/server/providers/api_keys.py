"""API keys: server keys for backend services, user keys for devices.

* A **server key** is made by the operator (``tidesync api-keys create NAME --data DIR``, or
  :meth:`ApiKeyStore.create` with ``owner=None``). Each server key logs in as a user of its
  own (a service account), made with the key.
* A **user key** is made by a logged-in user for one of its devices
  (``user.api_keys.create("kiosk-3")``) and logs in as that user.

A key is shown once, when it is made: ``tsk_<key id>_<64 hex digits>``. The server keeps the
key id and the SHA-256 of the secret part, never the key. A fast hash is the right one here,
unlike for passwords: the secret is 256 random bits, so no guessing or precomputed table can
find it, and a slow hash (argon2) would only slow down every login. The key id lets a login
find its row directly and lets per-key rate limits and logs name a key without its secret;
the comparison is constant-time.

Owners list, disable, enable and delete their keys; listing never shows a key again.
Disabling or deleting a key ends the login sessions made with it.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import AuthError, UsageError
from ..auth_config import ApiKeysConfig
from ..users import AuthDB, UserStore, sha256_hex
from . import Identity

__all__ = ["ApiKeyStore", "ApiKeyProvider", "ApiKeyInfo", "parse_key"]

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY, user_id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
        hash TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys (user_id)",
]
_KEY = re.compile(r"^tsk_([0-9a-f]{16})_([0-9a-f]{64})$")
_NAME_MAX = 64


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key as its owner sees it (never the key itself)."""

    id: str
    name: str
    kind: Literal["server", "user"]
    user_id: str
    disabled: bool
    created: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "user_id": self.user_id,
                "disabled": self.disabled, "created": self.created}


def parse_key(key: object) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    if not isinstance(key, str):
        return None
    m = _KEY.match(key)
    return (m.group(1), m.group(2)) if m else None


def _not_found() -> UsageError:
    return UsageError("no such API key", code="api_key_not_found")


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_MAX \
            or any(not c.isprintable() for c in name):
        raise UsageError(f"an API key name is 1 to {_NAME_MAX} printable characters", code="bad_request")
    return name.strip()


class ApiKeyStore:
    """The ``api_keys`` table. ``owner`` is a user id, or None for the operator's server keys."""

    def __init__(self, db: AuthDB, users: UserStore, config: ApiKeysConfig | None = None) -> None:
        self.db, self.users = db, users
        self.config = config or ApiKeysConfig()
        with db.transaction() as e:
            for stmt in _SCHEMA:
                e.execute(stmt)

    @staticmethod
    def _info(row: Any) -> ApiKeyInfo:
        return ApiKeyInfo(str(row[0]), str(row[1]), "server" if row[2] == "server" else "user",
                          str(row[3]), bool(row[4]), float(row[5]))

    def create(self, owner: str | None, name: object) -> tuple[ApiKeyInfo, str]:
        """Make a key; return its info and the key (the only time it is shown).

        Raises:
            UsageError: ``bad_request`` (name), ``api_key_name_in_use``, ``too_many_api_keys``.
        """
        label = _check_name(name)
        key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
        kind: Literal["server", "user"] = "server" if owner is None else "user"
        with self.db.transaction() as e:
            if owner is None:
                clash = e.query("SELECT 1 FROM api_keys WHERE kind = 'server' AND name = ?", (label,))
            else:
                clash = e.query("SELECT 1 FROM api_keys WHERE user_id = ? AND kind = 'user' AND name = ?",
                                (owner, label))
                count = e.query("SELECT count(*) FROM api_keys WHERE user_id = ? AND kind = 'user'", (owner,))
                if int(count[0][0]) >= self.config.max_per_user:
                    raise UsageError(f"a user may have at most {self.config.max_per_user} API keys",
                                     code="too_many_api_keys")
            if clash:
                raise UsageError(f"there is already an API key named {label!r}", code="api_key_name_in_use")
        uid = owner if owner is not None else self.users.user_for_identity(
            "server_api_key", key_id, {"name": label, "server_api_key": True})
        now = time.time()
        with self.db.transaction() as e:
            e.execute("INSERT INTO api_keys (id, user_id, kind, name, hash, created) VALUES (?, ?, ?, ?, ?, ?)",
                      (key_id, uid, kind, label, sha256_hex(secret), now))
        return ApiKeyInfo(key_id, label, kind, uid, False, now), f"tsk_{key_id}_{secret}"

    def _where(self, owner: str | None) -> tuple[str, tuple[Any, ...]]:
        if owner is None:
            return "kind = 'server'", ()
        return "kind = 'user' AND user_id = ?", (owner,)

    def list(self, owner: str | None) -> list[ApiKeyInfo]:
        where, params = self._where(owner)
        rows = self.db.query(f"SELECT id, name, kind, user_id, disabled, created FROM api_keys WHERE {where} "
                             "ORDER BY created", params)
        return [self._info(r) for r in rows]

    def get(self, owner: str | None, key_id: object) -> ApiKeyInfo:
        """Raises: UsageError (``api_key_not_found``): no such key of this owner."""
        if not isinstance(key_id, str):
            raise _not_found()
        where, params = self._where(owner)
        rows = self.db.query(f"SELECT id, name, kind, user_id, disabled, created FROM api_keys "
                             f"WHERE id = ? AND {where}", (key_id, *params))
        if not rows:
            raise _not_found()
        return self._info(rows[0])

    def set_disabled(self, owner: str | None, key_id: object, disabled: bool) -> ApiKeyInfo:
        info = self.get(owner, key_id)
        with self.db.transaction() as e:
            e.execute("UPDATE api_keys SET disabled = ? WHERE id = ?", (int(disabled), info.id))
            if disabled:
                self._end_sessions(e, info)
        return self.get(owner, key_id)

    def delete(self, owner: str | None, key_id: object) -> None:
        info = self.get(owner, key_id)
        with self.db.transaction() as e:
            e.execute("DELETE FROM api_keys WHERE id = ?", (info.id,))
            self._end_sessions(e, info)

    @staticmethod
    def _end_sessions(e: Any, info: ApiKeyInfo) -> None:
        e.execute("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ? AND provider = ?",
                  (info.user_id, f"api_key:{info.id}"))

    def verify(self, key: object) -> ApiKeyInfo:
        """The info of a valid, enabled key.

        Raises:
            AuthError: (``invalid_credentials``) malformed, unknown, wrong or disabled.
        """
        parsed = parse_key(key)
        fail = AuthError("invalid API key", code="invalid_credentials", advice="")
        if parsed is None:
            raise fail
        rows = self.db.query("SELECT id, name, kind, user_id, disabled, created, hash FROM api_keys WHERE id = ?",
                             (parsed[0],))
        expected = str(rows[0][6]) if rows else "0" * 64
        if not hmac.compare_digest(expected, sha256_hex(parsed[1])) or not rows:
            raise fail
        info = self._info(rows[0])
        if info.disabled or (info.kind == "user" and not self.config.user_keys):
            raise fail
        return info


class ApiKeyProvider:
    """``{"provider": "api_key", "key": "tsk_..."}``."""

    name = "api_key"

    def __init__(self, store: ApiKeyStore) -> None:
        self.store = store

    def account(self, body: Mapping[str, Any]) -> str | None:
        parsed = parse_key(body.get("key"))
        return f"api_key:{parsed[0]}" if parsed else None

    def authenticate(self, body: Mapping[str, Any]) -> Identity:
        info = self.store.verify(body.get("key"))
        return Identity(f"api_key:{info.id}", None, {}, user_id=info.user_id, linkable=False)
