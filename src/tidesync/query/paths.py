"""Key paths resolved against a schema: what each step of a path is, for the compilers.

:func:`resolve` turns the names of a :class:`~tidesync.query.ast.Path` into
:class:`Step` records saying what kind of value each step reaches (from the schema), so a
compiler knows where a path can fan out over a list, where it follows a link, and how a
leaf value is stored (e.g. a ``datetime`` is ``{"$date": micros}``). Without a schema, or
past a ``mixed`` field, steps are *unknown* and compilers decide at run time.

It also checks that a test fits the field: a ``datetime`` field compared with a string, or
``BEGINSWITH`` on an ``int`` field, is a :class:`~tidesync.errors.QueryError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ..core.schema import FieldType, ObjectSchema, Schema
from ..errors import QueryError
from .ast import (Aggregate, Between, Compare, CompareFields, Count, DictPart, Exists, In, StringOp, SubqueryCount, TypeOf,
                  bound_plain, type_test)
from .semantics import ORDERED_FAMILIES, family

__all__ = ["Step", "resolve", "check_family", "check_leaf", "resolve_field_pair", "subquery_elements", "BACKLINKS", "backlink_sources",
           "dict_member_kind", "LIST_KINDS", "TAGGED_KINDS",
           "KIND_FAMILIES"]

LIST_KINDS: Final = frozenset({"list", "set"})

BACKLINKS: Final = "@links"
"""The first name of a key path that starts at the objects linking to the queried one."""

TAGGED_KINDS: Final = {"datetime": "$date", "objectid": "$oid", "uuid": "$uuid",
                       "bytes": "$binary", "decimal": "$decimal"}
"""Scalar kinds stored as a one-key tagged object, and their tag."""

KIND_FAMILIES: Final[dict[str, frozenset[str]]] = {
    "bool": frozenset({"bool"}),
    "int": frozenset({"number"}),
    "counter": frozenset({"number"}),
    "float": frozenset({"number"}),
    "decimal": frozenset({"number"}),
    "str": frozenset({"string"}),
    "bytes": frozenset({"binary"}),
    "datetime": frozenset({"date"}),
    "objectid": frozenset({"oid"}),
    "uuid": frozenset({"uuid"}),
    # a link holds its target's primary key: ObjectId, UUID, str or int
    "link": frozenset({"oid", "uuid", "string", "number"}),
}
"""Which value families a field of each scalar kind can be compared with (null always)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a resolved key path.

    Attributes:
        name: the key looked up.
        kind: the schema kind of the value reached (``str``, ``object``, ``list``, ``link``,
            ``dict``, ``mixed``, ...), or ``None`` when unknown (no schema, or past a
            ``mixed`` field).
        item_kind: the kind of each value the step yields after fanning out: the element
            kind of a list or set, else ``kind``.
        target: the linked collection, for a link or a list/set of links; for ``@links``
            (kind ``backlinks``) the collection whose objects link here (None: any).
        embedded: the embedded object type, for an embedded object or a list of them.
        via: for ``@links``, the link field of ``target`` that points here.
    """

    name: str
    kind: str | None
    item_kind: str | None = None
    target: str | None = None
    embedded: str | None = None
    via: str | None = None

    @property
    def may_fan_out(self) -> bool:
        """Whether the value here can be a list (known list or set, mixed, or unknown)."""
        return self.kind is None or self.kind == "mixed" or self.kind in LIST_KINDS

    @property
    def is_link(self) -> bool:
        """Whether the value(s) here are links to follow for further steps."""
        return self.target is not None


def _step(name: str, t: FieldType) -> Step:
    if t.kind in LIST_KINDS:
        assert t.element is not None
        e = t.element
        target = e.target if e.kind == "link" else None
        return Step(name, t.kind, None if e.kind == "mixed" else e.kind, target,
                    e.target if e.kind == "object" else None)
    if t.kind == "mixed":
        return Step(name, "mixed", None)
    return Step(name, t.kind, t.kind, t.target if t.kind == "link" else None,
                t.target if t.kind == "object" else None)


def resolve(collection: str | None, schema: Schema | None, names: Sequence[str]) -> tuple[Step, ...]:
    """Resolve the field names of a key path from ``collection``.

    Returns one :class:`Step` per name; all steps are unknown without a schema.

    Raises:
        QueryError: the collection is not in the schema, a name is not a field, or the path
            continues past a scalar field.
    """
    if names and names[0] == BACKLINKS:
        return _resolve_backlinks(collection, schema, names)
    if schema is None or collection is None:
        return tuple(Step(n, None) for n in names)
    current: ObjectSchema | None = schema.get(collection)
    if current is None:
        raise QueryError(f"unknown collection {collection!r}",
                         advice="query one of: " + ", ".join(sorted(o.name for o in schema)))
    if names and current.field(names[0]) is None and names[0] in current.backlinks:
        # A backlinks attribute (Realm's LinkingObjects property) is @links.Origin.field.
        return _resolve_backlinks(collection, schema, (BACKLINKS, *current.backlinks[names[0]], *names[1:]))
    steps: list[Step] = []
    dict_element: FieldType | None = None
    unknown = False
    where = collection
    for name in names:
        if unknown:
            steps.append(Step(name, None))
            continue
        if dict_element is not None:
            t, dict_element = dict_element, None
        else:
            if current is None:
                raise QueryError(f"cannot follow {name!r} past {where}: it is not an embedded object, "
                                 f"dictionary or link")
            f = current.field(name)
            if f is None and name in current.backlinks:
                origin, via = current.backlinks[name]
                raise QueryError(f"{current.name}.{name} is a backlinks attribute: in a query it can only start a "
                                 f"key path (of {current.name})",
                                 advice=f"query {current.name} with {name}... or @links.{origin}.{via}..., or "
                                        f"{origin} through its {via} link")
            if f is None:
                known = ", ".join(sorted(current.fields))
                raise QueryError(f"{current.name} has no field {name!r}", advice=f"its fields are: {known}")
            t = f.type
        step = _step(name, t)
        steps.append(step)
        where = f"{where}.{name} ({t.describe()})"
        current = None
        if t.kind == "mixed":
            unknown = True
        elif t.kind == "dict":
            assert t.element is not None
            dict_element = t.element
        elif t.kind in ("object", "link"):
            current = _target(schema, t.target)
        elif t.kind in LIST_KINDS:
            assert t.element is not None
            if t.element.kind in ("object", "link"):
                current = _target(schema, t.element.target)
            elif t.element.kind == "mixed":
                unknown = True
    return tuple(steps)


def _resolve_backlinks(collection: str | None, schema: Schema | None, names: Sequence[str]) -> tuple[Step, ...]:
    """``@links`` (any object linking here), or ``@links.Origin.field`` and the key path after
    it in ``Origin``: one ``backlinks`` step for the first names, then Origin's steps."""
    if schema is None or collection is None:
        raise QueryError(f"{'.'.join(names)}: @links needs the models' schema (which fields link where)")
    me = schema.get(collection)
    if me is None or me.embedded:
        raise QueryError(f"{'.'.join(names)}: @links finds the objects linking to an object of a model, "
                         f"not to {collection!r}")
    if len(names) == 1:
        return (Step(BACKLINKS, "backlinks", "link", None),)
    if len(names) < 3:
        raise QueryError(f"{'.'.join(names)}: write @links.Model.field (the model whose link field points "
                         f"here), or @links.@count")
    origin, via = names[1], names[2]
    source = schema.get(origin)
    if source is None or source.embedded:
        raise QueryError(f"@links.{origin}: {origin!r} is not a model of the schema",
                         advice="name one of: " + ", ".join(sorted(o.name for o in schema if not o.embedded)))
    f = source.field(via)
    t = f.type if f is not None else None
    if t is not None and t.kind in LIST_KINDS:
        t = t.element
    if t is None or t.kind != "link" or t.target != collection:
        raise QueryError(f"@links.{origin}.{via}: {origin}.{via} is not a link (or list of links) to {collection}")
    return (Step(BACKLINKS, "backlinks", "link", origin, via=via), *resolve(origin, schema, names[3:]))


def backlink_sources(schema: Schema, collection: str) -> list[tuple[str, str, bool]]:
    """Every (model, field, is a list or set) whose links point at ``collection``: what
    ``@links.@count`` counts."""
    out = []
    for obj in schema:
        if obj.embedded:
            continue
        for f in obj.fields.values():
            t, many = f.type, f.type.kind in LIST_KINDS
            if many and t.element is not None:
                t = t.element
            if t.kind == "link" and t.target == collection:
                out.append((obj.name, f.name, many))
    return out


def _target(schema: Schema, name: str | None) -> ObjectSchema:
    obj = schema.get(name) if name is not None else None
    if obj is None:
        raise QueryError(f"the schema has no object type {name!r} (named by a link or embedded field)")
    return obj


def check_family(path_text: str, kind: str | None, fam: str) -> None:
    """Check that a value of family ``fam`` can be compared with a field of ``kind``.

    Raises:
        QueryError: e.g. a ``datetime`` field compared with a string.
    """
    if fam == "null" or kind is None or kind == "mixed":
        return
    allowed = KIND_FAMILIES.get(kind)
    if allowed is None:
        raise QueryError(f"{path_text} is a {kind} field: compare its elements or fields, or its "
                         f"@count, instead")
    if fam not in allowed:
        raise QueryError(f"cannot compare {path_text} ({kind}) with a {fam} value")


def check_leaf(node: Compare | In | Between | StringOp | Exists, steps: Sequence[Step], collection: str | None,
               schema: Schema | None) -> None:
    """Check that a leaf test fits the field its path resolved to (``steps``, from
    ``collection`` in ``schema``; no-op for unknown kinds).

    Raises:
        QueryError: e.g. ``due == 'x'`` on a datetime field, ``BEGINSWITH`` on an int field,
            ``@count`` on a bool field, ``@sum.title`` on a list of embedded objects, or an
            unbound ``$n``.
    """
    if isinstance(node, Exists):
        return
    last = steps[-1]
    left = node.left
    path_text = str(left)
    if isinstance(left, SubqueryCount):
        if last.kind not in (None, "mixed") and (last.kind not in LIST_KINDS or last.item_kind not in ("object", "link")):
            what = f"a {last.kind}{' of ' + str(last.item_kind) if last.kind in ('list', 'set', 'dict') else ''} field"
            raise QueryError(f"{path_text}: SUBQUERY needs a list of embedded objects or of links; {left.path} is {what}",
                             advice="for a list of values, test its elements with ANY, ALL or NONE "
                                    "(e.g. ANY scores BETWEEN {1, 3})")
        return
    if isinstance(left, Aggregate) and left.of:
        if last.kind not in (None, "mixed", "list", "set") or last.item_kind not in (None, "object", "link") \
                or (last.kind == "set" and last.item_kind != "link"):
            what = f"a {last.kind}{' of ' + str(last.item_kind) if last.kind in ('list', 'set', 'dict') else ''} field"
            raise QueryError(f"{path_text}: @{left.op} of a property needs a list of embedded objects or of "
                             f"links; {left.path} is {what}")
        _check_aggregate_of(collection, schema, left)
        return
    if isinstance(left, Aggregate):
        if last.kind not in ("list", "set") or last.item_kind not in ("int", "float"):
            what = "a field the schema does not know" if last.kind in (None, "mixed") else \
                f"a {last.kind}{' of ' + str(last.item_kind) if last.kind in ('list', 'set', 'dict') else ''} field"
            raise QueryError(f"{path_text}: @{left.op} needs a list or set of int or float; {left.path} is {what} "
                             f"(decimals, dates and mixed values are not supported)")
        return
    if last.kind == "backlinks" and not (isinstance(left, Count) and not isinstance(left, (Aggregate, SubqueryCount))):
        raise QueryError(f"{path_text}: @links stands for objects; compare a field of them "
                         f"(@links.Model.field.name == ...) or count them (.@count)")
    if isinstance(left, TypeOf):
        if last.kind == "link":
            raise QueryError(f"{path_text}: {left.path} is a link, whose type the schema gives; @type tests "
                             f"mixed values", advice=f"test the link with {left.path} == nil, or a field "
                                                     f"of the linked object")
        assert not isinstance(node, StringOp)   # refused by StringOp itself
        type_test(node)                          # an unbound $n raises here, as below
        return
    if isinstance(left, Count):
        if last.kind not in (None, "mixed", "list", "set", "dict", "str", "backlinks"):
            raise QueryError(f"{path_text}: {left.path} is a {last.kind} field; @count needs a list, "
                             f"set, dictionary or string")
        return
    kind = last.item_kind
    if isinstance(left, DictPart):
        if last.kind not in (None, "mixed", "dict"):
            what = f"a {last.kind}{' of ' + str(last.item_kind) if last.kind in ('list', 'set') else ''} field"
            raise QueryError(f"{path_text}: @{left.part} needs a dictionary; {left.path} is {what}")
        kind = dict_member_kind(left, steps, collection, schema)
    if isinstance(node, StringOp):
        bound_plain(node.right)
        if kind not in (None, "str"):
            raise QueryError(f"{node.op.upper()} needs a string field; {path_text} is {kind}")
        return
    if isinstance(node, Compare):
        operands = [bound_plain(node.right)]
    elif isinstance(node, In):
        operands = list(bound_plain(node.values))
    else:
        operands = [bound_plain(node.low), bound_plain(node.high)]
    for plain in operands:
        check_family(path_text, kind, family(plain))


def dict_member_kind(part: DictPart, steps: Sequence[Step], collection: str | None,
                     schema: Schema | None) -> str | None:
    """The kind of each member ``notes.@keys`` or ``notes.@values`` yields: ``str`` for keys;
    the dictionary's value kind for values (``None`` when the schema does not tell)."""
    if part.part == "keys":
        return "str"
    if steps[-1].kind != "dict" or schema is None or collection is None:
        return None
    return resolve(collection, schema, part.path.names + ("_",))[-1].item_kind


def subquery_elements(step: Step) -> tuple[str | None, str | None]:
    """What the elements of the list ``step`` reaches are, for a SUBQUERY over it: the
    collection their key paths resolve in (the embedded type, or the linked collection),
    and the linked collection again when they are links. ``(None, None)`` when the schema
    does not tell (the elements are then read as embedded objects of no known type)."""
    if step.kind not in LIST_KINDS:
        return None, None
    if step.item_kind == "link":
        return step.target, step.target
    return step.embedded, None


def resolve_field_pair(node: CompareFields, collection: str | None,
                       schema: Schema | None) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    """Resolve both key paths of a :class:`~tidesync.query.ast.CompareFields` and check that
    they can be compared: with a schema, each leads to one scalar field (not through a list,
    set or link; not a ``mixed`` field), both of one value family, and an order (``<`` ...)
    only within an ordered family. Without a schema the types are not known, and every
    compiler refuses it.

    Raises:
        QueryError: naming the field that does not fit, or the missing schema.
    """
    if schema is None or collection is None:
        raise QueryError(f"comparing two fields ({node.left} {node.op} {node.right}) needs the "
                         f"model's schema: typed fields")
    sides = (resolve(collection, schema, node.left.names), resolve(collection, schema, node.right.names))
    families: list[str] = []
    for path, steps in zip((node.left, node.right), sides):
        step = _list_or_link_on_the_way(steps)
        if step is not None:
            raise QueryError(f"{path} goes through the {step.kind} field {step.name!r}: comparing two "
                             f"fields works on fields of the document and its embedded objects")
        kind = steps[-1].kind
        if kind is None or kind == "mixed":
            raise QueryError(f"{path} is a field of no fixed type: comparing two fields needs typed fields "
                             f"(compare it with a value instead)")
        kinds = KIND_FAMILIES.get(kind)
        if kinds is None or kind == "link":
            raise QueryError(f"{path} is a {kind} field: compare scalar fields (its elements or fields, or "
                             f"its @count, with a value)")
        families.append(next(iter(kinds)))
    if families[0] != families[1]:
        raise QueryError(f"{node.left} ({sides[0][-1].kind}) and {node.right} ({sides[1][-1].kind}) hold "
                         f"different types of value and never compare equal or ordered")
    if node.op not in ("==", "!=") and families[0] not in ORDERED_FAMILIES:
        raise QueryError(f"{families[0]} values have no order: use == or != instead of {node.op!r}")
    if node.case_insensitive and families[0] != "string":
        raise QueryError("[c] (case-insensitive) needs string fields")
    return sides


def _list_or_link_on_the_way(steps: Sequence[Step]) -> Step | None:
    """The first step before the last that is a list, set or link: where a path would fan out
    over elements or leave the document."""
    return next((step for step in steps[:-1] if step.kind in LIST_KINDS or step.is_link), None)


def _check_aggregate_of(collection: str | None, schema: Schema | None, aggregate: Aggregate) -> None:
    """Check the element key path of ``items.@sum.price``: with a schema, it must lead through
    embedded objects (no list, set or link) to an int or float field."""
    if schema is None or collection is None:
        return
    names = aggregate.path.names
    steps = resolve(collection, schema, names + aggregate.of)[-len(aggregate.of):]
    text = f"{aggregate}"
    step = _list_or_link_on_the_way(steps)
    if step is not None:
        raise QueryError(f"{text}: the element path goes through the {step.kind} field {step.name!r}")
    last = steps[-1]
    if last.kind not in (None, "mixed", "int", "float", "counter"):
        raise QueryError(f"{text}: @{aggregate.op} needs numbers; {'.'.join(aggregate.of)} is a {last.kind} field "
                         f"(decimals, dates and lists are not supported)")
