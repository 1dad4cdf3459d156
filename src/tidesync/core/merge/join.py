"""State-based merge: the join of two document states.

:func:`join` is what the store uses to merge a snapshot (a state-based bootstrap) with the
state it holds: ``join(apply(s, X), apply(s, Y))`` equals ``apply(s, X ∪ Y)`` for any sets
of operations X and Y, and join is commutative, associative and idempotent (the property
tests check all four). It walks both meta trees and merges node by node with the same
functions that integrate operations, so the two paths cannot disagree about a rule:

* incarnations: the later epoch wins whole; equal epochs merge, live if either is;
* object slots: the larger write wins (the field's policy decides, as for operations);
  equal writes of a container merge its contents;
* lists, sets and dictionaries: their elements are offered one by one to the other side;
* counters: increments are united, then the winning assignment prunes them;
* the latest create stamp (the root's ``"t"``): the later one.

A join records no conflicts.
"""

from __future__ import annotations

from typing import Any

from ..values import Plain
from .collections import merge_dict, merge_set
from .conflicts import Context
from .counters import settle
from .create import expand, keep_create_stamp
from .policies import Policies, decide
from .registers import current_value, displace, stash, unstash
from .sequence import merge_list
from .state import UNION_KINDS, DocState, Node, clone

__all__ = ["join"]


def join(a: DocState, b: DocState, policies: Policies | None = None, *, collection: str = "") -> DocState:
    """The state holding every operation of ``a`` and of ``b``.

    Args:
        a, b: two states of one document (neither is changed).
        policies: the conflict policies (the same as for :func:`integrate`).
        collection: the document's collection, needed only to look up ``policies``.

    Returns:
        A new state.

    Policies are looked up by collection: a caller with per-collection rules must pass
    ``collection``, or the join falls back to rules keyed by the empty collection name and
    the default policy (last writer wins), and may then disagree with :func:`integrate` on
    fields those rules govern.
    """
    if a.epoch != b.epoch:
        return (a if a.epoch > b.epoch else b).copy()
    out = a.copy()
    if not b.live:
        return out
    other = b
    if "*" in b.meta:
        other = b.copy()
        expand(other)
    expand(out)
    out.live = True
    if "_id" in other.body and "_id" not in out.body:
        out.body["_id"] = clone(other.body["_id"])
    merge_object(Context(None, policies, collection), out.meta, out.body, other.meta, other.body, ())
    t = other.meta.get("t")
    if type(t) is str:
        keep_create_stamp(out.meta, t)
    return out


def merge_object(ctx: Context, na: Node, ba: dict[str, Any], nb: Node, bb: dict[str, Any],
                 path: tuple[str, ...]) -> None:
    """Merge object node ``nb`` (materialized ``bb``) into ``na`` (``ba``)."""
    touched: set[str] = set()
    rb: dict[str, str] | None = nb.get("r")
    if rb:
        ra = na.get("r")
        if ra is None:
            ra = na["r"] = {}
        cb: dict[str, Node] = nb.get("c") or {}
        for name, kb in rb.items():
            p = path + (name,)
            ka = ra.get(name)
            child_b = cb.get(name)
            policy = ctx.policy(p)
            union = policy == "union"
            if ka == kb:
                if child_b is not None:
                    ca = na.get("c")
                    child_a = ca.get(name) if ca is not None else None
                    if child_a is not None and child_a["k"] == child_b["k"]:
                        _merge_node(ctx, na, ba, name, child_a, child_b, bb, p)
                        touched.add(name)
                continue
            if ka is None:
                b_wins = True
            elif policy == "lww" or union:
                b_wins = kb > ka
            else:
                vb, ivb = current_value(nb, bb, name)
                va, iva = current_value(na, ba, name)
                b_wins, _ = decide(policy, p, kb, vb, ivb, ka, va, iva)
            if b_wins:
                _take(ctx, na, ba, name, kb, child_b, bb, p, union)
                touched.add(name)
            elif union and child_b is not None and child_b["k"] in UNION_KINDS and len(child_b) > 2:
                node, body = _union_target(na, ba, name, child_b["k"])
                _merge_node(ctx, na, ba, name, node, child_b, bb, p, body)
    ub: dict[str, dict[str, list[Any]]] | None = nb.get("u")
    if ub:
        for name, kinds in ub.items():
            for kind, (node_b, body_b) in kinds.items():
                if len(node_b) <= 2:
                    continue
                node, body = _union_target(na, ba, name, kind)
                _merge_node(ctx, na, ba, name, node, node_b, {name: body_b}, path + (name,), body)
    nbn: dict[str, dict[str, int]] | None = nb.get("n")
    if nbn:
        nan = na.get("n")
        if nan is None:
            nan = na["n"] = {}
        for name, incs in nbn.items():
            nan.setdefault(name, {}).update(incs)
            touched.add(name)
    for name in touched:
        settle(na, ba, name)


def _union_target(na: Node, ba: dict[str, Any], name: str, kind: str) -> tuple[Node, Any]:
    ca = na.get("c")
    child = ca.get(name) if ca is not None else None
    if child is not None and child["k"] == kind:
        return child, ba[name]
    return stash(na, name, kind)


def _take(ctx: Context, na: Node, ba: dict[str, Any], name: str, kb: str, child_b: Node | None,
          bb: dict[str, Any], p: tuple[str, ...], union: bool) -> None:
    """Make b's winning write of slot ``name`` the winner in a."""
    na["r"][name] = kb
    displace(na, ba, name, union)
    if child_b is not None:
        ca = na.get("c")
        if ca is None:
            ca = na["c"] = {}
        entry = unstash(na, name, child_b["k"]) if union and child_b["k"] in UNION_KINDS else None
        if entry is not None:
            node, body = entry
            node["e"] = child_b["e"]
            ca[name] = node
            ba[name] = body
            _merge_node(ctx, na, ba, name, node, child_b, bb, p)
        else:
            ca[name] = clone(child_b)
            ba[name] = clone(bb[name])
    elif name in bb:
        ba[name] = clone(bb[name])
    else:
        ba.pop(name, None)


def _merge_node(ctx: Context, na: Node, ba: dict[str, Any], name: str, child_a: Node, child_b: Node,
                bb: dict[str, Any], p: tuple[str, ...], body_a: Plain = None) -> None:
    """Merge the contents of two containers of one kind in slot ``name``."""
    kind = child_a["k"]
    ca_body = ba[name] if body_a is None else body_a
    cb_body = bb[name]
    if kind == "object":
        merge_object(ctx, child_a, ca_body, child_b, cb_body, p)
    elif kind == "list":
        merge_list(ctx, child_a, ca_body, child_b, cb_body, p)
    elif kind == "set":
        merge_set(ctx, child_a, ca_body, child_b, cb_body, p)
    elif kind == "dict":
        merge_dict(ctx, child_a, ca_body, child_b, cb_body, p)
    elif "vk" in child_a and "vk" in child_b and child_b["vk"] > child_a["vk"]:
        # Two counters made by CreateDoc: the value with the larger key.
        child_a["v"] = child_b["v"]
        child_a["vk"] = child_b["vk"]
