"""Readers of whole states: canonical forms for comparing them, and the latest stamp in them.

Two replicas that integrated the same operations hold equal states, but a state created by
the fast path keeps compact meta until another operation touches it, and dictionary key
order in ``body`` follows arrival order. The canonical forms remove both differences.

A replica that takes a state from a snapshot (:func:`~tidesync.core.merge.join`) has not
seen the operations behind it, so its clock has not observed their stamps; it must call
``clock.observe(latest_stamp(state))`` before writing, or a new list element could get an id
below its anchor's.
"""

from __future__ import annotations

from typing import Any

from ..stamp import STAMP_LENGTH, ZERO, Stamp, is_stamp
from ..values import canonical_json
from .create import expand
from .state import DocState, Node

__all__ = ["canonical_meta", "canonical_state", "latest_stamp", "stamps_of"]


def canonical_meta(state: DocState) -> str:
    """The state's meta, expanded if compact, as canonical JSON."""
    if "*" in state.meta:
        state = state.copy()
        expand(state)
    return canonical_json(state.meta)


def canonical_state(state: DocState) -> dict[str, Any]:
    """A plain summary of the whole state whose equality is state equality:
    ``{"epoch", "live", "body" (canonical JSON), "meta" (canonical JSON)}``."""
    return {"epoch": state.epoch, "live": state.live, "body": canonical_json(state.body),
            "meta": canonical_meta(state)}


def latest_stamp(state: DocState) -> Stamp:
    """The latest stamp of any write the state holds (``ZERO`` for a new state)."""
    return Stamp(max(stamps_of(state), default=ZERO))


def stamps_of(state: DocState) -> list[str]:
    """The stamps of the writes the state holds (its epoch and every stamp of its meta), in
    no particular order, possibly repeated; ``ZERO`` and anything not a stamp left out."""
    found: list[str] = [state.epoch]
    meta = state.meta
    if "*" in meta:
        found.append(meta["*"])
        found.extend(_key(k) for k in (meta.get("r") or {}).values())
    else:
        t = meta.get("t")
        if t is not None:
            found.append(t)
        _object(meta, found)
    return [s for s in found if s and is_stamp(s)]


def _key(key: str) -> str:
    return key[1:] if key else ""


def _elem(elem: str) -> str:
    return elem[:STAMP_LENGTH]


def _object(node: Node, found: list[str]) -> None:
    found.extend(_key(k) for k in (node.get("r") or {}).values())
    for child in (node.get("c") or {}).values():
        _node(child, found)
    for incs in (node.get("n") or {}).values():
        found.extend(incs)
    for kinds in (node.get("u") or {}).values():
        for child, _ in kinds.values():
            _node(child, found)


def _node(node: Node, found: list[str]) -> None:
    kind = node["k"]
    found.append(node.get("e", ZERO))
    if kind == "object":
        _object(node, found)
    elif kind == "list":
        found.extend(_elem(e) for e in node.get("o") or ())
        found.extend(_elem(e) for e in node.get("p") or ())
        found.extend(_elem(e) for e in node.get("pm") or ())
        found.extend(_elem(e) for e in node.get("x") or ())
        found.extend(_elem(e) for e in node.get("q") or ())
        found.extend((node.get("s") or {}).values())
    elif kind == "set":
        found.extend((node.get("a") or {}).values())
        found.extend((node.get("d") or {}).values())
    elif kind == "dict":
        found.extend(_key(k) for k in (node.get("r") or {}).values())
    elif "vk" in node:
        found.append(_key(node["vk"]))
