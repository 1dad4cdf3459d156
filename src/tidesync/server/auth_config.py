"""The ``[auth]`` part of tidesync.toml: providers, rate limits, custom user data.

Every field is documented in docs/auth.md. Unknown keys are refused (a typo in a security
setting must not pass silently). Secrets are never written in the file: a field ending in
``_env`` names the environment variable that holds the secret.

Token lifetimes (``access_token_ttl``, ``refresh_token_ttl``) and ``[auth.anonymous]`` are
read by :func:`tidesync.server.config.load_config` into :class:`~tidesync.server.config.ServerConfig`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .mail import Sender, SmtpConfig
from .passwords import Argon2Params, PasswordPolicy
from .ratelimit import RateLimit, RateLimits

__all__ = ["AuthConfig", "EmailPasswordConfig", "ApiKeysConfig", "CustomJwtConfig", "OidcConfig",
           "CustomDataConfig", "auth_config_from_toml"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass
class EmailPasswordConfig:
    """``[auth.email_password]``: log in with an email address and a password."""

    enabled: bool = False
    auto_confirm: bool = False
    confirmation_ttl: int = 24 * 3600
    reset_ttl: int = 3600
    confirm_url: str | None = None
    reset_url: str | None = None
    sender: str | Sender = "log"
    smtp: SmtpConfig | None = None
    password_policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    argon2: Argon2Params = field(default_factory=Argon2Params)


@dataclass
class ApiKeysConfig:
    """``[auth.api_keys]``: log in with server keys (made by the operator) and user keys (made
    by users for their devices)."""

    enabled: bool = False
    user_keys: bool = True
    max_per_user: int = 20


@dataclass
class CustomJwtConfig:
    """``[auth.custom_jwt]``: log in with a JWT issued by the app's own auth system.

    ``secret`` (HS256) comes from the environment variable named by ``secret_env`` in the file;
    public keys from exactly one of ``jwks_file``, ``jwks_url``, ``public_key_file``.
    ``metadata`` maps user profile fields to claim paths (``{"email": "email",
    "org": "org.id"}``); ``required_metadata`` lists the fields that must be present.
    """

    enabled: bool = False
    algorithms: list[str] = field(default_factory=list)
    secret: bytes | None = None
    jwks_file: str | None = None
    jwks_url: str | None = None
    public_key_file: str | None = None
    audience: list[str] = field(default_factory=list)
    issuer: list[str] = field(default_factory=list)
    leeway: float = 10.0
    subject_claim: str = "sub"
    metadata: dict[str, str] = field(default_factory=dict)
    required_metadata: list[str] = field(default_factory=list)
    jwks_cache_ttl: float = 3600.0

    def default_algorithms(self) -> list[str]:
        if self.algorithms:
            return list(self.algorithms)
        return ["HS256"] if self.secret is not None and not (self.jwks_file or self.jwks_url or self.public_key_file) \
            else ["RS256", "ES256"]


@dataclass
class OidcConfig:
    """``[auth.oidc.<name>]``: log in with an OpenID Connect ID token of one identity provider.

    ``preset`` (``google``, ``apple``, ``microsoft``, ``auth0``, ``keycloak``) fills in
    ``issuer`` and ``jwks_url`` from ``params`` (``tenant``, ``domain``, ``base_url``,
    ``realm``); either may still be given to override it. ``client_id`` (one or several: web,
    iOS, Android) is the audience the tokens must be meant for: required.
    """

    name: str
    preset: str | None = None
    client_id: list[str] = field(default_factory=list)
    issuer: list[str] = field(default_factory=list)
    jwks_url: str | None = None
    jwks_file: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    algorithms: list[str] = field(default_factory=lambda: ["RS256", "ES256"])
    leeway: float = 10.0
    metadata: dict[str, str] | None = None
    require_email_verified: bool = False
    jwks_cache_ttl: float = 3600.0


@dataclass
class CustomDataConfig:
    """``[auth.custom_data]``: each user's custom data is the document of ``collection`` (in
    the server's synced data) whose ``user_id_field`` equals the user's id."""

    collection: str
    user_id_field: str = "user_id"


@dataclass
class AuthConfig:
    """Everything about authentication beyond anonymous login and token lifetimes."""

    email_password: EmailPasswordConfig = field(default_factory=EmailPasswordConfig)
    api_keys: ApiKeysConfig = field(default_factory=ApiKeysConfig)
    custom_jwt: CustomJwtConfig = field(default_factory=CustomJwtConfig)
    oidc: dict[str, OidcConfig] = field(default_factory=dict)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    custom_data: CustomDataConfig | None = None
    session_recheck_interval: float = 5.0


# -- TOML ------------------------------------------------------------------------------------


class _Table:
    """Typed reads from one TOML table, remembering which keys were read."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise UsageError(f"[{where}] must be a table")
        self.data, self.where, self.seen = data, where, set[str]()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise UsageError(f"{self.where}.{key} must be a {name}")
        return value

    def str_list(self, key: str) -> list[str]:
        value = self.get(key, (str, list), [])
        items = [value] if isinstance(value, str) else value
        if not all(isinstance(v, str) for v in items):
            raise UsageError(f"{self.where}.{key} must be a string or a list of strings")
        return list(items)

    def str_map(self, key: str) -> dict[str, str] | None:
        value = self.get(key, dict, None)
        if value is None:
            return None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise UsageError(f"[{self.where}.{key}] must map names to strings")
        return dict(value)

    def sub(self, key: str) -> _Table | None:
        value = self.get(key, dict, None)
        return _Table(value, f"{self.where}.{key}") if value is not None else None

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise UsageError(f"unknown key(s) in [{self.where}]: {', '.join(unknown)}",
                             advice="see docs/auth.md for the fields")


def _positive(value: float, where: str) -> None:
    if value <= 0:
        raise UsageError(f"{where} must be positive")


def _secret_from_env(t: _Table, key: str) -> bytes | None:
    name = t.get(key, str, None)
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise UsageError(f"{t.where}.{key} names the environment variable {name}, which is not set")
    return value.encode()


def _path(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value)
    return str(p if p.is_absolute() else base / p)


def _dataclass_from(t: _Table, cls: type[Any]) -> Any:
    """Build a flat dataclass of str/int/float/bool fields from a table."""
    kinds: dict[str, type] = {"int": int, "bool": bool, "float": float}
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        value = t.get(f.name, kinds.get(str(f.type).split(" ")[0], str), None)
        if value is not None:
            kwargs[f.name] = value
    t.done()
    return cls(**kwargs)


def _email_password(t: _Table) -> EmailPasswordConfig:
    cfg = EmailPasswordConfig(enabled=t.get("enabled", bool, True))
    cfg.auto_confirm = t.get("auto_confirm", bool, cfg.auto_confirm)
    cfg.confirmation_ttl = t.get("confirmation_ttl", int, cfg.confirmation_ttl)
    cfg.reset_ttl = t.get("reset_ttl", int, cfg.reset_ttl)
    _positive(cfg.confirmation_ttl, f"{t.where}.confirmation_ttl")
    _positive(cfg.reset_ttl, f"{t.where}.reset_ttl")
    for key in ("confirm_url", "reset_url"):
        url = t.get(key, str, None)
        if url is not None and "{token}" not in url:
            raise UsageError(f"{t.where}.{key} must contain {{token}}")
        setattr(cfg, key, url)
    cfg.sender = t.get("sender", str, "log")
    smtp = t.sub("smtp")
    if smtp is not None:
        cfg.smtp = _dataclass_from(smtp, SmtpConfig)
        if cfg.smtp is not None and cfg.smtp.security not in ("starttls", "tls", "none"):
            raise UsageError(f"{smtp.where}.security must be starttls, tls or none")
    policy = t.sub("password_policy")
    if policy is not None:
        cfg.password_policy = _dataclass_from(policy, PasswordPolicy)
        if cfg.password_policy.min_length < 1 or cfg.password_policy.max_length < cfg.password_policy.min_length:
            raise UsageError(f"{policy.where}: need 1 <= min_length <= max_length")
    argon = t.sub("argon2")
    if argon is not None:
        cfg.argon2 = _dataclass_from(argon, Argon2Params)
    t.done()
    return cfg


def _custom_jwt(t: _Table, base: Path) -> CustomJwtConfig:
    cfg = CustomJwtConfig(enabled=t.get("enabled", bool, True))
    cfg.algorithms = t.str_list("algorithms")
    cfg.secret = _secret_from_env(t, "secret_env")
    cfg.jwks_file = _path(base, t.get("jwks_file", str, None))
    cfg.jwks_url = t.get("jwks_url", str, None)
    cfg.public_key_file = _path(base, t.get("public_key_file", str, None))
    cfg.audience = t.str_list("audience")
    cfg.issuer = t.str_list("issuer")
    cfg.leeway = t.get("leeway", float, cfg.leeway)
    cfg.subject_claim = t.get("subject_claim", str, cfg.subject_claim)
    cfg.metadata = t.str_map("metadata") or {}
    cfg.required_metadata = t.str_list("required_metadata")
    cfg.jwks_cache_ttl = t.get("jwks_cache_ttl", float, cfg.jwks_cache_ttl)
    t.done()
    return cfg


def _oidc(name: str, t: _Table, base: Path) -> OidcConfig:
    if not _IDENT.match(name):
        raise UsageError(f"[auth.oidc.{name}]: a provider name is letters, digits and _")
    cfg = OidcConfig(name)
    cfg.preset = t.get("preset", str, None)
    cfg.client_id = t.str_list("client_id")
    cfg.issuer = t.str_list("issuer")
    cfg.jwks_url = t.get("jwks_url", str, None)
    cfg.jwks_file = _path(base, t.get("jwks_file", str, None))
    for key in ("tenant", "domain", "base_url", "realm"):
        value = t.get(key, str, None)
        if value is not None:
            cfg.params[key] = value
    algorithms = t.str_list("algorithms")
    if algorithms:
        cfg.algorithms = algorithms
    cfg.leeway = t.get("leeway", float, cfg.leeway)
    cfg.metadata = t.str_map("metadata")
    cfg.require_email_verified = t.get("require_email_verified", bool, False)
    cfg.jwks_cache_ttl = t.get("jwks_cache_ttl", float, cfg.jwks_cache_ttl)
    t.done()
    if not cfg.client_id:
        raise UsageError(f"[auth.oidc.{name}] needs client_id (the audience of its ID tokens)")
    return cfg


def _rate_limits(t: _Table) -> RateLimits:
    cfg = RateLimits(enabled=t.get("enabled", bool, True))
    for key in ("login_per_account", "login_per_address", "email_per_account", "email_per_address"):
        sub = t.sub(key)
        if sub is None:
            continue
        limit = sub.get("limit", int, None)
        window = sub.get("window", float, None)
        sub.done()
        if limit is None or window is None:
            raise UsageError(f"[{sub.where}] needs limit (attempts) and window (seconds)")
        try:
            setattr(cfg, key, RateLimit(limit, window))
        except ValueError as exc:
            raise UsageError(f"[{sub.where}]: {exc}") from None
    t.done()
    return cfg


def auth_config_from_toml(auth: dict[str, Any], base: Path) -> AuthConfig:
    """Read the ``[auth]`` table (minus what ServerConfig reads itself).

    Args:
        auth: the parsed ``[auth]`` table.
        base: the config file's directory (relative paths are relative to it).

    Raises:
        UsageError: a field is unknown, has the wrong type or an invalid value.
    """
    t = _Table(auth, "auth")
    for key in ("access_token_ttl", "refresh_token_ttl", "anonymous"):
        t.seen.add(key)
    cfg = AuthConfig()
    cfg.session_recheck_interval = t.get("session_recheck_interval", float, cfg.session_recheck_interval)
    _positive(cfg.session_recheck_interval, "auth.session_recheck_interval")
    if (sub := t.sub("email_password")) is not None:
        cfg.email_password = _email_password(sub)
    if (sub := t.sub("api_keys")) is not None:
        cfg.api_keys = ApiKeysConfig(enabled=sub.get("enabled", bool, True),
                                     user_keys=sub.get("user_keys", bool, True),
                                     max_per_user=sub.get("max_per_user", int, 20))
        sub.done()
    if (sub := t.sub("custom_jwt")) is not None:
        cfg.custom_jwt = _custom_jwt(sub, base)
    if (sub := t.sub("oidc")) is not None:
        for name in list(sub.data):
            provider = sub.sub(name)
            assert provider is not None
            cfg.oidc[name] = _oidc(name, provider, base)
        sub.done()
    if (sub := t.sub("rate_limits")) is not None:
        cfg.rate_limits = _rate_limits(sub)
    if (sub := t.sub("custom_data")) is not None:
        collection = sub.get("collection", str, None)
        if not collection:
            raise UsageError("[auth.custom_data] needs collection")
        cfg.custom_data = CustomDataConfig(collection, sub.get("user_id_field", str, "user_id"))
        if not _IDENT.match(cfg.custom_data.user_id_field):
            raise UsageError("auth.custom_data.user_id_field must be a plain field name")
        sub.done()
    t.done()
    return cfg
