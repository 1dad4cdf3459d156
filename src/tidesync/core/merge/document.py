"""Integrating operations into a document: incarnations, paths, and the dispatch to the rules.

**Incarnations** (CR-07, CR-08, CR-09). A document's epoch ``E`` is the largest of every
delete stamp and every operation ``base`` it has seen. Writers stamp each operation with
the incarnation they saw, so:

* an operation with ``base < E`` was made without seeing the delete that started ``E``: it
  is discarded (delete wins over a concurrent update or create, whatever the stamps);
* an operation with ``base > E`` was made after a delete (stamped ``base``) that has not
  arrived yet: the document is reset to that incarnation first, as the delete would have;
* ``DeleteDoc`` stamped later than ``E`` starts a new incarnation: not live, empty body;
  an older one is discarded (an old erase cannot undo a later erase-then-create, CR-09);
  a repeated one changes nothing.
* any other operation with ``base == E`` makes the document live (a create, or a write made
  after the create, whichever arrives first).

Operations inside containers are routed along their path by :func:`resolve` (see
:mod:`.registers` for what epochs decide there).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...errors import MergeError
from ..operations import (
    CounterAdd,
    CreateDoc,
    DeleteDoc,
    DictDel,
    DictPut,
    ListErase,
    ListInsert,
    ListMove,
    ListSet,
    Op,
    SetAdd,
    SetContainer,
    SetRemove,
    SetValue,
    Unset,
)
from ..stamp import ZERO, Stamp
from .collections import dict_write, set_add, set_remove
from .conflicts import Conflict, Context
from .counters import counter_add
from .create import compact_kind, create_counter, create_general, expand, fast_create, overlay_write, validate_create
from .policies import Policies
from .registers import INSTALLED, SAME, UNSET, VALUE, child_node, slot_write
from .sequence import list_erase, list_insert, list_move, list_set, visible_ids, visible_positions
from .state import CONTAINER_KINDS, DocState, Node, container_key, new_element_id, new_state, write_key

__all__ = ["integrate", "integrate_all", "epochs", "list_element_ids", "list_positions", "container_kind", "resolve"]

_FIELD_OPS = (SetValue, Unset, SetContainer, CounterAdd)
_LIST_OPS = (ListInsert, ListSet, ListErase, ListMove)
_SET_OPS = (SetAdd, SetRemove)
_DICT_OPS = (DictPut, DictDel)


def integrate(state: DocState | None, op: Op, policies: Policies | None = None) -> tuple[DocState, list[Conflict]]:
    """Apply one operation to a document's state.

    Args:
        state: the document's state (None: a document never seen). It may be changed in
            place and returned: keep a :meth:`DocState.copy` if the old state is needed.
        op: the operation, of this document.
        policies: the conflict policies (None: last writer wins everywhere).

    Returns:
        The new state and the conflicts resolved on the way (usually none).

    Raises:
        MergeError: the operation is malformed (the state is then unchanged), or a policy
            function broke its contract (the state may then be partly changed: reload it).
    """
    cls = type(op)
    if cls is CreateDoc and state is None:
        # The hot path: a document created in bulk, never seen before.
        body, meta = fast_create(op)  # type: ignore[arg-type]
        return DocState(op.base, True, body, meta), []
    if state is None:
        state = new_state()
    if cls is DeleteDoc:
        if op.stamp > state.epoch:
            state.epoch = op.stamp
            state.live = False
            state.body = {}
            state.meta = {}
        return state, []
    base = op.base
    if cls is not CreateDoc:
        _validate(op)
        if (type(op) is SetValue and "*" in state.meta and base == state.epoch and len(op.path) == 1
                and (policies is None or policies.lookup(op.collection, op.path) == "lww")
                and overlay_write(state, op.path[0], write_key(op.stamp, op.default), op.value)):
            # A top-level register write that wins, on a document only its create touched
            # otherwise: its key goes to the compact meta's overlay, as a store's fast path
            # writes it (the same state as expanding it first; no conflict to record).
            return state, []
    elif not state.meta and not state.live and base >= state.epoch:
        # Nothing to merge with: the fast path (it validates before anything changes).
        state.body, state.meta = fast_create(op)  # type: ignore[arg-type]
        state.epoch = base
        state.live = True
        return state, []
    else:
        validate_create(op)  # type: ignore[arg-type]
    if base != state.epoch:
        if base < state.epoch:
            ctx = Context(op, policies)
            ctx.record(getattr(op, "path", ()), "delete-wins", None, state.epoch)
            return state, ctx.conflicts
        state.epoch = base
        state.live = False
        state.body = {}
        state.meta = {}
    if cls is CreateDoc and not state.meta and not state.live:
        # A new incarnation starts empty: the fast path applies after the reset.
        state.body, state.meta = fast_create(op)  # type: ignore[arg-type]
        state.live = True
        return state, []
    ctx = Context(op, policies)
    if "*" in state.meta:
        expand(state)
    if not state.live:
        state.live = True
        if "_id" not in state.body:
            state.body["_id"] = op.key
    _apply(ctx, state, op)
    return state, ctx.conflicts


def integrate_all(state: DocState | None, ops: Iterable[Op],
                  policies: Policies | None = None) -> tuple[DocState, list[Conflict]]:
    """Apply operations in order (see :func:`integrate`); returns the state and all conflicts."""
    if state is None:
        state = new_state()
    conflicts: list[Conflict] = []
    for op in ops:
        state, found = integrate(state, op, policies)
        if found:
            conflicts.extend(found)
    return state, conflicts


def _validate(op: Op) -> None:
    path = getattr(op, "path", None)
    if path is None:  # pragma: no cover - only CreateDoc and DeleteDoc have no path
        return
    if not isinstance(path, tuple) or not path or not all(isinstance(p, str) and p for p in path):
        raise MergeError(f"operation path must be a non-empty tuple of field names, not {path!r}")
    if path[0] == "_id":
        raise MergeError("the primary key _id cannot be changed", advice="delete the document and create another")
    need = len(path) - 1 if isinstance(op, _FIELD_OPS) else len(path)
    if len(op.epochs) != need:  # type: ignore[union-attr]
        raise MergeError(f"operation on {'.'.join(path)} needs {need} epochs, has {len(op.epochs)}")  # type: ignore[union-attr]
    if isinstance(op, ListInsert):
        if not isinstance(op.elem, str) or not op.elem or (op.after is not None and not op.elem > op.after):
            raise MergeError(f"list element id {op.elem!r} must be a non-empty string larger than its anchor {op.after!r}",
                             advice="mint element ids with new_element_id() from a fresh stamp")
    elif isinstance(op, ListMove):
        if not isinstance(op.pos, str) or not op.pos or not op.pos > op.elem or (
                op.after is not None and not op.pos > op.after):
            raise MergeError(f"list move position {op.pos!r} must be a non-empty string larger than the element "
                             f"{op.elem!r} and its anchor {op.after!r}",
                             advice="mint positions with new_element_id() from a fresh stamp")
    elif isinstance(op, SetContainer):
        if op.kind not in CONTAINER_KINDS:
            raise MergeError(f"unknown container kind {op.kind!r}")
    elif isinstance(op, CounterAdd):
        if type(op.amount) is not int:
            raise MergeError("a counter increment must be an int")


def resolve(ctx: Context, state: DocState, path: tuple[str, ...], epochs: tuple[Stamp, ...],
            kind: str) -> tuple[Node, Any] | None:
    """The container at ``path`` (of ``kind``; objects on the way), as the op's epochs address it.

    Returns:
        (meta node, materialized container), or None when the operation is discarded.
    """
    node: Node = state.meta
    body: Any = state.body
    last = len(path) - 1
    for i, name in enumerate(path):
        got = child_node(ctx, node, body, path[: i + 1], epochs[i], kind if i == last else "object")
        if got is None:
            return None
        node, body = got
    return node, body


def _apply(ctx: Context, state: DocState, op: Op) -> None:
    if isinstance(op, _FIELD_OPS):
        parent = resolve(ctx, state, op.path[:-1], op.epochs, "object")
        if parent is None:
            return
        node, nbody = parent
        path = op.path
        if isinstance(op, SetValue):
            res = slot_write(ctx, node, nbody, path, write_key(op.stamp, op.default), VALUE, op.value)
        elif isinstance(op, Unset):
            res = slot_write(ctx, node, nbody, path, write_key(op.stamp), UNSET)
        elif isinstance(op, SetContainer):
            res = _set_container(ctx, node, nbody, op)
        else:
            counter_add(ctx, node, nbody, path, op.stamp, op.amount)
            return
        if res != INSTALLED and res != SAME:
            name = path[-1]
            ctx.record(path, res, nbody.get(name), node["r"][name][1:])
    elif isinstance(op, _LIST_OPS):
        target = resolve(ctx, state, op.path, op.epochs, "list")
        if target is None:
            return
        node, lbody = target
        if isinstance(op, ListInsert):
            list_insert(ctx, node, lbody, op.path, op.elem, op.after, op.value)
        elif isinstance(op, ListSet):
            list_set(ctx, node, lbody, op.path, op.elem, op.stamp, op.value)
        elif isinstance(op, ListMove):
            list_move(ctx, node, lbody, op.path, op.elem, op.pos, op.after)
        else:
            list_erase(ctx, node, lbody, op.path, op.elem)
    elif isinstance(op, _SET_OPS):
        target = resolve(ctx, state, op.path, op.epochs, "set")
        if target is None:
            return
        node, sbody = target
        if isinstance(op, SetAdd):
            set_add(ctx, node, sbody, op.path, op.value, op.stamp)
        else:
            set_remove(ctx, node, sbody, op.path, op.value, op.stamp)
    elif isinstance(op, _DICT_OPS):
        target = resolve(ctx, state, op.path, op.epochs, "dict")
        if target is None:
            return
        node, dbody = target
        if isinstance(op, DictPut):
            dict_write(ctx, node, dbody, op.path, op.dkey, write_key(op.stamp), True, op.value)
        else:
            dict_write(ctx, node, dbody, op.path, op.dkey, write_key(op.stamp), False)
    elif isinstance(op, CreateDoc):
        create_general(ctx, state, op)
    else:  # pragma: no cover - DeleteDoc is handled by integrate
        raise MergeError(f"unknown operation {type(op).__name__}")


def _set_container(ctx: Context, node: Node, nbody: dict[str, Any], op: SetContainer) -> str:
    if op.kind == "counter":
        if not op.epoch:
            # A counter made at creation: merges like CreateDoc's counters.
            create_counter(ctx, node, nbody, op.path, write_key(op.stamp, op.default), op.value)
            return SAME
        return slot_write(ctx, node, nbody, op.path, write_key(op.epoch, op.default), "counter", op.value)
    return slot_write(ctx, node, nbody, op.path, container_key(op.epoch), op.kind, None, op.epoch)


# -- reading, for writers ------------------------------------------------------------------------


def _node_at(state: DocState, path: tuple[str, ...]) -> tuple[Node, Any] | None:
    node: Node = state.meta
    body: Any = state.body
    for name in path:
        c = node.get("c")
        child = c.get(name) if c is not None else None
        if child is None:
            return None
        node, body = child, body[name]
    return node, body


def container_kind(state: DocState, path: tuple[str, ...]) -> str | None:
    """The kind of the container shown at ``path`` (``"object"``, ``"list"``...), or None
    when the field is a plain value, null, or absent (or the path crosses a non-object)."""
    if not path or not state.live:
        return None
    if "*" in state.meta:
        return compact_kind(state.meta, path, state.body)
    node: Node = state.meta
    for i, name in enumerate(path):
        if i and node.get("k") != "object":
            return None
        c = node.get("c")
        child = c.get(name) if c is not None else None
        if child is None:
            return None
        node = child
    kind: str = node["k"]
    return kind


def epochs(state: DocState, path: tuple[str, ...]) -> tuple[Stamp, ...]:
    """The epoch of each container along ``path`` (one per element): what a local writer puts
    in ``op.epochs``.

    Use ``epochs(state, op.path[:-1])`` for ``SetValue``, ``Unset``, ``SetContainer`` and
    ``CounterAdd``, and ``epochs(state, op.path)`` for list, set and dictionary operations.

    Raises:
        ValueError: a step of ``path`` is not a container (assign one first with
            ``SetContainer``), or the document is not live.
    """
    if not path:
        return ()
    if not state.live:
        raise ValueError("the document is not live")
    out: list[Stamp] = []
    if "*" in state.meta:
        for i in range(len(path)):
            kind = compact_kind(state.meta, path[: i + 1], state.body)
            if kind is None or kind == "counter":
                raise ValueError(f"{'.'.join(path[: i + 1])} is not a container")
            out.append(ZERO)
        return tuple(out)
    node: Node = state.meta
    for i, name in enumerate(path):
        if i and node.get("k") != "object":
            raise ValueError(f"{'.'.join(path[:i])} is not an embedded object")
        c = node.get("c")
        child = c.get(name) if c is not None else None
        if child is None or child["k"] == "counter":
            raise ValueError(f"{'.'.join(path[: i + 1])} is not a container")
        out.append(child["e"])
        node = child
    return tuple(out)


def list_element_ids(state: DocState, path: tuple[str, ...]) -> list[str]:
    """The ids of the visible elements of the list at ``path``, in order (index -> element id):
    what ``ListSet``, ``ListErase`` and ``ListMove`` address.

    Raises:
        ValueError: there is no list at ``path``.
    """
    return _list_ids(state, path, visible_ids)


def list_positions(state: DocState, path: tuple[str, ...]) -> list[str]:
    """The positions of the visible elements of the list at ``path``, in order: what an
    insert or a move after index ``i`` anchors at (the element id itself, unless it moved).

    Raises:
        ValueError: there is no list at ``path``.
    """
    return _list_ids(state, path, visible_positions)


def _list_ids(state: DocState, path: tuple[str, ...], read: Any) -> list[str]:
    if container_kind(state, path) != "list":
        raise ValueError(f"{'.'.join(path)} is not a list")
    if "*" in state.meta:
        value: Any = state.body
        for name in path:
            value = value[name]
        return [new_element_id(state.meta["*"], i) for i in range(len(value))]
    found = _node_at(state, path)
    assert found is not None
    ids: list[str] = read(found[0])
    return ids
