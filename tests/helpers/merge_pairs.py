"""Two-replica scenarios for the merge rules, in the shape of Device Sync's CR-xx examples.

A :class:`Writer` is one replica writing against its own copy of a document: it builds each
operation from its local state (incarnation, epochs, element ids), applies it locally, and
returns it. :func:`converge` applies the two replicas' concurrent operations to the common
starting state in *every* order (all permutations, so also out of each writer's own order),
checks that all orders give one state, and returns it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from tidesync.core.merge import (
    Conflict,
    DocState,
    Policies,
    canonical_state,
    epochs,
    integrate,
    integrate_all,
    list_element_ids,
    list_positions,
    new_element_id,
    new_state,
)
from tidesync.core.operations import (
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
from tidesync.core.stamp import ReplicaId, Stamp, make_stamp
from tidesync.core.values import Plain

#: Device Sync's CR-02 example: A has file ident 5, B has 9.
REPLICAS = {"A": ReplicaId("0000000000000005"), "B": ReplicaId("0000000000000009"),
            "S": ReplicaId("00000000000000ff")}
COLL = "tasks"


def stamp(t: int, who: str = "A") -> Stamp:
    """The stamp of a write at wall time ``t`` by replica ``who``."""
    return make_stamp(t, 0, REPLICAS[who])


class Writer:
    """One replica editing one document (key ``key``) from its own copy of ``state``."""

    def __init__(self, who: str, state: DocState | None = None, key: Plain = 1,
                 policies: Policies | None = None) -> None:
        self.who = who
        self.key = key
        self.state = state.copy() if state is not None else new_state()
        self.policies = policies
        self.conflicts: list[Conflict] = []

    def _do(self, op: Op) -> Op:
        self.state, found = integrate(self.state, op, self.policies)
        self.conflicts.extend(found)
        return op

    def receive(self, *ops: Op) -> None:
        for op in ops:
            self._do(op)

    def _s(self, t: int) -> Stamp:
        return stamp(t, self.who)

    @property
    def base(self) -> Stamp:
        return self.state.epoch

    def create(self, t: int, fields: dict[str, Plain], kinds: dict[str, str] | None = None,
               defaults: Sequence[str] = ()) -> Op:
        return self._do(CreateDoc(COLL, self.key, self._s(t), self.base, {"_id": self.key, **fields},
                                  kinds or {}, tuple(defaults)))

    def delete(self, t: int) -> Op:
        return self._do(DeleteDoc(COLL, self.key, self._s(t), self.base))

    def set(self, t: int, path: tuple[str, ...], value: Plain, default: bool = False) -> Op:
        return self._do(SetValue(COLL, self.key, self._s(t), self.base, path, epochs(self.state, path[:-1]),
                                 value, default))

    def unset(self, t: int, path: tuple[str, ...]) -> Op:
        return self._do(Unset(COLL, self.key, self._s(t), self.base, path, epochs(self.state, path[:-1])))

    def assign(self, t: int, path: tuple[str, ...], kind: str, value: Plain = None) -> Op:
        s = self._s(t)
        return self._do(SetContainer(COLL, self.key, s, self.base, path, epochs(self.state, path[:-1]),
                                     kind, s, value))  # type: ignore[arg-type]

    def insert(self, t: int, path: tuple[str, ...], index: int, value: Plain) -> Op:
        ids = list_positions(self.state, path)
        s = self._s(t)
        return self._do(ListInsert(COLL, self.key, s, self.base, path, epochs(self.state, path),
                                   new_element_id(s), ids[index - 1] if index else None, value))

    def append(self, t: int, path: tuple[str, ...], value: Plain) -> Op:
        return self.insert(t, path, len(list_element_ids(self.state, path)), value)

    def lset(self, t: int, path: tuple[str, ...], index: int, value: Plain) -> Op:
        elem = list_element_ids(self.state, path)[index]
        return self._do(ListSet(COLL, self.key, self._s(t), self.base, path, epochs(self.state, path), elem, value))

    def move(self, t: int, path: tuple[str, ...], index: int, to: int) -> Op:
        """Realm's ``List.move(index, to)``: the element ends at index ``to``."""
        elem = list_element_ids(self.state, path)[index]
        rest = [p for j, p in enumerate(list_positions(self.state, path)) if j != index]
        s = self._s(t)
        return self._do(ListMove(COLL, self.key, s, self.base, path, epochs(self.state, path), elem,
                                 new_element_id(s), rest[to - 1] if to else None))

    def erase(self, t: int, path: tuple[str, ...], index: int) -> Op:
        elem = list_element_ids(self.state, path)[index]
        return self._do(ListErase(COLL, self.key, self._s(t), self.base, path, epochs(self.state, path), elem))

    def add(self, t: int, path: tuple[str, ...], value: Plain) -> Op:
        return self._do(SetAdd(COLL, self.key, self._s(t), self.base, path, epochs(self.state, path), value))

    def remove(self, t: int, path: tuple[str, ...], value: Plain) -> Op:
        return self._do(SetRemove(COLL, self.key, self._s(t), self.base, path, epochs(self.state, path), value))

    def put(self, t: int, path: tuple[str, ...], dkey: str, value: Plain) -> Op:
        return self._do(DictPut(COLL, self.key, self._s(t), self.base, path, epochs(self.state, path), dkey, value))

    def pop(self, t: int, path: tuple[str, ...], dkey: str) -> Op:
        return self._do(DictDel(COLL, self.key, self._s(t), self.base, path, epochs(self.state, path), dkey))

    def incr(self, t: int, path: tuple[str, ...], amount: int) -> Op:
        return self._do(CounterAdd(COLL, self.key, self._s(t), self.base, path, epochs(self.state, path[:-1]),
                                   amount))


def start(fields: dict[str, Plain], kinds: dict[str, str] | None = None, t: int = 10,
          policies: Policies | None = None) -> DocState:
    """The common synced state both replicas begin from: the document created by A at ``t``."""
    w = Writer("A", policies=policies)
    w.create(t, fields, kinds)
    return w.state


def converge(base: DocState | None, *concurrent: Sequence[Op], policies: Policies | None = None,
             max_orders: int = 720) -> DocState:
    """Apply the replicas' operations to ``base`` in every order; assert one result; return it."""
    ops = [op for group in concurrent for op in group]
    orders: list[Sequence[Op]]
    if len(ops) <= 6:
        orders = list(itertools.permutations(ops))
    else:
        rng = random.Random(len(ops))
        orders = [ops, ops[::-1]]
        for _ in range(max_orders):
            o = list(ops)
            rng.shuffle(o)
            orders.append(o)
    results = []
    for order in orders[:max_orders]:
        s, _ = integrate_all(base.copy() if base is not None else None, order, policies)
        results.append((canonical_state(s), s))
    first = results[0][0]
    for summary, _ in results:
        assert summary == first, "arrival order changed the result"
    return results[0][1]
