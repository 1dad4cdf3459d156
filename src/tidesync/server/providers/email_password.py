"""Email/password login, with confirmation and password reset by single-use tokens.

* ``register(email, password)``: the address is validated and normalized
  (:mod:`tidesync.server.email_address`), the password checked against the policy and hashed
  with argon2id; a confirmation token is sent through the configured
  :class:`~tidesync.server.mail.Sender` (unless ``auto_confirm``).
* ``confirm(token)``: the token is single-use and expires (``confirmation_ttl``).
* ``resend_confirmation(email)``, ``send_reset(email)``: a new token (older ones of that kind
  stop working); ``reset(token, password)`` sets the password, confirms the address (the user
  proved they read its mail) and ends every login session of the user.

Nothing here tells a caller whether an address has an account: registering a known address
answers like a new one (its owner gets an "account exists" message instead of a token), and
asking for a confirmation or a reset answers the same whatever the address. Mail goes out on
a background thread, so the answer takes as long either way; registration hashes the password
even when it will not be stored. A login with a wrong password, or for an unknown address,
fails the same way, after the same argon2 work. A correct password for an address that is not
confirmed yet gets ``email_not_confirmed`` (the caller proved they know the password).

Tokens are 256-bit random strings stored as SHA-256 (like refresh tokens): a leaked auth.db
does not let anyone confirm or reset.
"""

from __future__ import annotations

import logging
import secrets
import time
import unicodedata
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...errors import AuthError, UsageError
from ..auth_config import EmailPasswordConfig
from ..email_address import normalize_email
from ..mail import Mail, MailKind, load_sender
from ..passwords import Passwords
from ..users import AuthDB, UserStore, sha256_hex
from . import Identity

__all__ = ["EmailPasswordProvider"]

log = logging.getLogger("tidesync.server.auth")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS email_accounts (
        email TEXT PRIMARY KEY, hash TEXT NOT NULL, confirmed INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS email_tokens (
        hash TEXT PRIMARY KEY, kind TEXT NOT NULL, email TEXT NOT NULL, expires REAL NOT NULL,
        used INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS email_tokens_email ON email_tokens (email, kind)",
]
_MAX_TOKEN_LEN = 256


def _bad_token(kind: str) -> UsageError:
    what = "confirmation" if kind == "confirm" else "password reset"
    return UsageError(f"the {what} token is unknown, used or expired", code="invalid_email_token",
                      advice="ask for a new one")


class EmailPasswordProvider:
    """``{"provider": "email_password", "email": ..., "password": ...}`` and the account flows."""

    name = "email_password"

    def __init__(self, db: AuthDB, users: UserStore, config: EmailPasswordConfig, app_id: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.users, self.config, self.app_id = db, users, config, app_id
        self.passwords = Passwords(config.argon2)
        self.sender = load_sender(config.sender, config.smtp)
        self._clock = clock
        self._mailer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidesync-mail")
        with db.transaction() as e:
            for stmt in _SCHEMA:
                e.execute(stmt)

    def close(self) -> None:
        self._mailer.shutdown(wait=True)

    # -- login -------------------------------------------------------------------------------

    def account(self, body: Mapping[str, Any]) -> str | None:
        try:
            return "email:" + normalize_email(body.get("email"))
        except UsageError:
            return None

    def authenticate(self, body: Mapping[str, Any]) -> Identity:
        email = normalize_email(body.get("email"))
        password = body.get("password")
        if not isinstance(password, str) or len(password) > self.config.password_policy.max_length * 4:
            password = ""
        rows = self.db.query("SELECT hash, confirmed FROM email_accounts WHERE email = ?", (email,))
        stored = str(rows[0][0]) if rows else None
        if not self.passwords.verify(stored, unicodedata.normalize("NFC", password)) or stored is None:
            raise AuthError("invalid email or password", code="invalid_credentials", advice="")
        if not rows[0][1]:
            raise AuthError("this email address is not confirmed yet", code="email_not_confirmed",
                            advice="use the token sent to it (confirm_user), or ask for a new one")
        if self.passwords.needs_rehash(stored):
            with self.db.transaction() as e:
                e.execute("UPDATE email_accounts SET hash = ? WHERE email = ?",
                          (self.passwords.hash(unicodedata.normalize("NFC", password)), email))
        return Identity(self.name, email, {"email": email})

    # -- account flows -----------------------------------------------------------------------

    def register(self, email: object, password: object) -> None:
        """Make an unconfirmed account and send its confirmation token (see the module doc).

        Raises:
            UsageError: ``invalid_email`` or ``weak_password``.
        """
        address = normalize_email(email)
        pw = self.config.password_policy.check(password, address)
        hashed = self.passwords.hash(pw)  # always: the answer takes as long for a known address
        mail: tuple[MailKind, str | None] | None = None
        with self.db.transaction() as e:
            rows = e.query("SELECT confirmed FROM email_accounts WHERE email = ?", (address,))
            if not rows:
                confirmed = self.config.auto_confirm
                e.execute("INSERT INTO email_accounts (email, hash, confirmed, created) VALUES (?, ?, ?, ?)",
                          (address, hashed, int(confirmed), self._clock()))
                if not confirmed:
                    mail = ("confirm", self._new_token(e, "confirm", address))
            elif rows[0][0]:
                mail = ("account_exists", None)
            else:  # pending: never overwrite its password; send its owner a fresh token
                mail = ("confirm", self._new_token(e, "confirm", address))
        if mail is not None:
            self._deliver(mail[0], address, mail[1])

    def confirm(self, token: object) -> None:
        """Confirm the account of a confirmation token (single use).

        Raises:
            UsageError: (``invalid_email_token``) unknown, used or expired.
        """
        with self.db.transaction() as e:
            email = self._use_token(e, "confirm", token)
            e.execute("UPDATE email_accounts SET confirmed = 1 WHERE email = ?", (email,))

    def resend_confirmation(self, email: object) -> None:
        """Send a new confirmation token if the address has an unconfirmed account."""
        address = normalize_email(email)
        token = None
        with self.db.transaction() as e:
            rows = e.query("SELECT confirmed FROM email_accounts WHERE email = ?", (address,))
            if rows and not rows[0][0]:
                token = self._new_token(e, "confirm", address)
        if token is not None:
            self._deliver("confirm", address, token)

    def send_reset(self, email: object) -> None:
        """Send a password-reset token if the address has an account."""
        address = normalize_email(email)
        token = None
        with self.db.transaction() as e:
            if e.query("SELECT 1 FROM email_accounts WHERE email = ?", (address,)):
                token = self._new_token(e, "reset", address)
        if token is not None:
            self._deliver("reset", address, token)

    def reset(self, token: object, password: object) -> None:
        """Set a new password with a reset token (single use); confirm the address; end every
        login session of its user.

        Raises:
            UsageError: ``invalid_email_token`` or ``weak_password`` (the token then still works).
        """
        email = self._peek_token("reset", token)
        pw = self.config.password_policy.check(password, email)
        hashed = self.passwords.hash(pw)
        with self.db.transaction() as e:
            if self._use_token(e, "reset", token) != email:
                raise _bad_token("reset")
            e.execute("UPDATE email_accounts SET hash = ?, confirmed = 1 WHERE email = ?", (hashed, email))
            rows = e.query("SELECT user_id FROM identities WHERE provider = ? AND subject = ?", (self.name, email))
        if rows:
            self.users.revoke_all(str(rows[0][0]))

    # -- tokens and mail ---------------------------------------------------------------------

    def _ttl(self, kind: str) -> int:
        return self.config.confirmation_ttl if kind == "confirm" else self.config.reset_ttl

    def _new_token(self, e: Any, kind: str, email: str) -> str:
        token = secrets.token_urlsafe(32)
        e.execute("DELETE FROM email_tokens WHERE email = ? AND kind = ?", (email, kind))
        e.execute("DELETE FROM email_tokens WHERE expires < ?", (self._clock(),))
        e.execute("INSERT INTO email_tokens (hash, kind, email, expires) VALUES (?, ?, ?, ?)",
                  (sha256_hex(token), kind, email, self._clock() + self._ttl(kind)))
        return token

    def _peek_token(self, kind: str, token: object) -> str:
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LEN:
            raise _bad_token(kind)
        rows = self.db.query("SELECT kind, email, expires, used FROM email_tokens WHERE hash = ?",
                             (sha256_hex(token),))
        if not rows or rows[0][0] != kind or rows[0][3] or rows[0][2] < self._clock():
            raise _bad_token(kind)
        return str(rows[0][1])

    def _use_token(self, e: Any, kind: str, token: object) -> str:
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LEN:
            raise _bad_token(kind)
        rows = e.query("SELECT kind, email, expires, used FROM email_tokens WHERE hash = ?", (sha256_hex(token),))
        if not rows or rows[0][0] != kind or rows[0][3] or rows[0][2] < self._clock():
            raise _bad_token(kind)
        e.execute("UPDATE email_tokens SET used = 1 WHERE hash = ?", (sha256_hex(token),))
        return str(rows[0][1])

    def _deliver(self, kind: MailKind, to: str, token: str | None) -> None:
        template = self.config.confirm_url if kind == "confirm" else self.config.reset_url
        url = template.replace("{token}", token) if template and token else None
        mail = Mail(kind, to, self.app_id, token, url, self._ttl(kind) if token else 0)

        def send() -> None:
            try:
                self.sender.send(mail)
            except Exception:  # noqa: BLE001 - a failing sender must not tell the client anything
                log.exception("the mail sender failed for a %s message", kind)

        self._mailer.submit(send)
