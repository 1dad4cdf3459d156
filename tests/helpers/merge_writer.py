"""A tiny simulated replica for merge tests: it writes operations as a local replica would.

Each :class:`SimReplica` keeps its own document states, stamps with a
:class:`~tidesync.core.clock.HybridClock` over a fake, counter-based wall clock, reads its
local state (``epochs()``, ``list_element_ids()``, ``container_kind()``) to build
operations, applies them locally through :func:`integrate` (as the store does), and
observes the stamps of everything it receives. :func:`simulate` runs several replicas that
write random transactions and exchange them at random, in random order.

Everything is driven by a seeded :class:`random.Random`: no wall clock, no global state.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidesync.core.clock import HybridClock
from tidesync.core.merge import (
    DocState,
    Policies,
    container_kind,
    epochs,
    integrate,
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
from tidesync.core.stamp import ReplicaId, Stamp
from tidesync.core.values import Plain, canonical_json

COLLECTION = "c"
KEYS: tuple[Plain, ...] = (1, "two")
WORDS = ("a", "b", "c", "d", "e")


def custom_pick(field: str, a: Plain, b: Plain) -> Plain:
    """A policy function: the value whose canonical JSON is larger (a total order)."""
    return a if canonical_json(a) > canonical_json(b) else b


def make_policies() -> Policies:
    """The policies the simulations use when they use any."""
    return Policies({(COLLECTION, "score"): "max", (COLLECTION, "low"): "min",
                     (COLLECTION, "label"): custom_pick, (COLLECTION, "ul"): "union",
                     (COLLECTION, "us"): "union", (COLLECTION, "d"): "max"})


class FakeWall:
    """A wall clock in milliseconds that advances by one on every read, with a fixed skew."""

    def __init__(self, shared: list[int], skew: int) -> None:
        self._shared = shared
        self._skew = skew

    def __call__(self) -> int:
        self._shared[0] += 1
        return max(0, self._shared[0] + self._skew)


@dataclass
class SimReplica:
    """One simulated replica: its clock, its documents, and what it has received."""

    rid: ReplicaId
    clock: HybridClock
    rng: random.Random
    policies: Policies | None = None
    docs: dict[str, DocState] = field(default_factory=dict)
    received: set[int] = field(default_factory=set)

    # -- state -------------------------------------------------------------------------

    def state(self, key: Plain) -> DocState:
        ref = canonical_json(key)
        s = self.docs.get(ref)
        if s is None:
            s = self.docs[ref] = new_state()
        return s

    def apply(self, op: Op) -> None:
        """Integrate one operation (local or remote) and observe its stamp."""
        self.clock.observe(op.stamp)
        ref = canonical_json(op.key)
        self.docs[ref], _ = integrate(self.docs.get(ref), op, self.policies)

    def receive(self, ops: Sequence[Op]) -> None:
        for op in ops:
            self.apply(op)

    # -- writing -----------------------------------------------------------------------

    def write(self, max_ops: int = 4) -> list[Op]:
        """Make one random transaction (possibly empty) and apply it locally."""
        out: list[Op] = []
        for _ in range(self.rng.randint(0, max_ops)):
            key = self.rng.choice(KEYS)
            self._one(key, out)
        return out

    def _emit(self, op: Op, out: list[Op]) -> None:
        self.apply(op)
        out.append(op)

    def _now(self) -> Stamp:
        return self.clock.now()

    def _one(self, key: Plain, out: list[Op]) -> None:
        s = self.state(key)
        rng = self.rng
        if not s.live:
            if rng.random() < 0.8:
                self._create(key, out)
            return
        choices: list[Callable[[Plain, list[Op]], None]] = [
            self._set_scalar, self._set_scalar, self._unset, self._assign, self._list_op, self._list_op,
            self._list_op, self._set_op, self._set_op, self._dict_op, self._counter_op, self._counter_op,
            self._nested, self._nested, self._delete, self._create, self._policy_field,
        ]
        rng.choice(choices)(key, out)

    def _create(self, key: Plain, out: list[Op]) -> None:
        rng = self.rng
        s = self.state(key)
        fields: dict[str, Plain] = {"_id": key}
        kinds: dict[str, str] = {}
        defaults: list[str] = []
        if rng.random() < 0.7:
            fields["title"] = rng.choice(WORDS)
        if rng.random() < 0.5:
            fields["prio"] = rng.randint(0, 3)
            if rng.random() < 0.5:
                defaults.append("prio")
        if rng.random() < 0.6:
            fields["tags"] = [rng.choice(WORDS) for _ in range(rng.randint(0, 3))]
            kinds["tags"] = "list"
        if rng.random() < 0.5:
            fields["st"] = [rng.choice(WORDS) for _ in range(rng.randint(0, 3))]
            kinds["st"] = "set"
        if rng.random() < 0.4:
            fields["d"] = {k: rng.randint(0, 9) for k in rng.sample(WORDS, rng.randint(0, 2))}
            kinds["d"] = "dict"
            if rng.random() < 0.3:
                defaults.append("d")
        if rng.random() < 0.5:
            fields["n"] = rng.choice([0, 5, None])
            kinds["n"] = "counter"
        if rng.random() < 0.5:
            site: dict[str, Plain] = {"city": rng.choice(WORDS)}
            kinds["site"] = "object"
            if rng.random() < 0.5:
                site["lines"] = [rng.randint(0, 9) for _ in range(rng.randint(0, 2))]
                kinds["site.lines"] = "list"
            fields["site"] = site
        if rng.random() < 0.3:
            fields["site"] = None
            kinds["site"] = "object"
        if rng.random() < 0.3:
            fields["ul"] = [rng.choice(WORDS)]
            kinds["ul"] = "list"
        self._emit(CreateDoc(COLLECTION, key, self._now(), s.epoch, fields, kinds, tuple(defaults)), out)

    def _delete(self, key: Plain, out: list[Op]) -> None:
        self._emit(DeleteDoc(COLLECTION, key, self._now(), self.state(key).epoch), out)

    def _set_scalar(self, key: Plain, out: list[Op]) -> None:
        rng = self.rng
        s = self.state(key)
        name = rng.choice(["title", "prio", "tags", "n", "site", "st", "ul", "us"])
        value: Plain = rng.choice([rng.choice(WORDS), rng.randint(0, 9), None])
        self._emit(SetValue(COLLECTION, key, self._now(), s.epoch, (name,), (), value,
                            default=rng.random() < 0.15), out)

    def _unset(self, key: Plain, out: list[Op]) -> None:
        s = self.state(key)
        name = self.rng.choice(["title", "prio", "d", "site"])
        self._emit(Unset(COLLECTION, key, self._now(), s.epoch, (name,), ()), out)

    def _assign(self, key: Plain, out: list[Op]) -> None:
        """Assign a new container to a field, then fill it (as a writer assigns a value)."""
        rng = self.rng
        name, kind = rng.choice([("tags", "list"), ("st", "set"), ("d", "dict"), ("n", "counter"),
                                 ("site", "object"), ("ul", "list"), ("us", "set")])
        s = self.state(key)
        stamp = self._now()
        self._emit(SetContainer(COLLECTION, key, stamp, s.epoch, (name,), (), kind, stamp,  # type: ignore[arg-type]
                                rng.choice([0, 3, None]) if kind == "counter" else None,
                                default=kind == "counter" and rng.random() < 0.2), out)
        for _ in range(rng.randint(0, 2)):
            if kind == "list":
                self._list_insert(key, (name,), out)
            elif kind == "set":
                self._set_op(key, out, (name,), add=True)
            elif kind == "dict":
                self._dict_op(key, out)
            elif kind == "object":
                self._nested(key, out)

    def _list_insert(self, key: Plain, path: tuple[str, ...], out: list[Op]) -> None:
        s = self.state(key)
        ids = list_positions(s, path)
        i = self.rng.randint(0, len(ids))
        stamp = self._now()
        self._emit(ListInsert(COLLECTION, key, stamp, s.epoch, path, epochs(s, path), new_element_id(stamp),
                              ids[i - 1] if i else None, self.rng.choice(WORDS)), out)

    def _list_path(self, key: Plain) -> tuple[str, ...] | None:
        s = self.state(key)
        paths = [p for p in (("tags",), ("ul",), ("site", "lines")) if container_kind(s, p) == "list"]
        return self.rng.choice(paths) if paths else None

    def _list_op(self, key: Plain, out: list[Op]) -> None:
        path = self._list_path(key)
        if path is None:
            self._assign(key, out)
            return
        s = self.state(key)
        ids = list_element_ids(s, path)
        r = self.rng.random()
        if r < 0.5 or not ids:
            self._list_insert(key, path, out)
        elif r < 0.7:
            self._emit(ListSet(COLLECTION, key, self._now(), s.epoch, path, epochs(s, path),
                               self.rng.choice(ids), self.rng.choice(WORDS).upper()), out)
        elif r < 0.85:
            # a move: the element to a place after another one (or the head)
            i = self.rng.randrange(len(ids))
            rest = [p for j, p in enumerate(list_positions(s, path)) if j != i]
            k = self.rng.randint(0, len(rest))
            stamp = self._now()
            self._emit(ListMove(COLLECTION, key, stamp, s.epoch, path, epochs(s, path), ids[i],
                                new_element_id(stamp), rest[k - 1] if k else None), out)
        else:
            self._emit(ListErase(COLLECTION, key, self._now(), s.epoch, path, epochs(s, path),
                                 self.rng.choice(ids)), out)

    def _set_op(self, key: Plain, out: list[Op], path: tuple[str, ...] | None = None, add: bool | None = None) -> None:
        s = self.state(key)
        if path is None:
            paths = [p for p in (("st",), ("us",)) if container_kind(s, p) == "set"]
            if not paths:
                self._assign(key, out)
                return
            path = self.rng.choice(paths)
        if add is None:
            add = self.rng.random() < 0.6
        cls = SetAdd if add else SetRemove
        self._emit(cls(COLLECTION, key, self._now(), s.epoch, path, epochs(s, path), self.rng.choice(WORDS)), out)

    def _dict_op(self, key: Plain, out: list[Op]) -> None:
        s = self.state(key)
        if container_kind(s, ("d",)) != "dict":
            return
        dkey = self.rng.choice(WORDS[:3])
        if self.rng.random() < 0.7:
            self._emit(DictPut(COLLECTION, key, self._now(), s.epoch, ("d",), epochs(s, ("d",)), dkey,
                               self.rng.randint(0, 9)), out)
        else:
            self._emit(DictDel(COLLECTION, key, self._now(), s.epoch, ("d",), epochs(s, ("d",)), dkey), out)

    def _counter_op(self, key: Plain, out: list[Op]) -> None:
        s = self.state(key)
        self._emit(CounterAdd(COLLECTION, key, self._now(), s.epoch, ("n",), (), self.rng.randint(-2, 5)), out)

    def _nested(self, key: Plain, out: list[Op]) -> None:
        rng = self.rng
        s = self.state(key)
        if container_kind(s, ("site",)) != "object":
            if rng.random() < 0.5:
                self._assign(key, out)
            return
        r = rng.random()
        if r < 0.5:
            self._emit(SetValue(COLLECTION, key, self._now(), s.epoch, ("site", rng.choice(["city", "zip"])),
                                epochs(s, ("site",)), rng.choice(WORDS)), out)
        elif r < 0.65:
            self._emit(Unset(COLLECTION, key, self._now(), s.epoch, ("site", "city"), epochs(s, ("site",))), out)
        elif r < 0.8:
            stamp = self._now()
            self._emit(SetContainer(COLLECTION, key, stamp, s.epoch, ("site", "lines"), epochs(s, ("site",)),
                                    "list", stamp), out)
            self._list_insert(key, ("site", "lines"), out)
        elif r < 0.88 and container_kind(s, ("site", "lines")) == "list":
            self._list_insert(key, ("site", "lines"), out)
        elif container_kind(s, ("site", "geo")) == "object" and rng.random() < 0.7:
            self._emit(SetValue(COLLECTION, key, self._now(), s.epoch, ("site", "geo", rng.choice(["lat", "lon"])),
                                epochs(s, ("site", "geo")), rng.randint(0, 90)), out)
        else:
            stamp = self._now()
            self._emit(SetContainer(COLLECTION, key, stamp, s.epoch, ("site", "geo"), epochs(s, ("site",)),
                                    "object", stamp), out)

    def _policy_field(self, key: Plain, out: list[Op]) -> None:
        rng = self.rng
        s = self.state(key)
        name = rng.choice(["score", "low", "label"])
        if rng.random() < 0.2:
            self._emit(Unset(COLLECTION, key, self._now(), s.epoch, (name,), ()), out)
            return
        value: Plain = rng.choice([rng.randint(0, 20), rng.choice(WORDS), None])
        self._emit(SetValue(COLLECTION, key, self._now(), s.epoch, (name,), (), value,
                            default=rng.random() < 0.1), out)


@dataclass
class Simulation:
    """What :func:`simulate` produced: the transactions in creation order, and the replicas."""

    transactions: list[list[Op]]
    replicas: list[SimReplica]

    @property
    def ops(self) -> list[Op]:
        return [op for t in self.transactions for op in t]

    def sync_all(self) -> None:
        """Deliver every transaction each replica has not received yet (in creation order)."""
        for r in self.replicas:
            for i, t in enumerate(self.transactions):
                if i not in r.received:
                    r.received.add(i)
                    r.receive(t)


def simulate(seed: int, replicas: int = 3, steps: int = 20, policies: Policies | None = None,
             max_ops: int = 4) -> Simulation:
    """Run ``replicas`` replicas for ``steps`` steps: each step, one replica either writes a
    transaction or receives a random subset of the transactions it lacks, in random order."""
    rng = random.Random(seed)
    shared = [1000]
    reps = []
    for i in range(replicas):
        rid = ReplicaId(f"{i + 1:016x}")
        wall = FakeWall(shared, rng.randint(-50, 50))
        reps.append(SimReplica(rid, HybridClock(rid, wall), random.Random(rng.random()), policies))
    txns: list[list[Op]] = []
    for _ in range(steps):
        r = rng.choice(reps)
        if rng.random() < 0.6:
            t = r.write(max_ops)
            r.received.add(len(txns))
            txns.append(t)
        else:
            missing = [i for i in range(len(txns)) if i not in r.received]
            if missing:
                pick = rng.sample(missing, rng.randint(1, len(missing)))
                for i in pick:
                    r.received.add(i)
                    r.receive(txns[i])
    return Simulation(txns, reps)


def apply_ops(ops: Sequence[Op], policies: Policies | None = None,
              start: dict[str, DocState] | None = None) -> dict[str, DocState]:
    """Integrate ``ops`` in the order given into fresh states (or copies of ``start``), per document."""
    docs = {k: v.copy() for k, v in (start or {}).items()}
    for op in ops:
        ref = canonical_json(op.key)
        docs[ref], _ = integrate(docs.get(ref), op, policies)
    return docs


def summary(docs: dict[str, DocState]) -> dict[str, Any]:
    """Canonical summaries of the documents that have any state."""
    from tidesync.core.merge import canonical_state

    return {k: canonical_state(v) for k, v in sorted(docs.items()) if v.epoch or v.live}
