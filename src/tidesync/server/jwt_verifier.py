"""Verifying third-party JWTs (custom JWT and OpenID Connect ID tokens).

The checks, in order, each failing with :class:`~tidesync.errors.AuthError` (code
``invalid_credentials``) and a message that says which one failed:

1. the token parses and its header's ``alg`` is one of the configured algorithms. ``none``
   is never accepted, whatever the configuration says;
2. algorithm confusion is impossible: ``HS*`` tokens are checked only against the configured
   shared secret, asymmetric ones only against public keys of the matching type and curve
   (see :func:`tidesync.server.jwks.key_fits`); PyJWT is called with that one algorithm;
3. the signature, with the key named by ``kid`` (or each fitting key when there is no ``kid``);
4. ``exp`` (required), ``nbf`` and ``iat`` (when present) against the clock, with ``leeway``;
5. ``aud`` contains one of the configured audiences, ``iss`` is (one of) the issuer(s), and the
   subject claim is a non-empty string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from ..errors import AuthError, UsageError
from .jwks import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, KeySet

__all__ = ["JwtVerifier", "claim_at"]

_MAX_TOKEN = 16 * 1024


def _fail(message: str) -> AuthError:
    return AuthError(message, code="invalid_credentials", advice="")


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value of a claim by dotted path (``"org.id"``), or None. A claim whose own name
    contains dots (``"https://example.com/roles"``) is found by its full name first."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass
class JwtVerifier:
    """Checks tokens of one issuer.

    Attributes:
        algorithms: accepted ``alg`` values.
        secret: the shared secret for ``HS*``; None when only public keys are used.
        keys: the issuer's public keys for asymmetric algorithms.
        audiences: accepted ``aud`` values; empty: ``aud`` is not checked.
        issuers: accepted ``iss`` values; empty: not checked. An issuer may contain ``{tid}``
            (Microsoft's multi-tenant issuer), filled in from the token's ``tid`` claim.
        leeway: seconds of clock skew tolerated for ``exp``/``nbf``/``iat``.
        subject_claim: the claim that identifies the user (``sub``).
        require: claims that must be present (``exp`` always is).
    """

    algorithms: Sequence[str]
    secret: bytes | None = None
    keys: KeySet | None = None
    audiences: Sequence[str] = ()
    issuers: Sequence[str] = ()
    leeway: float = 10.0
    subject_claim: str = "sub"
    require: Sequence[str] = ()
    extra_checks: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        algs = set(self.algorithms)
        if not algs:
            raise UsageError("configure at least one JWT algorithm")
        unknown = algs - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if unknown:
            raise UsageError(f"unsupported JWT algorithms {sorted(unknown)} (never 'none')")
        if algs & HMAC_ALGORITHMS and not self.secret:
            raise UsageError("HS256/HS384/HS512 need a secret (secret_env)")
        if algs & ASYMMETRIC_ALGORITHMS and self.keys is None:
            raise UsageError("RS*/PS*/ES*/EdDSA need public keys (jwks_file, jwks_url or public_key_file)")
        if self.secret is not None and len(self.secret) < 32 and algs & HMAC_ALGORITHMS:
            raise UsageError("an HS256 secret must have at least 32 bytes")

    def verify(self, token: object) -> dict[str, Any]:
        """The verified claims of ``token``. Blocking (may fetch keys): call from a thread.

        Raises:
            AuthError: (code ``invalid_credentials``) the token fails a check.
        """
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN:
            raise _fail("the token must be a non-empty string")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _fail("the token is not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none" or alg not in self.algorithms:
            raise _fail(f"the token's algorithm {str(alg)[:20]!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _fail("the token's key id is not a string")
        if alg in HMAC_ALGORITHMS:
            assert self.secret is not None
            keys: list[Any] = [self.secret]
        else:
            assert self.keys is not None
            keys = [k.key_for(alg) for k in self.keys.candidates(alg, kid)]
        claims = self._decode(token, alg, keys)
        self._check_issuer(claims)
        sub = claim_at(claims, self.subject_claim)
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise _fail(f"the token's {self.subject_claim!r} claim must be a non-empty string")
        for check in self.extra_checks:
            check(claims)
        return claims

    def _decode(self, token: str, alg: str, keys: list[Any]) -> dict[str, Any]:
        options: dict[str, Any] = {"require": ["exp", *self.require], "verify_aud": bool(self.audiences),
                                   "verify_iss": False}
        last: Exception | None = None
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key, algorithms=[alg], audience=list(self.audiences) or None,
                    leeway=self.leeway, options=options)  # type: ignore[arg-type]
                return claims
            except jwt.InvalidSignatureError as exc:
                last = exc
                continue
            except jwt.ExpiredSignatureError:
                raise _fail("the token expired") from None
            except jwt.ImmatureSignatureError:
                raise _fail("the token is not valid yet (nbf/iat in the future)") from None
            except jwt.InvalidAudienceError:
                raise _fail("the token is meant for another audience") from None
            except jwt.MissingRequiredClaimError as exc:
                raise _fail(f"the token lacks the {exc.claim!r} claim") from None
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                raise _fail(f"invalid token: {exc}") from None
        raise _fail("the token's signature does not verify") from last

    def _check_issuer(self, claims: dict[str, Any]) -> None:
        if not self.issuers:
            return
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise _fail("the token lacks the 'iss' claim")
        tid = claims.get("tid")
        for expected in self.issuers:
            if "{tid}" in expected:
                if isinstance(tid, str) and tid and expected.replace("{tid}", tid) == iss:
                    return
            elif expected == iss:
                return
        raise _fail("the token comes from another issuer")
