"""Per-field conflict policies: last writer wins by default, or max, min, union, or a function.

Device Sync offered no choice; tidesync lets an application pick, per collection and
top-level field, how two writes of one register are ordered:

``"lww"`` (default)
    The explicit write beats a default (CR-05), then the later stamp wins (CR-01, CR-02).
``"max"`` / ``"min"``
    Among explicit writes, a non-null value beats null, an unset and a container
    assignment; between two values, the larger (smaller) wins in :func:`value_order_key`
    order; equal values fall back on the stamp. Operations do not say which writes their
    writer had seen, so this is a *grow-only* register: a later write of a smaller value
    loses too ("the high-water mark"). Use it for fields that must only grow (or shrink).
``"union"``
    For list, set and dictionary fields: assigning a new container does not discard the
    elements of other assignments, concurrent or not; they all stay (see :mod:`.registers`).
    Registers of a ``union`` field use last-writer-wins.
a callable ``f(field, a, b)``
    Returns ``a`` or ``b``, the winner between two non-null values of the field (``field``
    is the dotted path of the register). It must define a *consistent total order*: the same
    answer for ``(a, b)`` and ``(b, a)``, transitive, and pure (no clock, no randomness, no
    state). Every replica must run the same function, or they diverge.

Policies apply to field registers (``SetValue``, ``Unset``, ``SetContainer`` of a field,
the fields of ``CreateDoc``) and to dictionary entries, at any depth below the named
top-level field. List elements, set members and counters follow their own rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

from ...errors import MergeError
from ..values import Plain, canonical_json

__all__ = ["Policies", "Policy", "PolicyFunction", "POLICY_NAMES", "value_order_key", "decide"]

PolicyFunction: TypeAlias = Callable[[str, Plain, Plain], Plain]
Policy: TypeAlias = str | PolicyFunction

#: The named policies.
POLICY_NAMES = frozenset({"lww", "max", "min", "union"})


class Policies:
    """Which policy governs each (collection, top-level field); ``"lww"`` where none is set.

    Args:
        rules: ``{(collection, field): policy}``; ``field`` may be ``"*"`` for every field of
            the collection.
        default: the policy for fields without a rule.

    Raises:
        ValueError: a policy is neither a known name nor callable.

    Every replica that integrates a collection's transactions must use the same policies.
    """

    __slots__ = ("_rules", "default")

    def __init__(self, rules: Mapping[tuple[str, str], Policy] | None = None, *, default: Policy = "lww") -> None:
        self._rules: dict[tuple[str, str], Policy] = {}
        self.default = _check(default)
        for (collection, field), policy in (rules or {}).items():
            self.set(collection, field, policy)

    def set(self, collection: str, field: str, policy: Policy) -> Policies:
        """Set the policy of ``collection.field`` (``field="*"``: the whole collection); returns self."""
        self._rules[(collection, field)] = _check(policy)
        return self

    def lookup(self, collection: str, path: tuple[str, ...]) -> Policy:
        """The policy of the field at ``path`` (decided by its first, top-level element)."""
        if path:
            p = self._rules.get((collection, path[0]))
            if p is not None:
                return p
        p = self._rules.get((collection, "*"))
        return self.default if p is None else p

    @property
    def trivial(self) -> bool:
        """True when every field is last-writer-wins (no rule, default ``"lww"``)."""
        return not self._rules and self.default == "lww"

    def __repr__(self) -> str:
        return f"Policies({self._rules!r}, default={self.default!r})"


def _check(policy: Policy) -> Policy:
    if isinstance(policy, str):
        if policy not in POLICY_NAMES:
            raise ValueError(f"unknown policy {policy!r}; use one of {sorted(POLICY_NAMES)} or a function")
        return policy
    if not callable(policy):
        raise ValueError(f"a policy is a name or a callable, not {type(policy).__name__}")
    return policy


_NUM = 2


def value_order_key(value: Plain) -> tuple[Any, ...]:
    """A sort key giving a total order over plain values (used by ``max`` and ``min``).

    Order of kinds: null < bool < numbers (int, float, decimal; NaN lowest) < str < datetime
    < ObjectId < UUID < binary < list < object. Within a kind, the natural order (datetimes
    by instant; ObjectId, UUID and binary by their text; lists and objects by canonical JSON).
    """
    if value is None:
        return (0,)
    t = type(value)
    if t is bool:
        return (1, int(value))
    if t is int or t is float:
        if value != value:  # NaN
            return (_NUM, 0, 0)
        return (_NUM, 1, value)
    if t is str:
        return (3, value)
    if t is dict and len(value) == 1:
        ((tag, inner),) = value.items()
        try:
            if tag == "$date":
                return (4, int(inner))
            if tag in ("$decimal", "$float"):
                d = Decimal(inner)
                return (_NUM, 0, 0) if d.is_nan() else (_NUM, 1, d)
        except (InvalidOperation, TypeError, ValueError):
            pass
        rank = {"$oid": 5, "$uuid": 6, "$binary": 7}.get(tag)
        if rank is not None and isinstance(inner, str):
            return (rank, inner)
    if t is list:
        return (8, canonical_json(value))
    return (9, canonical_json(value))


def _compare(policy: Policy, where: tuple[str, ...], new: Plain, old: Plain) -> int:
    """>0 when ``new`` beats ``old`` under ``policy``, <0 when it loses, 0 on a tie."""
    if policy == "max" or policy == "min":
        kn, ko = value_order_key(new), value_order_key(old)
        c = (kn > ko) - (kn < ko)
        return c if policy == "max" else -c
    assert callable(policy)
    cn, co = canonical_json(new), canonical_json(old)
    if cn == co:
        return 0
    chosen = canonical_json(policy(".".join(where), new, old))
    if chosen == cn:
        return 1
    if chosen == co:
        return -1
    raise MergeError(f"policy function for {'.'.join(where)!r} returned neither of the two values it was given",
                     advice="a policy function must return one of its two value arguments")


def decide(policy: Policy, where: tuple[str, ...], new_key: str, new_value: Plain, new_is_value: bool,
           old_key: str, old_value: Plain, old_is_value: bool) -> tuple[bool, str]:
    """Decide between two different writes of one register.

    Args:
        policy: the field's policy.
        where: the register's path (for a policy function, and messages).
        new_key, old_key: the writes' keys (see :mod:`.state`); they differ.
        new_value, old_value: their values (None for an unset or a container).
        new_is_value, old_is_value: True for a write of a non-null value.

    Returns:
        (whether the new write wins, the rule that decided).
    """
    if policy == "lww" or policy == "union" or (new_key[:1] == "1") != (old_key[:1] == "1"):
        wins = new_key > old_key
        loser = old_key if wins else new_key
        winner = new_key if wins else old_key
        rule = "default-loses" if winner[:1] == "1" and loser[:1] == "0" else "lww"
        return wins, rule
    name = policy if isinstance(policy, str) else "custom"
    if new_is_value != old_is_value:
        return new_is_value, name
    if new_is_value:
        c = _compare(policy, where, new_value, old_value)
        if c:
            return c > 0, name
    return new_key > old_key, "lww"
