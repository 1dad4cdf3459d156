"""The client's HTTP calls to the server: JSON in, JSON out, typed errors (standard library only).

Errors, from the server's JSON ``{"error", "code"}``:

* 401/403 -> :class:`~tidesync.errors.AuthError` with the server's code;
* 429 -> :class:`~tidesync.errors.RateLimitedError` with ``retry_after`` from ``Retry-After``;
* other 4xx -> :class:`~tidesync.errors.UsageError` with the server's code;
* 5xx -> :class:`~tidesync.errors.SyncError` (action retry);
* a certificate that does not verify -> :class:`~tidesync.errors.CertificateError`;
* no answer -> :class:`~tidesync.errors.ConnectionClosedError` (local work goes on).
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from ..errors import (
    AuthError, CertificateError, ConnectionClosedError, RateLimitedError, SyncError, UsageError,
)

__all__ = ["request_json", "certificate_error", "is_certificate_failure"]


def certificate_error(url: str, exc: BaseException) -> CertificateError:
    """The error for a TLS handshake with ``url`` that failed on the certificate."""
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    return CertificateError(f"the TLS certificate of {url} could not be verified: {reason}")


def is_certificate_failure(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError) or (
        isinstance(exc, ssl.SSLError) and "CERTIFICATE" in str(exc).upper())


def request_json(method: str, url: str, *, body: dict[str, Any] | None = None, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """Make one request and return the JSON object it answered.

    Raises:
        AuthError, RateLimitedError, UsageError, SyncError, CertificateError,
        ConnectionClosedError: see the module doc.
    """
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ssl_context) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, BaseException) and is_certificate_failure(exc.reason):
            raise certificate_error(url, exc.reason) from None
        raise ConnectionClosedError(f"cannot reach {url}: {exc.reason}",
                                    advice="check the server is running; local work goes on") from exc
    except ssl.SSLError as exc:
        if is_certificate_failure(exc):
            raise certificate_error(url, exc) from None
        raise ConnectionClosedError(f"TLS failed with {url}: {exc}") from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:  # e.g. IncompleteRead: cut mid-body
        raise ConnectionClosedError(f"cannot reach {url}: {exc}",
                                    advice="check the server is running; local work goes on") from exc
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        raise SyncError(f"the server's answer to {method} {url} is not JSON") from None
    if not isinstance(answer, dict):
        raise SyncError(f"the server's answer to {method} {url} is not a JSON object")
    return answer


def _http_error(exc: urllib.error.HTTPError) -> Exception:
    try:
        err = json.loads(exc.read())
        if not isinstance(err, dict):
            raise ValueError
    except (ValueError, OSError):
        err = {"error": str(exc.reason), "code": "http_error"}
    code = str(err.get("code", "http_error"))
    message = str(err.get("error", exc.reason))
    if exc.code == 429:
        try:
            retry = float(exc.headers.get("Retry-After", "1"))
        except ValueError:
            retry = 1.0
        return RateLimitedError(message, retry_after=retry, code=code, advice="")
    if exc.code in (401, 403):
        relogin = code in ("invalid_token", "expired_token", "invalid_refresh_token")
        return AuthError(message, code=code, advice="log in again" if relogin else "")
    if exc.code >= 500:
        return SyncError(f"server error {exc.code}: {message}", code=code, action="retry")
    return UsageError(f"server said {exc.code}: {message}", code=code)
