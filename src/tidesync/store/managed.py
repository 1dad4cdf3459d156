"""Managed objects: model instances and collections that read and write a database.

A managed object holds only its database, its document reference and (for embedded objects)
its path. Every attribute read goes to the database's current state of the document (the
write transaction's, inside ``db.write()``); every assignment becomes an operation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping, MutableSequence, MutableSet
from threading import get_ident
from time import monotonic
from typing import TYPE_CHECKING, Any, overload

from ..core.merge.create import register_top
from ..core.models import Counter, _coerce_elem, _Mismatch, _ModelBase, _NotText, coerce, model_registry
from ..core.schema import SCALAR_KINDS, FieldType, ObjectSchema
from ..core.values import INT64_MAX, INT64_MIN, NOT_TEXT_ADVICE, Plain, from_plain, loads_json
from ..errors import InvalidatedObjectError, ValidationError
from .writer import row_facts

if TYPE_CHECKING:
    from .database import Database

__all__ = ["ObjectBinding", "ManagedList", "ManagedSet", "ManagedDict", "make_managed"]

Ref = tuple[str, str]

_SCALAR_OR_MIXED = SCALAR_KINDS | {"mixed"}


def _at_path(body: dict[str, Plain], path: tuple[str, ...]) -> Any:
    cur: Any = body
    for name in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(name)
    return cur


class ObjectBinding:
    """Connects a managed instance to its document (``path`` is () for a top-level object)."""

    __slots__ = ("db", "ref", "key", "collection", "path", "schema")

    def __init__(self, db: Database, collection: str, key: Plain, ref: Ref, path: tuple[str, ...], schema: ObjectSchema) -> None:
        self.db = db
        self.collection = collection
        self.key = key
        self.ref = ref
        self.path = path
        self.schema = schema

    def body(self) -> dict[str, Plain]:
        body = self.db._body_of(self.ref)
        if body is None:
            raise InvalidatedObjectError(
                f"this {self.schema.name} object was deleted" if not self.path
                else f"the {self.collection} object that holds this {self.schema.name} was deleted")
        if self.path:
            sub = _at_path(body, self.path)
            if not isinstance(sub, dict):
                raise InvalidatedObjectError(f"this embedded {self.schema.name} was replaced or removed",
                                             advice="read it again from its parent object")
            return sub
        return body

    def get_field(self, obj: Any, name: str) -> Any:
        f = self.schema.fields[name]
        db = self.db
        body = None
        if not self.path and db._txn is None and not db._closed and monotonic() - db._checked_at < 0.002:
            # What _body_of answers when no write transaction is open and the file was checked
            # for other writers less than 2 ms ago: the cached body. One dict read needs no lock
            # (the cache only ever gains committed bodies or is cleared); a miss, or a deleted
            # document (None), takes the full path below.
            body = db._cache.get(self.ref)
        if body is None:
            body = db._body_of(self.ref) if not self.path else None
        plain = (body if body is not None else self.body()).get(name)
        t = f.type
        if t.kind in _SCALAR_OR_MIXED:
            # What _to_python gives for a JSON scalar (from_plain leaves it as it is), quicker.
            tp: type[Any] = type(plain)
            if tp is str or tp is bool or tp is float or plain is None:
                return plain
            if tp is int:
                return float(plain) if t.kind == "float" else plain
        return self.db._to_python(self, self.path + (name,), t, plain)

    def set_field(self, obj: Any, name: str, value: Any) -> None:
        db = self.db
        txn = db._txn
        if txn is not None and txn.loop_name == name and txn.loop_schema is self.schema and not self.path:
            # The next assignment of the write's assignment loop (Database._fast_assign's loop
            # branch, done here: the checks that passed when the loop began hold for the same
            # field of the same schema). Anything else, or anything it would change, goes on.
            ref = self.ref
            loop = txn.loop_keys
            tv = type(value)
            if (loop and tv is txn.loop_type and (tv is not int or INT64_MIN <= value <= INT64_MAX)
                    and db._txn_thread == get_ident() and not db._closed and txn._journal is None
                    and not txn.column_refs and name != db.partition_key and self.collection == txn.loop_collection
                    and ref not in loop and not (txn._pending and ref in txn._pending)
                    and not (txn.docs and ref in txn.docs) and not (txn.bulk_refs and ref in txn.bulk_refs)):
                ahead = txn.loop_ahead
                pk = ref[1]
                row: tuple[Any, ...] | None
                if ahead is not None and (row := ahead[0].pop(pk, None)) is not None:
                    ahead[2] += 1
                    if type(row[3]) is not int and not row_facts(row[3])[1]:
                        raise InvalidatedObjectError(f"this {self.collection} object was deleted")
                else:
                    row = db._live_row(txn, None, self.collection, pk, name)  # raises if deleted
                meta = row[1]
                if len(meta) != 42 or meta[:6] != '{"*":"':
                    # (a create's compact meta {"*": stamp}: its stamp is taken when the loop is read)
                    top = register_top(loads_json(meta), name)
                    if top is None:
                        row = None  # the general path's (Database._fast_assign reads the row again)
                    elif top > txn.loop_max:
                        txn.loop_max = top
                if row is not None:
                    loop[ref] = self.key
                    txn.loop_buf += (row, value)
                    return
        f = self.schema.fields[name]
        if f.primary_key:
            raise ValidationError(f"{self.schema.name}._id cannot change once the object is created")
        part = self.db._partition
        # The partition key (synced or not) takes the general path, which writes the scope column.
        if (not self.path and f.type.kind in SCALAR_KINDS and name != self.db.partition_key
                and self.db._fast_assign(self, name, f.type, value)):
            return
        txn, d = self.db._writable(self)
        if part is not None and not self.path and name == part[0]:
            from ..core.models import value_to_plain
            from ..errors import PartitionError

            if value_to_plain(f.type, value) != part[1]:
                raise PartitionError(f"{self.schema.name}.{name} is the partition key; this database syncs "
                                     f"partition {part[1]!r} only", advice="create the object in a database "
                                     "synced to the other partition instead")
        if f.type.kind == "link" and value is not None:
            value = self.db._adopt(value)
        elif f.type.kind == "list" and f.type.element is not None and f.type.element.kind == "link":
            value = [self.db._adopt(v) for v in value]
        txn.assign(d, self.path + (name,), f.type, value)


def make_managed(db: Database, cls: type[_ModelBase], binding: ObjectBinding) -> Any:
    obj = cls.__new__(cls)
    obj._ts_binding = binding
    obj._ts_ref = binding.ref
    obj._ts_values = {}
    return obj


class _ManagedCollection:
    __slots__ = ("_binding", "_path", "_type", "_owner")

    def __init__(self, binding: ObjectBinding, path: tuple[str, ...], ftype: FieldType, owner: str) -> None:
        self._binding = binding
        self._path = path
        self._type = ftype
        self._owner = owner

    def _plain(self) -> Any:
        return _at_path(self._binding.db._body_of_checked(self._binding), self._path)

    def _elem(self, value: Any) -> Any:
        assert self._type.element is not None
        try:
            v = _coerce_elem(self._type.element, value)
        except _Mismatch as exc:
            raise ValidationError(f"{self._owner}.{'.'.join(self._path)} holds {self._type.element.describe()}"
                                  f"{exc.detail}") from None
        except _NotText as exc:
            raise ValidationError(f"{self._owner}.{'.'.join(self._path)}: {exc.message}",
                                  advice=NOT_TEXT_ADVICE) from None
        if self._type.element.kind == "link":
            v = self._binding.db._adopt(v)
        return v

    def _decode(self, plain: Plain) -> Any:
        assert self._type.element is not None
        return self._binding.db._decode_element(self._type.element, plain)


class ManagedList(_ManagedCollection, MutableSequence[Any]):
    """A list field of a managed object; changes become sequence-CRDT operations."""

    __slots__ = ()

    def _items(self) -> list[Plain]:
        v = self._plain()
        return v if isinstance(v, list) else []

    def _visible(self) -> list[Any]:
        out = [self._decode(p) for p in self._items()]
        if self._type.element is not None and self._type.element.kind == "link":
            return [o for o in out if o is not None]
        return out

    def __len__(self) -> int:
        return len(self._visible()) if self._is_links() else len(self._items())

    def _is_links(self) -> bool:
        return self._type.element is not None and self._type.element.kind == "link"

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self._visible()[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._visible())

    def _raw_index(self, index: int) -> int:
        """Map a visible index to the stored index (links to deleted objects are hidden)."""
        items = self._items()
        if not self._is_links():
            n = len(items)
            if index < 0:
                index += n
            if not 0 <= index < n:
                raise IndexError("list index out of range")
            return index
        return self._shown_indexes()[index]

    def _shown_indexes(self) -> list[int]:
        """The stored index of each element shown, in order (links to deleted objects are
        stored but not shown)."""
        items = self._items()
        if not self._is_links():
            return list(range(len(items)))
        return [i for i, p in enumerate(items) if self._decode(p) is not None]

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            raise ValidationError("slice assignment is not supported on a managed list; assign the whole list")
        txn, d = self._binding.db._writable(self._binding)
        assert self._type.element is not None
        txn.list_set(d, self._path, self._type.element, self._raw_index(index), self._elem(value))

    def __delitem__(self, index: Any) -> None:
        if isinstance(index, slice):
            raise ValidationError("slice deletion is not supported on a managed list")
        txn, d = self._binding.db._writable(self._binding)
        txn.list_erase(d, self._path, self._raw_index(index))

    def insert(self, index: int, value: Any) -> None:
        txn, d = self._binding.db._writable(self._binding)
        assert self._type.element is not None
        v = self._elem(value)
        if self._is_links():
            n = len(self._visible())
            if index < 0:
                index = max(0, n + index)
            raw = self._raw_index(index) if index < n else len(self._items())
        else:
            raw = index
        txn.list_insert(d, self._path, self._type.element, raw, v)

    def move(self, from_index: int, to_index: int) -> None:
        """Move the element at ``from_index`` so that it ends at ``to_index`` (Realm's
        ``List.move``). Unlike a remove and an insert, the element keeps its identity: an
        edit of it made concurrently on another device follows it, two devices moving it at
        once leave it where the later move put it, and a concurrent removal wins
        (docs/merge-rules.md)."""
        txn, d = self._binding.db._writable(self._binding)
        shown = self._shown_indexes()
        n = len(shown)
        src, dst = (from_index + n if from_index < 0 else from_index), (to_index + n if to_index < 0 else to_index)
        if not (0 <= src < n and 0 <= dst < n):
            raise IndexError("list index out of range")
        if src == dst:
            return
        rest = shown[:src] + shown[src + 1:]
        txn.list_move(d, self._path, shown[src], rest[dst - 1] if dst > 0 else None)

    def swap(self, index1: int, index2: int) -> None:
        """Exchange the elements at two indexes (Realm's ``List.swap``): two moves."""
        n = len(self._visible())
        a, b = (index1 + n if index1 < 0 else index1), (index2 + n if index2 < 0 else index2)
        if not (0 <= a < n and 0 <= b < n):
            raise IndexError("list index out of range")
        a, b = min(a, b), max(a, b)
        if a == b:
            return
        self.move(b, a)
        self.move(a + 1, b)

    def clear(self) -> None:
        txn, d = self._binding.db._writable(self._binding)
        txn.clear(d, self._path, "list")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, ManagedList)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"ManagedList({self._visible()!r})"


class ManagedSet(_ManagedCollection, MutableSet[Any]):
    """A set field of a managed object; per member, the later of add and remove wins."""

    __slots__ = ()

    def _members(self) -> list[Any]:
        v = self._plain()
        out = [self._decode(p) for p in v] if isinstance(v, list) else []
        return [o for o in out if o is not None] if self._type.element and self._type.element.kind == "link" else out

    def __contains__(self, value: object) -> bool:
        return value in self._members()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._members())

    def __len__(self) -> int:
        return len(self._members())

    def add(self, value: Any) -> None:
        txn, d = self._binding.db._writable(self._binding)
        assert self._type.element is not None
        txn.set_add(d, self._path, self._type.element, self._elem(value))

    def discard(self, value: Any) -> None:
        txn, d = self._binding.db._writable(self._binding)
        assert self._type.element is not None
        txn.set_remove(d, self._path, self._type.element, self._elem(value))

    def remove(self, value: Any) -> None:
        if value not in self:
            raise KeyError(value)
        self.discard(value)

    def clear(self) -> None:
        txn, d = self._binding.db._writable(self._binding)
        txn.clear(d, self._path, "set")

    def update(self, values: Iterable[Any]) -> None:
        for v in values:
            self.add(v)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (set, frozenset, ManagedSet)):
            return set(self) == set(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ManagedSet({set(self._members())!r})"


class ManagedDict(_ManagedCollection, MutableMapping[str, Any]):
    """A dictionary field of a managed object; per key, last writer wins."""

    __slots__ = ()

    def _map(self) -> dict[str, Plain]:
        v = self._plain()
        return v if isinstance(v, dict) else {}

    def __getitem__(self, key: str) -> Any:
        return self._decode(self._map()[key])

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._map()))

    def __len__(self) -> int:
        return len(self._map())

    def __setitem__(self, key: str, value: Any) -> None:
        from ..core.values import check_key

        try:
            check_key(key)
        except ValueError as exc:
            raise ValidationError(f"{self._owner}.{'.'.join(self._path)}: {exc}") from None
        txn, d = self._binding.db._writable(self._binding)
        assert self._type.element is not None
        txn.dict_put(d, self._path, self._type.element, key, self._elem(value))

    def __delitem__(self, key: str) -> None:
        if key not in self._map():
            raise KeyError(key)
        txn, d = self._binding.db._writable(self._binding)
        txn.dict_del(d, self._path, key)

    def clear(self) -> None:
        txn, d = self._binding.db._writable(self._binding)
        txn.clear(d, self._path, "dict")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (dict, ManagedDict)):
            return dict(self) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"ManagedDict({dict(self)!r})"


def bind_counter(binding: ObjectBinding, path: tuple[str, ...], value: int) -> Counter:
    """A Counter whose ``increment`` records a CounterAdd operation."""
    c = Counter(value)

    def add(amount: int) -> int:
        txn, d = binding.db._writable(binding)
        txn.counter_add(d, path, amount)
        new = _at_path(binding.db._body_of_checked(binding), path)
        return int(new) if isinstance(new, int) else 0

    c._owner = add
    return c


_ = (coerce, model_registry, from_plain)
