"""Auth test helpers: a recording mail sender, keys and tokens made here, a JWKS served over
real HTTP on 127.0.0.1, and a throwaway CA with a server certificate for TLS tests."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tidesync.server.auth_config import AuthConfig, EmailPasswordConfig
from tidesync.server.mail import Mail
from tidesync.server.passwords import Argon2Params
from tidesync.server.ratelimit import RateLimits

HMAC_SECRET = b"s" * 40


class RecordingSender:
    """A mail sender that keeps every message (tokens included) for the test to read."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self._cond = threading.Condition()

    def send(self, mail: Mail) -> None:
        with self._cond:
            self.mails.append(mail)
            self._cond.notify_all()

    def wait(self, kind: str, to: str, timeout: float = 5.0, after: int = 0) -> Mail:
        """The first mail of ``kind`` to ``to`` among mails[after:], waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.mails[after:]:
                    if m.kind == kind and m.to == to:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind} mail to {to}; got {self.mails}")
                self._cond.wait(left)

    def settle(self, quiet: float = 0.2) -> list[Mail]:
        """All mails once none arrived for ``quiet`` seconds."""
        while True:
            n = len(self.mails)
            time.sleep(quiet)
            if len(self.mails) == n:
                return list(self.mails)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fast_email(sender: RecordingSender, **options: Any) -> EmailPasswordConfig:
    """Email/password on, with cheap argon2 parameters (still argon2id) for fast tests."""
    return EmailPasswordConfig(enabled=True, sender=sender, argon2=Argon2Params(1, 1024, 1), **options)


def auth_config(**options: Any) -> AuthConfig:
    """An AuthConfig with generous rate limits unless given."""
    options.setdefault("rate_limits", RateLimits(enabled=False))
    return AuthConfig(**options)


# -- keys and tokens ---------------------------------------------------------------------------


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    jwk["kid"] = kid
    jwk["use"] = "sig"
    if alg:
        jwk["alg"] = alg
    return jwk


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_token(key: Any, alg: str, *, kid: str | None = None, ttl: int = 300, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "user-1", "iat": now, "exp": now + ttl, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    headers = {"kid": kid} if kid else None
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def unsigned_token(**claims: Any) -> str:
    """A token with ``alg: none`` and no signature."""
    import base64

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'user-1', 'iat': now, 'exp': now + 300, **claims})}."


def hand_signed_hs256(secret: bytes, **claims: Any) -> str:
    """An HS256 token signed by hand (PyJWT refuses a PEM as HMAC key; an attacker does not)."""
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps({"sub": "user-1", "iat": now, "exp": now + 300, **claims}).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


@contextmanager
def serve_json(routes: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """Serve ``{path: json}`` over HTTP on 127.0.0.1; yield (base URL, requested paths)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            if self.path not in routes:
                self.send_error(404)
                return
            payload = json.dumps(routes[self.path]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# -- TLS -----------------------------------------------------------------------------------------


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it:
    (ca.pem, server.pem, server.key)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidesync test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec_key()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path
