"""Transactions and their descriptors.

A :class:`Transaction` is what one ``with db.write():`` block becomes, on any replica: a
globally unique id (the stamp of its first operation, which embeds the origin replica's id),
its origin replica, the user who made it, its stamp, its parents (the ids of the transactions
the origin had integrated last, so the log forms a DAG as in Git), its operations and the
before-images of every top-level field it changed (so it can be reverted).

A :class:`Descriptor` is the small summary that travels ahead of the transaction's data: id,
origin, user, stamp, parents, the (collection, key) pairs it touches, its operation count and
encoded size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .operations import (
    CREATE_COLUMNS, SET_COLUMNS, CreateDoc, Op, creates_from_wire, creates_unstamped, op_from_wire, op_to_wire, ops_from_stored,
    ops_wire_from_stored,
    updates_unstamped,
)
from .stamp import ReplicaId, Stamp, are_stamps, is_replica_id, is_stamp
from .values import Plain, canonical_json, loads_json, plain_scalars

__all__ = ["Transaction", "Descriptor", "BeforeImage", "MISSING_FIELD", "doc_ref", "before_columns_record"]

#: The fields :meth:`Transaction.stored_lazily` leaves unset until first read.
_LAZY_FIELDS = frozenset(("id", "origin", "stamp", "parents", "ops", "before", "user", "meta"))

#: Marker in a before-image for a field that did not exist before the transaction.
MISSING_FIELD: dict[str, int] = {"$missing": 1}

#: :data:`MISSING_FIELD` as JSON text.
MISSING_FIELD_JSON = '{"$missing":1}'

#: The msgpack of :data:`~tidesync.core.operations.SET_COLUMNS` and
#: :data:`~tidesync.core.operations.CREATE_COLUMNS`: a stored transaction whose bytes lack both
#: holds no columns record (bytes holding either may hold one).
_COLUMNS_MARKS = (b"\xa2" + SET_COLUMNS.encode(), b"\xa2" + CREATE_COLUMNS.encode())


def before_columns_record(collection: str, names: list[str], keys: list[Plain], olds_json: str) -> list[Any]:
    """The stored form (never a wire form) of the before-images of many documents that a
    transaction changed the same top-level fields ``names`` of: ``[SET_COLUMNS, collection,
    names, keys, olds_json]``, where ``olds_json`` is the JSON text of the list of the fields'
    old values, document by document (:data:`MISSING_FIELD` for an absent one). It stands for
    ``BeforeImage(collection, keys[i], {names[j]: olds[i * len(names) + j], ...})`` per document."""
    return [SET_COLUMNS, collection, names, keys, olds_json]


def _wire_from_stored(data: dict[str, Any]) -> dict[str, Any] | None:
    """The wire map (:meth:`Transaction.to_wire`'s) of a stored transaction's map holding
    columns records, built straight from the records (no operation objects); None when it
    holds none (the stored map is then the wire map)."""
    ops = ops_wire_from_stored(data["ops"])
    before: list[Any] = []
    records = False
    for b in data.get("before", ()):
        if type(b) is list and len(b) == 5 and b[0] == SET_COLUMNS:
            _, collection, names, keys, olds_json = b
            olds = loads_json(olds_json)
            width = len(names)
            if width == 1:
                name = names[0]
                before.extend([[collection, key, {name: old}, False] for key, old in zip(keys, olds)])
            else:
                before.extend([[collection, key, dict(zip(names, olds[i * width:(i + 1) * width])), False]
                               for i, key in enumerate(keys)])
            records = True
        else:
            before.append(b)
    if ops is None and not records:
        return None
    out = dict(data)
    if ops is not None:
        out["ops"] = ops
    if records:
        out["before"] = before
    return out


def _before_from_stored(datas: Any) -> tuple[tuple[BeforeImage, ...], bool]:
    out: list[BeforeImage] = []
    records = False
    for b in datas:
        if type(b) is list and len(b) == 5 and b[0] == SET_COLUMNS:
            _, collection, names, keys, olds_json = b
            olds = loads_json(olds_json)
            width = len(names)
            new = BeforeImage
            if width == 1:
                name = names[0]
                out.extend([new(collection, key, {name: old}) for key, old in zip(keys, olds)])
            else:
                out.extend([new(collection, key, dict(zip(names, olds[i * width:(i + 1) * width])))
                            for i, key in enumerate(keys)])
            records = True
        else:
            out.append(BeforeImage.from_wire(b))
    return tuple(out), records


def doc_ref(collection: str, key: Plain) -> tuple[str, str]:
    """A hashable reference to a document: (collection, canonical JSON of its key)."""
    return (collection, canonical_json(key))


@dataclass(frozen=True, slots=True)
class BeforeImage:
    """What a transaction changed in one document, as it was before.

    ``fields`` is None when the document did not exist (or was deleted) before; otherwise it
    maps each changed top-level field to its previous plain value, or :data:`MISSING_FIELD`.
    ``deleted`` is True when the transaction deleted the document, in which case ``fields``
    holds the whole document as it was.
    """

    collection: str
    key: Plain
    fields: dict[str, Plain] | None
    deleted: bool = False

    def to_wire(self) -> list[Any]:
        return [self.collection, self.key, self.fields, self.deleted]

    @classmethod
    def from_wire(cls, data: Any) -> BeforeImage:
        if not isinstance(data, (list, tuple)) or len(data) != 4:
            raise ValueError("a before-image is [collection, key, fields, deleted]")
        collection, key, fields, deleted = data
        if not isinstance(collection, str) or (fields is not None and not isinstance(fields, dict)):
            raise ValueError("malformed before-image")
        return cls(collection, key, fields, bool(deleted))


@dataclass(frozen=True, slots=True)
class Descriptor:
    """The summary of a transaction that travels ahead of its data."""

    id: Stamp
    origin: ReplicaId
    user: str | None
    stamp: Stamp
    parents: tuple[Stamp, ...]
    touches: tuple[tuple[str, Plain], ...]
    op_count: int
    size: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "origin": self.origin, "user": self.user, "stamp": self.stamp,
            "parents": list(self.parents), "touches": [list(t) for t in self.touches],
            "ops": self.op_count, "size": self.size,
        }

    @classmethod
    def from_wire(cls, data: Any) -> Descriptor:
        """Parse a descriptor; raises ValueError when malformed."""
        if not isinstance(data, dict):
            raise ValueError("a descriptor is a map")
        try:
            d = cls(
                id=data["id"], origin=data["origin"], user=data.get("user"), stamp=data["stamp"],
                parents=tuple(data["parents"]),
                touches=tuple((t[0], t[1]) for t in data["touches"]),
                op_count=int(data["ops"]), size=int(data["size"]),
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"malformed descriptor: {exc}") from exc
        if not is_stamp(d.id) or not is_stamp(d.stamp) or not is_replica_id(d.origin):
            raise ValueError("malformed descriptor ids")
        return d


@dataclass(frozen=True, slots=True)
class Transaction:
    """One write transaction, as recorded in every replica's log."""

    id: Stamp
    origin: ReplicaId
    stamp: Stamp
    parents: tuple[Stamp, ...]
    ops: tuple[Op, ...]
    before: tuple[BeforeImage, ...] = ()
    user: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Derived once, on first use (never compared): each op's document ref, and the received
    # wire map when :meth:`to_wire` would rebuild exactly that map.
    _refs: tuple[tuple[str, str], ...] | None = field(default=None, init=False, repr=False, compare=False)
    _wire: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _packed: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _shapes: tuple[tuple[Any, ...], ...] | None = field(default=None, init=False, repr=False, compare=False)
    # A transaction made by :meth:`stored_lazily`: how to unpack ``_packed`` on first use.
    _unpack: Callable[[bytes], Any] | None = field(default=None, init=False, repr=False, compare=False)

    if not TYPE_CHECKING:  # only for the type checker: no attribute is silently Any
        def __getattr__(self, name: str) -> Any:
            # Reached only for an unset slot: a field of a transaction from stored_lazily.
            if name in _LAZY_FIELDS:
                unpack = object.__getattribute__(self, "_unpack")
                if unpack is not None:
                    packed = object.__getattribute__(self, "_packed")
                    # An entry stored with columns records keeps its wire map instead (stored_lazily).
                    full = Transaction.from_stored(unpack(packed) if packed is not None
                                                   else object.__getattribute__(self, "_wire"))
                    for f in _LAZY_FIELDS:
                        object.__setattr__(self, f, object.__getattribute__(full, f))
                    return object.__getattribute__(self, name)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def stored_lazily(cls, packed: bytes, unpack: Callable[[bytes], Any]) -> Transaction:
        """:meth:`from_stored` of ``unpack(packed)`` (a log entry of this replica), unpacked
        only when one of its fields is first read: a log entry that is only sent on as it
        is (:meth:`packed`, spliced into a ``Changes`` by the codec) is never decoded. Equal
        to the transaction :meth:`from_stored` would make. An entry holding columns records
        (:data:`~tidesync.core.operations.SET_COLUMNS`, ``CREATE_COLUMNS``: stored forms only) is
        unpacked at once into its wire map (:meth:`wire`, built from the records without
        operation objects; the fields are made from it on first read), and its :meth:`packed`
        is None: it is sent as :meth:`wire`."""
        wire = None
        if _COLUMNS_MARKS[0] in packed or _COLUMNS_MARKS[1] in packed:
            wire = _wire_from_stored(unpack(packed))
        t = object.__new__(cls)
        for name in ("_refs", "_shapes"):
            object.__setattr__(t, name, None)
        object.__setattr__(t, "_wire", wire)
        object.__setattr__(t, "_packed", packed if wire is None else None)
        object.__setattr__(t, "_unpack", unpack)
        return t

    def refs(self) -> tuple[tuple[str, str], ...]:
        """The document ref (:func:`doc_ref`) of each operation, in operation order; computed
        once per transaction."""
        refs = self._refs
        if refs is None:
            refs = tuple([(op.collection, canonical_json(op.key)) for op in self.ops])
            object.__setattr__(self, "_refs", refs)
        return refs

    def touches(self) -> tuple[tuple[str, Plain], ...]:
        """The distinct (collection, key) pairs this transaction changes, in first-touch order."""
        seen: dict[tuple[str, str], tuple[str, Plain]] = {}
        for op, ref in zip(self.ops, self.refs()):
            if ref not in seen:
                seen[ref] = (op.collection, op.key)
        return tuple(seen.values())

    def create_shapes(self) -> tuple[tuple[Any, ...], ...] | None:
        """For a transaction parsed from the wire whose operations are all plain creates
        (no map values): each distinct ``(collection, field names, value types, kinds items)``
        of its creates, as :func:`creates_from_wire` found them; else None."""
        return self._shapes

    def wire(self) -> dict[str, Any]:
        """:meth:`to_wire`'s map, shared: the map this transaction was parsed from when it is
        exactly what :meth:`to_wire` would build (a peer's upload of plain creates or edits), else a
        new one. Read it, never change it."""
        wire = self._wire
        return wire if wire is not None else self.to_wire()

    def descriptor(self, size: int = 0) -> Descriptor:
        """This transaction's descriptor; ``size`` is its encoded size in bytes when known."""
        return Descriptor(self.id, self.origin, self.user, self.stamp, self.parents,
                          self.touches(), len(self.ops), size)

    def descriptor_wire(self, size: int = 0) -> dict[str, Any]:
        """``self.descriptor(size).to_wire()``, the same map, made without the descriptor
        (the log's writer stores one per transaction)."""
        ops = self.ops
        if len(ops) == 1:
            op = ops[0]
            touches = [[op.collection, op.key]]
        else:
            seen: dict[tuple[str, str], list[Any]] = {}
            for op, ref in zip(ops, self.refs()):
                if ref not in seen:
                    seen[ref] = [op.collection, op.key]
            touches = list(seen.values())
        return {"id": self.id, "origin": self.origin, "user": self.user, "stamp": self.stamp,
                "parents": list(self.parents), "touches": touches, "ops": len(ops), "size": size}

    def to_wire(self, known: dict[int, list[Any]] | None = None) -> dict[str, Any]:
        """The transaction as a msgpack/JSON-ready map (``known``: the wire form of some
        operations already made, by their index in ``ops``, inserted in increasing index)."""
        if not known:
            ops = [op_to_wire(op) for op in self.ops]
        elif len(known) == len(self.ops):
            ops = list(known.values())  # every one known: in index order
        else:
            ops = [op_to_wire(op) if (w := known.get(i)) is None else w for i, op in enumerate(self.ops)]
        out: dict[str, Any] = {
            "id": self.id, "origin": self.origin, "stamp": self.stamp,
            "parents": list(self.parents), "ops": ops,
            "before": [b.to_wire() for b in self.before],
        }
        if self.user is not None:
            out["user"] = self.user
        if self.meta:
            out["meta"] = self.meta
        return out

    def packed(self) -> bytes | None:
        """The msgpack encoding of :meth:`to_wire` this transaction was read from (a log
        entry, see :meth:`from_stored`), which an encoder may send as it is; None if unknown."""
        return self._packed

    @classmethod
    def from_stored(cls, data: dict[str, Any], packed: bytes | None = None) -> Transaction:
        """A transaction read back from a replica's own log (written there by :meth:`to_wire`
        after :meth:`from_wire` validated it, or made locally): rebuilt without validating
        stamps and operations again. Data from a peer goes through :meth:`from_wire`.

        ``packed``: the bytes ``data`` was unpacked from (msgpack of :meth:`to_wire`, as the
        log stores it), kept for :meth:`packed` unless ``data`` holds columns records (see
        :data:`~tidesync.core.operations.SET_COLUMNS` and :func:`before_columns_record`): those
        stand for the operations and before-images they hold, in their places."""
        ops, op_records = ops_from_stored(data["ops"])
        before, before_records = _before_from_stored(data.get("before", ()))
        t = cls(
            id=data["id"], origin=data["origin"], stamp=data["stamp"], parents=tuple(data["parents"]),
            ops=ops, before=before, user=data.get("user"), meta=data.get("meta") or {},
        )
        if packed is not None and not op_records and not before_records:
            # Columns records are a stored form only: such an entry is sent as to_wire() makes it.
            object.__setattr__(t, "_packed", packed)
        return t

    @classmethod
    def from_wire(cls, data: Any) -> Transaction:
        """Parse and validate a transaction.

        Raises:
            ValueError: anything malformed, with a message saying what.
        """
        return cls._from_wire(data, None)

    @classmethod
    def from_unchecked(cls, data: Any) -> Transaction | None:
        """:meth:`from_wire` of a map straight from a decoded message, not yet checked to hold
        only plain values, in the common case of an upload: str keys of :meth:`to_wire`'s
        items, str ids, no before-images, no meta, only creates of plain scalars (checked
        while they are parsed). None when that is not certain: check the whole message's
        plainness, then :meth:`from_wire` (which says what is wrong). A ValueError it raises
        is also :meth:`from_wire`'s, but says nothing of plainness elsewhere in the message."""
        if type(data) is not dict:
            return None
        keys = _UNCHECKED_KEYS
        for k, v in data.items():
            if k not in keys or type(k) is not str:
                return None
            if k == "parents" or k == "ops":
                if type(v) is not list:
                    return None
            elif k == "before":
                if v != [] or type(v) is not list:
                    return None
            elif k == "meta":
                if v != {} or type(v) is not dict:
                    return None
            elif type(v) is not str and not (k == "user" and v is None):
                return None
        parents, ops = data.get("parents", ()), data.get("ops", ())
        for p in parents:
            if type(p) is not str:
                return None
        shapes: list[tuple[Any, ...] | None] = []
        fast = creates_from_wire(ops, shapes, plain=True)
        if fast is None:
            return None
        return cls._from_wire(data, (fast, shapes))

    @classmethod
    def many_from_unchecked(cls, datas: list[Any]) -> list[Transaction] | None:
        """:meth:`from_wire` of each of ``datas`` (an upload batch's transactions, or a
        download's), in one pass for the batch when each is exactly what a device sends for
        new documents or edits: the keys of :meth:`to_wire` in its order (``user`` a str or
        absent, no ``meta``), before-images of plain scalars (or one-level maps and lists of
        them), creates of plain scalars only or edits only (see
        :func:`~tidesync.core.operations.updates_unstamped`). Their ids, stamps, parents and
        operation stamps are checked together, and the transactions are made without the dataclass ``__init__``:
        the same transactions :meth:`from_wire` makes (equal, same :meth:`wire`,
        :meth:`create_shapes`). None on any doubt: then call :meth:`from_unchecked` on each
        (which also says what is wrong)."""
        out: list[Transaction] = []
        stamps: list[Any] = []
        origins: set[Any] = set()
        plain_keys, user_keys = _WIRE_KEYS[False, False], _WIRE_KEYS[True, False]
        make = _new_transaction
        for data in datas:
            if type(data) is not dict:
                return None
            keys = tuple(data)
            if keys == plain_keys:
                user = None
            elif keys == user_keys:
                user = data["user"]
                if type(user) is not str:
                    return None
            else:
                return None
            tid, origin, stamp, parents, ops, before = (data["id"], data["origin"], data["stamp"],
                                                        data["parents"], data["ops"], data["before"])
            if (type(tid) is not str or type(origin) is not str or type(stamp) is not str
                    or type(parents) is not list or type(ops) is not list or type(before) is not list):
                return None
            befores = _befores_unchecked(before) if before else ()
            if befores is None:
                return None
            for p in parents:
                if type(p) is not str:
                    return None
            shapes: list[tuple[Any, ...] | None] = []
            mark = len(stamps)
            parsed: tuple[Op, ...] | None = creates_unstamped(ops, shapes, stamps, plain=True)
            if parsed is not None:
                wire: dict[str, Any] | None = data
                known = tuple(shapes) if None not in shapes else None
            else:
                # Edits. Each operation's list is what op_to_wire gives for it (the same items,
                # lists for its path and epochs), so to_wire() would build this map too.
                del stamps[mark:]
                parsed = updates_unstamped(ops, stamps)
                if parsed is None or not parsed:
                    return None
                wire, known = data, None
            stamps.append(tid)
            stamps.append(stamp)
            stamps.extend(parents)
            origins.add(origin)
            out.append(make(tid, origin, stamp, tuple(parents), parsed, befores, user, wire, known))
        if not are_stamps(stamps):
            return None
        for origin in origins:
            if not is_replica_id(origin):
                return None
        return out

    @classmethod
    def _from_wire(cls, data: Any,
                   parsed_creates: tuple[tuple[CreateDoc, ...], list[tuple[Any, ...] | None]] | None) -> Transaction:
        if not isinstance(data, dict):
            raise ValueError("a transaction is a map")
        try:
            tid, origin, stamp = data["id"], data["origin"], data["stamp"]
            parents, ops, before = data["parents"], data["ops"], data.get("before", [])
        except KeyError as exc:
            raise ValueError(f"transaction lacks {exc.args[0]!r}") from None
        if not is_stamp(tid) or not is_stamp(stamp):
            raise ValueError("transaction id and stamp must be stamps")
        if not is_replica_id(origin):
            raise ValueError("transaction origin must be a replica id")
        if not isinstance(parents, list) or not all(is_stamp(p) for p in parents):
            raise ValueError("transaction parents must be a list of ids")
        if not isinstance(ops, list) or not isinstance(before, list):
            raise ValueError("transaction ops and before must be lists")
        user = data.get("user")
        if user is not None and not isinstance(user, str):
            raise ValueError("transaction user must be a str")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError("transaction meta must be a map")
        if parsed_creates is None:
            shapes: list[tuple[Any, ...] | None] = []
            fast = creates_from_wire(ops, shapes)
        else:
            fast, shapes = parsed_creates
        creates = fast is not None
        parsed: tuple[Op, ...] = fast if fast is not None else tuple([op_from_wire(o) for o in ops])
        t = cls(
            id=tid, origin=origin, stamp=stamp, parents=tuple(parents), ops=parsed,
            before=tuple(BeforeImage.from_wire(b) for b in before), user=user, meta=meta,
        )
        if not before and type(data) is dict and tuple(data) == _WIRE_KEYS[user is not None, bool(meta)] \
                and type(parents) is list and type(ops) is list and type(before) is list \
                and (creates or (all(type(op) is CreateDoc for op in parsed) and all(type(o) is list for o in ops))):
            # A create parsed from [code, collection, key, stamp, base, fields, kinds, defaults]
            # keeps every item as given (defaults a list again in to_wire): to_wire() would
            # build this very map.
            object.__setattr__(t, "_wire", data)
        if creates and None not in shapes:
            object.__setattr__(t, "_shapes", tuple(shapes))
        return t


def _transaction_maker() -> Callable[..., Transaction]:
    """``Transaction(...)`` of an upload's transaction, as :meth:`Transaction._from_wire` makes
    it (no meta, ``_shapes`` as it sets them; ``_wire`` the received map,
    which :meth:`Transaction.to_wire` would build again), its slots filled
    directly: a frozen dataclass's ``__init__`` sets each of its 13 slots through
    ``object.__setattr__``."""
    new = object.__new__
    fields = ("id", "origin", "stamp", "parents", "ops", "before", "user", "meta",
              "_refs", "_wire", "_packed", "_shapes", "_unpack")
    (s_id, s_origin, s_stamp, s_parents, s_ops, s_before, s_user, s_meta,
     s_refs, s_wire, s_packed, s_shapes, s_unpack) = [getattr(Transaction, name).__set__ for name in fields]

    def make(tid: Stamp, origin: ReplicaId, stamp: Stamp, parents: tuple[Stamp, ...], ops: tuple[Op, ...],
             before: tuple[BeforeImage, ...], user: str | None, wire: dict[str, Any] | None,
             shapes: tuple[tuple[Any, ...], ...] | None) -> Transaction:
        t: Transaction = new(Transaction)
        s_id(t, tid)
        s_origin(t, origin)
        s_stamp(t, stamp)
        s_parents(t, parents)
        s_ops(t, ops)
        s_before(t, before)
        s_user(t, user)
        s_meta(t, {})
        s_refs(t, None)
        s_wire(t, wire)
        s_packed(t, None)
        s_shapes(t, shapes)
        s_unpack(t, None)
        return t

    return make


def _befores_unchecked(datas: list[Any]) -> tuple[BeforeImage, ...] | None:
    """:meth:`BeforeImage.from_wire` of each of ``datas`` (straight from a decoded message, not
    yet checked to be plain) when each is exactly what :meth:`BeforeImage.to_wire` gives back:
    a list ``[collection, key, fields, deleted]`` of a str, a plain scalar key, None or a map
    of str keys to plain scalars or one-level maps and lists of them (:data:`MISSING_FIELD`),
    and a bool. None on any doubt (then the message's plainness is checked and
    :meth:`BeforeImage.from_wire` parses it)."""
    out: list[BeforeImage] = []
    new = BeforeImage
    for b in datas:
        if type(b) is not list or len(b) != 4:
            return None
        collection, key, fields, deleted = b
        if type(collection) is not str or type(deleted) is not bool or not plain_scalars((key,)):
            return None
        if fields is not None:
            if type(fields) is not dict:
                return None
            for name, value in fields.items():
                if type(name) is not str:
                    return None
                t = type(value)
                if t is dict:
                    for k in value:
                        if type(k) is not str:
                            return None
                    if not plain_scalars(value.values()):
                        return None
                elif t is list:
                    if not plain_scalars(value):
                        return None
                elif not plain_scalars((value,)):
                    return None
        out.append(new(collection, key, fields, deleted))
    return tuple(out)


_UNCHECKED_KEYS = frozenset(("id", "origin", "stamp", "parents", "ops", "before", "user", "meta"))

_WIRE_KEYS = {
    (False, False): ("id", "origin", "stamp", "parents", "ops", "before"),
    (True, False): ("id", "origin", "stamp", "parents", "ops", "before", "user"),
    (False, True): ("id", "origin", "stamp", "parents", "ops", "before", "meta"),
    (True, True): ("id", "origin", "stamp", "parents", "ops", "before", "user", "meta"),
}

_new_transaction = _transaction_maker()
