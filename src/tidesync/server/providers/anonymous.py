"""Anonymous login: every login makes a new user with no identity to log in with again.

An anonymous user keeps its id only while a device keeps its refresh token (60 days by
default). To keep its data for good, link a real identity to it
(``user.link_credentials(Credentials.email_password(...))``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import Identity

__all__ = ["AnonymousProvider"]


class AnonymousProvider:
    """``{"provider": "anonymous"}``."""

    name = "anonymous"

    def account(self, body: Mapping[str, Any]) -> str | None:
        return None

    def authenticate(self, body: Mapping[str, Any]) -> Identity:
        return Identity("anonymous", None, {}, linkable=False)
