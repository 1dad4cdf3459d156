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
* Moves (Kleppmann, "Moving elements in list CRDTs", 2020): an element (an *item*, named by
  the id its insert gave it) may be moved to a new *position*, a fresh id placed in the
  sequence after an anchor as an insert's is. Each item shows at its winning position: its
  latest move (the largest position id: the later stamp, CR-16), or where it was inserted if
  it never moved. Its other positions stay as hidden placeholders (they may be anchors).
  Sets and erases address the item, so a set follows a concurrent move (CR-15) and an erase
  wins over it (CR-17); an insert and a move to one place order by id as two inserts do
  (CR-18). Meta: ``"r": {position: item}`` for positions made by moves, ``"m": {item:
  winning position}`` for moved items, ``"pm": {position: [item, anchor]}`` for moves whose
  anchor has not arrived. A list that has seen a move keeps its materialized body by
  rebuilding it from the visible positions after each operation (O(n), as the RGA scan is).

The position of a new element is found by the classic RGA scan, which is exact because ids
grow along anchors: after the anchor, skip the elements with a larger id (they are the
larger siblings and their subtrees), stop at the first smaller one.
"""

from __future__ import annotations

from typing import Any

from ..stamp import STAMP_LENGTH, Stamp
from ..values import Plain
from .conflicts import Context
from .state import Node, clone

__all__ = ["list_insert", "list_set", "list_erase", "list_move", "visible_ids", "visible_positions", "merge_list"]


def visible_positions(node: Node) -> list[str]:
    """The positions shown, in order: where an insert after index i - 1 anchors."""
    o = node.get("o")
    if not o:
        return []
    if "r" in node:
        return [pos for pos in o if _shown(node, pos)]
    x = node.get("x")
    if not x:
        return list(o)
    return [e for e in o if e not in x]


def visible_ids(node: Node) -> list[str]:
    """The ids of the elements (items) shown, in order (index i of the list is element
    ids[i]): what sets, erases and moves address."""
    if "r" not in node:
        return visible_positions(node)
    r = node["r"]
    return [r.get(pos, pos) for pos in visible_positions(node)]


def _shown(node: Node, pos: str) -> bool:
    """Whether position ``pos`` (in ``o``) of a list that has seen moves shows its item: the
    item is placed (its value known), not erased, and this is its winning position."""
    item: str = node["r"].get(pos, pos)
    x = node.get("x")
    if x and item in x:
        return False
    if item not in node["a"]:
        return False
    m: dict[str, str] | None = node.get("m")
    return (m.get(item, item) if m else item) == pos


def _values(node: Node, lbody: list[Plain]) -> dict[str, Plain]:
    """item -> value of every item shown (before an operation changes the node)."""
    return dict(zip(visible_ids(node), lbody))


def _rebuild(node: Node, lbody: list[Plain], values: dict[str, Plain]) -> None:
    """Materialize the list again from the node (after an operation changed it)."""
    r = node.get("r") or {}
    lbody[:] = [values[r.get(pos, pos)] for pos in visible_positions(node)]


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


def _put(node: Node, elem: str, after: str | None) -> int:
    """Place position ``elem`` in the sequence after ``after``; return its index in ``o``."""
    o: list[str] = node["o"]
    n = len(o)
    i = 0 if after is None else _position(o, after) + 1
    while i < n and o[i] > elem:
        i += 1
    o.insert(i, elem)
    node["a"][elem] = after
    return i


def _place(node: Node, lbody: list[Plain], elem: str, after: str | None, value: Plain) -> None:
    n = len(node["o"])
    i = _put(node, elem, after)
    x = node.get("x")
    if x is None or elem not in x:
        lbody.insert(len(lbody) if i == n else _visible_index(node["o"], x, i), value)


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
    if "r" in node or "pm" in node:
        values = _values(node, lbody)
        _put(node, elem, after)
        values[elem] = value
        _cascade_moved(node, values, elem)
        _rebuild(node, lbody, values)
        return
    _place(node, lbody, elem, after, value)
    if p:
        _cascade(node, lbody, elem)


def _cascade_moved(node: Node, values: dict[str, Plain], first: str) -> None:
    """Place what waited (transitively) for position ``first``: inserts, whose values join
    ``values``, and moves (whichever mode the list is in, the body is rebuilt after)."""
    todo = [first]
    while todo:
        anchor = todo.pop()
        p = node.get("p")
        if p:
            for elem in [e for e, (a, _) in p.items() if a == anchor]:
                _, value = p.pop(elem)
                _put(node, elem, anchor)
                values[elem] = value
                todo.append(elem)
            if not p:
                del node["p"]
        pm = node.get("pm")
        if pm:
            for pos in [q for q, (_, a) in pm.items() if a == anchor]:
                item, _ = pm.pop(pos)
                _put(node, pos, anchor)
                _claim(node, item, pos)
                todo.append(pos)
            if not pm:
                del node["pm"]


def _claim(node: Node, item: str, pos: str) -> str | None:
    """Record the placed move position ``pos`` of ``item``; return the position that lost
    to it or that it lost to (None: no other move of the item)."""
    r = node.get("r")
    if r is None:
        r = node["r"] = {}
    r[pos] = item
    m: dict[str, str] | None = node.get("m")
    if m is None:
        m = node["m"] = {}
    current = m.get(item)
    if current is None or pos > current:
        m[item] = pos
    return current


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
        if "r" in node:
            values = _values(node, lbody)
            values[elem] = value
            _rebuild(node, lbody, values)
            return
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
    if anchors is not None and elem in anchors and "r" in node:
        return _values(node, lbody).get(elem)
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
    if anchors is not None and elem in anchors and "r" in node:
        values = _values(node, lbody)
        x[elem] = 1
        _rebuild(node, lbody, values)
    elif anchors is not None and elem in anchors:
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


def list_move(ctx: Context, node: Node, lbody: list[Plain], path: tuple[str, ...], elem: str, pos: str,
              after: str | None) -> None:
    """Integrate the move of item ``elem`` to the new position ``pos`` after ``after``."""
    anchors = node.get("a")
    if anchors is None:
        node["o"] = []
        anchors = node["a"] = {}
    pm = node.get("pm")
    if pos in anchors or (pm is not None and pos in pm) or pos in (node.get("p") or ()):
        return
    if after is not None and after not in anchors:
        if pm is None:
            pm = node["pm"] = {}
        pm[pos] = [elem, after]
        return
    values = _values(node, lbody)
    _put(node, pos, after)
    other = _claim(node, elem, pos)
    if other is not None and node["m"][elem] == other:
        # This move lost to a later one of the same item (CR-16); the item stays there.
        x = node.get("x")
        if not x or elem not in x:
            ctx.record(path + (elem,), "lww", values.get(elem), other[:STAMP_LENGTH])
    _cascade_moved(node, values, pos)
    _rebuild(node, lbody, values)


def merge_list(ctx: Context, na: Node, la: list[Plain], nb: Node, lb: list[Plain], path: tuple[str, ...]) -> None:
    """Merge list node ``nb`` (materialized ``lb``) into ``na`` (``la``), as if ``na`` had
    integrated every operation ``nb`` integrated."""
    ob: list[str] = nb.get("o") or []
    ab: dict[str, str | None] = nb.get("a") or {}
    xb: dict[str, int] = nb.get("x") or {}
    rb: dict[str, str] = nb.get("r") or {}
    values = _values(nb, lb)
    # Pre-order lists every anchor before the elements after it.
    for elem in ob:
        if elem in rb:
            list_move(ctx, na, la, path, rb[elem], elem, ab[elem])
        else:
            list_insert(ctx, na, la, path, elem, ab[elem], clone(values.get(elem)))
    for elem, (after, value) in (nb.get("p") or {}).items():
        list_insert(ctx, na, la, path, elem, after, clone(value))
    for pos, (item, after) in (nb.get("pm") or {}).items():
        list_move(ctx, na, la, path, item, pos, after)
    for elem in xb:
        list_erase(ctx, na, la, path, elem)
    qb = nb.get("q") or {}
    for elem, stamp in (nb.get("s") or {}).items():
        value = qb[elem] if elem in qb else values[elem] if elem in values else (nb.get("p") or {})[elem][1]
        list_set(ctx, na, la, path, elem, stamp, clone(value))
