"""OpenID Connect: log in with an ID token from an identity provider.

``tidesync.Credentials.oidc(id_token, provider="google")``; ``provider`` names a
``[auth.oidc.<name>]`` table (it may be left out when only one is configured). The app gets
the ID token from the provider on the device (Sign in with Google/Apple, MSAL, Auth0,
Keycloak...); the server checks it like any JWT (:mod:`tidesync.server.jwt_verifier`): the
provider's signature from its JWKS, ``exp``/``iat``/``nbf``, ``iss`` = the provider's issuer,
``aud`` = one of the app's ``client_id`` values (and ``azp``, when the token has several
audiences), plus ``nonce`` when the client sends one and ``email_verified`` when configured.
The identity is (``oidc:<name>``, ``sub``); profile fields (email, name, picture...) are copied
into the user's profile.

Presets fill in issuer and JWKS URL:

=============  ===============================================  ================================
preset         issuer                                           parameters
=============  ===============================================  ================================
``google``     ``https://accounts.google.com``                  none
``apple``      ``https://appleid.apple.com``                    none
``microsoft``  ``https://login.microsoftonline.com/{tenant}/v2.0``  ``tenant`` (default ``common``:
                                                                any tenant, issuer checked with
                                                                the token's ``tid``)
``auth0``      ``https://{domain}/``                            ``domain``
``keycloak``   ``{base_url}/realms/{realm}``                    ``base_url``, ``realm``
=============  ===============================================  ================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import AuthError, UsageError
from ..auth_config import OidcConfig
from ..jwt_verifier import JwtVerifier, claim_at
from .custom_jwt import keyset_for, map_claims
from . import Identity

__all__ = ["OidcProvider", "OidcIssuer", "PRESETS", "Preset", "DEFAULT_METADATA"]

DEFAULT_METADATA = {"email": "email", "email_verified": "email_verified", "name": "name",
                    "given_name": "given_name", "family_name": "family_name", "picture": "picture",
                    "locale": "locale"}


@dataclass(frozen=True)
class Preset:
    """Issuer(s) and JWKS URL templates of a common identity provider."""

    issuers: tuple[str, ...]
    jwks_url: str
    params: tuple[str, ...] = ()
    defaults: tuple[tuple[str, str], ...] = ()


PRESETS: dict[str, Preset] = {
    "google": Preset(("https://accounts.google.com", "accounts.google.com"),
                     "https://www.googleapis.com/oauth2/v3/certs"),
    "apple": Preset(("https://appleid.apple.com",), "https://appleid.apple.com/auth/keys"),
    "microsoft": Preset(("https://login.microsoftonline.com/{tenant}/v2.0",),
                        "https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys",
                        ("tenant",), (("tenant", "common"),)),
    "auth0": Preset(("https://{domain}/",), "https://{domain}/.well-known/jwks.json", ("domain",)),
    "keycloak": Preset(("{base_url}/realms/{realm}",), "{base_url}/realms/{realm}/protocol/openid-connect/certs",
                       ("base_url", "realm")),
}
_MULTI_TENANT = ("common", "organizations", "consumers")


def resolve(config: OidcConfig) -> tuple[list[str], str | None]:
    """The issuers and JWKS URL of a provider's config, presets filled in.

    Raises:
        UsageError: unknown preset, missing parameter, or no issuer/keys.
    """
    issuers, jwks_url = list(config.issuer), config.jwks_url
    if config.preset is not None:
        preset = PRESETS.get(config.preset)
        if preset is None:
            raise UsageError(f"[auth.oidc.{config.name}]: unknown preset {config.preset!r} "
                             f"(known: {', '.join(sorted(PRESETS))})")
        params = {**dict(preset.defaults), **config.params}
        missing = [p for p in preset.params if not params.get(p)]
        if missing:
            raise UsageError(f"[auth.oidc.{config.name}]: the {config.preset} preset needs {', '.join(missing)}")
        if "base_url" in params:
            params["base_url"] = params["base_url"].rstrip("/")
        if "domain" in params and "/" in params["domain"]:
            raise UsageError(f"[auth.oidc.{config.name}]: domain is a host name, like example.eu.auth0.com")
        tenant_issuers = []
        for template in preset.issuers:
            if config.preset == "microsoft" and params["tenant"] in _MULTI_TENANT:
                tenant_issuers.append(template.replace("{tenant}", "{tid}"))
            else:
                tenant_issuers.append(template.format(**params))
        issuers = issuers or tenant_issuers
        if jwks_url is None and config.jwks_file is None:
            jwks_url = preset.jwks_url.format(**params)
    if not issuers:
        raise UsageError(f"[auth.oidc.{config.name}] needs issuer (or a preset)")
    if jwks_url is None and config.jwks_file is None:
        raise UsageError(f"[auth.oidc.{config.name}] needs jwks_url or jwks_file (or a preset)")
    return issuers, jwks_url


class OidcIssuer:
    """One configured identity provider."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        issuers, jwks_url = resolve(config)
        self.issuers = issuers
        keys = keyset_for(config.jwks_file, jwks_url, None, config.jwks_cache_ttl)
        self.verifier = JwtVerifier(config.algorithms, keys=keys, audiences=config.client_id,
                                    issuers=issuers, leeway=config.leeway, require=("iat", "iss", "aud"),
                                    extra_checks=[self._check_azp])
        self.metadata = DEFAULT_METADATA if config.metadata is None else config.metadata

    def _check_azp(self, claims: dict[str, Any]) -> None:
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1:
            azp = claims.get("azp")
            if azp is not None and azp not in self.config.client_id:
                raise AuthError("the token was issued to another client (azp)", code="invalid_credentials", advice="")

    def authenticate(self, token: object, nonce: object) -> Identity:
        claims = self.verifier.verify(token)
        if nonce is not None and claims.get("nonce") != nonce:
            raise AuthError("the token's nonce does not match", code="invalid_credentials", advice="")
        verified = claims.get("email_verified")
        if self.config.require_email_verified and verified not in (True, "true"):
            raise AuthError("the identity provider has not verified this email address",
                            code="invalid_credentials", advice="")
        data = map_claims(claims, self.metadata)
        return Identity(f"oidc:{self.config.name}", str(claim_at(claims, "sub")), data)


class OidcProvider:
    """``{"provider": "oidc", "name": "google", "token": <ID token>, "nonce": optional}``."""

    name = "oidc"

    def __init__(self, configs: Mapping[str, OidcConfig]) -> None:
        self.issuers = {name: OidcIssuer(cfg) for name, cfg in configs.items()}

    def account(self, body: Mapping[str, Any]) -> str | None:
        return None

    def authenticate(self, body: Mapping[str, Any]) -> Identity:
        name = body.get("name")
        if name is None and len(self.issuers) == 1:
            name = next(iter(self.issuers))
        issuer = self.issuers.get(name) if isinstance(name, str) else None
        if issuer is None:
            raise AuthError(f"no OpenID Connect provider named {str(name)[:40]!r} is configured",
                            code="provider_disabled", advice=f"configured: {', '.join(sorted(self.issuers))}")
        return issuer.authenticate(body.get("token"), body.get("nonce"))
