"""Permission rules: roles chosen by ``apply_when``, document filters, field-level permissions.

This module is pure (standard library only). It turns the ``[rules]``, ``[default_roles]`` and
``[partitions]`` parts of ``tidesync.toml`` into decisions; the server's enforcement
(``tidesync.server.enforcement``) applies them to uploads, downloads and bootstraps.

**Roles.** Each collection has an ordered list of roles. A role has:

* ``name``;
* ``apply_when``: a MongoDB-style filter over the user (``{"%%user.id": "..."}``,
  ``{"%%user.data.role": "admin"}``, ``{"%%user.custom_data.team": {"$in": [...]}}``; ``{}``
  always applies);
* ``read`` and ``write``: ``true``, ``false`` or a document filter (``{"owner_id": "%%user.id"}``)
  in which ``%%user.*`` values are expanded from the user. Write implies read, as in Device
  Sync: a document the role may write, it may also read;
* ``insert`` and ``delete``: booleans (default: allowed when ``write`` is not ``false``);
* ``fields``: ``{name: {"read": bool, "write": bool}}``. A listed field follows its own
  permissions (write implies read); an unlisted field follows the role. ``_id`` is always
  readable.

The first role whose ``apply_when`` matches is the user's role for that collection. It is chosen
once per sync session (the user context is frozen when the session starts, as Device Sync did).
A collection without rules of its own uses ``default_roles``; when no role applies, the user may
neither read nor write the collection.

**Filters are data, never text.** ``%%user.*`` placeholders are replaced by the user's *values*
inside the parsed filter document, so a user id containing quotes, ``$`` or a whole MongoDB
operator is only ever compared as a literal. A placeholder whose value is missing, or is a map
(which would read as an operator), makes the whole filter match nothing.

**Partitions** (partition-based sync): ``partitions.read`` and ``partitions.write`` say which
partition values a user may read and write: ``true``/``false``, one value (``"%%user.id"``), a
list of values (elements expanding to lists are flattened), or a filter over
``{"%%partition": ..., "%%user.*": ...}``.

Filters are compiled by a ``FilterCompiler`` the caller passes in (the server uses
:mod:`tidesync.query`), so this module stays at the bottom of the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "FieldRule",
    "Role",
    "PartitionRules",
    "Rules",
    "UserContext",
    "Verdict",
    "CollectionAccess",
    "SessionRules",
    "FilterCompiler",
    "Matcher",
    "expand",
    "MISSING_VALUE",
    "roles_summary",
]

Matcher: TypeAlias = Callable[[Mapping[str, Any]], bool]
#: Compiles a MongoDB filter document into a predicate over plain-form documents; raises
#: ``Exception`` (any) when the filter is malformed.
FilterCompiler: TypeAlias = Callable[[Mapping[str, Any]], Matcher]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING_VALUE"


#: What a placeholder expands to when the user has no such value.
MISSING_VALUE: Any = _Missing()

_TAGS = ("$decimal", "$binary", "$date", "$oid", "$uuid", "$float")
_ROLE_KEYS = frozenset({"name", "apply_when", "read", "write", "insert", "delete", "fields"})


def _never(_: Mapping[str, Any]) -> bool:
    return False


def _always(_: Mapping[str, Any]) -> bool:
    return True


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class FieldRule:
    """Field-level permissions (write implies read)."""

    read: bool
    write: bool


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, not {value!r}")
    return value


def _filter_or_bool(value: Any, where: str) -> bool | dict[str, Any]:
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise ValueError(f"{where} must be true, false or a document filter (a table), not {value!r}")


@dataclass(frozen=True, slots=True)
class Role:
    """One role of a collection (see the module docstring)."""

    name: str
    apply_when: dict[str, Any] = field(default_factory=dict)
    read: bool | dict[str, Any] = False
    write: bool | dict[str, Any] = False
    insert: bool | None = None
    delete: bool | None = None
    fields: dict[str, FieldRule] = field(default_factory=dict)

    @classmethod
    def from_config(cls, data: Any, where: str) -> Role:
        """Build a role from its config table.

        Raises:
            ValueError: a key is unknown or a value has the wrong type (the message says where).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a table")
        unknown = set(data) - _ROLE_KEYS
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; known: {sorted(_ROLE_KEYS)}")
        name = data.get("name", "default")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.name must be a non-empty string")
        apply_when = data.get("apply_when", {})
        if not isinstance(apply_when, Mapping):
            raise ValueError(f"{where}.apply_when must be a table (a filter over %%user)")
        fields: dict[str, FieldRule] = {}
        raw_fields = data.get("fields", {})
        if not isinstance(raw_fields, Mapping):
            raise ValueError(f"{where}.fields must be a table of {{read, write}} tables")
        for fname, perm in raw_fields.items():
            fw = f"{where}.fields.{fname}"
            if not isinstance(perm, Mapping) or set(perm) - {"read", "write"}:
                raise ValueError(f"{fw} must be a table with read and/or write booleans")
            write = _bool(perm.get("write", False), f"{fw}.write")
            read = _bool(perm.get("read", write), f"{fw}.read")
            fields[str(fname)] = FieldRule(read or write, write)
        insert = data.get("insert")
        delete = data.get("delete")
        return cls(
            name=name,
            apply_when=dict(apply_when),
            read=_filter_or_bool(data.get("read", False), f"{where}.read"),
            write=_filter_or_bool(data.get("write", False), f"{where}.write"),
            insert=None if insert is None else _bool(insert, f"{where}.insert"),
            delete=None if delete is None else _bool(delete, f"{where}.delete"),
            fields=fields,
        )

    @property
    def may_insert(self) -> bool:
        return self.insert if self.insert is not None else self.write is not False

    @property
    def may_delete(self) -> bool:
        return self.delete if self.delete is not None else self.write is not False


@dataclass(frozen=True, slots=True)
class PartitionRules:
    """Which partition values a user may read and write (partition-based sync)."""

    read: Any = True
    write: Any = True


def _roles(data: Any, where: str) -> tuple[Role, ...]:
    if isinstance(data, Mapping):
        if "roles" in data:
            extra = set(data) - {"roles"}
            if extra:
                raise ValueError(f"{where} has both roles and {sorted(extra)}: put those inside a role")
            data = data["roles"]
        else:
            return (Role.from_config(data, where),)  # a table that is itself the one role
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"{where} must be a list of roles ([[...roles]] tables)")
    roles = tuple(Role.from_config(r, f"{where}[{i}]") for i, r in enumerate(data))
    names = [r.name for r in roles]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: role names must be unique, got {names}")
    return roles


@dataclass(frozen=True, slots=True)
class Rules:
    """The permission rules of an app.

    Attributes:
        collections: per collection, its roles in order.
        default_roles: the roles of collections without their own (None: none apply, so such
            collections are neither readable nor writable).
        partitions: partition permissions (None: every partition is allowed).
    """

    collections: dict[str, tuple[Role, ...]] = field(default_factory=dict)
    default_roles: tuple[Role, ...] | None = None
    partitions: PartitionRules | None = None

    @classmethod
    def from_config(cls, rules: Any = None, default_roles: Any = None, partitions: Any = None) -> Rules:
        """Build rules from the ``[rules]``, ``[[default_roles]]`` and ``[partitions]`` tables.

        Raises:
            ValueError: something is malformed (the message says where).
        """
        colls: dict[str, tuple[Role, ...]] = {}
        if rules is not None:
            if not isinstance(rules, Mapping):
                raise ValueError("[rules] must be a table of [rules.<Collection>] tables")
            for name, table in rules.items():
                colls[str(name)] = _roles(table, f"rules.{name}")
        if default_roles is not None:
            defaults: tuple[Role, ...] | None = _roles(default_roles, "default_roles")
        elif rules is None:
            # Only [partitions] given: collections are not restricted.
            defaults = (Role("default", read=True, write=True),)
        else:
            defaults = None
        parts: PartitionRules | None = None
        if partitions is not None:
            if not isinstance(partitions, Mapping) or set(partitions) - {"read", "write"}:
                raise ValueError("[partitions] takes read and write")
            parts = PartitionRules(partitions.get("read", True), partitions.get("write", True))
        return cls(colls, defaults, parts)

    @property
    def unrestricted(self) -> bool:
        """True when every user may read and write every document and field (only partition
        permissions, if any, restrict)."""
        return not self.collections and self.default_roles is not None and len(self.default_roles) == 1 and (
            self.default_roles[0] == Role(self.default_roles[0].name, read=True, write=True)
            or self.default_roles[0] == Role(self.default_roles[0].name, {}, True, True, True, True))

    def roles_of(self, collection: str) -> tuple[Role, ...]:
        found = self.collections.get(collection)
        if found is not None:
            return found
        return self.default_roles or ()

    def check(self, compile_filter: FilterCompiler) -> None:
        """Compile every filter once with dummy values, so a malformed one fails at start.

        Raises:
            ValueError: a filter does not compile (the message says which).
        """
        dummy = UserContext("check", {}, {})
        for coll, roles in [*self.collections.items(), ("default_roles", self.default_roles or ())]:
            for role in roles:
                where = f"rules.{coll} role {role.name!r}"
                for what, flt in (("apply_when", role.apply_when), ("read", role.read), ("write", role.write)):
                    if isinstance(flt, dict):
                        doc = flt if what != "apply_when" else _context_filter(flt)
                        try:
                            _check_placeholders(doc, what == "apply_when")
                            compile_filter(expand(doc, dummy.values(), lenient=True))
                        except Exception as exc:  # noqa: BLE001 - the compiler's error, reworded
                            raise ValueError(f"{where}: {what} filter {flt!r} is not valid: {exc}") from exc
        if self.partitions is not None:
            for what in ("read", "write"):
                value = getattr(self.partitions, what)
                if isinstance(value, Mapping):
                    try:
                        _check_placeholders(dict(value), True)
                        compile_filter(expand(_context_filter(dict(value)), dummy.values(), lenient=True))
                    except Exception as exc:  # noqa: BLE001
                        raise ValueError(f"partitions.{what} filter {value!r} is not valid: {exc}") from exc
                else:
                    _check_placeholders(value, False)

    def for_user(self, user: UserContext, compile_filter: FilterCompiler) -> SessionRules:
        """The decisions for one user (one sync session)."""
        return SessionRules(self, user, compile_filter)


# ----------------------------------------------------------------------------- the user


@dataclass(frozen=True, slots=True)
class UserContext:
    """What ``%%user`` stands for: the user's id, data (from the login provider) and custom data."""

    id: str
    data: Mapping[str, Any] = field(default_factory=dict)
    custom_data: Mapping[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """The context document filters over ``%%user`` match: ``{"user": {...}}``."""
        return {"user": {"id": self.id, "data": dict(self.data), "custom_data": dict(self.custom_data)}}


_PLACEHOLDER_ROOTS = ("%%user.id", "%%user.data", "%%user.custom_data", "%%partition")


def _check_placeholders(value: Any, allow_keys: bool) -> None:
    if isinstance(value, str):
        if value.startswith("%%") and not any(value == r or value.startswith(r + ".") for r in _PLACEHOLDER_ROOTS):
            raise ValueError(f"unknown placeholder {value!r}; use %%user.id, %%user.data.<field>, "
                             "%%user.custom_data.<field> or %%partition")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and k.startswith("%%"):
                if not allow_keys:
                    raise ValueError(f"placeholder {k!r} cannot be a field name in a document filter")
                _check_placeholders(k, False)
            _check_placeholders(v, allow_keys)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_placeholders(v, allow_keys)


def _lookup(context: Mapping[str, Any], placeholder: str) -> Any:
    current: Any = context
    for part in placeholder[2:].split("."):
        if not isinstance(current, Mapping) or part not in current:
            return MISSING_VALUE
        current = current[part]
    return current


def _literal(value: Any) -> bool:
    """Can ``value`` stand in a filter as a plain literal (never as an operator)?"""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, Mapping):
        return len(value) == 1 and next(iter(value)) in _TAGS
    if isinstance(value, (list, tuple)):
        return all(_literal(v) for v in value)
    return False


class _Unmatchable(Exception):
    pass


def expand(doc: Any, context: Mapping[str, Any], *, lenient: bool = False) -> Any:
    """``doc`` with every ``"%%..."`` string value replaced by its value in ``context``.

    Only values are replaced, never keys or operators, and only by literals.

    Raises:
        ValueError: (unless ``lenient``) a placeholder is missing or is not a literal; the
            caller then treats the filter as matching nothing.
    """
    if isinstance(doc, str):
        if doc.startswith("%%"):
            value = _lookup(context, doc)
            if value is MISSING_VALUE or not _literal(value):
                if lenient:
                    return ""
                raise _Unmatchable(doc)
            return value
        return doc
    if isinstance(doc, Mapping):
        return {k: expand(v, context, lenient=lenient) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [expand(v, context, lenient=lenient) for v in doc]
    return doc


def _context_filter(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A filter over the user context: keys ``"%%user.data.x"`` become paths ``"user.data.x"``."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        key = k[2:] if isinstance(k, str) and k.startswith("%%") else k
        if isinstance(v, Mapping) and not (isinstance(k, str) and k.startswith("%%")):
            out[key] = _context_filter(v) if k in ("$and", "$or", "$nor") else v
        elif isinstance(v, (list, tuple)) and k in ("$and", "$or", "$nor"):
            out[key] = [_context_filter(i) if isinstance(i, Mapping) else i for i in v]
        else:
            out[key] = v
    return out


def _compile(doc: Mapping[str, Any], context: Mapping[str, Any], compile_filter: FilterCompiler) -> Matcher:
    try:
        return compile_filter(expand(doc, context))
    except _Unmatchable:
        return _never
    except Exception:  # noqa: BLE001 - a value that does not fit the filter: match nothing
        return _never


# ----------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a write is refused.

    Attributes:
        operation: ``"create"``, ``"update"`` or ``"delete"``.
        code: a stable rule code (``no_role``, ``insert_denied``, ``delete_denied``,
            ``write_denied``, ``write_access_lost``, ``field_write_denied``, ``partition``,
            ``partition_write_denied``, ``schema``).
        message: says which role and rule refused it.
    """

    operation: str
    code: str
    message: str


def _describe(value: bool | dict[str, Any]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    import json

    return json.dumps(value, sort_keys=True, default=str)


class CollectionAccess:
    """One user's permissions on one collection (its role, filters compiled and expanded)."""

    def __init__(self, collection: str, role: Role | None, context: Mapping[str, Any],
                 compile_filter: FilterCompiler) -> None:
        self.collection = collection
        self.role = role
        if role is None:
            self._read: Matcher = _never
            self._write: Matcher = _never
            self.read_all = False
            return
        self._write = self._matcher(role.write, context, compile_filter)
        read = self._matcher(role.read, context, compile_filter)
        write = self._write
        self._read = read if role.write is False else (lambda body: read(body) or write(body))
        self.read_all = role.read is True or role.write is True

    @staticmethod
    def _matcher(value: bool | dict[str, Any], context: Mapping[str, Any], compile_filter: FilterCompiler) -> Matcher:
        if value is True:
            return _always
        if value is False:
            return _never
        return _compile(value, context, compile_filter)

    @property
    def role_name(self) -> str | None:
        return self.role.name if self.role is not None else None

    def can_read(self, body: Mapping[str, Any]) -> bool:
        """May the user see this (live) document?"""
        return self._read(body)

    def field_readable(self, name: str) -> bool:
        """May the user see field ``name`` of a document it can read?"""
        if name == "_id" or self.role is None:
            return name == "_id"
        rule = self.role.fields.get(name)
        return True if rule is None else rule.read

    def field_writable(self, name: str) -> bool:
        if self.role is None or name == "_id":
            return False
        rule = self.role.fields.get(name)
        return True if rule is None else rule.write

    @property
    def strips_fields(self) -> bool:
        """True when some field is hidden from this user."""
        return self.role is not None and any(not r.read for r in self.role.fields.values())

    def readable_fields(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``body`` without the fields the user may not read."""
        return {k: v for k, v in body.items() if self.field_readable(k)}

    def check_fields_written(self, names: Iterable[str]) -> Verdict | None:
        """Decide an update by the fields it writes, whatever their effect: a field this role
        may not write is refused even when the write changes nothing (it lost to a later
        value), as Device Sync refused it. None when every one is writable (or no role
        applies: :meth:`check_write` says that)."""
        if self.role is None:
            return None
        for name in names:
            if not self.field_writable(name):
                return Verdict("update", "field_write_denied",
                               f"role {self.role.name!r} of {self.collection} may not write field {name!r}")
        return None

    def check_write(self, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> Verdict | None:
        """Decide a write by its effect: the document before and after it (None: not live).

        Returns:
            None when it is allowed, else the :class:`Verdict`.
        """
        if before is None and after is None:
            return None
        operation = "create" if before is None else ("delete" if after is None else "update")
        role = self.role
        coll = self.collection
        if role is None:
            return Verdict(operation, "no_role", f"no role of {coll} applies to this user")
        rn = f"role {role.name!r} of {coll}"
        if operation == "create":
            assert after is not None
            if not role.may_insert:
                return Verdict(operation, "insert_denied", f"{rn} may not insert documents")
            if not self._write(after):
                return Verdict(operation, "write_denied",
                               f"{rn} may only create documents matching its write rule {_describe(role.write)}")
            for name, value in after.items():
                if value is not None and not self.field_writable(name) and name != "_id":
                    return Verdict(operation, "field_write_denied", f"{rn} may not write field {name!r}")
            return None
        assert before is not None
        if not self._write(before):
            what = "delete" if operation == "delete" else "change"
            return Verdict(operation, "write_denied",
                           f"{rn} may not {what} this document (write rule {_describe(role.write)})")
        if operation == "delete":
            if not role.may_delete:
                return Verdict(operation, "delete_denied", f"{rn} may not delete documents")
            return None
        assert after is not None
        for name in sorted(set(before) | set(after)):
            if before.get(name, MISSING_VALUE) != after.get(name, MISSING_VALUE) and not self.field_writable(name):
                return Verdict(operation, "field_write_denied", f"{rn} may not write field {name!r}")
        if not self._write(after):
            return Verdict(operation, "write_access_lost",
                           f"{rn}: after this change the document would no longer match the write rule "
                           f"{_describe(role.write)}")
        return None


class SessionRules:
    """The rules as they apply to one user: one :class:`CollectionAccess` per collection."""

    def __init__(self, rules: Rules, user: UserContext, compile_filter: FilterCompiler) -> None:
        self.rules = rules
        self.user = user
        self._compile = compile_filter
        self._context = user.values()
        self._access: dict[str, CollectionAccess] = {}

    def role_for(self, collection: str) -> Role | None:
        """The first role of ``collection`` whose ``apply_when`` matches the user (None: none)."""
        for role in self.rules.roles_of(collection):
            if not role.apply_when:
                return role
            match = _compile(_context_filter(role.apply_when), self._context, self._compile)
            if match(self._context):
                return role
        return None

    def collection(self, name: str) -> CollectionAccess:
        access = self._access.get(name)
        if access is None:
            access = CollectionAccess(name, self.role_for(name), self._context, self._compile)
            self._access[name] = access
        return access

    def _partition_allowed(self, rule: Any, value: Any) -> bool:
        if rule is True:
            return True
        if rule is False or rule is None:
            return False
        if isinstance(rule, Mapping):
            context = dict(self._context)
            context["partition"] = value
            match = _compile(_context_filter(dict(rule)), context, self._compile)
            return match(context)
        options = rule if isinstance(rule, (list, tuple)) else [rule]
        allowed: list[Any] = []
        for option in options:
            if isinstance(option, str) and option.startswith("%%"):
                got = _lookup(self._context, option)
                if got is MISSING_VALUE:
                    continue
                allowed.extend(got if isinstance(got, (list, tuple)) else [got])
            else:
                allowed.append(option)
        return any(_same(value, a) for a in allowed)

    def can_read_partition(self, value: Any) -> bool:
        p = self.rules.partitions
        return True if p is None else (self._partition_allowed(p.read, value)
                                       or self._partition_allowed(p.write, value))

    def can_write_partition(self, value: Any) -> bool:
        p = self.rules.partitions
        return True if p is None else self._partition_allowed(p.write, value)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def roles_summary(rules: Rules, collections: Iterable[str]) -> dict[str, list[str]]:
    """The role names of each collection (for logs and docs)."""
    return {c: [r.name for r in rules.roles_of(c)] for c in collections}
