"""Email/password accounts from the client: ``app.email_password_auth``.

::

    auth = app.email_password_auth
    auth.register_user("alice@example.com", "correct horse battery")
    auth.confirm_user(token)                 # the token the server's sender delivered
    user = app.log_in(tidesync.Credentials.email_password("alice@example.com", "correct horse battery"))

The server answers registration, resending and reset requests the same way whether or not the
address has an account, so these calls succeed for unknown addresses too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App

__all__ = ["EmailPasswordAuth"]


class EmailPasswordAuth:
    """The email/password account flows of an :class:`~tidesync.client.app.App`.

    Every method raises ``UsageError`` (``invalid_email``, ``weak_password``,
    ``invalid_email_token``), ``AuthError`` (``provider_disabled``), ``RateLimitedError`` or
    ``ConnectionClosedError``.
    """

    def __init__(self, app: App) -> None:
        self.app = app

    def register_user(self, email: str, password: str) -> None:
        """Register an address and password; the server sends a confirmation token to it."""
        self.app._post("auth/email/register", {"email": email, "password": password})

    def confirm_user(self, token: str) -> None:
        """Confirm an address with the token sent to it (single use, expires)."""
        self.app._post("auth/email/confirm", {"token": token})

    def resend_confirmation_email(self, email: str) -> None:
        """Ask for a new confirmation token (older ones stop working)."""
        self.app._post("auth/email/confirm/resend", {"email": email})

    def send_reset_password_email(self, email: str) -> None:
        """Ask for a password-reset token to be sent to the address."""
        self.app._post("auth/email/reset/send", {"email": email})

    def reset_password(self, token: str, new_password: str) -> None:
        """Set a new password with a reset token. Every login session of the user ends."""
        self.app._post("auth/email/reset", {"token": token, "password": new_password})
