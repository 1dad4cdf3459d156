"""Login providers: each turns the credentials of a login request into an :class:`Identity`.

=================  ===========================================  ==============================
login ``provider``  module                                      identity (provider, subject)
=================  ===========================================  ==============================
``anonymous``       :mod:`.anonymous`                           a new user every time
``email_password``  :mod:`.email_password`                      (``email_password``, email)
``api_key``         :mod:`.api_keys`                            the key's user (no new identity)
``jwt``             :mod:`.custom_jwt`                          (``custom_jwt``, ``sub``)
``oidc``            :mod:`.oidc`                                (``oidc:<name>``, ``sub``)
=================  ===========================================  ==============================

A provider is enabled in the server config; :class:`Providers` builds the enabled ones and
refuses the others with ``provider_disabled``. ``authenticate`` may block (argon2, a JWKS
fetch): the HTTP layer calls it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import AuthError

if TYPE_CHECKING:
    from ..config import ServerConfig
    from ..users import AuthDB, UserStore

__all__ = ["Identity", "Provider", "Providers"]


@dataclass(frozen=True)
class Identity:
    """Who a set of credentials proved to be.

    Attributes:
        provider: the identity's provider key (``email_password``, ``oidc:google``...).
        subject: the id of the identity at that provider; None: a new user each time.
        data: profile fields the provider vouches for (email, name...), merged into the
            user's profile at each login.
        user_id: set when the credentials name their user directly (API keys).
        linkable: whether these credentials may be linked to another user.
    """

    provider: str
    subject: str | None
    data: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    linkable: bool = True


class Provider(Protocol):
    """A login provider."""

    #: the ``provider`` value of a login request
    name: str

    def account(self, body: Mapping[str, Any]) -> str | None:
        """The account the credentials claim (for per-account rate limits), unverified."""
        ...

    def authenticate(self, body: Mapping[str, Any]) -> Identity:
        """Check the credentials. Blocking.

        Raises:
            AuthError: (``invalid_credentials`` and others) the credentials are not valid.
            UsageError: the request is malformed.
        """
        ...


class Providers:
    """The login providers a server's config enables."""

    def __init__(self, config: ServerConfig, users: UserStore, db: AuthDB) -> None:
        from .anonymous import AnonymousProvider
        from .api_keys import ApiKeyProvider, ApiKeyStore
        from .custom_jwt import CustomJwtProvider
        from .email_password import EmailPasswordProvider
        from .oidc import OidcProvider

        auth = config.auth
        self.api_keys = ApiKeyStore(db, users, auth.api_keys)
        self.email_password: EmailPasswordProvider | None = None
        self._by_name: dict[str, Provider] = {}
        if config.anonymous:
            self._add(AnonymousProvider())
        if auth.email_password.enabled:
            self.email_password = EmailPasswordProvider(db, users, auth.email_password, config.app_id)
            self._add(self.email_password)
        if auth.api_keys.enabled:
            self._add(ApiKeyProvider(self.api_keys))
        if auth.custom_jwt.enabled:
            self._add(CustomJwtProvider(auth.custom_jwt))
        if auth.oidc:
            self._add(OidcProvider(auth.oidc))

    def _add(self, provider: Provider) -> None:
        self._by_name[provider.name] = provider

    @property
    def enabled(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: object) -> Provider:
        """The enabled provider called ``name``.

        Raises:
            AuthError: (``provider_disabled``) no such provider is enabled.
        """
        provider = self._by_name.get(name) if isinstance(name, str) else None
        if provider is None:
            shown = repr(name[:40]) if isinstance(name, str) else "?"
            raise AuthError(f"unknown or disabled login provider {shown}", code="provider_disabled",
                            advice=f"enabled here: {', '.join(self.enabled) or 'none'}")
        return provider
