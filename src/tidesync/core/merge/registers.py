"""Field slots of objects: last-writer-wins registers, container assignment, placeholders.

Every field of the document or of an embedded object is a *slot*. Each write to it (a value,
an unset, the assignment of a container, the creation of a container by ``CreateDoc``) has
a key (see :mod:`.state`), and the slot shows the winning write: by default the largest
key, so an explicit write beats a default (CR-05) and then the later stamp wins (CR-01,
CR-02), per field (CR-04), strings whole (CR-24). A policy may order writes otherwise
(:mod:`.policies`).

**Containers and epochs.** A container's epoch is the stamp of the assignment that made it
(``ZERO`` when ``CreateDoc`` made it). An operation addressed inside a container carries the
epoch its writer saw. When it reaches the slot:

* same epoch as the container shown: it applies;
* older than the slot's winner: its writer had not seen the assignment (or the value
  assignment) that won, so it is discarded, whatever its stamp: a parent assignment wins over
  nested edits (CR-25), a re-assignment (clear) wins over concurrent element operations
  (CR-19);
* newer than the slot's winner: the assignment that made that epoch has not arrived yet.
  The slot is switched to a *placeholder* of that epoch right away, exactly as the
  assignment would have done, so arrival order does not matter. When the assignment
  arrives it finds its container already there.

A later assignment of an embedded object therefore replaces it whole: its fields are the
ones written into the new epoch, never a mix of two assignments (tidesync's answer to CR-26).

**Union.** Under the ``union`` policy, list, set and dictionary contents are never discarded
by an assignment: a slot keeps one container per kind, which collects every element
operation of that kind whatever its epoch; the winning assignment decides which kind is
shown and with which epoch, the others are kept hidden in ``u``.
"""

from __future__ import annotations

from typing import Any

from ..stamp import ZERO, Stamp
from ..values import Plain
from .conflicts import Context
from .counters import settle
from .policies import decide
from .state import UNION_KINDS, Node, container_key, empty_body, new_node

__all__ = ["VALUE", "UNSET", "slot_write", "child_node", "current_value", "stash", "unstash", "displace", "SAME",
           "INSTALLED"]

#: ``slot_write`` kinds of write besides container kinds.
VALUE = "value"
UNSET = "unset"

#: ``slot_write`` results besides the name of the rule by which the write lost.
INSTALLED = ""
SAME = "="


def current_value(node: Node, nbody: dict[str, Any], field: str) -> tuple[Plain, bool]:
    """The slot's shown value, and whether its winner is a write of a non-null value."""
    c = node.get("c")
    if c is not None and field in c:
        return nbody.get(field), False
    v = nbody.get(field)
    return v, v is not None


def slot_write(ctx: Context, node: Node, nbody: dict[str, Any], path: tuple[str, ...], key: str,
               what: str, value: Plain = None, epoch: Stamp = ZERO) -> str:
    """Offer a write to the slot ``path[-1]`` of the object ``node`` (materialized as ``nbody``).

    Args:
        key: the write's key.
        what: ``VALUE``, ``UNSET`` or a container kind.
        value: the value (``VALUE``) or the assigned number (``"counter"``).
        epoch: the new container's epoch (container kinds other than counter).

    Returns:
        ``INSTALLED`` when the write now wins the slot, ``SAME`` when it is the write already
        winning, or the rule by which it lost (nothing changed; the caller records it).
    """
    field = path[-1]
    r = node.get("r")
    if r is None:
        r = node["r"] = {}
    old = r.get(field)
    union = False
    if old is not None:
        if old == key:
            return SAME
        policy = ctx.policy(path)
        union = policy == "union"
        if union or policy == "lww":
            if key < old:
                return "default-loses" if old[:1] == "1" and key[:1] == "0" else "lww"
        else:
            is_value = what == VALUE and value is not None
            ov, oiv = current_value(node, nbody, field)
            wins, rule = decide(policy, path, key, value if what == VALUE else None, is_value, old, ov, oiv)
            if not wins:
                return rule
            if key < old:
                # The policy overrode a later write: that is a conflict even on this side.
                ctx.record(path, rule, value if what == VALUE else None, key[1:], ov, old[1:])
        displace(node, nbody, field, union)
    r[field] = key
    if what == VALUE:
        nbody[field] = value
    elif what == UNSET:
        nbody.pop(field, None)
    else:
        c = node.get("c")
        if c is None:
            c = node["c"] = {}
        if what == "counter":
            c[field] = {"k": "counter", "v": value}
            nbody[field] = value
        else:
            entry = unstash(node, field, what) if union and what in UNION_KINDS else None
            if entry is not None:
                child, cbody = entry
                child["e"] = epoch
            else:
                child, cbody = new_node(what, epoch), empty_body(what)
            c[field] = child
            nbody[field] = cbody
    settle(node, nbody, field)
    return INSTALLED


def displace(node: Node, nbody: dict[str, Any], field: str, union: bool) -> None:
    """Remove the slot's container, keeping it hidden when a union policy says so."""
    c = node.get("c")
    if c is None:
        return
    child = c.pop(field, None)
    if child is None:
        return
    if not c:
        del node["c"]
    cbody = nbody.pop(field, None)
    # An empty container adds nothing to a union: keeping it would make meta depend on order.
    if union and child["k"] in UNION_KINDS and len(child) > 2:
        child["e"] = ZERO
        u = node.get("u")
        if u is None:
            u = node["u"] = {}
        u.setdefault(field, {})[child["k"]] = [child, cbody]


def unstash(node: Node, field: str, kind: str) -> tuple[Node, Any] | None:
    """Take the hidden container of ``kind`` out of a union slot (None if there is none)."""
    u = node.get("u")
    if u is None or field not in u:
        return None
    entry = u[field].pop(kind, None)
    if entry is None:
        return None
    if not u[field]:
        del u[field]
        if not u:
            del node["u"]
    return entry[0], entry[1]


def stash(node: Node, field: str, kind: str) -> tuple[Node, Any]:
    """The hidden container of ``kind`` of a union slot, made empty if there is none yet."""
    u = node.get("u")
    if u is None:
        u = node["u"] = {}
    kinds: dict[str, list[Any]] | None = u.get(field)
    if kinds is None:
        kinds = u[field] = {}
    entry = kinds.get(kind)
    if entry is None:
        entry = kinds[kind] = [new_node(kind, ZERO), empty_body(kind)]
    return entry[0], entry[1]


def child_node(ctx: Context, node: Node, nbody: dict[str, Any], path: tuple[str, ...], epoch: Stamp,
               kind: str) -> tuple[Node, Any] | None:
    """The container of ``kind`` and ``epoch`` in slot ``path[-1]`` of ``node``, for an operation
    addressed inside it; a placeholder when that epoch is newer than the slot's winner.

    Returns:
        (container node, materialized container), or None when the operation must be
        discarded (a conflict is then recorded).
    """
    field = path[-1]
    c = node.get("c")
    cur = c.get(field) if c is not None else None
    union = kind in UNION_KINDS and ctx.policy(path) == "union"
    if cur is not None and cur["k"] == kind:
        ce = cur["e"]
        if ce == epoch:
            return cur, nbody[field]
        if union:
            if epoch > ce:
                node["r"][field] = container_key(epoch)
                cur["e"] = epoch
                settle(node, nbody, field)
            return cur, nbody[field]
    res = slot_write(ctx, node, nbody, path, container_key(epoch), kind, None, epoch)
    if res == INSTALLED:
        return node["c"][field], nbody[field]
    if union:
        return stash(node, field, kind)
    if res != SAME:
        winner, _ = current_value(node, nbody, field)
        ctx.record(path, "parent-wins" if kind == "object" else "clear-wins", winner, node["r"][field][1:])
    return None
