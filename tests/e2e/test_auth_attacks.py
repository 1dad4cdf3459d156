"""Attacks on auth, each shown to fail over real HTTP and WebSocket, with nothing leaked
(the answer is a JSON error with a stable code, no secret in it) and nothing changed (no user,
identity, account or document appears)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import jwt
import pytest

import tidesync
from tests.helpers.auth import (
    HMAC_SECRET, FakeClock, RecordingSender, auth_config, fast_email, hand_signed_hs256, make_token, public_jwk, public_pem, rsa_key,
    unsigned_token,
)
from tests.helpers.servers import running_server
from tests.models import Technician
from tidesync.cli.main import main as cli
from tidesync.server.auth_config import CustomJwtConfig, OidcConfig
from tidesync.server.ratelimit import RateLimit, RateLimits

pytestmark = pytest.mark.slow
T = 20
PASSWORD = "correct horse 1"


def raw(server: Any, method: str, path: str, body: Any = None, token: str | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One HTTP request, no client library in between: (status, headers, JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{server.url}{path}", data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read())


def state_of(server: Any) -> Any:
    return server.app.state.tidesync


def auth_rows(server: Any) -> dict[str, int]:
    """How many rows each auth table holds: 'nothing changed' is these counts staying put."""
    db = state_of(server).users.db
    tables = [str(r[0]) for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: int(db.query(f"SELECT count(*) FROM {t}")[0][0]) for t in tables}


def assert_refused(status: int, body: dict[str, Any], code: str, *secrets: str) -> None:
    assert (status, body["code"]) in ((401, code), (403, code), (400, code)), (status, body)
    assert set(body) == {"error", "code"}
    for s in secrets:
        assert s not in body["error"]


def sync_is_refused(tmp_path: Any, user: tidesync.User, name: str) -> tidesync.SyncError:
    """Open a synced database as ``user``: the server must refuse its Hello, the session stop,
    and the write made meanwhile stay on the device."""
    errors: list[tidesync.SyncError] = []
    db = tidesync.open(tmp_path / f"{name}.db", schema=[Technician],
                       sync=tidesync.SyncConfig(user=user, partition="p", error_handler=lambda s, e: errors.append(e)))
    try:
        with db.write():
            db.create(Technician, _id=f"from-{name}", name="must not reach the server")
        deadline = time.monotonic() + T
        # The session stops (state) while handling the refusal, then closes its socket
        # (connection_state): two moments, so wait for both.
        while (db.sync_session.state != "inactive" or db.sync_session.connection_state != "disconnected") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.sync_session.state == "inactive"
        assert db.sync_session.connection_state == "disconnected"
        err = db.sync_session.last_error
        assert isinstance(err, tidesync.AuthError)
        return err
    finally:
        db.close()


def forged_user(app: tidesync.App, access_token: str, user_id: str = "0" * 24) -> tidesync.User:
    return tidesync.User(app, user_id, "anonymous", access_token, "not-a-refresh-token")


@pytest.fixture
def jwt_server(tmp_path):
    rsa_k = rsa_key()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(rsa_k, "k1")]}))
    cfg = auth_config(custom_jwt=CustomJwtConfig(enabled=True, jwks_file=str(jwks), algorithms=["RS256", "HS256"],
                                                 secret=HMAC_SECRET, audience=["my-app"],
                                                 issuer=["https://auth.example.com"]),
                      oidc={"google": OidcConfig("google", preset="google", client_id=["web"], jwks_file=str(jwks))})
    with running_server(tmp_path / "s", auth=cfg) as server:
        yield server, rsa_k


def test_third_party_tokens_forged_unsigned_confused_expired_or_misdirected_are_refused(jwt_server, tmp_path):
    server, key = jwt_server
    good = {"kid": "k1", "aud": "my-app", "iss": "https://auth.example.com"}
    app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u")
    assert app.log_in(tidesync.Credentials.jwt(make_token(key, "RS256", **good))).id   # the real thing works
    before = auth_rows(server)
    attacks = {
        "forged signature (another RSA key, same kid)": make_token(rsa_key(), "RS256", **good),
        "forged HS256 (another secret)": make_token(b"x" * 40, "HS256", aud="my-app", iss="https://auth.example.com"),
        "tampered claims": (lambda t: t.split(".")[0] + "." + jwt.utils.base64url_encode(json.dumps(
            {"sub": "admin", "aud": "my-app", "iss": "https://auth.example.com", "exp": 2**40}).encode()).decode()
            + "." + t.split(".")[2])(make_token(key, "RS256", **good)),
        "alg none": unsigned_token(aud="my-app", iss="https://auth.example.com"),
        "algorithm confusion (HS256 keyed with the RSA public key)": hand_signed_hs256(
            public_pem(key), aud="my-app", iss="https://auth.example.com"),
        "expired": make_token(key, "RS256", ttl=-3600, **good),
        "not yet valid": make_token(key, "RS256", nbf=int(time.time()) + 3600, **good),
        "issued in the future": make_token(key, "RS256", iat=int(time.time()) + 3600, **good),
        "no expiry": make_token(key, "RS256", exp=None, **good),
        "wrong audience": make_token(key, "RS256", kid="k1", aud="other-app", iss="https://auth.example.com"),
        "no audience": make_token(key, "RS256", kid="k1", iss="https://auth.example.com"),
        "wrong issuer": make_token(key, "RS256", kid="k1", aud="my-app", iss="https://evil.example.com"),
        "unknown kid": make_token(key, "RS256", kid="nope", aud="my-app", iss="https://auth.example.com"),
        "not a JWT": "not.a.jwt",
    }
    for what, token in attacks.items():
        status, _, body = raw(server, "POST", "/api/default/auth/login", {"provider": "jwt", "token": token})
        assert (status, body["code"]) == (401, "invalid_credentials"), (what, body)
        assert set(body) == {"error", "code"}
        assert "BEGIN PUBLIC KEY" not in body["error"] and HMAC_SECRET.decode() not in body["error"]
    # The same through OpenID Connect (Google preset): audience and issuer are Google's.
    for what, token in {
        "google token for another client": make_token(key, "RS256", kid="k1", aud="not-web",
                                                      iss="https://accounts.google.com"),
        "google audience, other issuer": make_token(key, "RS256", kid="k1", aud="web", iss="https://evil.example.com"),
        "google alg none": unsigned_token(aud="web", iss="https://accounts.google.com"),
        "google expired": make_token(key, "RS256", kid="k1", aud="web", iss="https://accounts.google.com", ttl=-60),
    }.items():
        status, _, body = raw(server, "POST", "/api/default/auth/login",
                              {"provider": "oidc", "name": "google", "token": token})
        assert (status, body["code"]) == (401, "invalid_credentials"), (what, body)
    assert auth_rows(server) == before


def test_forged_unsigned_and_expired_access_tokens_are_refused_by_http_and_sync(tmp_path):
    with running_server(tmp_path / "s", access_token_ttl=1) as server:
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u")
        real = app.log_in(tidesync.Credentials.anonymous())
        claims = {**jwt.decode(real.access_token, options={"verify_signature": False}),
                  "exp": int(time.time()) + 3600}
        secret = state_of(server).config.secret
        forged = {
            "wrong key": jwt.encode(claims, b"k" * 32, algorithm="HS256"),
            "alg none": jwt.encode(claims, None, algorithm="none"),
            "another app's audience": jwt.encode({**claims, "aud": "other"}, secret, "HS256"),
            "not an access token": jwt.encode({**claims, "typ": "refresh"}, secret, "HS256"),
        }
        time.sleep(1.5)
        expired = real.access_token
        for what, token in {**forged, "expired": expired}.items():
            status, _, body = raw(server, "GET", "/api/default/auth/profile", token=token)
            assert_refused(status, body, "expired_token" if what == "expired" else "invalid_token")
            status, _, body = raw(server, "GET", "/api/default/sync/head", token=token)
            assert status == 401
        for what, token in forged.items():
            err = sync_is_refused(tmp_path, forged_user(app, token, real.id), what.replace(" ", "-").replace("'", ""))
            assert err.code == "auth_failed"
        assert state_of(server).backend.get_raw("Technician", "from-wrong-key") is None


def test_tokens_of_deleted_and_disabled_users_are_refused_everywhere(tmp_path):
    with running_server(tmp_path / "s") as server:
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u")
        doomed = app.log_in(tidesync.Credentials.anonymous())
        access, refresh = doomed.access_token, doomed.refresh_token
        app.delete_user(doomed)
        assert doomed not in app.all_users
        status, _, body = raw(server, "GET", "/api/default/auth/profile", token=access)
        assert_refused(status, body, "invalid_token")
        status, _, body = raw(server, "POST", "/api/default/auth/refresh", {"refresh_token": refresh})
        assert_refused(status, body, "invalid_refresh_token")
        assert sync_is_refused(tmp_path, tidesync.User(app, doomed.id, "anonymous", access, refresh),
                               "deleted").code == "auth_failed"

        app2 = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u2")
        banned = app2.log_in(tidesync.Credentials.anonymous())
        assert cli(["users", "disable", banned.id, "--data", str(server.config.data_dir)]) == 0
        status, _, body = raw(server, "GET", "/api/default/auth/profile", token=banned.access_token)
        assert_refused(status, body, "invalid_token")
        with pytest.raises(tidesync.AuthError):
            banned.refresh_access_token()
        assert sync_is_refused(tmp_path, banned, "disabled").code == "auth_failed"
        assert cli(["users", "enable", banned.id, "--data", str(server.config.data_dir)]) == 0
        with pytest.raises(tidesync.AuthError):   # enabling does not bring back revoked sessions
            banned.refresh_access_token()
        assert state_of(server).backend.get_raw("Technician", "from-deleted") is None
        assert state_of(server).backend.get_raw("Technician", "from-disabled") is None


def test_a_refresh_token_is_dead_after_log_out_and_so_are_its_access_tokens(tmp_path):
    with running_server(tmp_path / "s") as server:
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u")
        user = app.log_in(tidesync.Credentials.anonymous())
        other = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u2").log_in(
            tidesync.Credentials.anonymous())
        access, refresh = user.access_token, user.refresh_token
        user.log_out()
        assert app.current_user is None and app.all_users == []
        status, _, body = raw(server, "POST", "/api/default/auth/refresh", {"refresh_token": refresh})
        assert_refused(status, body, "invalid_refresh_token", refresh)
        status, _, body = raw(server, "GET", "/api/default/auth/profile", token=access)
        assert_refused(status, body, "invalid_token", access)
        assert sync_is_refused(tmp_path, tidesync.User(app, user.id, "anonymous", access, refresh),
                               "logged-out").code == "auth_failed"
        assert other.refresh_profile() == {}     # other sessions are untouched


def test_brute_force_login_is_throttled_per_account_and_per_address(tmp_path):
    sender, clock = RecordingSender(), FakeClock()
    limits = RateLimits(login_per_account=RateLimit(3, 60), login_per_address=RateLimit(8, 60),
                        email_per_account=RateLimit(3, 3600), email_per_address=RateLimit(100, 3600), clock=clock)
    cfg = auth_config(email_password=fast_email(sender, auto_confirm=True), rate_limits=limits)
    with running_server(tmp_path / "s", auth=cfg) as server:
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u")
        app.email_password_auth.register_user("victim@example.com", PASSWORD)
        for guess in ("password1", "letmein12", "qwerty123"):
            with pytest.raises(tidesync.AuthError):
                app.log_in(tidesync.Credentials.email_password("victim@example.com", guess))
        # The account is locked for the window, even for the right password...
        with pytest.raises(tidesync.RateLimitedError) as err:
            app.log_in(tidesync.Credentials.email_password("VICTIM@example.com", PASSWORD))
        assert err.value.retry_after == 60
        status, headers, body = raw(server, "POST", "/api/default/auth/login",
                                    {"provider": "email_password", "email": "victim@example.com", "password": "x"})
        assert status == 429 and body["code"] == "rate_limited" and headers["retry-after"] == "60"
        # ...while another account from the same address still gets in.
        app.email_password_auth.register_user("other@example.com", PASSWORD)
        assert app.log_in(tidesync.Credentials.email_password("other@example.com", PASSWORD))
        # Spraying many accounts from one address hits the per-address limit.
        with pytest.raises(tidesync.RateLimitedError):
            for i in range(10):
                try:
                    app.log_in(tidesync.Credentials.email_password(f"user{i}@example.com", "guess1234"))
                except tidesync.AuthError:
                    pass
        clock.advance(61)
        assert app.log_in(tidesync.Credentials.email_password("victim@example.com", PASSWORD)).id
        # Password-reset requests are limited too (per address and per account).
        app.email_password_auth.send_reset_password_email("victim@example.com")
        app.email_password_auth.send_reset_password_email("victim@example.com")
        with pytest.raises(tidesync.RateLimitedError):
            app.email_password_auth.send_reset_password_email("victim@example.com")
        assert len([m for m in sender.settle() if m.kind == "reset"]) == 2


def test_injection_through_email_fields_changes_nothing(tmp_path):
    sender = RecordingSender()
    cfg = auth_config(email_password=fast_email(sender))
    with running_server(tmp_path / "s", auth=cfg) as server:
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "u")
        app.email_password_auth.register_user("alice@example.com", PASSWORD)
        app.email_password_auth.confirm_user(sender.wait("confirm", "alice@example.com").token)
        sender.settle()
        before = auth_rows(server)
        sent = len(sender.mails)
        hostile: list[Any] = [
            "alice@example.com\r\nBcc: attacker@evil.example",
            "attacker@evil.example\nalice@example.com",
            "alice@example.com, attacker@evil.example",
            "Alice <attacker@evil.example>",
            "alice@example.com\x00attacker@evil.example",
            "\"alice@example.com\"@evil.example",
            {"$ne": None}, ["alice@example.com"], 1, None,
        ]
        for email in hostile:
            for path, body in [("email/register", {"email": email, "password": PASSWORD}),
                               ("email/reset/send", {"email": email}),
                               ("email/confirm/resend", {"email": email}),
                               ("login", {"provider": "email_password", "email": email, "password": PASSWORD})]:
                status, _, answer = raw(server, "POST", f"/api/default/auth/{path}", body)
                assert (status, answer["code"]) == (400, "invalid_email"), (email, path, answer)
                assert "$2" not in answer["error"] and "argon2" not in answer["error"]
        # Quotes and SQL in a well-formed address are just characters of another account.
        sqlish = "alice'--@example.com"
        app.email_password_auth.register_user(sqlish, "another pass 99")
        for password in (PASSWORD, "' OR '1'='1"):
            with pytest.raises(tidesync.AuthError):
                app.log_in(tidesync.Credentials.email_password(sqlish, password))
        with pytest.raises(tidesync.AuthError):
            app.log_in(tidesync.Credentials.email_password("alice@example.com", "' OR '1'='1"))
        assert app.log_in(tidesync.Credentials.email_password("alice@example.com", PASSWORD)).id
        mails = sender.settle()
        assert [m.to for m in mails[sent:]] == [sqlish]
        after = auth_rows(server)
        assert after["email_accounts"] == before["email_accounts"] + 1
        rows = state_of(server).users.db.query("SELECT email FROM email_accounts ORDER BY email")
        assert [r[0] for r in rows] == ["alice'--@example.com", "alice@example.com"]
