"""Counters: increments from every replica add up; a later assignment resets them (CR-23).

A counter field's increments are kept in its parent object node (``"n": {field: {stamp:
amount}}``), not in the counter itself, because they are addressed to the *field*: an
increment applies to whichever counter assignment wins that field.

* The value is the winning assignment's value plus every increment kept.
* An explicit assignment stamped S supersedes the increments stamped before S: they are
  dropped (and an increment arriving later with a stamp before S is dropped on arrival).
  Increments stamped after S add on top of it.
* A default assignment, or a counter made by ``CreateDoc``, supersedes nothing: all
  increments of the incarnation add on top ("default assignments never beat increments").
* When the field's winner is not a counter (a plain value, null, a list...), increments do
  not show; they are kept, unless superseded, in case a counter assignment wins later.
* An assignment of null gives null; increments add nothing to it.
"""

from __future__ import annotations

from typing import Any

from ..stamp import Stamp
from ..values import Plain
from .conflicts import Context
from .state import Node

__all__ = ["counter_total", "settle", "counter_add"]


def counter_total(base: Plain, increments: dict[str, int] | None) -> Plain:
    """The value of a counter assigned ``base`` with ``increments`` on top."""
    if increments and (type(base) is int or type(base) is float):
        # Integer increments add up exactly in any order; the base is added last.
        return base + sum(increments.values())
    return base


def settle(node: Node, nbody: dict[str, Any], field: str) -> None:
    """After the winner of ``field`` changed: drop superseded increments, refresh the value."""
    n = node.get("n")
    inc = n.get(field) if n is not None else None
    if inc:
        r = node.get("r")
        key = r.get(field) if r is not None else None
        if key and key[0] == "1":
            cut = key[1:]
            stale = [s for s in inc if s < cut]
            for s in stale:
                del inc[s]
            if not inc:
                assert n is not None
                del n[field]
                if not n:
                    del node["n"]
                inc = None
    c = node.get("c")
    cn = c.get(field) if c is not None else None
    if cn is not None and cn["k"] == "counter":
        nbody[field] = counter_total(cn["v"], inc)


def counter_add(ctx: Context, node: Node, nbody: dict[str, Any], path: tuple[str, ...],
                stamp: Stamp, amount: int) -> None:
    """Integrate an increment of the counter field ``path[-1]`` of ``node``."""
    field = path[-1]
    r = node.get("r")
    key = r.get(field) if r is not None else None
    c = node.get("c")
    cn = c.get(field) if c is not None else None
    is_counter = cn is not None and cn["k"] == "counter"
    if key and key[0] == "1" and stamp < key[1:]:
        ctx.record(path, "counter-reset" if is_counter else "lww", nbody.get(field), key[1:])
        return
    n = node.get("n")
    if n is None:
        n = node["n"] = {}
    inc: dict[str, int] | None = n.get(field)
    if inc is None:
        inc = n[field] = {}
    elif stamp in inc:
        return
    inc[stamp] = amount
    if is_counter:
        assert cn is not None
        base = cn["v"]
        if type(base) is int:
            nbody[field] += amount
        elif type(base) is float:
            nbody[field] = counter_total(base, inc)
