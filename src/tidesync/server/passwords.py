"""Passwords: the policy a new password must meet, and argon2id hashing.

Hashes are argon2id (argon2-cffi's ``PasswordHasher``) with a random salt per password, in
the PHC string format (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``), so the parameters
travel with each hash: raising them later rehashes each password at its next login.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import UsageError

__all__ = ["PasswordPolicy", "Argon2Params", "Passwords", "WeakPasswordError"]


class WeakPasswordError(UsageError):
    """A new password does not meet the server's policy (HTTP 400, code ``weak_password``)."""

    code = "weak_password"


@dataclass
class PasswordPolicy:
    """What a new password must be (``[auth.email_password.password_policy]``).

    Attributes:
        min_length, max_length: in characters (after Unicode NFC normalization). The maximum
            bounds the work a login asks of the server.
        require_letter, require_digit, require_symbol: at least one of each.
        require_mixed_case: at least one lower-case and one upper-case letter.
        forbid_email: the password may not contain the account's email address or its local part.
    """

    min_length: int = 8
    max_length: int = 256
    require_letter: bool = False
    require_digit: bool = False
    require_symbol: bool = False
    require_mixed_case: bool = False
    forbid_email: bool = True

    def check(self, password: object, email: str | None = None) -> str:
        """Return the normalized password, or raise :class:`WeakPasswordError` naming the rule."""
        if not isinstance(password, str):
            raise WeakPasswordError("the password must be a string")
        pw = unicodedata.normalize("NFC", password)
        if len(pw) < self.min_length:
            raise WeakPasswordError(f"the password must have at least {self.min_length} characters")
        if len(pw) > self.max_length:
            raise WeakPasswordError(f"the password may have at most {self.max_length} characters")
        if any(unicodedata.category(c) == "Cc" for c in pw):
            raise WeakPasswordError("the password may not contain control characters")
        if self.require_letter and not any(c.isalpha() for c in pw):
            raise WeakPasswordError("the password must contain a letter")
        if self.require_digit and not any(c.isdigit() for c in pw):
            raise WeakPasswordError("the password must contain a digit")
        if self.require_symbol and all(c.isalnum() for c in pw):
            raise WeakPasswordError("the password must contain a symbol")
        if self.require_mixed_case and not (any(c.islower() for c in pw) and any(c.isupper() for c in pw)):
            raise WeakPasswordError("the password must mix lower-case and upper-case letters")
        if self.forbid_email and email:
            local = email.split("@", 1)[0]
            low = pw.casefold()
            if email.casefold() in low or (len(local) >= 4 and local.casefold() in low):
                raise WeakPasswordError("the password may not contain the email address")
        return pw


@dataclass
class Argon2Params:
    """argon2id cost (``[auth.email_password.argon2]``); the defaults are argon2-cffi's (RFC 9106
    low-memory profile: 3 passes over 64 MiB with 4 lanes)."""

    time_cost: int = 3
    memory_cost: int = 65536  # KiB
    parallelism: int = 4


class Passwords:
    """Hash and verify passwords with argon2id."""

    def __init__(self, params: Argon2Params | None = None) -> None:
        p = params or Argon2Params()
        self._hasher = PasswordHasher(time_cost=p.time_cost, memory_cost=p.memory_cost,
                                      parallelism=p.parallelism, type=Type.ID)
        self._dummy = self._hasher.hash("tidesync: no such account")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """True if ``password`` matches ``stored``. With ``stored=None`` (no such account) a
        dummy hash is checked so that the answer takes as long as for a real account."""
        try:
            return self._hasher.verify(stored if stored is not None else self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)
