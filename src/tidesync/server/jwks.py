"""Public keys for verifying JWTs: a JWKS file, a JWKS URL, or a PEM file.

A :class:`KeySet` answers one question: which keys may have signed a token whose header says
``alg`` (and maybe ``kid``)? It never mixes key kinds: an RSA key serves only ``RS*``/``PS*``,
an EC key only the ``ES*`` of its curve, and a key set never serves ``HS*`` (a symmetric
secret is configured apart, see :mod:`tidesync.server.jwt_verifier`). A JWK that names its own
``alg`` serves only that one; a JWK whose ``use`` is not ``sig`` serves none.

A JWKS URL is fetched with the standard library (``urllib``), over HTTPS (plain HTTP only for
a loopback host, for tests and local identity providers), and cached for ``cache_ttl``
seconds. A token signed with a ``kid`` the cache does not know (the provider rotated its
keys) refetches at once, but at most once per ``min_refetch`` seconds, so forged ``kid``
values cannot make the server hammer the provider. If a refetch fails, the cached keys keep
serving. A JWKS file is re-read when its modification time changes.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..errors import AuthError, UsageError

__all__ = ["KeySet", "VerificationKey", "key_fits", "ASYMMETRIC_ALGORITHMS", "HMAC_ALGORITHMS"]

log = logging.getLogger("tidesync.server.jwks")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
ASYMMETRIC_ALGORITHMS = _RSA | frozenset(_EC_CURVES) | {"EdDSA"}
_MAX_JWKS_BYTES = 512 * 1024


@dataclass(frozen=True)
class VerificationKey:
    """One public key: its id, the JWK (or None for a PEM key) and the key object."""

    kid: str | None
    jwk: dict[str, Any] | None
    pem_key: Any = None

    def key_for(self, alg: str) -> Any:
        """The key object to verify ``alg`` with (``alg`` already checked by :func:`key_fits`)."""
        if self.jwk is not None:
            return jwt.PyJWK(self.jwk, algorithm=alg).key
        return self.pem_key


def key_fits(key: VerificationKey, alg: str) -> bool:
    """True if ``key`` may verify a signature made with ``alg``."""
    if alg not in ASYMMETRIC_ALGORITHMS:
        return False
    if key.jwk is None:
        k = key.pem_key
        if isinstance(k, rsa.RSAPublicKey):
            return alg in _RSA
        if isinstance(k, ec.EllipticCurvePublicKey):
            return _EC_CURVES.get(alg) == {"secp256r1": "P-256", "secp384r1": "P-384",
                                           "secp521r1": "P-521"}.get(k.curve.name)
        if isinstance(k, ed25519.Ed25519PublicKey):
            return alg == "EdDSA"
        return False
    jwk = key.jwk
    if jwk.get("use", "sig") != "sig":
        return False
    if "alg" in jwk and jwk["alg"] != alg:
        return False
    kty = jwk.get("kty")
    if kty == "RSA":
        return alg in _RSA
    if kty == "EC":
        return _EC_CURVES.get(alg) == jwk.get("crv")
    if kty == "OKP":
        return alg == "EdDSA" and jwk.get("crv") == "Ed25519"
    return False  # "oct" (a shared secret) never comes from a key set


def _parse_jwks(data: Any, source: str) -> list[VerificationKey]:
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise UsageError(f"{source} is not a JWKS (an object with a 'keys' list)")
    keys: list[VerificationKey] = []
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # private-use or symmetric entries are ignored, never trusted
        if any(k in jwk for k in ("d", "p", "q")):
            log.warning("%s holds a private key; it is used as a public key only", source)
            jwk = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        try:
            jwt.PyJWK(jwk)  # a well-formed key?
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("ignoring a malformed key in %s: %s", source, exc)
            continue
        kid = jwk.get("kid")
        keys.append(VerificationKey(str(kid) if kid is not None else None, dict(jwk)))
    return keys


def _loopback(host: str | None) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


class KeySet:
    """The public keys of one token issuer.

    Args:
        jwks_file: a JSON Web Key Set file.
        jwks_url: a JWKS URL (``https://``; ``http://`` only on a loopback host).
        pem_file: one PEM public key (RSA, EC or Ed25519).
        cache_ttl: seconds a fetched JWKS is used before it is fetched again.
        min_refetch: least seconds between two fetches triggered by unknown ``kid`` values.
        timeout: seconds for one fetch.
        ca_file: a CA bundle for the JWKS URL's certificate (default: the system's).
        clock: monotonic seconds (tests inject one).
    """

    def __init__(self, *, jwks_file: str | Path | None = None, jwks_url: str | None = None,
                 pem_file: str | Path | None = None, cache_ttl: float = 3600, min_refetch: float = 60,
                 timeout: float = 5, ca_file: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if sum(x is not None for x in (jwks_file, jwks_url, pem_file)) != 1:
            raise UsageError("give exactly one of jwks_file, jwks_url and public_key_file")
        self.jwks_file = Path(jwks_file) if jwks_file is not None else None
        self.jwks_url = jwks_url
        self.cache_ttl, self.min_refetch, self.timeout = cache_ttl, min_refetch, timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[VerificationKey] = []
        self._fetched_at: float | None = None
        self._file_mtime: float | None = None
        self._ssl = ssl.create_default_context(cafile=ca_file)
        if jwks_url is not None:
            parts = urllib.parse.urlsplit(jwks_url)
            if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(parts.hostname)):
                raise UsageError(f"a JWKS URL must be https:// (http:// only on a loopback host): {jwks_url}")
        if pem_file is not None:
            try:
                key = load_pem_public_key(Path(pem_file).read_bytes())
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read the public key {pem_file}: {exc}") from exc
            self._keys = [VerificationKey(None, None, key)]
        if self.jwks_file is not None:
            self._load_file()

    # -- sources -------------------------------------------------------------------------------

    def _load_file(self) -> None:
        assert self.jwks_file is not None
        try:
            mtime = self.jwks_file.stat().st_mtime
            if mtime == self._file_mtime:
                return
            data = json.loads(self.jwks_file.read_text())
        except (OSError, ValueError) as exc:
            if self._file_mtime is None:
                raise UsageError(f"cannot read the JWKS file {self.jwks_file}: {exc}") from exc
            log.warning("cannot re-read the JWKS file %s (keeping the keys read before): %s", self.jwks_file, exc)
            return
        self._keys = _parse_jwks(data, str(self.jwks_file))
        self._file_mtime = mtime

    def _fetch(self) -> None:
        assert self.jwks_url is not None
        self._fetched_at = self._clock()
        req = urllib.request.Request(self.jwks_url, headers={"Accept": "application/json",
                                                             "User-Agent": "tidesync"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                raw = resp.read(_MAX_JWKS_BYTES + 1)
            if len(raw) > _MAX_JWKS_BYTES:
                raise ValueError("the JWKS is too large")
            self._keys = _parse_jwks(json.loads(raw), self.jwks_url)
        except (OSError, ValueError, UsageError) as exc:
            log.warning("cannot fetch the JWKS %s (keeping %d cached keys): %s", self.jwks_url, len(self._keys), exc)

    def refresh(self) -> None:
        """Fetch (or re-read) the keys now."""
        with self._lock:
            if self.jwks_url is not None:
                self._fetch()
            elif self.jwks_file is not None:
                self._load_file()

    # -- lookup --------------------------------------------------------------------------------

    def candidates(self, alg: str, kid: str | None) -> list[VerificationKey]:
        """The keys that may verify a token signed with ``alg`` (and ``kid``, if it names one).

        Blocking: may fetch the JWKS URL. Call from a worker thread.

        Raises:
            AuthError: (``invalid_credentials``) no key of this issuer fits.
        """
        with self._lock:
            if self.jwks_url is not None:
                now = self._clock()
                if self._fetched_at is None or now - self._fetched_at >= self.cache_ttl:
                    self._fetch()
                elif kid is not None and not any(k.kid == kid for k in self._keys) \
                        and now - self._fetched_at >= self.min_refetch:
                    self._fetch()  # the issuer may have rotated its keys
            elif self.jwks_file is not None:
                self._load_file()
            keys = list(self._keys)
        if kid is not None:
            keys = [k for k in keys if k.kid == kid or (k.kid is None and k.jwk is None)]
        fitting = [k for k in keys if key_fits(k, alg)]
        if not fitting:
            raise AuthError(f"no key of this issuer verifies {alg} tokens"
                            + (f" with key id {kid[:64]!r}" if kid is not None else ""),
                            code="invalid_credentials", advice="")
        return fitting
