"""Conflict records, and the context one integration carries while it decides.

A :class:`Conflict` is written whenever the merge rules throw a value away because of
another one. Device Sync discarded losers silently; tidesync returns them from
:func:`~tidesync.core.merge.integrate` so that the store can keep and show them.

What a replica can tell from the operations alone: an arriving operation that *loses* was
made without seeing the winner (a writer that had seen it would have stamped later, or
written into the newer incarnation or epoch), so it is recorded. An arriving operation that
*wins* may simply be a later edit, so it is recorded only when a policy other than
last-writer-wins made it win over a later stamp. A replica that receives the winner after
the loser therefore does not record that conflict; the replica that receives them the
other way round does. Redelivered operations are recorded again: deduplicate by
(collection, key, path, loser_stamp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from ..values import Plain
from .state import clone, empty_body

if TYPE_CHECKING:
    from .policies import Policies, Policy

__all__ = ["Conflict", "Context", "op_value"]


@dataclass(frozen=True, slots=True)
class Conflict:
    """One resolved conflict: which value won, which lost, and by which rule.

    Attributes:
        collection: the document's collection.
        key: the document's primary key (plain form).
        path: where the decision was made (a field path, a list element id or dictionary
            key appended for collection entries; ``()`` for the whole document).
        rule: ``"lww"``, ``"default-loses"``, ``"delete-wins"``, ``"parent-wins"``,
            ``"clear-wins"``, ``"erase-wins"``, ``"counter-reset"``, or the policy that decided
            (``"max"``, ``"min"``, ``"custom"``).
        winner: the value that stayed (plain form; ``None`` for a deleted document).
        winner_stamp: the stamp of the winning write (``ZERO`` when it was a creation).
        loser: the value of the discarded operation (its value, the inserted element, the
            increment, or the created fields).
        loser_stamp: the stamp of the discarded operation.
    """

    collection: str
    key: Plain
    path: tuple[str, ...]
    rule: str
    winner: Plain
    winner_stamp: Stamp
    loser: Plain
    loser_stamp: Stamp

    def to_plain(self) -> dict[str, Any]:
        """This record as a JSON-ready map."""
        return {"collection": self.collection, "key": self.key, "path": list(self.path),
                "rule": self.rule, "winner": self.winner, "winner_stamp": self.winner_stamp,
                "loser": self.loser, "loser_stamp": self.loser_stamp}


def op_value(op: Op) -> Plain:
    """The value an operation would have written (what a conflict reports as the loser)."""
    if isinstance(op, (SetValue, ListInsert, ListSet, SetAdd, SetRemove, DictPut)):
        return op.value
    if isinstance(op, SetContainer):
        return op.value if op.kind == "counter" else empty_body(op.kind)
    if isinstance(op, CounterAdd):
        return op.amount
    if isinstance(op, CreateDoc):
        return op.fields
    if isinstance(op, (Unset, ListErase, ListMove, DictDel, DeleteDoc)):
        return None
    return None  # pragma: no cover - every operation is listed above


class Context:
    """What one integration (or join) carries: the policies and the conflicts found so far.

    ``op`` is None during a join, which records nothing.
    """

    __slots__ = ("op", "policies", "collection", "conflicts", "_policy_cache")

    def __init__(self, op: Op | None, policies: Policies | None, collection: str = "") -> None:
        self.op = op
        self.policies = policies
        self.collection = op.collection if op is not None else collection
        self.conflicts: list[Conflict] = []
        self._policy_cache: dict[str, Policy] = {}

    def policy(self, path: tuple[str, ...]) -> Policy:
        """The policy governing the field at ``path`` (by its top-level field)."""
        if self.policies is None or not path:
            return "lww"
        top = path[0]
        p = self._policy_cache.get(top)
        if p is None:
            p = self._policy_cache[top] = self.policies.lookup(self.collection, path)
        return p

    def record(self, path: tuple[str, ...], rule: str, winner: Plain, winner_stamp: str,
               loser: Plain | None = None, loser_stamp: str | None = None) -> None:
        """Record a conflict about the operation being integrated (no-op during a join).

        ``loser`` and ``loser_stamp`` default to the operation's own value and stamp.
        """
        op = self.op
        if op is None:
            return
        self.conflicts.append(Conflict(
            op.collection, op.key, path, rule, clone(winner), Stamp(winner_stamp) if winner_stamp else ZERO,
            clone(op_value(op) if loser is None else loser), op.stamp if loser_stamp is None else Stamp(loser_stamp),
        ))
