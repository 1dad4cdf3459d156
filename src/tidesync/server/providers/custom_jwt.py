"""Custom JWT login: a token from the app's own auth system.

``tidesync.Credentials.jwt(token)``. The token is checked by a
:class:`~tidesync.server.jwt_verifier.JwtVerifier` (signature with the configured HS256 secret
or public keys, ``exp``, ``nbf``, ``iat``, ``aud``, ``iss``; ``alg: none`` and algorithm
confusion refused). Its subject claim (``sub``) is the identity (``custom_jwt``, sub); the
claims named by ``[auth.custom_jwt.metadata]`` are copied into the user's profile at each
login (``user.profile``), e.g. ``{"email": "email", "org": "org.id"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ...errors import AuthError
from ..auth_config import CustomJwtConfig
from ..jwks import KeySet
from ..jwt_verifier import JwtVerifier, claim_at
from . import Identity

__all__ = ["CustomJwtProvider", "map_claims"]

_MAX_VALUE_BYTES = 4096


def map_claims(claims: dict[str, Any], mapping: Mapping[str, str], required: list[str] | None = None) -> dict[str, Any]:
    """Profile fields from claims: ``{field: claim_at(claims, path)}`` for present claims.

    Raises:
        AuthError: a required field's claim is missing, or a value is too large.
    """
    out: dict[str, Any] = {}
    for name, path in mapping.items():
        value = claim_at(claims, path)
        if value is None:
            continue
        if len(json.dumps(value, default=str)) > _MAX_VALUE_BYTES:
            raise AuthError(f"the token's claim {path!r} is too large", code="invalid_credentials", advice="")
        out[name] = value
    for name in required or ():
        if name not in out:
            raise AuthError(f"the token lacks the claim for the required field {name!r}",
                            code="invalid_credentials", advice="")
    return out


def keyset_for(jwks_file: str | None, jwks_url: str | None, pem_file: str | None, cache_ttl: float) -> KeySet | None:
    if jwks_file is None and jwks_url is None and pem_file is None:
        return None
    return KeySet(jwks_file=jwks_file, jwks_url=jwks_url, pem_file=pem_file, cache_ttl=cache_ttl)


class CustomJwtProvider:
    """``{"provider": "jwt", "token": ...}``."""

    name = "jwt"

    def __init__(self, config: CustomJwtConfig) -> None:
        self.config = config
        self.verifier = JwtVerifier(
            config.default_algorithms(), secret=config.secret,
            keys=keyset_for(config.jwks_file, config.jwks_url, config.public_key_file, config.jwks_cache_ttl),
            audiences=config.audience, issuers=config.issuer, leeway=config.leeway,
            subject_claim=config.subject_claim)

    def account(self, body: Mapping[str, Any]) -> str | None:
        return None

    def authenticate(self, body: Mapping[str, Any]) -> Identity:
        claims = self.verifier.verify(body.get("token"))
        data = map_claims(claims, self.config.metadata, self.config.required_metadata)
        return Identity("custom_jwt", str(claim_at(claims, self.config.subject_claim)), data)
