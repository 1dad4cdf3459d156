"""The merge state of one document, and the small vocabulary every merge module shares.

A :class:`DocState` is what a replica keeps per document: the incarnation (``epoch``),
whether the document is live, its materialized ``body`` in plain form, and ``meta``, the
JSON-serializable merge metadata from which the merge rules decide what a later operation
does. ``body`` and ``meta`` together are a state-based CRDT: :func:`~tidesync.core.merge.join`
merges two of them.

**Write keys.** Every write into a register slot (a field of an object, a dictionary key,
the assignment of a container) carries a *key*, a string that sorts writes the way the rules
want, so that a comparison of two keys is one string comparison:

* ``""``: a container made by ``CreateDoc`` (epoch ``ZERO``). It loses to every other write,
  and two of them are the *same* write, so two concurrent creations merge their contents.
* ``"0" + stamp``: a write of a schema default; loses to every explicit write (CR-05).
* ``"1" + stamp``: an explicit write; later stamp wins (CR-01, CR-02).

**Meta layout** (all maps are left out when empty, so equal states have equal meta):

* Root (the document) and embedded object nodes:
  ``{"r": {field: key}, "c": {field: node}, "n": {field: {stamp: amount}}, "u": {field: {kind: [node, body]}}}``
  where ``r`` holds the winning write's key of every field ever written (also of unset
  fields), ``c`` the container node of fields whose winner is a container, ``n`` counter
  increments not yet superseded, and ``u`` the hidden containers of a ``union`` field. An
  embedded object node adds ``"k": "object"`` and ``"e": epoch``. The root adds ``"t"``,
  the latest stamp of a ``CreateDoc`` of the incarnation (no key may carry it: a create of
  ``_id`` alone, say); metas written before session 11 may lack it.
* List: ``{"k": "list", "e": epoch, "o": [element ids in order, erased ones included],
  "a": {id: anchor id or None}, "x": {erased id: 1}, "s": {id: stamp of the
  winning ListSet}, "p": {id: [anchor, value]} (inserts whose anchor has not arrived),
  "q": {id: value} (ListSet values for elements that have not arrived)}``; a list that has
  seen a move adds ``"r": {position: element id}`` (positions made by moves, in ``o`` and
  ``a`` like element ids), ``"m": {element id: winning position}`` and ``"pm": {position:
  [element id, anchor]}`` (moves whose anchor has not arrived); see :mod:`.sequence`.
* Set: ``{"k": "set", "e": epoch, "a": {canonical json: add stamp}, "d": {canonical json:
  remove stamp}}`` (members present / removed).
* Dictionary: ``{"k": "dict", "e": epoch, "r": {dkey: key}}`` (removed keys keep their key).
* Counter: ``{"k": "counter", "v": assigned value}`` plus ``"vk"``, the key of the assigned
  value, for a counter made by ``CreateDoc``.
* A document that only a single ``CreateDoc`` has touched keeps a compact root:
  ``{"*": create stamp, "*k": kinds, "*d": defaults}`` (see :mod:`.create`), plus
  ``"r": {field: key}`` for top-level register fields written since without expanding
  (:func:`~tidesync.core.merge.create.overlay_write`: a store's fast path, and
  :func:`~tidesync.core.merge.integrate` for a winning LWW ``SetValue`` of the current
  incarnation); the first other operation expands it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from ..stamp import ZERO, Stamp
from ..values import Plain, canonical_json

__all__ = [
    "DocState",
    "new_state",
    "new_element_id",
    "Node",
    "CREATE_KEY",
    "CONTAINER_KINDS",
    "UNION_KINDS",
    "write_key",
    "container_key",
    "clone",
    "empty_body",
    "new_node",
    "member_key",
]

#: A node of the meta tree (a JSON object).
Node: TypeAlias = dict[str, Any]

#: The key of a container made by ``CreateDoc``: below every other write.
CREATE_KEY = ""

CONTAINER_KINDS = frozenset({"object", "list", "set", "dict", "counter"})
#: Container kinds whose contents a ``union`` policy keeps across re-assignment.
UNION_KINDS = frozenset({"list", "set", "dict"})


@dataclass(slots=True)
class DocState:
    """The merge state of one document.

    Attributes:
        epoch: the current incarnation: the largest delete stamp or operation base seen.
        live: False when the document was never created in this incarnation, or was deleted.
        body: the materialized document in plain form, ``_id`` included; ``{}`` when not live.
        meta: JSON-serializable merge metadata (see this module's docstring).

    Treat ``body`` as read-only: copy it (or the state, with :meth:`copy`) before changing it.
    """

    epoch: Stamp
    live: bool
    body: dict[str, Plain]
    meta: dict[str, Any]

    def copy(self) -> DocState:
        """An independent deep copy of this state."""
        return DocState(self.epoch, self.live, clone(self.body), clone(self.meta))


def new_state() -> DocState:
    """The state of a document never seen: epoch ``ZERO``, not live."""
    return DocState(ZERO, False, {}, {})


def new_element_id(stamp: Stamp, index: int = 0) -> str:
    """The id of a list element inserted by the operation stamped ``stamp``.

    Ids compare as strings in stamp order, and within one stamp in ``index`` order, so one
    operation (e.g. a ``CreateDoc`` with a list) may mint several. A writer must give a new
    element an id larger than the element it is inserted after; ids made from a fresh stamp of
    the replica's hybrid clock always are.
    """
    if index == 0:
        return stamp
    if index < 0:
        raise ValueError("element index must be >= 0")
    digits = format(index, "x")
    if len(digits) > 15:
        raise ValueError("element index too large")
    # Length-prefixed so that ids of one stamp sort by index.
    return f"{stamp}{len(digits):x}{digits}"


def write_key(stamp: Stamp, default: bool = False) -> str:
    """The key of a register write: explicit writes beat defaults, then the later stamp wins."""
    return ("0" if default else "1") + stamp


def container_key(epoch: Stamp) -> str:
    """The key of the assignment that made a container of ``epoch`` (``""`` for ZERO)."""
    return "1" + epoch if epoch else CREATE_KEY


def clone(value: Any) -> Any:
    """A deep copy of a plain (JSON-like) value."""
    t = type(value)
    if t is dict:
        return {k: clone(v) for k, v in value.items()}
    if t is list:
        return [clone(v) for v in value]
    return value


def empty_body(kind: str) -> Any:
    """The materialized form of a new, empty container of ``kind``."""
    if kind in ("list", "set"):
        return []
    if kind == "counter":
        return None
    return {}


def new_node(kind: str, epoch: Stamp) -> Node:
    """The meta node of a new, empty container of ``kind`` made at ``epoch``."""
    return {"k": kind, "e": epoch}


def member_key(value: Plain) -> str:
    """``canonical_json(value)``, faster for the common str and int set members."""
    t = type(value)
    if t is str:
        if '"' not in value and "\\" not in value and value.isprintable():
            return f'"{value}"'
    elif t is int:
        return str(value)
    return canonical_json(value)
