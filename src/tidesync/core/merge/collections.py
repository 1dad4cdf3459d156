"""Sets and dictionaries.

**Sets** (CR-21): each member is identified by the canonical JSON of its value and has the
stamp of its latest add or remove; the later of the two wins. Adding a present member, or
removing an absent one, is a no-op for the body but still records the stamp, so that an
older concurrent operation arriving afterwards loses. Members of different values never
conflict. The materialized set is a list sorted by canonical JSON (as :func:`to_plain`
encodes Python sets). Assigning a new set (a clear) starts a new epoch, which discards
concurrent adds and removes made in the old one (see :mod:`.registers`).

**Dictionaries** (CR-22): each key is a register, last writer wins (or the field's
policy); removing a key is a write like any other (it keeps its key in meta), so a later
put brings the key back and a later removal takes it away.
"""

from __future__ import annotations

import bisect
from typing import Any

from ..stamp import Stamp
from ..values import Plain
from .conflicts import Context
from .policies import decide
from .state import Node, clone, member_key

__all__ = ["set_add", "set_remove", "merge_set", "dict_write", "merge_dict"]


def _sbody_index(sbody: list[Plain], cj: str) -> int:
    return bisect.bisect_left(sbody, cj, key=member_key)


def set_add(ctx: Context, node: Node, sbody: list[Plain], path: tuple[str, ...], value: Plain, stamp: Stamp,
            cj: str | None = None) -> None:
    """Integrate the add of ``value`` (stamped ``stamp``) to the set ``node``."""
    if cj is None:
        cj = member_key(value)
    a = node.get("a")
    if a is not None:
        cur = a.get(cj)
        if cur is not None:
            if cur < stamp:
                a[cj] = stamp
            return
    d = node.get("d")
    if d is not None:
        rm = d.get(cj)
        if rm is not None:
            if rm > stamp:
                ctx.record(path, "lww", None, rm)
                return
            del d[cj]
            if not d:
                del node["d"]
    if a is None:
        a = node["a"] = {}
    a[cj] = stamp
    sbody.insert(_sbody_index(sbody, cj), value)


def set_remove(ctx: Context, node: Node, sbody: list[Plain], path: tuple[str, ...], value: Plain, stamp: Stamp,
               cj: str | None = None) -> None:
    """Integrate the removal of ``value`` (stamped ``stamp``) from the set ``node``."""
    if cj is None:
        cj = member_key(value)
    a = node.get("a")
    if a is not None:
        cur = a.get(cj)
        if cur is not None:
            if cur > stamp:
                ctx.record(path, "lww", value, cur)
                return
            del a[cj]
            if not a:
                del node["a"]
            del sbody[_sbody_index(sbody, cj)]
    d = node.get("d")
    if d is None:
        d = node["d"] = {}
    if d.get(cj, "") < stamp:
        d[cj] = stamp


def merge_set(ctx: Context, na: Node, sa: list[Plain], nb: Node, sb: list[Plain], path: tuple[str, ...]) -> None:
    """Merge set node ``nb`` (materialized ``sb``) into ``na`` (``sa``)."""
    ab = nb.get("a")
    if ab:
        for value in sb:
            cj = member_key(value)
            set_add(ctx, na, sa, path, clone(value), ab[cj], cj)
    for cj, stamp in (nb.get("d") or {}).items():
        set_remove(ctx, na, sa, path, None, stamp, cj)


def dict_write(ctx: Context, node: Node, dbody: dict[str, Any], path: tuple[str, ...], dkey: str, key: str,
               present: bool, value: Plain = None) -> None:
    """Integrate a put (``present``) or removal of ``dkey`` in the dictionary ``node``.

    ``path`` is the dictionary's path; ``key`` the write's key (see :mod:`.state`).
    """
    r = node.get("r")
    if r is None:
        r = node["r"] = {}
    old = r.get(dkey)
    if old is not None:
        if old == key:
            return
        where = path + (dkey,)
        policy = ctx.policy(path)
        if policy == "lww" or policy == "union":
            if key < old:
                ctx.record(where, "default-loses" if old[:1] == "1" and key[:1] == "0" else "lww",
                           dbody.get(dkey), old[1:])
                return
        else:
            ov = dbody.get(dkey)
            wins, rule = decide(policy, where, key, value if present else None, present and value is not None,
                                old, ov, ov is not None)
            if not wins:
                ctx.record(where, rule, ov, old[1:])
                return
            if key < old:
                ctx.record(where, rule, value if present else None, key[1:], ov, old[1:])
    r[dkey] = key
    if present:
        dbody[dkey] = value
    else:
        dbody.pop(dkey, None)


def merge_dict(ctx: Context, na: Node, da: dict[str, Any], nb: Node, db: dict[str, Any], path: tuple[str, ...]) -> None:
    """Merge dictionary node ``nb`` (materialized ``db``) into ``na`` (``da``)."""
    for dkey, key in (nb.get("r") or {}).items():
        present = dkey in db
        dict_write(ctx, na, da, path, dkey, key, present, clone(db[dkey]) if present else None)
