"""Schemas: what fields a collection (or embedded object type) has, and of which types.

A schema is plain data, built from typed model classes by :mod:`tidesync.core.models` or
read back from a database file. The query compiler, the store and the server use it; the
server can also run without one (it learns schemas from data).

Type kinds:

* scalars: ``bool int float decimal str bytes datetime objectid uuid``;
* ``mixed``: any plain value;
* ``object``: an embedded object of type ``target``;
* ``link``: a reference to a document of collection ``target`` (stored as its primary key);
* ``list``, ``set``, ``dict``: collections of ``element``;
* ``counter``: an integer whose increments merge by adding up.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FieldType", "FieldSchema", "ObjectSchema", "Schema", "SCALAR_KINDS", "COLLECTION_KINDS"]

SCALAR_KINDS = frozenset({"bool", "int", "float", "decimal", "str", "bytes", "datetime", "objectid", "uuid"})
COLLECTION_KINDS = frozenset({"list", "set", "dict"})
ALL_KINDS = SCALAR_KINDS | COLLECTION_KINDS | {"mixed", "object", "link", "counter"}


@dataclass(frozen=True, slots=True)
class FieldType:
    """The type of a field or of a collection's elements."""

    kind: str
    nullable: bool = False
    element: FieldType | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ALL_KINDS:
            raise ValueError(f"unknown field kind {self.kind!r}")
        if (self.kind in COLLECTION_KINDS) != (self.element is not None):
            raise ValueError(f"{self.kind} needs an element type" if self.kind in COLLECTION_KINDS
                             else f"{self.kind} takes no element type")
        if (self.kind in ("object", "link")) != (self.target is not None):
            raise ValueError(f"{self.kind} needs a target" if self.kind in ("object", "link")
                             else f"{self.kind} takes no target")

    def describe(self) -> str:
        """A readable name, e.g. ``list[str]`` or ``Technician | None``."""
        if self.kind in COLLECTION_KINDS:
            assert self.element is not None
            inner = self.element.describe()
            base = f"dict[str, {inner}]" if self.kind == "dict" else f"{self.kind}[{inner}]"
        elif self.kind in ("object", "link"):
            base = str(self.target)
        else:
            base = self.kind
        return f"{base} | None" if self.nullable else base

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.nullable:
            out["nullable"] = True
        if self.element is not None:
            out["element"] = self.element.to_json()
        if self.target is not None:
            out["target"] = self.target
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FieldType:
        element = data.get("element")
        return cls(data["kind"], bool(data.get("nullable", False)),
                   cls.from_json(element) if element is not None else None, data.get("target"))


@dataclass(frozen=True, slots=True)
class FieldSchema:
    """One field of an object schema."""

    name: str
    type: FieldType
    indexed: bool = False
    primary_key: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type.to_json()}
        if self.indexed:
            out["indexed"] = True
        if self.primary_key:
            out["primary_key"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FieldSchema:
        return cls(data["name"], FieldType.from_json(data["type"]), bool(data.get("indexed")),
                   bool(data.get("primary_key")))


@dataclass(frozen=True, slots=True)
class ObjectSchema:
    """The fields of one collection (``embedded=False``) or embedded object type.

    ``backlinks`` names the model's backlinks attributes (``orders =
    tidesync.backlinks("WorkOrder", "technician")``) with their origin model and link field:
    not fields (nothing is stored or synced for them), but names a query may start with."""

    name: str
    fields: Mapping[str, FieldSchema]
    embedded: bool = False
    backlinks: Mapping[str, tuple[str, str]] = field(default_factory=dict, compare=False)

    @property
    def primary_key(self) -> str | None:
        for f in self.fields.values():
            if f.primary_key:
                return f.name
        return None

    def field(self, name: str) -> FieldSchema | None:
        return self.fields.get(name)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "embedded": self.embedded,
                "fields": [f.to_json() for f in self.fields.values()]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ObjectSchema:
        fields = [FieldSchema.from_json(f) for f in data["fields"]]
        return cls(data["name"], {f.name: f for f in fields}, bool(data.get("embedded")))


@dataclass(frozen=True)
class Schema:
    """A set of object schemas, looked up by name."""

    objects: Mapping[str, ObjectSchema] = field(default_factory=dict)

    @classmethod
    def of(cls, objects: Iterable[ObjectSchema]) -> Schema:
        return cls({o.name: o for o in objects})

    def get(self, name: str) -> ObjectSchema | None:
        return self.objects.get(name)

    def __getitem__(self, name: str) -> ObjectSchema:
        return self.objects[name]

    def __contains__(self, name: object) -> bool:
        return name in self.objects

    def __iter__(self) -> Iterator[ObjectSchema]:
        return iter(self.objects.values())

    def resolve_path(self, collection: str, path: Iterable[str]) -> list[tuple[ObjectSchema, FieldSchema]]:
        """Follow a key path (through embedded objects and links) from ``collection``.

        Returns one (object schema, field) pair per step.

        Raises:
            KeyError: a step names no field; the message names the type and the field.
        """
        steps: list[tuple[ObjectSchema, FieldSchema]] = []
        current = self.objects.get(collection)
        if current is None:
            raise KeyError(f"unknown collection {collection!r}")
        for name in path:
            if current is None:
                raise KeyError(f"cannot follow {name!r}: the previous step is not an object or link")
            f = current.fields.get(name)
            if f is None:
                raise KeyError(f"{current.name} has no field {name!r}")
            steps.append((current, f))
            t = f.type.element if f.type.kind in COLLECTION_KINDS else f.type
            assert t is not None
            current = self.objects.get(t.target) if t.kind in ("object", "link") and t.target else None
        return steps
