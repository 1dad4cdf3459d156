"""Seeded simulations: a server and devices write, sync, lose connections mid-batch, reconnect.

A WebSocket delivers in order, but it can be cut at any point: whatever is in flight is lost,
and both sides learn it. Each schedule below interleaves local writes (conflicting ones
included), one-payload deliveries in random directions, cuts, clean closes, reconnections
(device <-> server, and device <-> device directly, either side initiating, sometimes with no
remembered peer), and log compaction (which forces snapshot bootstraps). At the end every
device syncs with the server until nothing moves, and then:

* every replica holds the same documents (equal merge states),
* every transaction written anywhere is known everywhere: nothing lost,
* no replica applied any transaction twice,
* no connection failed for any reason but being cut: no protocol error in any schedule.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tidesync.core.stamp import ReplicaId
from tidesync.core.transaction import Transaction

from ..helpers.memory_replica import MemoryReplica, replica_id
from ..helpers.pairs import SessionPair

Conn = tuple[int, int]


class Simulation:
    def __init__(self, seed: int, *, model: str = "toy", devices: int = 3, compaction: bool = True) -> None:
        self.rng = random.Random(seed)
        self.compaction = compaction
        # replica 0 is the server; 1..n are devices; devices 1 and 2 also sync directly
        self.replicas = [MemoryReplica(replica_id(100 + i), model=model) for i in range(devices + 1)]
        self.conns: list[Conn] = [(d, 0) for d in range(1, devices + 1)] + [(1, 2)]
        self.sessions: dict[Conn, SessionPair] = {}
        self.finished: list[SessionPair] = []
        self.model = model
        self.written: dict[str, Transaction] = {}
        self.log: list[str] = []  # the schedule, for a readable failure message

    # -- the schedule

    def live(self) -> list[SessionPair]:
        return list(self.sessions.values())

    def connect(self, conn: Conn, *, swap: bool | None = None, remember: bool = True) -> SessionPair:
        first, second = conn
        if swap if swap is not None else (conn == (1, 2) and self.rng.random() < 0.5):
            first, second = second, first
        options = {"batch_limit": self.rng.choice([1, 2, 5]), "window": self.rng.choice([1, 2, 3]),
                   "descriptor_lookahead": self.rng.choice([0, 0, 4]),
                   "snapshot_limit": self.rng.choice([1, 3])}
        expected: ReplicaId | None | bool = True if remember else None
        pair = SessionPair(self.replicas[first], self.replicas[second], expected_peer=expected,
                           a_options=dict(options), b_options=dict(options))
        pair.start()
        self.sessions[conn] = pair
        self.log.append(f"connect {first}->{second}{'' if remember else ' (forgetful)'}")
        return pair

    def reap(self) -> None:
        for conn, pair in list(self.sessions.items()):
            if pair.cut_off or (pair.a.link.finished and pair.b.link.finished and not pair.pending()):
                self.finished.append(self.sessions.pop(conn))
                pair.a.detach()
                pair.b.detach()

    def step(self) -> None:
        r = self.rng.random()
        if r < 0.25:
            who = self.rng.randrange(len(self.replicas))
            replica = self.replicas[who]
            key = self.rng.randrange(6)
            if self.rng.random() < 0.07:
                _, txn = replica.delete("tasks", key)
                self.log.append(f"{who} deletes {key}")
            else:
                field = self.rng.choice(["a", "b", "c"])
                _, txn = replica.write("tasks", key, **{field: self.rng.randrange(100)})
                self.log.append(f"{who} writes {key}.{field}")
            self.written[txn.id] = txn
        elif r < 0.80:
            busy = [p for p in self.live() if p.pending()]
            if busy:
                self.rng.choice(busy).step(self.rng)
        elif r < 0.86:
            if self.sessions:
                conn = self.rng.choice(sorted(self.sessions))
                self.log.append(f"cut {conn} with {self.sessions[conn].pending()} in flight")
                self.sessions[conn].cut()
        elif r < 0.88:
            if self.sessions:
                conn = self.rng.choice(sorted(self.sessions))
                end = self.rng.choice([self.sessions[conn].a, self.sessions[conn].b])
                from tidesync.protocol import Close

                if end.link.can_send(Close):
                    end.link.send(Close("bye"))
                    self.sessions[conn].collect()
                    self.log.append(f"close {conn}")
        elif r < 0.97:
            idle = [c for c in self.conns if c not in self.sessions]
            if idle:
                self.connect(self.rng.choice(idle), remember=self.rng.random() > 0.1)
        elif self.compaction:
            who = self.rng.randrange(len(self.replicas))
            replica = self.replicas[who]
            upto = self.rng.randint(replica.floor, replica.head_seq())
            replica.compact(upto)
            self.log.append(f"{who} compacts to {upto}")
        self.reap()

    def settle(self) -> None:
        """Let everything in flight arrive, then sync every device with the server until quiet."""
        for _ in range(1000):
            busy = [p for p in self.live() if p.pending()]
            if not busy:
                break
            for pair in busy:
                pair.run()
            self.reap()
        for pair in self.live():
            pair.cut()
        self.reap()
        for conn in self.conns[:-1]:
            self.connect(conn, swap=False)
        for _ in range(1000):
            busy = [p for p in self.live() if p.pending()]
            if not busy:
                return
            for pair in busy:
                pair.run()
        raise AssertionError("the network never went quiet")

    # -- the verdict

    def check(self) -> None:
        trace = "\n".join(self.log[-60:])
        server = self.replicas[0]
        for i, replica in enumerate(self.replicas[1:], 1):
            assert replica.state() == server.state(), f"replica {i} differs from the server\n{trace}"
        # nothing lost: the common state is the state of every transaction ever written
        reference = MemoryReplica(replica_id(999), model=self.model)
        reference.integrate(list(self.written.values()), peer=replica_id(998), peer_seq=0)
        assert server.state() == reference.state(), f"the replicas lost writes\n{trace}"
        for i, replica in enumerate(self.replicas):
            if self.model == "toy":  # toy states carry their transaction ids, snapshots too
                missing = set(self.written) - set(replica.ids)
                assert not missing, f"replica {i} lost {len(missing)} transactions\n{trace}"
            twice = [t for t, n in replica.applied.items() if n > 1]
            assert not twice, f"replica {i} applied {twice} twice\n{trace}"
        for pair in [*self.finished, *self.live()]:
            for end in (pair.a, pair.b):
                failure = end.failure
                if failure is not None:
                    assert failure.error.code == "connection_lost", f"{failure}\n{trace}"


def run(seed: int, steps: int, **kwargs: Any) -> Simulation:
    sim = Simulation(seed, **kwargs)
    for conn in sim.conns[:-1]:
        sim.connect(conn)
    for _ in range(steps):
        sim.step()
    sim.settle()
    sim.check()
    return sim


@pytest.mark.parametrize("seed", range(25))
def test_random_schedules_converge(seed: int) -> None:
    sim = run(seed, 400)
    assert len(sim.written) > 50


@pytest.mark.parametrize("seed", range(8))
def test_random_schedules_converge_with_the_real_merge_core(seed: int) -> None:
    run(1000 + seed, 250, model="core")


@pytest.mark.parametrize("seed", range(8))
def test_without_compaction_every_log_holds_every_transaction(seed: int) -> None:
    sim = run(2000 + seed, 300, compaction=False)
    for replica in sim.replicas:
        assert replica.txn_ids() == set(sim.written)  # by log alone, no snapshot needed


def test_schedules_really_cut_batches_in_flight() -> None:
    cuts_mid_flight = 0
    for seed in range(4):
        sim = run(seed, 400)
        cuts_mid_flight += sum(1 for line in sim.log if line.startswith("cut") and not line.endswith(" 0 in flight"))
    assert cuts_mid_flight > 5
