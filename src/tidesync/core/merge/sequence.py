"""Lists: the RGA sequence CRDT (Roh et al., 2011).

Every element has a unique id and the id of the element it was inserted after, its
*anchor* (None: the head). The elements form a tree by anchor; the list is the tree in
pre-order, siblings ordered larger id first. A writer gives a new element an id larger than
its anchor's (a fresh stamp from a hybrid clock that has seen the anchor), so a new element
lands right after its anchor, ahead of the older siblings its writer saw, and two
concurrent inserts after one anchor are both kept, the one with the larger id (the later
stamp) first (CR-11, CR-12). Erased elements stay as tombstones (they may be anchors).

* ``ListSet`` replaces an element's value, last writer wins between sets; an insert's value
  loses to any set of that element (the setter had seen the insert).
* An erase wins over any set of the element (CR-13); erasing twice is erasing once (CR-14).
* Operations addressed to an element that has not arrived yet (an insert after it, a set or
  an erase of it) are kept in the node and applied when it arrives, so any delivery order
  gives the same list.
* Moves are not supported (CR-15 to CR-18): a move is an erase and an insert.

The position of a new element is found by the classic RGA scan, which is exact because ids
grow along anchors: after the anchor, skip the elements with a larger id (they are the
larger siblings and their subtrees), stop at the first smaller one.
"""

from __future__ import annotations

from typing import Any

from ..stamp import Stamp
from ..values import Plain
from .conflicts import Context
from .state import Node, clone

__all__ = ["list_insert", "list_set", "list_erase", "visible_ids", "merge_list"]


def visible_ids(node: Node) -> list[str]:
    """The ids of the elements shown, in order (index i of the list is element ids[i])."""
    o = node.get("o")
    if not o:
        return []
    x = node.get("x")
    if not x:
        return list(o)
    return [e for e in o if e not in x]


def _visible_index(o: list[str], x: dict[str, int] | None, i: int) -> int:
    """The index in the materialized list of the element at position ``i`` of ``o``."""
    if not x:
        return i
    return i - sum(map(x.__contains__, o[:i]))


def _position(o: list[str], elem: str) -> int:
    # Appends (after the last element) are the common case.
    if o and o[-1] == elem:
        return len(o) - 1
    return o.index(elem)


def _place(node: Node, lbody: list[Plain], elem: str, after: str | None, value: Plain) -> None:
    o: list[str] = node["o"]
    n = len(o)
    i = 0 if after is None else _position(o, after) + 1
    while i < n and o[i] > elem:
        i += 1
    o.insert(i, elem)
    node["a"][elem] = after
    x = node.get("x")
    if x is None or elem not in x:
        lbody.insert(len(lbody) if i == n else _visible_index(o, x, i), value)


def list_insert(ctx: Context, node: Node, lbody: list[Plain], path: tuple[str, ...], elem: str,
                after: str | None, value: Plain) -> None:
    """Integrate the insert of ``value`` as element ``elem`` after ``after`` (None: at the head)."""
    anchors = node.get("a")
    if anchors is None:
        node["o"] = []
        anchors = node["a"] = {}
    p = node.get("p")
    if elem in anchors or (p is not None and elem in p):
        return
    x = node.get("x")
    q = node.get("q")
    if q is not None and elem in q:
        # A ListSet of this element arrived first; it beats the insert's value.
        value = q.pop(elem)
        if not q:
            del node["q"]
    if x is not None and elem in x:
        value = None
    if after is not None and after not in anchors:
        if p is None:
            p = node["p"] = {}
        p[elem] = [after, value]
        return
    _place(node, lbody, elem, after, value)
    if p:
        _cascade(node, lbody, elem)


def _cascade(node: Node, lbody: list[Plain], first: str) -> None:
    """Place the waiting inserts anchored (transitively) at ``first``, which just arrived."""
    p: dict[str, list[Any]] = node["p"]
    todo = [first]
    while todo and p:
        anchor = todo.pop()
        for elem in [e for e, (a, _) in p.items() if a == anchor]:
            _, value = p.pop(elem)
            _place(node, lbody, elem, anchor, value)
            todo.append(elem)
    if not p:
        del node["p"]


def list_set(ctx: Context, node: Node, lbody: list[Plain], path: tuple[str, ...], elem: str,
             stamp: Stamp, value: Plain) -> None:
    """Integrate a ``ListSet`` of element ``elem``."""
    x = node.get("x")
    if x is not None and elem in x:
        ctx.record(path + (elem,), "erase-wins", None, "")
        return
    s = node.get("s")
    if s is None:
        s = node["s"] = {}
    old = s.get(elem)
    if old is not None and old >= stamp:
        if old != stamp:
            ctx.record(path + (elem,), "lww", _value_of(node, lbody, elem), old)
        return
    s[elem] = stamp
    anchors = node.get("a")
    if anchors is not None and elem in anchors:
        o = node["o"]
        lbody[_visible_index(o, x, _position(o, elem))] = value
        return
    p = node.get("p")
    if p is not None and elem in p:
        p[elem][1] = value
        return
    q = node.get("q")
    if q is None:
        q = node["q"] = {}
    q[elem] = value


def _value_of(node: Node, lbody: list[Plain], elem: str) -> Plain:
    anchors = node.get("a")
    if anchors is not None and elem in anchors:
        x = node.get("x")
        if x is None or elem not in x:
            o = node["o"]
            return lbody[_visible_index(o, x, _position(o, elem))]
        return None
    p = node.get("p")
    if p is not None and elem in p:
        return p[elem][1]
    q = node.get("q")
    return q.get(elem) if q is not None else None


def list_erase(ctx: Context, node: Node, lbody: list[Plain], path: tuple[str, ...], elem: str) -> None:
    """Integrate the erase of element ``elem`` (it stays as a tombstone)."""
    x = node.get("x")
    if x is None:
        x = node["x"] = {}
    elif elem in x:
        return
    anchors = node.get("a")
    if anchors is not None and elem in anchors:
        o = node["o"]
        del lbody[_visible_index(o, x, _position(o, elem))]
    else:
        p = node.get("p")
        if p is not None and elem in p:
            p[elem][1] = None
    x[elem] = 1
    s = node.get("s")
    if s is not None and elem in s:
        del s[elem]
        if not s:
            del node["s"]
    q = node.get("q")
    if q is not None and elem in q:
        del q[elem]
        if not q:
            del node["q"]


def merge_list(ctx: Context, na: Node, la: list[Plain], nb: Node, lb: list[Plain], path: tuple[str, ...]) -> None:
    """Merge list node ``nb`` (materialized ``lb``) into ``na`` (``la``), as if ``na`` had
    integrated every operation ``nb`` integrated."""
    ob: list[str] = nb.get("o") or []
    ab: dict[str, str | None] = nb.get("a") or {}
    xb: dict[str, int] = nb.get("x") or {}
    values: dict[str, Plain] = {}
    j = 0
    for elem in ob:
        if elem not in xb:
            values[elem] = lb[j]
            j += 1
    # Pre-order lists every anchor before the elements after it.
    for elem in ob:
        list_insert(ctx, na, la, path, elem, ab[elem], clone(values.get(elem)))
    for elem, (after, value) in (nb.get("p") or {}).items():
        list_insert(ctx, na, la, path, elem, after, clone(value))
    for elem in xb:
        list_erase(ctx, na, la, path, elem)
    qb = nb.get("q") or {}
    for elem, stamp in (nb.get("s") or {}).items():
        value = qb[elem] if elem in qb else values[elem] if elem in values else (nb.get("p") or {})[elem][1]
        list_set(ctx, na, la, path, elem, stamp, clone(value))
