"""The [auth] part of tidesync.toml: every field read, typos and bad values refused."""

from __future__ import annotations

import pytest

import tidesync
from tidesync.server import load_config
from tidesync.server.ratelimit import RateLimit

FULL = """
[app]
id = "field-service"

[auth]
access_token_ttl = 600
refresh_token_ttl = 86400
session_recheck_interval = 2

[auth.anonymous]
enabled = false

[auth.email_password]
auto_confirm = false
confirmation_ttl = 7200
reset_ttl = 900
confirm_url = "https://app.example.com/confirm?token={token}"
reset_url = "https://app.example.com/reset?token={token}"
sender = "smtp"
[auth.email_password.smtp]
host = "smtp.example.com"
port = 465
sender = "no-reply@example.com"
username = "mailer"
password_env = "SMTP_PASSWORD"
security = "tls"
[auth.email_password.password_policy]
min_length = 12
require_digit = true
require_mixed_case = true
[auth.email_password.argon2]
time_cost = 2
memory_cost = 19456
parallelism = 1

[auth.api_keys]
user_keys = false
max_per_user = 5

[auth.custom_jwt]
algorithms = ["HS256"]
secret_env = "MY_JWT_SECRET"
audience = "field-service"
issuer = "https://auth.example.com"
leeway = 5
[auth.custom_jwt.metadata]
email = "email"
org = "org.id"

[auth.oidc.google]
preset = "google"
client_id = ["web.apps.googleusercontent.com", "ios.apps.googleusercontent.com"]

[auth.oidc.staff]
preset = "keycloak"
base_url = "https://sso.example.com"
realm = "staff"
client_id = "tidesync"
require_email_verified = true

[auth.rate_limits]
login_per_account = { limit = 5, window = 600 }
login_per_address = { limit = 50, window = 60 }

[auth.custom_data]
collection = "UserData"
user_id_field = "owner"
"""


def test_every_auth_field_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JWT_SECRET", "x" * 40)
    path = tmp_path / "tidesync.toml"
    path.write_text(FULL)
    cfg = load_config(path)
    a = cfg.auth
    assert (cfg.access_token_ttl, cfg.refresh_token_ttl, cfg.anonymous) == (600, 86400, False)
    assert a.session_recheck_interval == 2
    ep = a.email_password
    assert ep.enabled and not ep.auto_confirm and (ep.confirmation_ttl, ep.reset_ttl) == (7200, 900)
    assert ep.sender == "smtp" and ep.smtp is not None and ep.smtp.port == 465 and ep.smtp.security == "tls"
    assert ep.password_policy.min_length == 12 and ep.password_policy.require_digit
    assert ep.argon2.memory_cost == 19456
    assert a.api_keys.enabled and not a.api_keys.user_keys and a.api_keys.max_per_user == 5
    jw = a.custom_jwt
    assert jw.enabled and jw.secret == b"x" * 40 and jw.audience == ["field-service"]
    assert jw.metadata == {"email": "email", "org": "org.id"} and jw.leeway == 5
    assert set(a.oidc) == {"google", "staff"}
    assert a.oidc["staff"].params == {"base_url": "https://sso.example.com", "realm": "staff"}
    assert a.oidc["google"].client_id[1] == "ios.apps.googleusercontent.com"
    assert a.rate_limits.login_per_account == RateLimit(5, 600)
    assert a.custom_data is not None and a.custom_data.user_id_field == "owner"


def test_the_oidc_presets_resolve_to_issuer_and_jwks(tmp_path, monkeypatch):
    from tidesync.server.providers.oidc import resolve

    monkeypatch.setenv("MY_JWT_SECRET", "x" * 40)
    path = tmp_path / "tidesync.toml"
    path.write_text(FULL)
    cfg = load_config(path).auth.oidc
    assert resolve(cfg["google"]) == (["https://accounts.google.com", "accounts.google.com"],
                                      "https://www.googleapis.com/oauth2/v3/certs")
    assert resolve(cfg["staff"]) == (["https://sso.example.com/realms/staff"],
                                     "https://sso.example.com/realms/staff/protocol/openid-connect/certs")
    from tidesync.server.auth_config import OidcConfig

    ms = resolve(OidcConfig("ms", preset="microsoft", client_id=["x"]))
    assert ms == (["https://login.microsoftonline.com/{tid}/v2.0"],
                  "https://login.microsoftonline.com/common/discovery/v2.0/keys")
    ms1 = resolve(OidcConfig("ms", preset="microsoft", client_id=["x"], params={"tenant": "contoso.onmicrosoft.com"}))
    assert ms1[0] == ["https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0"]
    assert resolve(OidcConfig("a", preset="auth0", client_id=["x"], params={"domain": "me.eu.auth0.com"})) == (
        ["https://me.eu.auth0.com/"], "https://me.eu.auth0.com/.well-known/jwks.json")
    assert resolve(OidcConfig("ap", preset="apple", client_id=["x"]))[1] == "https://appleid.apple.com/auth/keys"
    with pytest.raises(tidesync.UsageError, match="realm"):
        resolve(OidcConfig("k", preset="keycloak", client_id=["x"], params={"base_url": "https://x"}))


@pytest.mark.parametrize("toml, match", [
    ("[auth.email_password]\nauto_confrim = true\n", "auto_confrim"),
    ("[auth]\ntypo = 1\n", "typo"),
    ("[auth.email_password]\nconfirmation_ttl = \"1d\"\n", "confirmation_ttl must be a int"),
    ("[auth.email_password]\nconfirm_url = \"https://x/confirm\"\n", "token"),
    ("[auth.custom_jwt]\nsecret_env = \"UNSET_VARIABLE_XYZ\"\n", "not set"),
    ("[auth.oidc.google]\npreset = \"google\"\n", "client_id"),
    ("[auth.rate_limits]\nlogin_per_account = { limit = 0, window = 5 }\n", "limit"),
    ("[auth.custom_data]\ncollection = \"U\"\nuser_id_field = \"a.b\"\n", "plain field"),
])
def test_mistakes_are_refused_with_the_field_named(tmp_path, toml, match):
    path = tmp_path / "tidesync.toml"
    path.write_text(toml)
    with pytest.raises(tidesync.UsageError, match=match):
        load_config(path)


def test_development_mode_keeps_anonymous_only(tmp_path):
    cfg = load_config(None, data_dir=str(tmp_path))
    assert cfg.development_mode and cfg.anonymous
    assert not cfg.auth.email_password.enabled and not cfg.auth.api_keys.enabled
    assert not cfg.auth.custom_jwt.enabled and not cfg.auth.oidc
