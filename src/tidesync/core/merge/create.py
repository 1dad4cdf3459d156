"""Creating documents: the fast path, the general path, and the compact meta between them.

``CreateDoc`` (CR-06) writes every field it carries: a field named in ``kinds`` is a
container made at epoch ``ZERO`` with the lowest key (so the contents of two concurrent
creations of one document merge: both lists' elements, both sets' members, both objects'
fields, and any explicit later assignment replaces them); every other field is a register
keyed by the create's stamp (a default when named in ``defaults``, CR-05). The elements of a
list made at create have the implied ids ``new_element_id(stamp, i)``, each after the
previous one.

**Fast path.** Creating a document that the state knows nothing about (the hot path of bulk
inserts) only copies the fields and writes the compact meta ``{"*": stamp}`` (plus
``"*k": kinds`` and ``"*d": defaults`` when given): everything else is implied. The first
other operation on the document calls :func:`expand`, which writes the implied meta out.
:func:`create_general` is the general path (a create merging into an existing document);
``fast_create`` followed by ``expand`` gives exactly what ``create_general`` gives on an
empty document, which the property tests check.
"""

from __future__ import annotations

from typing import Any

from ...errors import MergeError
from ..operations import CreateDoc
from ..stamp import ZERO, Stamp
from ..values import Plain
from .collections import dict_write, set_add
from .conflicts import Context
from .counters import settle
from .registers import INSTALLED, SAME, VALUE, child_node, slot_write
from .sequence import list_insert
from .state import CONTAINER_KINDS, CREATE_KEY, DocState, Node, member_key, new_element_id, write_key

__all__ = ["validate_create", "fast_create", "expand", "is_compact", "create_general", "compact_kind",
           "create_counter", "compact_key", "register_top", "overlay_write", "keep_create_stamp"]

_MISSING: Any = object()


def is_compact(meta: dict[str, Any]) -> bool:
    """True when ``meta`` is the compact form left by the fast create path."""
    return "*" in meta


def _kind_of(kinds: dict[str, str], dotted: str, value: Plain) -> str | None:
    """The container kind of the created field ``dotted``, or None for a register.

    A null value is a register even where ``kinds`` names a container (an absent optional
    embedded object, say), except for counters, whose null is an assigned value.
    """
    kind = kinds.get(dotted)
    if kind is None or (value is None and kind != "counter"):
        return None
    return kind


def _is_default(defaults: Any, dotted: str) -> bool:
    if not defaults:
        return False
    if dotted in defaults:
        return True
    while "." in dotted:
        dotted = dotted.rsplit(".", 1)[0]
        if dotted in defaults:
            return True
    return False


def validate_create(op: CreateDoc) -> None:
    """Check a ``CreateDoc`` before anything changes.

    Raises:
        MergeError: ``_id`` disagrees with the key, or a value does not fit its kind.
    """
    fields = op.fields
    if not isinstance(fields, dict):
        raise MergeError("CreateDoc fields must be a map")
    kid = fields.get("_id", _MISSING)
    if kid is not _MISSING and kid != op.key:
        raise MergeError(f"CreateDoc _id {kid!r} differs from the operation's key {op.key!r}")
    if not op.kinds:
        return
    for dotted, kind in op.kinds.items():
        if kind not in CONTAINER_KINDS:
            raise MergeError(f"unknown container kind {kind!r} for {dotted!r}")
        parts = dotted.split(".")
        holder: Any = fields
        for i, part in enumerate(parts[:-1]):
            prefix = ".".join(parts[: i + 1])
            if op.kinds.get(prefix) != "object":
                raise MergeError(f"{dotted!r} is inside {prefix!r}, which is not an embedded object")
            holder = holder.get(part) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            continue
        value = holder.get(parts[-1])
        if value is None:
            continue
        if kind in ("list", "set"):
            ok = isinstance(value, list)
        elif kind in ("dict", "object"):
            ok = isinstance(value, dict)
        else:
            ok = (type(value) is int or type(value) is float)
        if not ok:
            raise MergeError(f"CreateDoc field {dotted!r} is a {kind} but holds {type(value).__name__}")


def fast_create(op: CreateDoc) -> tuple[dict[str, Plain], dict[str, Any]]:
    """The body and compact meta of a document that ``op`` creates from nothing.

    Validates the op as it goes.

    Raises:
        MergeError: as :func:`validate_create`.
    """
    fields = op.fields
    kid = fields.get("_id", _MISSING)
    if kid is _MISSING:
        body = {"_id": op.key}
        body.update(fields)
    else:
        if kid != op.key:
            raise MergeError(f"CreateDoc _id {kid!r} differs from the operation's key {op.key!r}")
        body = fields.copy()
    meta: dict[str, Any] = {"*": op.stamp}
    kinds = op.kinds
    if kinds:
        nested = False
        for dotted, kind in kinds.items():
            if "." in dotted:
                nested = True
                continue
            value = body.get(dotted)
            if value is not None:
                body[dotted] = _own(kind, value, dotted)
        if nested:
            validate_create(op)
            for dotted in sorted(kinds, key=lambda p: p.count(".")):
                if "." in dotted:
                    _copy_container(body, dotted, kinds)
        # Shared with the op, never changed: expand() replaces the whole compact meta.
        meta["*k"] = kinds
    if op.defaults:
        meta["*d"] = list(op.defaults)
    return body, meta


def _own(kind: str, value: Any, dotted: str) -> Any:
    """A copy of a created container's value that merges may change in place (checked)."""
    t = type(value)
    if kind == "list":
        if t is list:
            return value.copy()
    elif kind == "set":
        if t is list:
            seen: dict[str, Plain] = {}
            for v in value:
                seen.setdefault(member_key(v), v)
            return [seen[k] for k in sorted(seen)]
    elif kind == "object" or kind == "dict":
        if t is dict:
            return value.copy()
    elif kind == "counter":
        if t is int or t is float:
            return value
    else:
        raise MergeError(f"unknown container kind {kind!r} for {dotted!r}")
    raise MergeError(f"CreateDoc field {dotted!r} is a {kind} but holds {t.__name__}")


def _copy_container(body: dict[str, Plain], dotted: str, kinds: dict[str, str]) -> None:
    """Give the created container at ``dotted`` its own copy (merges change it in place)."""
    parts = dotted.split(".")
    holder: Any = body
    for part in parts[:-1]:
        holder = holder.get(part) if isinstance(holder, dict) else None
        if holder is None:
            return
    if not isinstance(holder, dict):
        return
    name = parts[-1]
    value: Any = holder.get(name)
    if value is not None:
        holder[name] = _own(kinds[dotted], value, dotted)


def compact_kind(meta: dict[str, Any], path: tuple[str, ...], body: dict[str, Plain]) -> str | None:
    """The container kind at ``path`` of a compact (fast-created) document, or None."""
    kinds = meta.get("*k")
    if not kinds or not path:
        return None
    value: Any = body
    for i, part in enumerate(path):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
        dotted = ".".join(path[: i + 1])
        kind = _kind_of(kinds, dotted, value)
        if kind is None:
            return None
        if i < len(path) - 1 and kind != "object":
            return None
    return kind


def expand(state: DocState) -> None:
    """Write out the meta implied by the compact form (a no-op on expanded meta).

    The compact form's overlay ``"r"`` (the keys of top-level register fields written since
    the create, see :func:`overlay_write`) replaces the implied keys of those fields. The
    create's stamp goes to ``"t"``: no key may carry it (a body of ``_id`` only, empty
    containers, defaults overwritten), and the expanded state must hold it as the compact one
    does (:func:`~tidesync.core.merge.latest_stamp`).
    """
    meta = state.meta
    if "*" not in meta:
        return
    stamp: Stamp = meta["*"]
    kinds: dict[str, str] = meta.get("*k") or {}
    defaults = frozenset(meta.get("*d") or ())
    root: Node = {}
    _expand_object(root, state.body, "", stamp, kinds, defaults, top=True)
    overlay = meta.get("r")
    if overlay:
        root.setdefault("r", {}).update(overlay)
    root["t"] = stamp
    state.meta = root


def compact_key(meta: dict[str, Any], name: str) -> str | None:
    """The key of the top-level field ``name`` in a compact meta, or None when the field is
    not a plain register there (a container at create, or ``meta`` is not compact)."""
    star = meta.get("*")
    if star is None or name == "_id":
        return None
    kinds = meta.get("*k")
    if kinds and name in kinds:
        return None
    overlay = meta.get("r")
    if overlay is not None:
        key = overlay.get(name)
        if key is not None:
            return key  # type: ignore[no-any-return]
    return write_key(star, _is_default(meta.get("*d") or (), name))


def register_top(meta: dict[str, Any], name: str) -> str | None:
    """The latest stamp of a write that a new write of top-level register ``name`` replaces,
    read from a compact ``meta`` (its ``"*"`` stamp, or the field's overlay key's when later):
    what a store's fast path must stamp after. None when ``name`` is not a plain register
    there (a container at create) or ``meta`` is not compact: the general path's case."""
    top, kinds, overlay = meta.get("*"), meta.get("*k"), meta.get("r")
    if type(top) is not str or (kinds and name in kinds):
        return None
    if overlay and type(k := overlay.get(name)) is str and k[1:] > top:
        return k[1:]
    return top


def overlay_write(state: DocState, name: str, key: str, value: Plain) -> bool:
    """Write a register value into the top-level field ``name`` of a compact state without
    expanding it: the field's key goes to the overlay ``meta["r"]``. The caller checks that
    the write is a plain LWW register write of the document's current incarnation.

    Returns False, changing nothing, when the state is not compact and live, the field is not a
    register of the compact form, or ``key`` does not beat the field's current key (then the
    general path, :func:`~tidesync.core.merge.integrate`, applies).
    """
    if not state.live or type(value) is dict or type(value) is list:
        return False
    meta = state.meta
    cur = compact_key(meta, name)
    if cur is None or key <= cur:
        return False
    state.body[name] = value
    overlay = meta.get("r")
    if overlay is None:
        overlay = meta["r"] = {}
    overlay[name] = key
    return True


def _expand_object(node: Node, obody: dict[str, Plain], prefix: str, stamp: Stamp, kinds: dict[str, str],
                   defaults: frozenset[str], top: bool = False) -> None:
    r: dict[str, str] = {}
    c: dict[str, Node] = {}
    explicit = write_key(stamp)
    flat = not kinds and not defaults  # every field a register written explicitly (the common case)
    for name, value in obody.items():
        if top and name == "_id":
            continue
        if flat:
            r[name] = explicit
            continue
        dotted = prefix + name
        kind = _kind_of(kinds, dotted, value) if kinds else None
        if kind is None:
            r[name] = write_key(stamp, True) if _is_default(defaults, dotted) else explicit
            continue
        r[name] = CREATE_KEY
        if kind == "object":
            child: Node = {"k": "object", "e": ZERO}
            _expand_object(child, value, dotted + ".", stamp, kinds, defaults)
        elif kind == "list":
            child = {"k": "list", "e": ZERO}
            if value:
                ids = [new_element_id(stamp, i) for i in range(len(value))]
                child["o"] = ids
                child["a"] = dict(zip(ids, [None, *ids[:-1]]))
        elif kind == "set":
            child = {"k": "set", "e": ZERO}
            if value:
                child["a"] = {member_key(v): stamp for v in value}
        elif kind == "dict":
            child = {"k": "dict", "e": ZERO}
            if value:
                k = write_key(stamp, _is_default(defaults, dotted))
                child["r"] = {dk: k for dk in value}
        else:
            child = {"k": "counter", "v": value, "vk": write_key(stamp, _is_default(defaults, dotted))}
        c[name] = child
    if r:
        node["r"] = r
    if c:
        node["c"] = c


def create_general(ctx: Context, state: DocState, op: CreateDoc) -> None:
    """Merge a ``CreateDoc`` into a document that already has content (or any document)."""
    _create_object(ctx, state.meta, state.body, (), op.fields, op.stamp, op.kinds or {},
                   frozenset(op.defaults))
    keep_create_stamp(state.meta, op.stamp)


def keep_create_stamp(meta: dict[str, Any], stamp: str) -> None:
    """Record ``stamp``, a create's, in the expanded ``meta``'s ``"t"`` (the latest create
    stamp of the incarnation) when it is later than the one there."""
    t = meta.get("t")
    if type(t) is not str or stamp > t:
        meta["t"] = stamp


def _create_object(ctx: Context, node: Node, nbody: dict[str, Any], path: tuple[str, ...], fields: dict[str, Plain],
                   stamp: Stamp, kinds: dict[str, str], defaults: frozenset[str]) -> None:
    for name, value in fields.items():
        if not path and name == "_id":
            continue
        p = path + (name,)
        dotted = ".".join(p)
        kind = _kind_of(kinds, dotted, value) if kinds else None
        dflt = _is_default(defaults, dotted)
        if kind is None:
            res = slot_write(ctx, node, nbody, p, write_key(stamp, dflt), VALUE, value)
            if res != INSTALLED and res != SAME:
                ctx.record(p, res, nbody.get(name), node["r"][name][1:], value)
            continue
        if kind == "counter":
            create_counter(ctx, node, nbody, p, write_key(stamp, dflt), value)
            continue
        got = child_node(ctx, node, nbody, p, ZERO, kind)
        if got is None:
            continue
        child, cbody = got
        if kind == "object":
            _create_object(ctx, child, cbody, p, value, stamp, kinds, defaults)
        elif kind == "list":
            after: str | None = None
            for i, item in enumerate(value):
                elem = new_element_id(stamp, i)
                list_insert(ctx, child, cbody, p, elem, after, item)
                after = elem
        elif kind == "set":
            for item in value:
                set_add(ctx, child, cbody, p, item, stamp)
        else:
            k = write_key(stamp, dflt)
            for dkey, item in value.items():
                dict_write(ctx, child, cbody, p, dkey, k, True, item)


def create_counter(ctx: Context, node: Node, nbody: dict[str, Any], path: tuple[str, ...], vk: str,
                    value: Plain) -> None:
    """A counter made by ``CreateDoc``: concurrent creations agree on the value with the larger
    key; every increment of the incarnation adds on top."""
    name = path[-1]
    c = node.get("c")
    cn = c.get(name) if c is not None else None
    r = node.get("r")
    if cn is not None and cn["k"] == "counter" and r is not None and r.get(name) == CREATE_KEY:
        cur = cn["vk"]
        if vk > cur:
            cn["v"] = value
            cn["vk"] = vk
            settle(node, nbody, name)
        elif vk < cur:
            ctx.record(path, "default-loses" if cur[:1] == "1" and vk[:1] == "0" else "lww", cn["v"], cur[1:], value)
        return
    res = slot_write(ctx, node, nbody, path, CREATE_KEY, "counter", value)
    if res == INSTALLED:
        node["c"][name]["vk"] = vk
    elif res != SAME:
        ctx.record(path, res, nbody.get(name), node["r"][name][1:], value)
