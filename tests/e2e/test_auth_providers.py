"""Every login provider end to end: a real server on 127.0.0.1, the real client, real HTTP and
WebSocket; keys, tokens and JWKS made by the tests."""

from __future__ import annotations

import json
import logging

import pytest

import tidesync
from tests.helpers.auth import (
    HMAC_SECRET, RecordingSender, auth_config, ec_key, fast_email, make_token, public_jwk, public_pem, rsa_key,
    serve_json,
)
from tests.helpers.servers import running_server
from tests.models import Technician
from tidesync.cli.main import main as cli
from tidesync.server.auth_config import ApiKeysConfig, CustomDataConfig, CustomJwtConfig, OidcConfig

pytestmark = pytest.mark.slow
T = 20
PASSWORD = "correct horse 1"


def app_for(server, tmp_path, name="device", **kw):
    return tidesync.App("default", base_url=server.url, storage_dir=tmp_path / name, **kw)


def test_anonymous_login_and_sync(tmp_path):
    with running_server(tmp_path / "s") as server:
        app = app_for(server, tmp_path)
        user = app.log_in(tidesync.Credentials.anonymous())
        assert user.provider == "anonymous" and app.current_user is user
        assert user.identities == [{"provider": "anonymous", "id": user.id}]
        db = tidesync.open(tmp_path / "a.db", schema=[Technician], sync=tidesync.SyncConfig(user=user, partition="p"))
        with db.write():
            db.create(Technician, _id="t", name="anon")
        db.sync_session.wait_for_upload_completion(timeout=T)
        db.close()


def test_email_password_register_confirm_login_reset(tmp_path):
    sender = RecordingSender()
    with running_server(tmp_path / "s", auth=auth_config(email_password=fast_email(sender))) as server:
        app = app_for(server, tmp_path)
        auth = app.email_password_auth
        auth.register_user("  Alice@Example.COM ", PASSWORD)
        token = sender.wait("confirm", "alice@example.com").token
        assert token and len(token) >= 40

        with pytest.raises(tidesync.AuthError) as err:   # right password, not confirmed yet
            app.log_in(tidesync.Credentials.email_password("alice@example.com", PASSWORD))
        assert err.value.code == "email_not_confirmed"
        with pytest.raises(tidesync.UsageError) as uerr:
            auth.confirm_user("not-a-token")
        assert uerr.value.code == "invalid_email_token"

        auth.confirm_user(token)
        with pytest.raises(tidesync.UsageError):            # single use
            auth.confirm_user(token)
        with pytest.raises(tidesync.AuthError) as err:
            app.log_in(tidesync.Credentials.email_password("alice@example.com", "wrong password"))
        assert err.value.code == "invalid_credentials"

        user = app.log_in(tidesync.Credentials.email_password("ALICE@example.com", PASSWORD))
        assert user.profile == {"email": "alice@example.com"}
        assert user.identities == [{"provider": "email_password", "id": "alice@example.com"}]
        db = tidesync.open(tmp_path / "a.db", schema=[Technician], sync=tidesync.SyncConfig(user=user, partition="p"))
        with db.write():
            db.create(Technician, _id="t", name="by alice")
        db.sync_session.wait_for_upload_completion(timeout=T)
        db.close()

        # Registering again changes nothing; the owner hears about it instead of a token.
        n = len(sender.mails)
        auth.register_user("alice@example.com", "attacker password 9")
        assert sender.wait("account_exists", "alice@example.com", after=n).token is None
        assert app.log_in(tidesync.Credentials.email_password("alice@example.com", PASSWORD)).id == user.id

        # Reset: a single-use token; the new password works, the old one and old sessions do not.
        n = len(sender.mails)
        auth.send_reset_password_email("alice@example.com")
        reset = sender.wait("reset", "alice@example.com", after=n).token
        assert reset
        with pytest.raises(tidesync.UsageError) as uerr:
            auth.reset_password(reset, "short")
        assert uerr.value.code == "weak_password"
        auth.reset_password(reset, "a brand new pass 2")   # the token survived the weak attempt
        with pytest.raises(tidesync.UsageError):
            auth.reset_password(reset, "another new pass 3")
        with pytest.raises(tidesync.AuthError):
            user.refresh_access_token()                      # every session ended
        with pytest.raises(tidesync.AuthError):
            app.log_in(tidesync.Credentials.email_password("alice@example.com", PASSWORD))
        again = app.log_in(tidesync.Credentials.email_password("alice@example.com", "a brand new pass 2"))
        assert again.id == user.id

        # Unknown addresses get the same answers, and no mail.
        n = len(sender.mails)
        auth.send_reset_password_email("nobody@example.com")
        auth.resend_confirmation_email("nobody@example.com")
        auth.resend_confirmation_email("alice@example.com")   # confirmed: nothing to resend
        assert sender.settle()[n:] == []


def test_resend_confirmation_replaces_the_old_token(tmp_path):
    sender = RecordingSender()
    with running_server(tmp_path / "s", auth=auth_config(email_password=fast_email(sender))) as server:
        app = app_for(server, tmp_path)
        app.email_password_auth.register_user("bob@example.com", PASSWORD)
        first = sender.wait("confirm", "bob@example.com").token
        app.email_password_auth.resend_confirmation_email("bob@example.com")
        second = sender.wait("confirm", "bob@example.com", after=1).token
        assert first != second
        with pytest.raises(tidesync.UsageError):
            app.email_password_auth.confirm_user(first)
        app.email_password_auth.confirm_user(second)
        assert app.log_in(tidesync.Credentials.email_password("bob@example.com", PASSWORD)).id


def test_auto_confirm_and_password_policy(tmp_path):
    from tidesync.server.passwords import PasswordPolicy

    sender = RecordingSender()
    policy = PasswordPolicy(min_length=10, require_digit=True, require_mixed_case=True)
    cfg = auth_config(email_password=fast_email(sender, auto_confirm=True, password_policy=policy))
    with running_server(tmp_path / "s", auth=cfg) as server:
        app = app_for(server, tmp_path)
        for bad, rule in [("Short1a", "at least 10"), ("nodigitsHereAtAll", "digit"),
                          ("lowercase only 1", "upper-case"), ("Carol@example.com1X", "email")]:
            with pytest.raises(tidesync.UsageError, match=rule) as err:
                app.email_password_auth.register_user("carol@example.com", bad)
            assert err.value.code == "weak_password"
        app.email_password_auth.register_user("carol@example.com", "Good enough 12")
        assert app.log_in(tidesync.Credentials.email_password("carol@example.com", "Good enough 12")).id
        assert sender.settle() == []


def test_in_development_the_token_goes_to_the_log_and_never_the_password(tmp_path, caplog):
    cfg = auth_config(email_password=fast_email(RecordingSender()))
    cfg.email_password.sender = "log"
    with caplog.at_level(logging.INFO), running_server(tmp_path / "s", auth=cfg) as server:
        app = app_for(server, tmp_path)
        app.email_password_auth.register_user("dave@example.com", "secret pass phrase 7")
        import time

        deadline = time.monotonic() + 5
        while "token" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        line = next(r.getMessage() for r in caplog.records if r.name == "tidesync.server.mail")
        token = line.split("token ")[1].split()[0]
        app.email_password_auth.confirm_user(token)
        assert "secret pass phrase 7" not in caplog.text
        assert app.log_in(tidesync.Credentials.email_password("dave@example.com", "secret pass phrase 7")).id


def test_user_api_keys_shown_once_listed_disabled_enabled_deleted(tmp_path):
    cfg = auth_config(api_keys=ApiKeysConfig(enabled=True))
    with running_server(tmp_path / "s", auth=cfg) as server:
        app = app_for(server, tmp_path)
        owner = app.log_in(tidesync.Credentials.anonymous())
        made = owner.api_keys.create("kiosk-3")
        assert made.key and made.key.startswith("tsk_") and made.name == "kiosk-3"
        assert made.key not in repr(made)
        with pytest.raises(tidesync.UsageError) as err:
            owner.api_keys.create("kiosk-3")
        assert err.value.code == "api_key_name_in_use"
        listed = owner.api_keys.fetch_all()
        assert [(k.id, k.key) for k in listed] == [(made.id, None)]   # never shown again
        raw = (server.config.data_dir / "auth.db").read_bytes()
        assert made.key.encode() not in raw and made.key.split("_")[2].encode() not in raw  # stored hashed

        device = app_for(server, tmp_path, "kiosk")
        kiosk = device.log_in(tidesync.Credentials.api_key(made.key))
        assert kiosk.id == owner.id

        assert owner.api_keys.disable(made.id).disabled
        with pytest.raises(tidesync.AuthError):
            device.log_in(tidesync.Credentials.api_key(made.key))
        with pytest.raises(tidesync.AuthError):
            kiosk.refresh_access_token()        # the kiosk's session ended with its key
        owner.refresh_profile()                 # the owner's own session goes on
        assert not owner.api_keys.enable(made.id).disabled
        assert device.log_in(tidesync.Credentials.api_key(made.key)).id == owner.id

        other = app_for(server, tmp_path, "other").log_in(tidesync.Credentials.anonymous())
        with pytest.raises(tidesync.UsageError) as err:   # another user's key is not found
            other.api_keys.delete(made.id)
        assert err.value.code == "api_key_not_found"
        owner.api_keys.delete(made.id)
        assert owner.api_keys.fetch_all() == []
        with pytest.raises(tidesync.AuthError):
            device.log_in(tidesync.Credentials.api_key(made.key))


def test_server_api_keys_from_the_cli(tmp_path, capsys):
    cfg = auth_config(api_keys=ApiKeysConfig(enabled=True, user_keys=False))
    with running_server(tmp_path / "s", auth=cfg) as server:
        data = str(server.config.data_dir)
        assert cli(["api-keys", "create", "billing-service", "--data", data]) == 0
        key = capsys.readouterr().out.strip().splitlines()[-1]
        app = app_for(server, tmp_path)
        svc = app.log_in(tidesync.Credentials.api_key(key))
        assert svc.profile == {"name": "billing-service", "server_api_key": True}
        assert app.log_in(tidesync.Credentials.api_key(key)).id == svc.id
        with pytest.raises(tidesync.AuthError) as err:     # user keys are off on this server
            svc.api_keys.create("mine")
        assert err.value.code == "provider_disabled"
        assert cli(["api-keys", "list", "--data", data]) == 0
        key_id = key.split("_")[1]
        assert key_id in capsys.readouterr().out
        assert cli(["api-keys", "disable", key_id, "--data", data]) == 0
        with pytest.raises(tidesync.AuthError):
            app.log_in(tidesync.Credentials.api_key(key))
        assert cli(["api-keys", "enable", key_id, "--data", data]) == 0
        app.log_in(tidesync.Credentials.api_key(key))
        assert cli(["api-keys", "delete", key_id, "--data", data]) == 0
        with pytest.raises(tidesync.AuthError):
            app.log_in(tidesync.Credentials.api_key(key))


def test_custom_jwt_hs256_maps_claims_into_the_profile(tmp_path):
    cfg = auth_config(custom_jwt=CustomJwtConfig(enabled=True, secret=HMAC_SECRET, audience=["my-app"],
                                                 issuer=["https://auth.example.com"],
                                                 metadata={"email": "email", "org": "org.id", "team": "team"},
                                                 required_metadata=["email"]))
    with running_server(tmp_path / "s", auth=cfg) as server:
        app = app_for(server, tmp_path)
        token = make_token(HMAC_SECRET, "HS256", sub="ext-42", aud="my-app", iss="https://auth.example.com",
                           email="eve@example.com", org={"id": "acme", "secret": "x"}, extra="ignored")
        user = app.log_in(tidesync.Credentials.jwt(token))
        assert user.profile == {"email": "eve@example.com", "org": "acme"}
        assert user.identities == [{"provider": "custom_jwt", "id": "ext-42"}]
        again = make_token(HMAC_SECRET, "HS256", sub="ext-42", aud="my-app", iss="https://auth.example.com",
                           email="eve@example.org", team="blue")
        assert app.log_in(tidesync.Credentials.jwt(again)).id == user.id
        assert user.refresh_profile() == {"email": "eve@example.org", "org": "acme", "team": "blue"}
        with pytest.raises(tidesync.AuthError, match="required field 'email'"):
            app.log_in(tidesync.Credentials.jwt(make_token(HMAC_SECRET, "HS256", sub="ext-43", aud="my-app",
                                                           iss="https://auth.example.com")))


def test_custom_jwt_rs256_from_a_jwks_file_and_es256_from_a_pem_file(tmp_path):
    rsa_k, ec_k = rsa_key(), ec_key()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(rsa_k, "r1")]}))
    pem = tmp_path / "ec.pem"
    pem.write_bytes(public_pem(ec_k))
    with running_server(tmp_path / "s1", auth=auth_config(custom_jwt=CustomJwtConfig(
            enabled=True, jwks_file=str(jwks), audience=["my-app"]))) as server:
        app = app_for(server, tmp_path, "a")
        u = app.log_in(tidesync.Credentials.jwt(make_token(rsa_k, "RS256", kid="r1", aud="my-app")))
        assert u.identities == [{"provider": "custom_jwt", "id": "user-1"}]
        # The file is re-read when it changes: a rotated key works without a restart.
        rsa_2 = rsa_key()
        jwks.write_text(json.dumps({"keys": [public_jwk(rsa_k, "r1"), public_jwk(rsa_2, "r2")]}))
        import os

        os.utime(jwks, (1, 1))
        assert app.log_in(tidesync.Credentials.jwt(make_token(rsa_2, "RS256", kid="r2", aud="my-app"))).id == u.id
    with running_server(tmp_path / "s2", auth=auth_config(custom_jwt=CustomJwtConfig(
            enabled=True, public_key_file=str(pem), algorithms=["ES256"]))) as server:
        app = app_for(server, tmp_path, "b")
        assert app.log_in(tidesync.Credentials.jwt(make_token(ec_k, "ES256", sub="es-user"))).identities == [
            {"provider": "custom_jwt", "id": "es-user"}]


def test_custom_jwt_with_a_jwks_url_over_http_and_key_rotation(tmp_path):
    k1, k2 = ec_key(), rsa_key()
    keys = {"/jwks.json": {"keys": [public_jwk(k1, "e1", "ES256")]}}
    with serve_json(keys) as (base, hits):
        cfg = auth_config(custom_jwt=CustomJwtConfig(enabled=True, jwks_url=f"{base}/jwks.json"))
        with running_server(tmp_path / "s", auth=cfg) as server:
            app = app_for(server, tmp_path)
            user = app.log_in(tidesync.Credentials.jwt(make_token(k1, "ES256", kid="e1")))
            app.log_in(tidesync.Credentials.jwt(make_token(k1, "ES256", kid="e1")))
            assert hits == ["/jwks.json"]                    # fetched once, then cached
            keys["/jwks.json"] = {"keys": [public_jwk(k1, "e1", "ES256"), public_jwk(k2, "r2")]}
            issuer = server.app.state.tidesync.providers.get("jwt").verifier.keys
            issuer.min_refetch = 0                           # (60 s by default)
            assert app.log_in(tidesync.Credentials.jwt(make_token(k2, "RS256", kid="r2"))).id == user.id
            assert hits == ["/jwks.json", "/jwks.json"]      # an unknown kid refetched the set


def test_oidc_presets_keycloak_over_http_google_and_microsoft(tmp_path):
    idp_key, google_key, ms_key = rsa_key(), rsa_key(), rsa_key()
    google_jwks = tmp_path / "google.json"
    google_jwks.write_text(json.dumps({"keys": [public_jwk(google_key, "g1")]}))
    ms_jwks = tmp_path / "ms.json"
    ms_jwks.write_text(json.dumps({"keys": [public_jwk(ms_key, "m1")]}))
    with serve_json({"/realms/staff/protocol/openid-connect/certs": {"keys": [public_jwk(idp_key, "kc")]}}) as (base, _):
        oidc = {
            "staff": OidcConfig("staff", preset="keycloak", client_id=["tidesync-app"],
                                params={"base_url": base, "realm": "staff"}),
            "google": OidcConfig("google", preset="google", client_id=["web-client", "ios-client"],
                                 jwks_file=str(google_jwks)),
            "ms": OidcConfig("ms", preset="microsoft", client_id=["ms-client"], jwks_file=str(ms_jwks)),
        }
        with running_server(tmp_path / "s", auth=auth_config(oidc=oidc)) as server:
            app = app_for(server, tmp_path)
            kc = make_token(idp_key, "RS256", kid="kc", sub="kc-1", aud="tidesync-app", iss=f"{base}/realms/staff",
                            email="fay@example.com", email_verified=True, name="Fay", nonce="n-1")
            user = app.log_in(tidesync.Credentials.oidc(kc, "staff", nonce="n-1"))
            assert user.profile == {"email": "fay@example.com", "email_verified": True, "name": "Fay"}
            assert user.provider == "oidc:staff"
            with pytest.raises(tidesync.AuthError, match="nonce"):
                app.log_in(tidesync.Credentials.oidc(kc, "staff", nonce="other"))
            g = make_token(google_key, "RS256", kid="g1", sub="g-1", aud="ios-client", iss="accounts.google.com")
            assert app.log_in(tidesync.Credentials.oidc(g, "google")).identities == [
                {"provider": "oidc:google", "id": "g-1"}]
            tid = "9188040d-6c67-4c5b-b112-36a304b66dad"
            ms = make_token(ms_key, "RS256", kid="m1", sub="m-1", aud="ms-client", tid=tid,
                            iss=f"https://login.microsoftonline.com/{tid}/v2.0")
            assert app.log_in(tidesync.Credentials.oidc(ms, "ms")).provider == "oidc:ms"
            forged_tenant = make_token(ms_key, "RS256", kid="m1", sub="m-1", aud="ms-client", tid=tid,
                                       iss="https://login.microsoftonline.com/another-tenant/v2.0")
            with pytest.raises(tidesync.AuthError, match="issuer"):
                app.log_in(tidesync.Credentials.oidc(forged_tenant, "ms"))
            with pytest.raises(tidesync.AuthError) as err:
                app.log_in(tidesync.Credentials.oidc(g, "facebook"))
            assert err.value.code == "provider_disabled"


def test_linking_identities_to_one_user(tmp_path):
    sender = RecordingSender()
    cfg = auth_config(email_password=fast_email(sender, auto_confirm=True),
                      custom_jwt=CustomJwtConfig(enabled=True, secret=HMAC_SECRET))
    with running_server(tmp_path / "s", auth=cfg) as server:
        app = app_for(server, tmp_path)
        anon = app.log_in(tidesync.Credentials.anonymous())
        app.email_password_auth.register_user("gus@example.com", PASSWORD)
        anon.link_credentials(tidesync.Credentials.email_password("gus@example.com", PASSWORD))
        anon.link_credentials(tidesync.Credentials.jwt(make_token(HMAC_SECRET, "HS256", sub="gus-ext")))
        assert {i["provider"] for i in anon.identities} == {"anonymous", "email_password", "custom_jwt"}
        assert anon.profile == {"email": "gus@example.com"}
        other = app_for(server, tmp_path, "phone")
        assert other.log_in(tidesync.Credentials.email_password("gus@example.com", PASSWORD)).id == anon.id
        assert other.log_in(tidesync.Credentials.jwt(make_token(HMAC_SECRET, "HS256", sub="gus-ext"))).id == anon.id

        stranger = other.log_in(tidesync.Credentials.anonymous())
        with pytest.raises(tidesync.UsageError) as err:
            stranger.link_credentials(tidesync.Credentials.email_password("gus@example.com", PASSWORD))
        assert err.value.code == "identity_in_use"
        with pytest.raises(tidesync.UsageError) as err:
            stranger.link_credentials(tidesync.Credentials.anonymous())
        assert err.value.code == "cannot_link"
        with pytest.raises(tidesync.AuthError):
            stranger.link_credentials(tidesync.Credentials.email_password("gus@example.com", "wrong pass 1"))
        assert stranger.refresh_profile() == {} and len(stranger.identities) == 1


class UserData(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    user_id: str
    plan: str


def test_custom_data_from_a_collection_and_several_users_on_one_device(tmp_path):
    cfg = auth_config(custom_data=CustomDataConfig("UserData"))
    with running_server(tmp_path / "s", auth=cfg) as server:
        app = app_for(server, tmp_path)
        first = app.log_in(tidesync.Credentials.anonymous())
        second = app.log_in(tidesync.Credentials.anonymous())
        assert first.custom_data == {} and app.current_user is second
        assert {u.id for u in app.all_users} == {first.id, second.id}
        app.switch_user(first)
        assert app.current_user is first
        db = tidesync.open(tmp_path / "a.db", schema=[UserData], sync=tidesync.SyncConfig(user=first))
        with db.write():
            db.create(UserData, _id="d1", user_id=first.id, plan="pro")
        db.sync_session.wait_for_upload_completion(timeout=T)
        db.close()
        assert first.refresh_custom_data() == {"_id": "d1", "user_id": first.id, "plan": "pro"}
        assert second.refresh_custom_data() == {}

        # Users persist on the device: a restarted app works with them, offline or not.
        again = app_for(server, tmp_path)
        assert again.current_user is not None and again.current_user.id == first.id
        assert again.current_user.custom_data["plan"] == "pro"
        assert {u.id for u in again.all_users} == {first.id, second.id}
        again.remove_user(again.current_user)
        assert [u.id for u in again.all_users] == [second.id] and again.current_user.id == second.id
        with pytest.raises(tidesync.AuthError):
            first.refresh_custom_data()                 # its session was revoked by the removal
