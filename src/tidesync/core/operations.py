"""Operations: the smallest changes a transaction is made of.

Every operation names a document (``collection``, ``key`` in plain form), carries its own
``stamp`` (unique and totally ordered, see :mod:`tidesync.core.stamp`) and the ``base`` of the
document: the *incarnation* the writer saw, which is the stamp of the delete that preceded
the document's re-creation, or :data:`~tidesync.core.stamp.ZERO` for the first incarnation.

Operations on a field inside containers also carry ``epochs``: for each container on the way
to (and, for list/set/dict/counter operations, including) the target, the epoch the writer saw.
A container's epoch is the stamp of the assignment that made it (``ZERO`` for one made when
its document was created). The merge rules use bases and epochs to tell *concurrent* from
*later*: an operation made against an older incarnation or epoch than the current one was
made without seeing the delete, clear or re-assignment, and is discarded (delete wins, clear
wins, parent assignment wins), whatever its stamp.

Paths are tuples of field names, through embedded objects (``("site", "city")``).
All values are in plain form (:mod:`tidesync.core.values`).

Each operation has a compact wire form, a list whose first item is a one-letter code; see
:func:`op_to_wire` and :func:`op_from_wire`.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Literal, TypeAlias

from .stamp import Stamp, are_stamps, is_stamp, stamp_run
from .values import Plain, plain_scalars

__all__ = [
    "Op",
    "CreateDoc",
    "DeleteDoc",
    "SetValue",
    "top_level_set",
    "Unset",
    "SetContainer",
    "ListInsert",
    "ListSet",
    "ListErase",
    "ListMove",
    "SetAdd",
    "SetRemove",
    "DictPut",
    "DictDel",
    "CounterAdd",
    "ContainerKind",
    "op_to_wire",
    "op_from_wire",
    "Path",
    "SET_COLUMNS",
    "set_columns_record",
    "CREATE_COLUMNS",
    "create_columns_record",
    "ops_from_stored",
    "ops_wire_from_stored",
]

Path: TypeAlias = tuple[str, ...]
ContainerKind = Literal["object", "list", "set", "dict", "counter"]


@dataclass(frozen=True, slots=True)
class _Base:
    collection: str
    key: Plain
    stamp: Stamp
    base: Stamp


@dataclass(frozen=True, slots=True)
class CreateDoc(_Base):
    """Create (or, concurrently with another create, co-create) the document ``key``.

    ``fields`` holds the initial top-level values (plain form), ``_id`` included. A field named
    in ``kinds`` (by dotted path, e.g. ``"tags"`` or ``"site.tags"``) is a container of that kind
    (``object``, ``list``, ``set``, ``dict``, ``counter``) made at epoch ``ZERO``, its initial
    contents merging with those of a concurrent creation of the same document (Device Sync's
    CR-06); every other field is a last-writer-wins register stamped with this op's stamp.
    Fields named in ``defaults`` were filled in from a schema default and lose to any explicit
    write (CR-05).
    """

    fields: dict[str, Plain]
    kinds: dict[str, str]
    defaults: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteDoc(_Base):
    """Delete the document; a tombstone keeps the stamp."""


@dataclass(frozen=True, slots=True)
class SetValue(_Base):
    """Set the field at ``path`` to a scalar, mixed or link value (last writer wins).

    ``epochs`` has one entry per embedded object on the way (``len(path) - 1``).
    ``default`` marks a value filled in from a schema default: it loses to any explicit write.
    """

    path: Path
    epochs: tuple[Stamp, ...]
    value: Plain
    default: bool = False


@dataclass(frozen=True, slots=True)
class Unset(_Base):
    """Remove the field at ``path`` (last writer wins against sets of the same field)."""

    path: Path
    epochs: tuple[Stamp, ...]


@dataclass(frozen=True, slots=True)
class SetContainer(_Base):
    """Assign a new, empty container to the field at ``path``; its epoch is this op's stamp.

    For a counter, ``value`` is the assigned integer (or None). Contents of a list, set,
    dictionary or embedded object follow as separate operations carrying this stamp as epoch.
    ``epochs`` has ``len(path) - 1`` entries. ``epoch`` is normally the op's own stamp; a
    container made when its document was created has epoch ``ZERO`` (so concurrent creations
    of one document merge their contents) and then also loses to any later assignment.
    """

    path: Path
    epochs: tuple[Stamp, ...]
    kind: ContainerKind
    epoch: Stamp
    value: Plain = None
    default: bool = False


@dataclass(frozen=True, slots=True)
class ListInsert(_Base):
    """Insert ``value`` as element ``elem`` right after element ``after`` (None: at the head).

    ``elem`` is a unique element id (its order among siblings is by id, larger first, as in
    RGA). ``epochs`` has ``len(path)`` entries, the last being the list's own epoch.
    """

    path: Path
    epochs: tuple[Stamp, ...]
    elem: str
    after: str | None
    value: Plain


@dataclass(frozen=True, slots=True)
class ListSet(_Base):
    """Replace the value of element ``elem`` (last writer wins; an erase wins over it)."""

    path: Path
    epochs: tuple[Stamp, ...]
    elem: str
    value: Plain


@dataclass(frozen=True, slots=True)
class ListErase(_Base):
    """Erase element ``elem``."""

    path: Path
    epochs: tuple[Stamp, ...]
    elem: str


@dataclass(frozen=True, slots=True)
class ListMove(_Base):
    """Move element ``elem`` (the id its insert gave it) to a new position ``pos``, right
    after position ``after`` (None: at the head).

    ``pos`` is a fresh element id, made as an insert's is (larger than ``after``'s). Of
    concurrent moves of one element the one with the larger ``pos`` (the later stamp) wins
    (CR-16); an erase of the element wins over any move (CR-17); a set of the element follows
    it wherever it moved (CR-15). ``ListSet``, ``ListErase`` and later moves address the
    element by ``elem``, inserts are anchored at positions (``pos`` once moved).
    """

    path: Path
    epochs: tuple[Stamp, ...]
    elem: str
    pos: str
    after: str | None


@dataclass(frozen=True, slots=True)
class SetAdd(_Base):
    """Add ``value`` to the set at ``path`` (per member, the later of add and remove wins)."""

    path: Path
    epochs: tuple[Stamp, ...]
    value: Plain


@dataclass(frozen=True, slots=True)
class SetRemove(_Base):
    """Remove ``value`` from the set at ``path``."""

    path: Path
    epochs: tuple[Stamp, ...]
    value: Plain


@dataclass(frozen=True, slots=True)
class DictPut(_Base):
    """Set ``dkey`` of the dictionary at ``path`` (per key, last writer wins)."""

    path: Path
    epochs: tuple[Stamp, ...]
    dkey: str
    value: Plain


@dataclass(frozen=True, slots=True)
class DictDel(_Base):
    """Remove ``dkey`` from the dictionary at ``path`` (an update, not a delete: LWW per key)."""

    path: Path
    epochs: tuple[Stamp, ...]
    dkey: str


@dataclass(frozen=True, slots=True)
class CounterAdd(_Base):
    """Add ``amount`` to the counter at ``path``; increments from every replica add up.

    ``epochs`` has ``len(path) - 1`` entries. An assignment to the counter with a later stamp
    replaces the total; increments with later stamps add on top of it.
    """

    path: Path
    epochs: tuple[Stamp, ...]
    amount: int


Op: TypeAlias = (
    CreateDoc | DeleteDoc | SetValue | Unset | SetContainer | ListInsert | ListSet | ListErase | ListMove
    | SetAdd | SetRemove | DictPut | DictDel | CounterAdd
)

# code -> (class, names of the fields after the common four)
_WIRE: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "C": (CreateDoc, ("fields", "kinds", "defaults")),
    "D": (DeleteDoc, ()),
    "S": (SetValue, ("path", "epochs", "value", "default")),
    "U": (Unset, ("path", "epochs")),
    "K": (SetContainer, ("path", "epochs", "kind", "epoch", "value", "default")),
    "I": (ListInsert, ("path", "epochs", "elem", "after", "value")),
    "L": (ListSet, ("path", "epochs", "elem", "value")),
    "E": (ListErase, ("path", "epochs", "elem")),
    "M": (ListMove, ("path", "epochs", "elem", "pos", "after")),
    "A": (SetAdd, ("path", "epochs", "value")),
    "R": (SetRemove, ("path", "epochs", "value")),
    "P": (DictPut, ("path", "epochs", "dkey", "value")),
    "X": (DictDel, ("path", "epochs", "dkey")),
    "N": (CounterAdd, ("path", "epochs", "amount")),
}
_CODE = {cls: (code, names) for code, (cls, names) in _WIRE.items()}

def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Any, ...]:
    found = []
    for name in names:
        owner = next(c for c in cls.__mro__ if name in c.__dict__)
        found.append(owner.__dict__[name].__set__)
    return tuple(found)


_SV_SET = _slot_setters(SetValue, ("collection", "key", "stamp", "base", "path", "epochs", "value", "default"))


def top_level_set(collection: str, key: Plain, stamp: Stamp, base: Stamp, name: str, value: Plain) -> SetValue:
    """``SetValue(collection, key, stamp, base, (name,), (), value)``, equal to it, made
    without the frozen dataclass's ``__init__`` (one ``object.__setattr__`` call per field):
    for writers that make many at once. The values are taken as given, unchecked, as the
    constructor takes them."""
    op: SetValue = object.__new__(SetValue)
    s = _SV_SET
    s[0](op, collection)
    s[1](op, key)
    s[2](op, stamp)
    s[3](op, base)
    s[4](op, (name,))
    s[5](op, ())
    s[6](op, value)
    s[7](op, False)
    return op
_KINDS = ("object", "list", "set", "dict", "counter")


def _getter(names: tuple[str, ...]) -> Any:
    """A function returning the values of ``names`` of an op, as a tuple (None for no names)."""
    if not names:
        return None
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda op: (one(op),)
    return attrgetter(*names)


# class -> (code, getter of the fields after the common four)
_GETTERS = {cls: (code, _getter(names)) for cls, (code, names) in _CODE.items()}


def op_to_wire(op: Op) -> list[Any]:
    """The compact list form of an operation (for msgpack or JSON)."""
    code, get = _GETTERS[type(op)]
    out: list[Any] = [code, op.collection, op.key, op.stamp, op.base]
    if get is not None:
        for v in get(op):
            out.append(list(v) if isinstance(v, tuple) else v)
    return out


def op_from_wire(data: Any) -> Op:
    """Parse and validate the list form of an operation.

    Raises:
        ValueError: the data is not a well-formed operation (the message says what is wrong).
    """
    if type(data) is list and len(data) == 8 and data[0] == "C":
        op = _create_from_wire(data)
        if op is not None:
            return op
    if not isinstance(data, (list, tuple)) or not data or not isinstance(data[0], str):
        raise ValueError("an operation is a list starting with its code")
    entry = _WIRE.get(data[0])
    if entry is None:
        raise ValueError(f"unknown operation code {data[0]!r}")
    cls, names = entry
    if len(data) != 5 + len(names):
        raise ValueError(f"operation {data[0]!r} has {len(data)} items, expected {5 + len(names)}")
    collection, key, stamp, base = data[1:5]
    if not isinstance(collection, str) or not collection:
        raise ValueError("operation collection must be a non-empty str")
    if not is_stamp(stamp):
        raise ValueError(f"malformed stamp {stamp!r}")
    if not (base == "" or is_stamp(base)):
        raise ValueError(f"malformed base {base!r}")
    kwargs: dict[str, Any] = {}
    for name, v in zip(names, data[5:]):
        if name == "path":
            if not isinstance(v, (list, tuple)) or not v or not all(isinstance(p, str) and p for p in v):
                raise ValueError("path must be a non-empty list of field names")
            v = tuple(v)
        elif name == "epochs":
            if not isinstance(v, (list, tuple)) or not all(e == "" or is_stamp(e) for e in v):
                raise ValueError("epochs must be a list of stamps")
            v = tuple(v)
        elif name in ("elem", "pos"):
            if not isinstance(v, str) or not v:
                raise ValueError("element id must be a non-empty str")
        elif name == "after":
            if v is not None and not isinstance(v, str):
                raise ValueError("after must be an element id or null")
        elif name == "dkey":
            if not isinstance(v, str):
                raise ValueError("dictionary key must be a str")
        elif name == "kind":
            if v not in _KINDS:
                raise ValueError(f"unknown container kind {v!r}")
        elif name == "epoch":
            if not (v == "" or is_stamp(v)):
                raise ValueError(f"malformed epoch {v!r}")
        elif name in ("fields", "kinds"):
            if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
                raise ValueError(f"{name} must be a map with str keys")
            if name == "kinds" and not all(k in _KINDS for k in v.values()):
                raise ValueError("unknown container kind in kinds")
        elif name == "defaults":
            if not isinstance(v, (list, tuple)) or not all(isinstance(k, str) for k in v):
                raise ValueError("defaults must be a list of field names")
            v = tuple(v)
        elif name == "default":
            if not isinstance(v, bool):
                raise ValueError("default must be a bool")
        elif name == "amount":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError("counter amount must be an int")
        kwargs[name] = v
    op = cls(collection, key, stamp, base, **kwargs)
    expected = _expected_epochs(op)
    if expected is not None and len(op.epochs) != expected:
        raise ValueError(f"operation {data[0]!r} on path {op.path} needs {expected} epochs")
    return op  # type: ignore[no-any-return]


def _create_maker() -> Callable[..., CreateDoc]:
    """``CreateDoc(...)`` for the hot paths (a create parsed from the wire or read back from a
    log): the same object, its slots filled directly. A frozen dataclass's ``__init__`` sets
    each field through ``object.__setattr__``, about twice the cost of the whole object here."""
    new = object.__new__
    setters = [getattr(CreateDoc, name).__set__
               for name in ("collection", "key", "stamp", "base", "fields", "kinds", "defaults")]
    s_coll, s_key, s_stamp, s_base, s_fields, s_kinds, s_defaults = setters

    def make(collection: str, key: Plain, stamp: Stamp, base: Stamp, fields: dict[str, Plain],
             kinds: dict[str, str], defaults: tuple[str, ...]) -> CreateDoc:
        op: CreateDoc = new(CreateDoc)
        s_coll(op, collection)
        s_key(op, key)
        s_stamp(op, stamp)
        s_base(op, base)
        s_fields(op, fields)
        s_kinds(op, kinds)
        s_defaults(op, defaults)
        return op

    return make


_new_create = _create_maker()


def op_from_stored(data: Any) -> Op:
    """An operation from a replica's own log, written there by :func:`op_to_wire` (after
    :func:`op_from_wire` validated it): a create is rebuilt without checking it again; any
    other operation goes through :func:`op_from_wire`."""
    if type(data) is list:
        n = len(data)
        if n == 8 and data[0] == "C":
            return _new_create(data[1], data[2], data[3], data[4], data[5], data[6], tuple(data[7]))
        if n == 9 and data[0] == "S":
            # A field set (most log entries after the creates): filled as top_level_set does.
            op: SetValue = object.__new__(SetValue)
            s = _SV_SET
            s[0](op, data[1])
            s[1](op, data[2])
            s[2](op, data[3])
            s[3](op, data[4])
            s[4](op, tuple(data[5]))
            s[5](op, tuple(data[6]))
            s[6](op, data[7])
            s[7](op, data[8])
            return op
    return op_from_wire(data)


#: The code of a *set columns* record, a stored form (never a wire form) of many top-level
#: ``SetValue`` operations of one transaction: ``[SET_COLUMNS, collection, names, keys, first,
#: bases, values]`` stands for, per document ``keys[i]`` and per field ``names[j]`` in that
#: order (document by document), ``SetValue(collection, keys[i], stamp, base, (names[j],), (),
#: values[i * len(names) + j])``, whose stamps are the run :func:`~tidesync.core.stamp.stamp_run`
#: of ``first`` in that order, and whose base is ``bases`` (a str, every document's) or
#: ``bases[i]`` (a list). See docs/architecture.md, "The log".
SET_COLUMNS = "S*"


def set_columns_record(collection: str, names: list[str], keys: list[Plain], first: Stamp,
                       bases: str | list[str], values: list[Plain]) -> list[Any]:
    """The *set columns* record (see :data:`SET_COLUMNS`) of ``len(keys) * len(names)``
    top-level field sets (``values`` in document-by-document order) stamped in a row from
    ``first``; ``bases``: one base for all, or one per document."""
    return [SET_COLUMNS, collection, names, keys, first, bases, values]


def _set_columns_from_stored(data: list[Any]) -> list[Op]:
    _, collection, names, keys, first, bases, values = data
    width = len(names)
    stamps = stamp_run(first, len(keys) * width)
    paths = [(n,) for n in names]
    s = _SV_SET
    s0, s1, s2, s3, s4, s5, s6, s7 = s
    new = object.__new__
    no_epochs: tuple[Stamp, ...] = ()
    out: list[Op] = []
    append = out.append
    base_of = [bases] * len(keys) if type(bases) is str else bases
    i = 0
    for key, base in zip(keys, base_of):
        for path in paths:
            op: SetValue = new(SetValue)
            s0(op, collection)
            s1(op, key)
            s2(op, stamps[i])
            s3(op, base)
            s4(op, path)
            s5(op, no_epochs)
            s6(op, values[i])
            s7(op, False)
            append(op)
            i += 1
    return out


#: The code of a *create columns* record, a stored form (never a wire form) of many plain
#: ``CreateDoc`` operations of one transaction: ``[CREATE_COLUMNS, collection, names, first,
#: values, defaults]`` stands for, per document ``i``, ``CreateDoc(collection, fields["_id"],
#: stamp, ZERO, fields, {}, defaults[i])`` where ``fields`` is ``dict(zip(names, values[i *
#: len(names):(i + 1) * len(names)]))``, the stamps are the run of ``first`` and ``defaults``
#: is None when no document has any. See docs/architecture.md, "The file format".
CREATE_COLUMNS = "C*"

_RECORD_CODES = (SET_COLUMNS, CREATE_COLUMNS)


def create_columns_record(collection: str, names: list[str], first: Stamp, values: list[Plain],
                          defaults: list[list[str]] | None) -> list[Any]:
    """The *create columns* record (see :data:`CREATE_COLUMNS`) of ``len(values) //
    len(names)`` creates of documents with fields ``names`` (``_id`` among them), values
    document by document, stamped in a row from ``first``; ``defaults``: per document the
    fields filled in from defaults, or None when none was."""
    return [CREATE_COLUMNS, collection, names, first, values, defaults]


def _create_columns_from_stored(data: list[Any]) -> list[Op]:
    _, collection, names, first, values, defaults = data
    width = len(names)
    n = len(values) // width
    stamps = stamp_run(first, n)
    make = _new_create
    empty: tuple[str, ...] = ()
    rows = [dict(zip(names, values[i:i + width])) for i in range(0, n * width, width)]
    keys = [f["_id"] for f in rows]
    if set(map(type, keys)) != {str}:
        keys = [k if type(k) is str else deepcopy(k) for k in keys]  # not shared with the fields, as unpacked
    if defaults is None:
        return [make(collection, k, st, "", f, {}, empty) for k, f, st in zip(keys, rows, stamps)]
    return [make(collection, k, st, "", f, {}, tuple(d)) for k, f, st, d in zip(keys, rows, stamps, defaults)]


def ops_wire_from_stored(datas: list[Any]) -> list[Any] | None:
    """The wire form (:func:`op_to_wire` of each operation) of a stored transaction's ``ops``
    list holding columns records, built straight from the records (no operation objects); None
    when it holds none (the stored list is then the wire form)."""
    if not any([type(d) is list and len(d) in (6, 7) and d[0] in _RECORD_CODES for d in datas]):
        return None
    out: list[Any] = []
    for data in datas:
        if type(data) is list and len(data) == 7 and data[0] == SET_COLUMNS:
            _, collection, names, keys, first, bases, values = data
            width = len(names)
            stamps = stamp_run(first, len(keys) * width)
            empty: list[Any] = []
            base_of = [bases] * len(keys) if type(bases) is str else bases
            if width == 1:
                nl = list(names)
                out.extend([["S", collection, k, st, b, nl, empty, v, False]
                            for k, st, b, v in zip(keys, stamps, base_of, values)])
            else:
                i = 0
                for k, b in zip(keys, base_of):
                    for name in names:
                        out.append(["S", collection, k, stamps[i], b, [name], [], values[i], False])
                        i += 1
        elif type(data) is list and len(data) == 6 and data[0] == CREATE_COLUMNS:
            _, collection, names, first, values, defaults = data
            width = len(names)
            n = len(values) // width
            stamps = stamp_run(first, n)
            rows = [dict(zip(names, values[i:i + width])) for i in range(0, n * width, width)]
            dflts = [[]] * n if defaults is None else defaults
            out.extend([["C", collection, f["_id"] if type(f["_id"]) is str else deepcopy(f["_id"]), st, "", f, {},
                         list(d)] for f, st, d in zip(rows, stamps, dflts)])
        else:
            out.append(data)
    return out


def ops_from_stored(datas: list[Any]) -> tuple[tuple[Op, ...], bool]:
    """The operations of a stored transaction's ``ops`` list (:func:`op_from_stored` of each;
    a :data:`SET_COLUMNS` record stands for the operations it holds, in its place), and whether
    any such record was found (the stored form is then not the wire form)."""
    out: list[Op] = []
    records = False
    for data in datas:
        if type(data) is list and len(data) == 7 and data[0] == SET_COLUMNS:
            out.extend(_set_columns_from_stored(data))
            records = True
        elif type(data) is list and len(data) == 6 and data[0] == CREATE_COLUMNS:
            out.extend(_create_columns_from_stored(data))
            records = True
        else:
            out.append(op_from_stored(data))
    return tuple(out), records


def _create_from_wire(data: list[Any]) -> CreateDoc | None:
    """The common case of :func:`op_from_wire`, a well-formed ``CreateDoc`` with exact types,
    checked in a few steps; None on any doubt (the general path then says what is wrong)."""
    _, collection, key, stamp, base, fields, kinds, defaults = data
    if (type(collection) is not str or not collection or not is_stamp(stamp)
            or not (base == "" or is_stamp(base)) or type(fields) is not dict or type(kinds) is not dict
            or type(defaults) is not list):
        return None
    for k in fields:
        if type(k) is not str:
            return None
    for k, v in kinds.items():
        if type(k) is not str or v not in _KINDS:
            return None
    for k in defaults:
        if type(k) is not str:
            return None
    return _new_create(collection, key, stamp, base, fields, kinds, tuple(defaults))


def creates_from_wire(ops: list[Any], shapes: list[tuple[Any, ...] | None] | None = None, *,
                      plain: bool = False) -> tuple[CreateDoc, ...] | None:
    """``op_from_wire`` of each of ``ops`` when all are well-formed creates with exact types
    (a device's upload of new documents), in one pass: their stamps checked together, no call
    per operation. None on any doubt: parse them one by one then (same result or error).

    ``shapes``, if given, receives each distinct ``(collection, field names, value types,
    kinds items)`` of the creates (consecutive repeats once), or just ``[None]`` if any field's
    value is a map (its kind depends on more than its type). The server's schema learner
    learns from these instead of walking every create again.

    ``plain``: ``ops`` come straight from a decoded message, not yet checked to be plain
    values; then also None unless every key is a str and every field's value a plain scalar
    (str, bool, None, a signed 64-bit int, a finite float), so that every item of the
    accepted creates is plain."""
    stamps: list[Any] = []
    out = creates_unstamped(ops, shapes, stamps, plain=plain)
    if out is None or not are_stamps(stamps):
        return None
    return out


def creates_unstamped(ops: list[Any], shapes: list[tuple[Any, ...] | None] | None, stamps: list[Any], *,
                      plain: bool = False) -> tuple[CreateDoc, ...] | None:
    """:func:`creates_from_wire` without its stamp check: the stamps and bases that check
    needs are appended to ``stamps``, for the caller to check with :func:`are_stamps` (once
    for many transactions); the result stands only if they pass."""
    out = []
    kinds_ok = _KINDS
    make = _new_create
    want_shapes = shapes is not None
    prev: tuple[Any, ...] = (None, None, None, None)
    for data in ops:
        if type(data) is not list or len(data) != 8 or data[0] != "C":
            return None
        _, collection, key, stamp, base, fields, kinds, defaults = data
        if (type(collection) is not str or not collection or type(base) is not str
                or type(fields) is not dict or type(kinds) is not dict or type(defaults) is not list):
            return None
        for k in fields:
            if type(k) is not str:
                return None
        if plain and (type(key) is not str or not plain_scalars(fields.values())):
            return None
        if kinds:
            for k, v in kinds.items():
                if type(k) is not str or type(v) is not str or v not in kinds_ok:
                    return None
        if defaults:
            for k in defaults:
                if type(k) is not str:
                    return None
        stamps.append(stamp)
        if base:
            stamps.append(base)
        out.append(make(collection, key, stamp, base, fields, kinds, tuple(defaults)))
        if want_shapes:
            names = tuple(fields)
            types = tuple(map(type, fields.values()))
            if names != prev[1] or types != prev[2] or collection != prev[0] or kinds != prev[3]:
                if dict in types:
                    want_shapes = False
                    shapes[:] = [None]  # type: ignore[index]
                else:
                    prev = (collection, names, types, kinds)
                    shapes.append((collection, names, types, tuple(kinds.items()) if kinds else ()))  # type: ignore[union-attr]
    return tuple(out)


_CA_SET = _slot_setters(CounterAdd, ("collection", "key", "stamp", "base", "path", "epochs", "amount"))
_UN_SET = _slot_setters(Unset, ("collection", "key", "stamp", "base", "path", "epochs"))
_DD_SET = _slot_setters(DeleteDoc, ("collection", "key", "stamp", "base"))


def updates_unstamped(ops: list[Any], stamps: list[Any]) -> tuple[Op, ...] | None:
    """:func:`op_from_wire` of each of ``ops`` (straight from a decoded message, not yet checked
    to be plain) when all are well-formed, plain ``SetValue`` (of a scalar), ``CounterAdd``,
    ``Unset`` or ``DeleteDoc`` operations with exact types and str keys: a device's stream of
    edits. Their stamps, bases and epochs are appended to ``stamps`` for the caller to check
    with :func:`are_stamps`; the result stands only if they pass. None on any doubt (then
    :func:`op_from_wire` says what is wrong)."""
    out: list[Op] = []
    new = object.__new__
    for data in ops:
        if type(data) is not list or not data:
            return None
        code = data[0]
        n = len(data)
        if n < 5:
            return None
        collection, key, stamp, base = data[1], data[2], data[3], data[4]
        if type(collection) is not str or not collection or type(key) is not str or type(base) is not str:
            return None
        stamps.append(stamp)
        if base:
            stamps.append(base)
        if code == "D":
            if n != 5:
                return None
            op: Any = new(DeleteDoc)
            setters: tuple[Any, ...] = _DD_SET
            values: tuple[Any, ...] = (collection, key, stamp, base)
        else:
            if n < 7:
                return None
            path, epochs = data[5], data[6]
            if type(path) is not list or not path or type(epochs) is not list or len(epochs) != len(path) - 1:
                return None
            for name in path:
                if type(name) is not str or not name:
                    return None
            for e in epochs:
                if type(e) is not str:
                    return None
                if e:
                    stamps.append(e)
            if code == "S":
                if n != 9 or type(data[8]) is not bool or not plain_scalars((data[7],)):
                    return None
                op = new(SetValue)
                setters = _SV_SET
                values = (collection, key, stamp, base, tuple(path), tuple(epochs), data[7], data[8])
            elif code == "N":
                amount = data[7] if n == 8 else None
                if type(amount) is not int or not plain_scalars((amount,)):
                    return None
                op = new(CounterAdd)
                setters = _CA_SET
                values = (collection, key, stamp, base, tuple(path), tuple(epochs), amount)
            elif code == "U" and n == 7:
                op = new(Unset)
                setters = _UN_SET
                values = (collection, key, stamp, base, tuple(path), tuple(epochs))
            else:
                return None
        for setter, value in zip(setters, values):
            setter(op, value)
        out.append(op)
    return tuple(out)


def _expected_epochs(op: Op) -> int | None:
    if isinstance(op, (SetValue, Unset, SetContainer, CounterAdd)):
        return len(op.path) - 1
    if isinstance(op, (ListInsert, ListSet, ListErase, ListMove, SetAdd, SetRemove, DictPut, DictDel)):
        return len(op.path)
    return None
