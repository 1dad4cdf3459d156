"""Users, their identities and their refresh tokens, in ``data_dir/auth.db``.

A *user* is a server-side id (24 hex digits) with a ``disabled`` flag and profile data (what
its identity providers said about it: email, name...). An *identity* is a (provider, subject)
pair, e.g. (``email_password``, ``alice@example.com``) or (``oidc:google``, Google's ``sub``);
one user may have several (``user.link_credentials``). A *refresh token* is a long random
string given to a device at login; only its SHA-256 is stored, with its session id (``sid``,
also carried by the access tokens made from it), so revoking it (log out) ends the session
at once: its access tokens are refused too.

:class:`AuthDB` is the one connection to ``auth.db`` that the user store and the providers'
own tables (email accounts, API keys) share, behind one lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AuthError, UsageError
from ..store.engine import Engine, Row

__all__ = ["AuthDB", "UserStore", "UserRecord", "RefreshSession", "sha256_hex"]

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY, created REAL NOT NULL, disabled INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE IF NOT EXISTS identities (
        provider TEXT NOT NULL, subject TEXT NOT NULL, user_id TEXT NOT NULL,
        PRIMARY KEY (provider, subject))""",
    "CREATE INDEX IF NOT EXISTS identities_user ON identities (user_id)",
    """CREATE TABLE IF NOT EXISTS refresh_tokens (
        hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, expires REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0)""",
    # Which user a replica (a device's database file) syncs as: claimed by its first Hello.
    """CREATE TABLE IF NOT EXISTS replica_owners (
        replica_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, claimed REAL NOT NULL)""",
]
# Columns added after the first release of auth.db; added in place to older files.
_ADDED_COLUMNS = {"refresh_tokens": [("sid", "TEXT"), ("provider", "TEXT NOT NULL DEFAULT ''"),
                                     ("created", "REAL NOT NULL DEFAULT 0")]}
_INDEXES = ["CREATE INDEX IF NOT EXISTS refresh_tokens_sid ON refresh_tokens (sid)",
            "CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens (user_id)"]

_MAX_DATA_BYTES = 16 * 1024
# Rows a provider keeps per identity rather than per user: (provider, table, subject column).
# Deleting a user deletes them with its identities.
_IDENTITY_ROWS = [("email_password", "email_accounts", "email")]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class AuthDB:
    """``auth.db``: one SQLite connection shared by threads, serialized by a lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._engine = Engine(self.path, check_same_thread=False)
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Engine]:
        """Hold the lock and a write transaction; commit on exit."""
        with self._lock, self._engine.atomic():
            yield self._engine

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock:
            return self._engine.query(sql, params)

    def close(self) -> None:
        with self._lock:
            self._engine.close()


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    disabled: bool
    data: dict[str, Any]
    created: float


@dataclass(frozen=True, slots=True)
class RefreshSession:
    """What a valid refresh token stands for."""

    user_id: str
    provider: str
    sid: str


class UserStore:
    """Users, identities and refresh tokens."""

    def __init__(self, path_or_db: Path | AuthDB) -> None:
        self.db = path_or_db if isinstance(path_or_db, AuthDB) else AuthDB(Path(path_or_db))
        with self.db.transaction() as e:
            for stmt in _SCHEMA:
                e.execute(stmt)
            for table, columns in _ADDED_COLUMNS.items():
                have = {str(r[1]) for r in e.query(f"PRAGMA table_info({table})")}
                for name, decl in columns:
                    if name not in have:
                        e.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
            for stmt in _INDEXES:
                e.execute(stmt)

    def close(self) -> None:
        self.db.close()

    # -- replicas ----------------------------------------------------------------------------

    def claim_replica(self, replica_id: str, user_id: str) -> str:
        """Bind ``replica_id`` to ``user_id`` on first use; return the user it is bound to.

        A replica's checkpoints on the server decide what its device still uploads, so only
        the user that first synced a replica may speak for it again.
        """
        with self.db.transaction() as e:
            e.execute("INSERT OR IGNORE INTO replica_owners (replica_id, user_id, claimed) VALUES (?, ?, ?)",
                      (replica_id, user_id, time.time()))
            return str(e.query("SELECT user_id FROM replica_owners WHERE replica_id = ?", (replica_id,))[0][0])

    # -- users and identities ----------------------------------------------------------------

    def create_user(self, provider: str, subject: str | None = None, data: Mapping[str, Any] | None = None) -> str:
        """Make a user with one identity (or, for a known identity, return its user id)."""
        return self.user_for_identity(provider, subject, data or {})

    def user_for_identity(self, provider: str, subject: str | None, data: Mapping[str, Any]) -> str:
        """The user of identity (provider, subject), made on first use; ``data`` is merged
        into the user's profile. ``subject=None`` always makes a new user (anonymous)."""
        blob = _data_json(data)
        with self.db.transaction() as e:
            if subject is not None:
                rows = e.query("SELECT user_id FROM identities WHERE provider = ? AND subject = ?", (provider, subject))
                if rows:
                    uid = str(rows[0][0])
                    if data:
                        self._merge_data(e, uid, data)
                    return uid
            uid = secrets.token_hex(12)
            e.execute("INSERT INTO users (id, created, data) VALUES (?, ?, ?)", (uid, time.time(), blob))
            e.execute("INSERT INTO identities (provider, subject, user_id) VALUES (?, ?, ?)",
                      (provider, subject or uid, uid))
            return uid

    def link_identity(self, uid: str, provider: str, subject: str, data: Mapping[str, Any]) -> None:
        """Add identity (provider, subject) to user ``uid``.

        Raises:
            UsageError: (code ``identity_in_use``) the identity belongs to another user.
        """
        with self.db.transaction() as e:
            rows = e.query("SELECT user_id FROM identities WHERE provider = ? AND subject = ?", (provider, subject))
            if rows and str(rows[0][0]) != uid:
                raise UsageError("this identity is already linked to another user", code="identity_in_use")
            if not rows:
                e.execute("INSERT INTO identities (provider, subject, user_id) VALUES (?, ?, ?)",
                          (provider, subject, uid))
            if data:
                self._merge_data(e, uid, data)

    def _merge_data(self, e: Engine, uid: str, data: Mapping[str, Any]) -> None:
        rows = e.query("SELECT data FROM users WHERE id = ?", (uid,))
        if not rows:
            return
        merged = {**json.loads(rows[0][0]), **data}
        e.execute("UPDATE users SET data = ? WHERE id = ?", (_data_json(merged), uid))

    def user(self, uid: str) -> dict[str, Any] | None:
        """``{"id", "disabled", "data"}`` of a user, or None."""
        rec = self.record(uid)
        if rec is None:
            return None
        return {"id": rec.id, "disabled": rec.disabled, "data": rec.data}

    def record(self, uid: str) -> UserRecord | None:
        rows = self.db.query("SELECT id, disabled, data, created FROM users WHERE id = ?", (uid,))
        if not rows:
            return None
        r = rows[0]
        return UserRecord(str(r[0]), bool(r[1]), json.loads(r[2]), float(r[3]))

    def active(self, uid: str) -> bool:
        """True if the user exists and is not disabled."""
        rows = self.db.query("SELECT disabled FROM users WHERE id = ?", (uid,))
        return bool(rows) and not rows[0][0]

    def identities(self, uid: str) -> list[dict[str, str]]:
        rows = self.db.query("SELECT provider, subject FROM identities WHERE user_id = ? ORDER BY provider, subject",
                             (uid,))
        return [{"provider": str(r[0]), "id": str(r[1])} for r in rows]

    def list_users(self) -> list[UserRecord]:
        rows = self.db.query("SELECT id, disabled, data, created FROM users ORDER BY created")
        return [UserRecord(str(r[0]), bool(r[1]), json.loads(r[2]), float(r[3])) for r in rows]

    def set_disabled(self, uid: str, disabled: bool) -> bool:
        """Disable (or enable) a user: a disabled user's tokens are refused everywhere and its
        refresh tokens are revoked. Returns False if there is no such user."""
        with self.db.transaction() as e:
            cur = e.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), uid))
            if disabled:
                e.execute("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ?", (uid,))
            return cur.rowcount > 0

    def delete_user(self, uid: str) -> bool:
        """Delete a user and everything of it in auth.db (every row of every table with a
        ``user_id`` column: identities, refresh tokens, API keys, email accounts).
        Its documents in the synced data are not touched. Returns False if there was no user."""
        with self.db.transaction() as e:
            cur = e.execute("DELETE FROM users WHERE id = ?", (uid,))
            tables = [str(r[0]) for r in e.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for provider, table, column in _IDENTITY_ROWS:
                if table in tables:
                    e.execute(f"DELETE FROM {table} WHERE {column} IN "
                              "(SELECT subject FROM identities WHERE provider = ? AND user_id = ?)", (provider, uid))
            for table in tables:
                cols = {str(r[1]) for r in e.query(f"PRAGMA table_info({Engine.quote_identifier(table)})")}
                if "user_id" in cols:
                    e.execute(f"DELETE FROM {Engine.quote_identifier(table)} WHERE user_id = ?", (uid,))
            return cur.rowcount > 0

    # -- refresh tokens ----------------------------------------------------------------------

    def store_refresh(self, token: str, uid: str, ttl: int, provider: str = "") -> str:
        """Remember a new refresh token (its hash); return its session id."""
        sid = secrets.token_hex(12)
        now = time.time()
        with self.db.transaction() as e:
            e.execute("INSERT INTO refresh_tokens (hash, user_id, expires, sid, provider, created) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (sha256_hex(token), uid, now + ttl, sid, provider, now))
        return sid

    def check_refresh(self, token: str) -> str:
        """The user id of a valid refresh token."""
        return self.refresh_session(token).user_id

    def refresh_session(self, token: str) -> RefreshSession:
        """What a refresh token stands for.

        Raises:
            AuthError: (code ``invalid_refresh_token``) unknown, expired or revoked.
        """
        rows = self.db.query("SELECT user_id, expires, revoked, sid, provider FROM refresh_tokens WHERE hash = ?",
                             (sha256_hex(token),))
        if not rows or rows[0][2] or rows[0][1] < time.time():
            raise AuthError("the refresh token is unknown, expired or revoked", code="invalid_refresh_token")
        r = rows[0]
        return RefreshSession(str(r[0]), str(r[4] or ""), str(r[3] or ""))

    def session_active(self, sid: str) -> bool:
        """True if the login session ``sid`` (its refresh token) is neither revoked nor expired."""
        rows = self.db.query("SELECT revoked, expires FROM refresh_tokens WHERE sid = ?", (sid,))
        return bool(rows) and not rows[0][0] and rows[0][1] >= time.time()

    def revoke_refresh(self, token: str) -> None:
        with self.db.transaction() as e:
            e.execute("UPDATE refresh_tokens SET revoked = 1 WHERE hash = ?", (sha256_hex(token),))

    def revoke_all(self, uid: str) -> None:
        """End every login session of a user (after a password reset, say)."""
        with self.db.transaction() as e:
            e.execute("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ?", (uid,))

    def purge_expired(self) -> int:
        """Forget refresh tokens that expired more than a day ago."""
        with self.db.transaction() as e:
            cur = e.execute("DELETE FROM refresh_tokens WHERE expires < ?", (time.time() - 86400,))
            return cur.rowcount


def _data_json(data: Mapping[str, Any]) -> str:
    blob = json.dumps(dict(data), sort_keys=True, default=str)
    if len(blob) > _MAX_DATA_BYTES:
        raise UsageError("the user's profile data is too large", code="profile_too_large")
    return blob
