"""Typed model classes: how an app declares its schema in Python.

::

    class Address(tidesync.EmbeddedModel):
        street: str
        city: str

    class WorkOrder(tidesync.Model):
        _id: tidesync.ObjectId = tidesync.field(primary_key=True, default_factory=tidesync.ObjectId)
        title: str = tidesync.field(indexed=True)
        status: str = "open"
        site: Address | None = None

Fields are keyword-only. A class with no primary key gets ``_id: ObjectId`` made by
``ObjectId()``. An instance made by calling the class is *unmanaged*: a plain value holder.
``db.create()``, ``db.get()`` and queries return *managed* instances, whose attributes read the
database and whose assignments (inside ``db.write()``) become operations. This module is pure:
the database plugs in through the :class:`Binding` protocol.
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Protocol, TypeAlias, dataclass_transform
from uuid import UUID

from ..errors import InvalidatedObjectError, SchemaError, ValidationError
from .objectid import ObjectId
from .schema import COLLECTION_KINDS, FieldSchema, FieldType, ObjectSchema, Schema
from .values import (
    INT64_MAX, INT64_MIN, NOT_TEXT_ADVICE, Plain, check_key, not_text_message, surrogate_at, to_plain,
)

__all__ = ["Model", "EmbeddedModel", "field", "Counter", "Mixed", "Binding", "schema_of",
           "FieldSpec", "model_registry", "models_reached", "MISSING", "Backlinks", "backlinks"]

Mixed: TypeAlias = Any
"""A field that holds any storable value (null, bool, int, float, Decimal, str, bytes,
datetime, ObjectId, UUID, list, dict)."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Counter:
    """An integer that merges by adding up concurrent increments.

    ``Counter(5)`` makes an unmanaged counter; on a managed object, ``obj.visits.increment(1)``
    records an increment (inside ``db.write()``). Compares equal to its int value.
    """

    __slots__ = ("_value", "_owner")

    def __init__(self, value: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"a Counter holds an int, not {type(value).__name__}")
        self._value = value
        self._owner: Callable[[int], int] | None = None

    @property
    def value(self) -> int:
        return self._value

    def increment(self, amount: int = 1) -> None:
        """Add ``amount`` (may be negative)."""
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise ValidationError(f"Counter.increment takes an int, not {type(amount).__name__}")
        if self._owner is not None:
            self._value = self._owner(amount)
        else:
            self._value += amount

    def decrement(self, amount: int = 1) -> None:
        """Subtract ``amount``."""
        self.increment(-amount)

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Counter):
            return self._value == other._value
        if isinstance(other, int):
            return self._value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Counter({self._value})"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What ``tidesync.field()`` returns: options for one field."""

    default: Any = MISSING
    default_factory: Callable[[], Any] | None = None
    primary_key: bool = False
    indexed: bool = False


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | None = None,
          primary_key: bool = False, indexed: bool = False) -> Any:
    """Declare a field's options.

    Args:
        default: value used when the field is not given.
        default_factory: called to make the default (for lists, sets, dicts, counters, ids).
        primary_key: this field is the primary key (name it ``_id``, as Device Sync requires).
        indexed: create a SQLite index so queries on this field use it.
    """
    if default is not MISSING and default_factory is not None:
        raise SchemaError("give a default or a default_factory, not both")
    return FieldSpec(default, default_factory, primary_key, indexed)


class Backlinks:
    """What :func:`backlinks` returns: a read-only attribute of a model giving, for a stored
    object, the live results of the ``origin`` objects whose link field ``field`` points at
    it (Realm's ``LinkingObjects``)."""

    __slots__ = ("origin", "field", "owner", "name", "_checked")

    def __init__(self, origin: type[Model] | str, field: str) -> None:
        if not isinstance(field, str) or not field:
            raise SchemaError(f"backlinks need the name of the origin's link field, not {field!r}")
        if not isinstance(origin, str) and not (isinstance(origin, type) and issubclass(origin, Model)):
            raise SchemaError(f"backlinks need a model class or its name, not {origin!r}")
        self.origin, self.field = origin, field
        self.owner: type[_ModelBase] | None = None
        self.name = ""
        self._checked: type[_ModelBase] | None = None  # the origin, once found and checked

    def __set_name__(self, owner: type[_ModelBase], name: str) -> None:
        self.owner, self.name = owner, name

    def _origin_class(self) -> type[_ModelBase]:
        if self._checked is not None:
            return self._checked
        origin = self._named(self.origin) if isinstance(self.origin, str) else self.origin
        where = f"{getattr(self.owner, '__name__', '?')}.{self.name}"
        if origin is None:
            raise SchemaError(f"{where}: no model named {self.origin!r} (the backlinks' origin)")
        t = schema_of(origin).fields.get(self.field)
        link = t.type if t is not None else None
        if link is not None and link.kind in ("list", "set") and link.element is not None:
            link = link.element
        if link is None or link.kind != "link" or link.target != getattr(self.owner, "__name__", None):
            raise SchemaError(f"{where}: {origin.__name__}.{self.field} is not a link (or list of links) "
                              f"to {getattr(self.owner, '__name__', '?')}")
        self._checked = origin
        return origin

    def _named(self, name: str) -> type[_ModelBase] | None:
        """The model called ``name``: the one the owner's module defines or imports under that
        name, as Python resolves a name written there, else the last model declared with it."""
        module = sys.modules.get(getattr(self.owner, "__module__", ""))
        here = getattr(module, name, None) if module is not None else None
        if isinstance(here, type) and issubclass(here, _ModelBase) and here.__name__ == name:
            return here
        return _registry.get(name)

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        origin = self._origin_class()
        binding = obj._ts_binding
        if binding is None:
            raise InvalidatedObjectError(f"{type(obj).__name__}.{self.name}: an object that is not in a "
                                         f"database has no backlinks", advice="read them from a stored object")
        db = binding.db
        return db.objects(origin).filter({self.field: obj._ts_primary_key()})

    def __set__(self, obj: Any, value: Any) -> None:
        raise ValidationError(f"{type(obj).__name__}.{self.name} is computed from "
                              f"{getattr(self.origin, '__name__', self.origin)}.{self.field}: set that link instead")


def backlinks(origin: type[Model] | str, field: str) -> Any:
    """The objects of ``origin`` whose link field ``field`` (a link, or a list or set of links)
    points at this object, as live results (Realm's ``LinkingObjects``)::

        class Technician(tidesync.Model):
            _id: str = tidesync.field(primary_key=True)
            orders = tidesync.backlinks("WorkOrder", "technician")   # not annotated: not stored

        ann.orders.filter("status == 'open'")

    Nothing is stored or synced for it: each read queries ``origin``. ``origin`` may be the
    class or its name (for a model declared later): a name is looked up in the module that
    declares this model first, then among every model declared.
    """
    return Backlinks(origin, field)


class Binding(Protocol):
    """How a managed instance reaches its database (implemented by the store)."""

    def get_field(self, obj: Any, name: str) -> Any: ...
    def set_field(self, obj: Any, name: str, value: Any) -> None: ...


_registry: dict[str, type[_ModelBase]] = {}


def model_registry() -> Mapping[str, type[_ModelBase]]:
    """Every model class defined so far, by name."""
    return _registry


class _FieldDescriptor:
    __slots__ = ("name", "owner", "_spec_of")

    def __init__(self, name: str, owner: type[_ModelBase]) -> None:
        self.name = name
        self.owner = owner
        #: (class, its FieldSchema of this field, the type whose values the field takes as they
        #: are: an int in range for an int field) for the class last assigned through here: a
        #: class's schema is computed once (:func:`schema_of`), so the triple stays true.
        self._spec_of: tuple[type, FieldSchema, type | None] | None = None

    def __get__(self, obj: _ModelBase | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        binding = obj._ts_binding
        if binding is not None:
            return binding.get_field(obj, self.name)
        try:
            return obj._ts_values[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj: _ModelBase, value: Any) -> None:
        cls = obj.__class__
        known = self._spec_of
        if known is not None and known[0] is cls:
            spec, exact = known[1], known[2]
        else:
            spec = schema_of(cls).fields[self.name]  # read only: no copy of the fields
            kind = spec.type.kind
            exact = int if kind == "int" else _EXACT.get(kind)
            self._spec_of = (cls, spec, exact)
        tv = type(value)
        # (A str that is not ASCII goes to coerce too, which refuses half of a surrogate pair.)
        if tv is not exact or (not INT64_MIN <= value <= INT64_MAX if tv is int else
                               tv is str and not value.isascii()):
            value = coerce(cls.__name__, spec, value)  # (what coerce returns at once for the others)
        binding = obj._ts_binding
        if binding is not None:
            binding.set_field(obj, self.name, value)
        else:
            obj._ts_values[self.name] = value


@dataclass(frozen=True, slots=True)
class _Declared:
    name: str
    hint: Any
    spec: FieldSpec


@dataclass_transform(kw_only_default=True, field_specifiers=(field,))
class _ModelBase:
    __ts_embedded__: ClassVar[bool] = False
    __ts_declared__: ClassVar[dict[str, _Declared]]
    __ts_schema__: ClassVar[ObjectSchema | None]
    __ts_types__: ClassVar[dict[str, FieldType] | None]
    #: The models this one's link and embedded fields name, as its annotations resolved them.
    __ts_targets__: ClassVar[dict[str, type[_ModelBase]]]

    __slots__ = ("_ts_values", "_ts_binding", "_ts_ref", "__weakref__")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__ in ("Model", "EmbeddedModel") and cls.__module__ == __name__:
            return
        raw = cls.__dict__.get("__annotations__", {})
        declared: dict[str, _Declared] = {}
        for base in reversed(cls.__mro__[1:]):
            declared.update(getattr(base, "__ts_declared__", {}))
        for name, hint in raw.items():
            if name.startswith("__") or _is_classvar(hint):
                continue
            if name.startswith("_ts_"):
                raise SchemaError(f"{cls.__name__}.{name}: names starting with '_ts_' are tidesync's own")
            default = cls.__dict__.get(name, MISSING)
            if isinstance(default, Backlinks):
                continue  # annotated for type checkers only: computed, not stored
            spec = default if isinstance(default, FieldSpec) else FieldSpec(default=default)
            if isinstance(spec.default, (list, dict, set)):
                raise SchemaError(f"{cls.__name__}.{name}: a mutable default is shared between objects; "
                                  "use tidesync.field(default_factory=list) (or set, dict)")
            declared[name] = _Declared(name, hint, spec)
        cls.__ts_declared__ = declared
        cls.__ts_schema__ = None
        cls.__ts_types__ = None
        cls.__ts_targets__ = {}
        for name in declared:
            setattr(cls, name, _FieldDescriptor(name, cls))
        if not cls.__ts_embedded__:
            pks = [d.name for d in declared.values() if d.spec.primary_key]
            if not pks:
                if "_id" in declared:
                    raise SchemaError(f"{cls.__name__}._id must be declared with tidesync.field(primary_key=True)")
                declared["_id"] = _Declared("_id", ObjectId, FieldSpec(default_factory=ObjectId, primary_key=True))
                setattr(cls, "_id", _FieldDescriptor("_id", cls))
            elif len(pks) > 1:
                raise SchemaError(f"{cls.__name__} declares several primary keys: {pks}")
            elif pks[0] != "_id":
                raise SchemaError(f"{cls.__name__}: the primary key must be named _id, not {pks[0]}")
        elif any(d.spec.primary_key for d in declared.values()):
            raise SchemaError(f"{cls.__name__}: an embedded model has no primary key")
        _registry[cls.__name__] = cls

    def __init__(self, **values: Any) -> None:
        self._ts_binding: Binding | None = None
        self._ts_ref: Any = None
        self._ts_values: dict[str, Any] = {}
        fields = self._ts_fields()
        unknown = set(values) - set(fields)
        if unknown:
            raise ValidationError(f"{type(self).__name__} has no field(s) {sorted(unknown)}; "
                                  f"its fields are {sorted(fields)}")
        for name, spec in fields.items():
            if name in values:
                self._ts_values[name] = coerce(type(self).__name__, spec, values[name])
            else:
                default = default_of(type(self), name)
                if default is MISSING:
                    raise ValidationError(f"{type(self).__name__}.{name} is required "
                                          f"(type {spec.type.describe()})")
                self._ts_values[name] = default

    @classmethod
    def _ts_fields(cls) -> dict[str, FieldSchema]:
        schema = schema_of(cls)
        return dict(schema.fields)

    @property
    def is_managed(self) -> bool:
        """True when this object lives in a database (returned by create/get/queries)."""
        return self._ts_binding is not None

    def to_dict(self) -> dict[str, Any]:
        """The field values as a plain dict of Python values."""
        out: dict[str, Any] = {}
        for name in self._ts_fields():
            v = getattr(self, name)
            if isinstance(v, _ModelBase):
                v = v.to_dict() if v.__ts_embedded__ else v._ts_primary_key()
            elif isinstance(v, Counter):
                v = v.value
            elif isinstance(v, (list, tuple)) or type(v).__name__ == "ManagedList":
                v = [x._ts_primary_key() if isinstance(x, _ModelBase) else x for x in v]
            elif isinstance(v, (set, frozenset)) or type(v).__name__ == "ManagedSet":
                v = set(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[name] = v
        return out

    def add_listener(self, callback: Callable[[Any, Any], None], *, key_paths: list[str] | None = None) -> Any:
        """Call ``callback(obj, change)`` after every commit that changes this managed object.

        ``change.changed_fields`` names the fields that changed; ``change.deleted`` is True
        (once, last) when the object was deleted. Returns a token with ``remove()``.
        """
        binding = self._ts_binding
        if binding is None or getattr(binding, "path", ()) != ():
            raise InvalidatedObjectError("only managed top-level objects have listeners",
                                         advice="add the object to a database first")
        return binding.db._listener_hub().add_object(self, callback, key_paths)  # type: ignore[attr-defined]

    def _ts_primary_key(self) -> Any:
        return getattr(self, "_id")

    def __repr__(self) -> str:
        if self._ts_binding is None:
            inner = ", ".join(f"{k}={v!r}" for k, v in self._ts_values.items())
            return f"{type(self).__name__}({inner})"
        try:
            pk = self._ts_primary_key() if not self.__ts_embedded__ else ""
        except InvalidatedObjectError:
            return f"<{type(self).__name__} (deleted)>"
        return f"<{type(self).__name__} {pk!r}>" if pk != "" else f"<{type(self).__name__} (embedded)>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _ModelBase) or type(other) is not type(self):
            return NotImplemented
        if self._ts_binding is not None and other._ts_binding is not None and not self.__ts_embedded__:
            return (getattr(self._ts_binding, "db", None) is getattr(other._ts_binding, "db", None)
                    and self._ts_ref == other._ts_ref)
        if self._ts_binding is None and other._ts_binding is None:
            return self._ts_values == other._ts_values
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        if self._ts_binding is not None and not self.__ts_embedded__:
            return hash((type(self).__name__, self._ts_ref))
        return id(self)


class Model(_ModelBase):
    """Base class of a collection's documents. Subclass it and annotate the fields."""

    __slots__ = ()


class EmbeddedModel(_ModelBase):
    """Base class of an embedded object type (stored inside its parent document)."""

    __ts_embedded__ = True
    __slots__ = ()


def _is_classvar(hint: Any) -> bool:
    if isinstance(hint, str):
        return hint.startswith(("ClassVar", "typing.ClassVar"))
    return typing.get_origin(hint) is ClassVar


def _resolve_hints(cls: type[_ModelBase]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, decl in cls.__ts_declared__.items():
        hint = decl.hint
        if isinstance(hint, str):
            module = sys.modules.get(cls.__module__)
            # A name resolves as Python would resolve it in the model's module; a model that
            # module does not hold (declared later, or inside a function) by its name.
            globalns = {**_registry, **vars(module)} if module else dict(_registry)
            localns: dict[str, Any] = {"Mixed": Mixed, "Counter": Counter, "ObjectId": ObjectId}
            try:
                hint = eval(hint, globalns, localns)  # noqa: S307 - a type annotation of the app's own class
            except Exception as exc:
                raise SchemaError(f"{cls.__name__}.{name}: cannot resolve the annotation {decl.hint!r} "
                                  f"({exc}); define the referenced model before opening the database") from None
        out[name] = hint
    return out


_SCALARS: dict[Any, str] = {bool: "bool", int: "int", float: "float", Decimal: "decimal", str: "str",
                            bytes: "bytes", datetime: "datetime", ObjectId: "objectid", UUID: "uuid"}


def _field_type(owner: str, name: str, hint: Any, *, element: bool = False,
                targets: dict[str, type[_ModelBase]] | None = None) -> FieldType:
    nullable = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) != 1:
            raise SchemaError(f"{owner}.{name}: unions other than `X | None` are not supported; use tidesync.Mixed")
        nullable = True
        hint = members[0]
        origin = typing.get_origin(hint)
    if hint is Any:
        return FieldType("mixed", nullable=True)
    if hint in _SCALARS:
        return FieldType(_SCALARS[hint], nullable)
    if hint is Counter:
        if element:
            raise SchemaError(f"{owner}.{name}: a Counter cannot be inside a collection")
        return FieldType("counter", nullable)
    if origin in (list, set, dict):
        if element:
            raise SchemaError(f"{owner}.{name}: collections inside collections are not supported; use Mixed")
        args: tuple[Any, ...] = typing.get_args(hint)
        if origin is dict:
            if len(args) != 2 or args[0] is not str:
                raise SchemaError(f"{owner}.{name}: dictionaries must be dict[str, T]")
            inner = args[1]
        else:
            if len(args) != 1:
                raise SchemaError(f"{owner}.{name}: give the element type, e.g. list[str]")
            inner = args[0]
        kind = {list: "list", set: "set", dict: "dict"}[origin]
        elem = _field_type(owner, name, inner, element=True, targets=targets)
        if kind == "set" and elem.kind in ("object", "mixed"):
            raise SchemaError(f"{owner}.{name}: sets hold scalars or links")
        return FieldType(kind, nullable, element=elem)
    if isinstance(hint, type) and issubclass(hint, _ModelBase):
        if targets is not None:
            targets[hint.__name__] = hint
        if hint.__ts_embedded__:
            return FieldType("object", nullable or element, target=hint.__name__)
        if not nullable and not element:
            raise SchemaError(f"{owner}.{name}: a link must be optional (`{hint.__name__} | None`), "
                              "because the linked object can be deleted")
        return FieldType("link", True if not element else False, target=hint.__name__)
    raise SchemaError(f"{owner}.{name}: tidesync cannot store {hint!r}; use one of bool, int, float, "
                      "Decimal, str, bytes, datetime, ObjectId, UUID, Counter, Mixed, a model, "
                      "or list/set/dict of those")


def schema_of(cls: type[_ModelBase]) -> ObjectSchema:
    """The :class:`ObjectSchema` of a model class (computed once, on first use)."""
    cached: ObjectSchema | None = cls.__dict__.get("__ts_schema__")
    if cached is not None:
        return cached
    hints = _resolve_hints(cls)
    fields: dict[str, FieldSchema] = {}
    targets: dict[str, type[_ModelBase]] = {}
    for name, decl in cls.__ts_declared__.items():
        ftype = _field_type(cls.__name__, name, hints[name], targets=targets)
        if decl.spec.primary_key and ftype.kind not in ("objectid", "uuid", "str", "int"):
            raise SchemaError(f"{cls.__name__}._id: a primary key is ObjectId, UUID, str or int")
        if decl.spec.primary_key and ftype.nullable:
            raise SchemaError(f"{cls.__name__}._id: a primary key cannot be None")
        fields[name] = FieldSchema(name, ftype, decl.spec.indexed or decl.spec.primary_key, decl.spec.primary_key)
    found: dict[str, tuple[str, str]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Backlinks):
                origin = value.origin if isinstance(value.origin, str) else value.origin.__name__
                found[name] = (origin, value.field)
    schema = ObjectSchema(cls.__name__, fields, cls.__ts_embedded__, found)
    cls.__ts_targets__ = targets
    cls.__ts_schema__ = schema
    return schema


def schema_for_models(models: list[type[_ModelBase]]) -> Schema:
    """The schema of ``models`` and every embedded or linked model they reach."""
    return Schema({name: schema_of(cls) for name, cls in models_reached(models).items()})


def models_reached(models: list[type[_ModelBase]]) -> dict[str, type[_ModelBase]]:
    """``models`` and every embedded or linked model they reach, by name: each link or embedded
    field reaches the class its annotation resolved to.

    Raises:
        SchemaError: two different classes of one name are reached (a name is a collection).
    """
    found: dict[str, type[_ModelBase]] = {}
    todo = [(cls, "the schema") for cls in models]
    while todo:
        cls, via = todo.pop()
        seen = found.get(cls.__name__)
        if seen is cls:
            continue
        if seen is not None:
            raise SchemaError(f"two models are named {cls.__name__} ({_qualified(seen)} and {_qualified(cls)}, "
                              f"reached from {via}); a model's name is its collection",
                              advice="give one of them another name, or open them in separate databases")
        s = schema_of(cls)
        found[cls.__name__] = cls
        for f in s.fields.values():
            t = f.type.element if f.type.kind in COLLECTION_KINDS else f.type
            if t is not None and t.target is not None:
                target = cls.__ts_targets__.get(t.target) or _registry.get(t.target)
                if target is None:
                    raise SchemaError(f"{cls.__name__}.{f.name} refers to unknown model {t.target}")
                todo.append((target, f"{cls.__name__}.{f.name}"))
    return found


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def default_of(cls: type[_ModelBase], name: str) -> Any:
    """The default value of field ``name`` (made fresh from its factory), or MISSING."""
    decl = cls.__ts_declared__[name]
    if decl.spec.default_factory is not None:
        return decl.spec.default_factory()
    if decl.spec.default is not MISSING:
        return decl.spec.default
    if schema_of(cls).fields[name].type.nullable:
        return None
    return MISSING


def coerce(owner: str, spec: FieldSchema, value: Any) -> Any:
    """Check ``value`` against the field's type; return it (ints widened to float where declared).

    Raises:
        ValidationError: naming the model, the field and the expected type.
    """
    k = spec.type.kind
    tv = type(value)
    if tv is _EXACT.get(k):
        if k != "str" or value.isascii() or surrogate_at(value) < 0:
            return value  # as _coerce would, without the call and the try
    elif tv is int and k == "int" and INT64_MIN <= value <= INT64_MAX:
        return value  # likewise
    try:
        return _coerce(spec.type, value)
    except _NotText as exc:
        raise ValidationError(f"{owner}.{spec.name}: {exc.message}", advice=NOT_TEXT_ADVICE) from None
    except _Mismatch as exc:
        raise ValidationError(f"{owner}.{spec.name} expects {spec.type.describe()}, "
                              f"got {type(value).__name__} {_short(value)}{exc.detail}") from None


class _Mismatch(Exception):
    def __init__(self, detail: str = "") -> None:
        self.detail = detail


class _NotText(Exception):
    """A str (the value, an element, a Mixed value's) holds half of a UTF-16 surrogate pair:
    refused at the write, as SQLite would refuse it at the commit (``coerce`` names the field)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _text(value: str) -> str:
    """``value`` if it is Unicode text (no surrogate code point), else raise :class:`_NotText`."""
    at = surrogate_at(value)
    if at >= 0:
        raise _NotText(not_text_message(value, at))
    return value


def _plain_text(plain: Plain) -> None:
    """Raise :class:`_NotText` if a str in the plain form ``plain`` is not Unicode text (its
    dictionary keys were checked by ``to_plain``)."""
    if isinstance(plain, str):
        if not plain.isascii():
            _text(plain)
    elif isinstance(plain, list):
        for v in plain:
            _plain_text(v)
    elif isinstance(plain, dict):
        for v in plain.values():
            _plain_text(v)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# kind -> the Python type whose instances the kind takes as they are (the common case, first).
_EXACT: dict[str, type] = {"str": str, "bool": bool, "float": float, "decimal": Decimal, "objectid": ObjectId,
                           "uuid": UUID}


def _coerce(t: FieldType, value: Any) -> Any:
    if value is None:
        if t.nullable or t.kind == "mixed":
            return None
        raise _Mismatch()
    k = t.kind
    tv = type(value)
    if tv is _EXACT.get(k):
        return value if k != "str" or value.isascii() else _text(value)
    if k == "mixed":
        try:
            plain = to_plain(value)
        except ValueError as exc:
            raise _Mismatch(f": {exc}") from None
        _plain_text(plain)
        return value
    if k == "bool":
        if isinstance(value, bool):
            return value
        raise _Mismatch()
    if k == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                raise _Mismatch(": it does not fit in 64 bits")
            return value
        raise _Mismatch()
    if k == "float":
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch()
    if k == "datetime":
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise _Mismatch(": naive datetimes are refused; give a timezone-aware one "
                                "(e.g. datetime.now(timezone.utc))")
            return value
        raise _Mismatch()
    if k == "bytes":
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        raise _Mismatch()
    if k in ("decimal", "str", "objectid", "uuid"):
        py = {"decimal": Decimal, "str": str, "objectid": ObjectId, "uuid": UUID}[k]
        if k == "str" and isinstance(value, str):
            return _text(value)
        if isinstance(value, py):
            return value
        if k == "decimal" and isinstance(value, int) and not isinstance(value, bool):
            return Decimal(value)
        raise _Mismatch()
    if k == "counter":
        if isinstance(value, Counter):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return Counter(value)
        raise _Mismatch()
    if k == "object":
        if isinstance(value, _ModelBase) and type(value).__name__ == t.target and value.__ts_embedded__:
            return value
        cls = _registry.get(t.target or "")
        if isinstance(value, Mapping) and cls is not None:
            try:
                return cls(**value)
            except ValidationError as exc:
                raise _Mismatch(f": {exc}") from None
        raise _Mismatch()
    if k == "link":
        # Any class of the target's name: the link names a collection (see models_reached).
        if isinstance(value, _ModelBase) and type(value).__name__ == t.target and not value.__ts_embedded__:
            return value
        raise _Mismatch(f": assign a {t.target} object")
    if k == "list":
        assert t.element is not None
        if isinstance(value, (list, tuple)) or type(value).__name__ == "ManagedList":
            return [_coerce_elem(t.element, v) for v in value]
        raise _Mismatch()
    if k == "set":
        assert t.element is not None
        if isinstance(value, (set, frozenset, list, tuple)) or type(value).__name__ == "ManagedSet":
            return {_coerce_elem(t.element, v) for v in value}
        raise _Mismatch()
    if k == "dict":
        assert t.element is not None
        if isinstance(value, Mapping):
            out = {}
            for key, v in value.items():
                try:
                    check_key(key)
                except ValueError as exc:
                    raise _Mismatch(f": {exc}") from None
                out[key] = _coerce_elem(t.element, v)
            return out
        raise _Mismatch()
    raise _Mismatch()


def _coerce_elem(t: FieldType, value: Any) -> Any:
    try:
        return _coerce(t, value)
    except _Mismatch as exc:
        raise _Mismatch(f": element {_short(value)} is not {t.describe()}{exc.detail}") from None


# Kinds whose values to_plain encodes by itself.
_PLAIN_KINDS = frozenset({"bool", "int", "float", "decimal", "str", "bytes", "datetime", "objectid", "uuid", "mixed"})

_SELF_PLAIN: dict[str, type] = {"str": str, "bool": bool}


def self_plain_type(t: FieldType) -> type | None:
    """The Python type whose values a field of type ``t`` takes unchanged and stores as they are
    (``coerce`` and ``value_to_plain`` both return such a value itself), or None: a shortcut
    for bulk writers."""
    return _SELF_PLAIN.get(t.kind)


def value_to_plain(t: FieldType, value: Any) -> Plain:
    """The plain form of an already-coerced value of type ``t`` (links become primary keys)."""
    if value is None:
        return None
    k = t.kind
    if k in _PLAIN_KINDS:
        tv = type(value)
        if tv is str or tv is bool:
            return value  # what to_plain gives, without its checks
        if tv is int:
            if INT64_MIN <= value <= INT64_MAX:
                return value
        elif tv is float and value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            return value
        return to_plain(value)
    if k == "link":
        return to_plain(value._ts_primary_key())
    if k == "object":
        s = schema_of(type(value))
        return {name: value_to_plain(f.type, getattr(value, name)) for name, f in s.fields.items()}
    if k == "counter":
        return int(value)
    if k in ("list", "set"):
        assert t.element is not None
        items = [value_to_plain(t.element, v) for v in value]
        if k == "set":
            from .values import canonical_json

            items = sorted(items, key=canonical_json)
        return items
    if k == "dict":
        assert t.element is not None
        return {key: value_to_plain(t.element, v) for key, v in value.items()}
    return to_plain(value)
