"""Server configuration.

With no config file, ``tidesync serve`` runs in *development mode*: app id ``default``,
anonymous login on, every user may read and write all data, partition key ``_partition``.
It says so when it starts. A TOML file (``--config``) sets the same fields; see
docs/server.md.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.merge import Policies
from ..core.rules import Rules
from ..errors import UsageError
from .auth_config import AuthConfig, auth_config_from_toml

__all__ = ["ServerConfig", "load_config", "policies_from_config", "named_policies", "rules_from_config",
           "schemas_from_config"]


#: The top-level tables of tidesync.toml (docs/config.md).
KNOWN_SECTIONS = frozenset({"app", "server", "sync", "auth", "conflicts", "rules", "default_roles", "partitions",
                            "schema"})


@dataclass
class ServerConfig:
    """Everything a tidesync server needs to know.

    Attributes:
        app_id: the app's id; clients name it in ``tidesync.App(app_id, ...)``.
        data_dir: where the server keeps its files (SQLite by default).
        host, port: where to listen (127.0.0.1 by default; port 0 picks a free one).
        partition_key: the field that names a document's partition (partition-based sync).
        anonymous: whether anonymous login is allowed.
        access_token_ttl, refresh_token_ttl: token lifetimes in seconds.
        secret: the key that signs tokens; made once and kept in ``data_dir/secret.key``.
        policies: per-field conflict policies.
        max_message_size: the largest sync message (WebSocket message) accepted, in bytes.
        max_assembled_size: the largest sync message accepted in parts from a peer that
            sends larger messages so (a transaction bigger than ``max_message_size``), in
            bytes; what one connection may make the server hold in memory at a time.
        log_keep: keep the newest this many log entries and drop older ones, checked about
            once a minute while devices are connected (None: keep the whole log). A device
            further behind bootstraps again from document states, keeping its unsynced writes.
        development_mode: True when no config file was given.
        tls_cert, tls_key: PEM files; with both, the server speaks HTTPS and WSS only.
        auth: login providers, rate limits, custom user data (``[auth]``, docs/auth.md).
        rules: the permission rules (``[rules]``, ``[[default_roles]]``, ``[partitions]``);
            None: every user may read and write everything.
        schemas: a JSON Schema per collection (``[schema]``), enforced on every write.
        flexible: flexible sync (``[sync.flexible]``: queryable fields, ...), a
            :class:`tidesync.server.flexible.FlexibleConfig`; None: on with every field
            queryable in development mode, off otherwise.
    """

    app_id: str = "default"
    data_dir: Path = field(default_factory=lambda: Path("data"))
    host: str = "127.0.0.1"
    port: int = 8765
    partition_key: str = "_partition"
    anonymous: bool = True
    access_token_ttl: int = 30 * 60
    refresh_token_ttl: int = 60 * 24 * 3600
    secret: bytes | None = None
    policies: Policies | None = None
    max_message_size: int = 16 * 1024 * 1024
    max_assembled_size: int = 64 * 1024 * 1024
    log_keep: int | None = None
    development_mode: bool = True
    tls_cert: str | None = None
    tls_key: str | None = None
    auth: AuthConfig = field(default_factory=AuthConfig)
    rules: Rules | None = None
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    flexible: Any = None

    def ensure_dirs(self) -> None:
        """Create ``data_dir`` and the token-signing secret if missing."""
        self.data_dir = Path(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.secret is None:
            path = self.data_dir / "secret.key"
            if path.exists():
                self.secret = bytes.fromhex(path.read_text().strip())
            else:
                self.secret = secrets.token_bytes(32)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(self.secret.hex())


def load_config(path: str | os.PathLike[str] | None, **overrides: Any) -> ServerConfig:
    """Read a TOML config file (or none: development mode) and apply command-line overrides."""
    cfg = ServerConfig()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read config {path}: {exc}") from exc
        cfg.development_mode = False
        unknown = sorted(set(data) - KNOWN_SECTIONS)
        if unknown:
            # A misspelt [rules] must not silently leave the data open.
            raise UsageError(f"unknown section(s) {unknown} in {path}; known: {sorted(KNOWN_SECTIONS)}",
                             advice="see docs/config.md")
        app = data.get("app", {})
        cfg.app_id = str(app.get("id", cfg.app_id))
        sync = data.get("sync", {})
        cfg.partition_key = str(sync.get("partition_key", cfg.partition_key))
        cfg.max_message_size = int(sync.get("max_message_size", cfg.max_message_size))
        cfg.max_assembled_size = int(sync.get("max_assembled_size", cfg.max_assembled_size))
        if "log_keep" in sync:
            keep = sync["log_keep"]
            if type(keep) is not int or keep < 0:
                raise UsageError(f"[sync] log_keep must be a whole number >= 0, not {keep!r}",
                                 advice="see docs/config.md")
            cfg.log_keep = keep
        if "flexible" in sync:
            from .flexible import flexible_config_from_toml

            cfg.flexible = flexible_config_from_toml(sync["flexible"])
        auth = data.get("auth", {})
        cfg.anonymous = bool(auth.get("anonymous", {}).get("enabled", True))
        cfg.access_token_ttl = int(auth.get("access_token_ttl", cfg.access_token_ttl))
        cfg.refresh_token_ttl = int(auth.get("refresh_token_ttl", cfg.refresh_token_ttl))
        cfg.auth = auth_config_from_toml(auth, Path(path).resolve().parent)
        conflicts = data.get("conflicts", {})
        if conflicts:
            cfg.policies = policies_from_config(conflicts)
        server = data.get("server", {})
        if "data_dir" in server:
            cfg.data_dir = Path(server["data_dir"])
        cfg.rules = rules_from_config(data)
        cfg.schemas = schemas_from_config(data.get("schema", {}), Path(path).parent)
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, Path(value) if key == "data_dir" else value)
    return cfg


def policies_from_config(table: dict[str, Any]) -> Policies:
    """Build conflict policies from the ``[conflicts]`` table of tidesync.toml.

    Keys are ``"Collection.field"`` (or ``"Collection.*"``); values are ``"lww"``, ``"max"``,
    ``"min"``, ``"union"`` or ``"package.module:function"`` naming a Python function
    ``f(field, a, b) -> a or b`` (see docs/merge-rules.md for what it must guarantee).

    Raises:
        UsageError: a key or value is malformed, or the function cannot be imported.
    """
    import importlib

    rules: dict[tuple[str, str], Any] = {}
    for key, value in table.items():
        if "." not in key:
            raise UsageError(f"conflict policy key {key!r} must be 'Collection.field' or 'Collection.*'")
        collection, fname = key.split(".", 1)
        if not isinstance(value, str):
            raise UsageError(f"conflict policy for {key} must be a string")
        if ":" in value:
            module_name, func_name = value.split(":", 1)
            try:
                policy: Any = getattr(importlib.import_module(module_name), func_name)
            except (ImportError, AttributeError) as exc:
                raise UsageError(f"cannot import conflict policy {value!r} for {key}: {exc}") from exc
        else:
            policy = value
        rules[(collection, fname)] = policy
    try:
        return Policies(rules)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def named_policies(policies: Policies | None) -> dict[str, str]:
    """The named (non-function) rules of ``policies`` as ``{"Collection.field": name}``."""
    if policies is None:
        return {}
    return {f"{c}.{f}": p for (c, f), p in policies._rules.items() if isinstance(p, str)}


def rules_from_config(data: dict[str, Any]) -> Rules | None:
    """The permission rules of a parsed tidesync.toml: ``[rules.<Collection>]``,
    ``[[default_roles]]`` and ``[partitions]`` (see docs/config.md). None when it has none of
    them (every user may then read and write everything).

    Raises:
        UsageError: a rule is malformed or a filter does not compile.
    """
    if not any(k in data for k in ("rules", "default_roles", "partitions")):
        return None
    from ..query import parse_query, to_predicate

    try:
        rules = Rules.from_config(data.get("rules"), data.get("default_roles"), data.get("partitions"))
        rules.check(lambda doc: to_predicate(parse_query(doc)))
    except ValueError as exc:
        raise UsageError(f"invalid rules in the config: {exc}", advice="see docs/config.md") from exc
    return rules


def schemas_from_config(table: Any, base: Path) -> dict[str, dict[str, Any]]:
    """The ``[schema]`` table: per collection a JSON Schema (inline table) or the path of a
    ``.json`` file (relative to the config file).

    Raises:
        UsageError: a schema cannot be read or uses keywords outside the supported subset.
    """
    import json

    from .schemas import check_schema

    if not isinstance(table, dict):
        raise UsageError("[schema] must be a table of [schema.<Collection>] tables")
    out: dict[str, dict[str, Any]] = {}
    for coll, value in table.items():
        if isinstance(value, str):
            file = Path(value) if Path(value).is_absolute() else base / value
            try:
                value = json.loads(file.read_text())
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read the JSON Schema of {coll} from {file}: {exc}") from exc
        try:
            check_schema(value, f"schema.{coll}")
        except ValueError as exc:
            raise UsageError(f"invalid schema in the config: {exc}", advice="see docs/config.md") from exc
        out[str(coll)] = dict(value)
    return out
