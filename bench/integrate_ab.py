"""``python -m bench.integrate_ab OTHER_TREE [ROUNDS]``: the server's decode and integration CPU
of an upload, this tree against another checkout (e.g. a ``git worktree`` of main), paired.

The same payloads for both (made once, by this tree): the sync bench's upload shapes 1 x 10,000,
1,000 x 10 and 5,000 x 1 documents (new documents, as ``bench.upload_inprocess`` makes them), and
``edits``: 3,000 one-operation transactions on 5,000 held documents (a counter increment, every
20th a status set; the writer of ``python -m bench flexible --only routing`` until session 8), and
``sets``: the same with the counter a plain field set to its next value (that writer's
transactions now), in ``Changes`` of 500. One worker process per tree (``PYTHONPATH=TREE/src``) runs each round on a fresh server
data dir on /dev/shm (``codec.decode`` with the cyclic GC paused, then ``Enforcer.integrate``:
a partition session for new documents, development mode for the edits); the two take turns,
round after round, so that both see the same load. Prints the minimum and median CPU
(``time.process_time``) per document (per transaction for ``edits``) of each tree.
"""

from __future__ import annotations

import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = ("1x10000", "1000x10", "5000x1", "edits", "sets")
_CREATES = SHAPES[:3]
_ORIGIN = "00000000000000aa"

_WORKER = r'''
import gc, os, pickle, shutil, sys, time
from pathlib import Path
from tidesync.protocol import codec
from tidesync.server.app import ServerState
from tidesync.server.config import ServerConfig
from tidesync.server.enforcement import Enforcer
from tidesync.store.database import _gc_paused
cases = pickle.load(open(sys.argv[1], "rb"))
for line in sys.stdin:
    seed, payloads, rid, n, partition = cases[line.strip()]
    base = Path(f"/dev/shm/tidesync-ab-{os.getpid()}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    state = ServerState(ServerConfig(data_dir=base / "server", port=0))
    enforcer = Enforcer(state, None, partition, partition is not None)
    for p in seed:
        m = codec.decode(p)
        enforcer.integrate([t for _, t in m.entries], rid, m.to_seq)
    gc.collect()
    t_decode = t_integrate = 0.0
    for p in payloads:
        t0 = time.process_time()
        with _gc_paused():
            m = codec.decode(p)
        t1 = time.process_time()
        enforcer.integrate([t for _, t in m.entries], rid, m.to_seq)
        t_decode += t1 - t0
        t_integrate += time.process_time() - t1
    state.backend.close()
    shutil.rmtree(base, ignore_errors=True)
    print(t_decode / n * 1e6, t_integrate / n * 1e6, flush=True)
'''


def _stamp(n: int) -> str:
    return f"{n:016x}00{_ORIGIN}"


def _edits(counter: bool = True) -> tuple[list[bytes], list[bytes]]:
    import random

    from tidesync.core.operations import CounterAdd, CreateDoc, SetValue
    from tidesync.core.transaction import Transaction
    from tidesync.protocol import codec
    from tidesync.protocol.messages import Changes

    def batches(txns: list[Transaction], first: int, head: int) -> list[bytes]:
        return [codec.encode(Changes(first + k, first + k + len(txns[k:k + 500]), head,
                                     tuple((first + k + j + 1, t) for j, t in enumerate(txns[k:k + 500]))))
                for k in range(0, len(txns), 500)]

    seed = []
    for i in range(5000):
        s = _stamp(1001 + i)
        fields = {"_id": f"d{i}", "team": f"t{i % 20}", "status": "open", "n": 0}
        kinds = {"n": "counter"} if counter else {}
        seed.append(Transaction(s, _ORIGIN, s, (), (CreateDoc("Doc", f"d{i}", s, "", fields, kinds, ()),)))
    rng = random.Random(1)
    edits = []
    n = [0] * 5000
    prev = _stamp(6000)
    for i in range(3000):
        s = _stamp(6001 + i)
        d = rng.randrange(5000)
        base = _stamp(1001 + d) if counter else ""   # (the routing bench's writer: ZERO, the create's base)
        n[d] += 1
        op = (SetValue("Doc", f"d{d}", s, base, ("status",), (), rng.choice(["open", "done"]), False) if i % 20 == 0
              else CounterAdd("Doc", f"d{d}", s, base, ("n",), (), 1) if counter
              else SetValue("Doc", f"d{d}", s, base, ("n",), (), n[d], False))
        edits.append(Transaction(s, _ORIGIN, s, (prev,), (op,)))
        prev = s
    return batches(seed, 0, 8000), batches(edits, 5000, 8000)


def _cases(work: Path) -> dict[str, tuple[list[bytes], list[bytes], str, int, str | None]]:
    from .upload_inprocess import _payloads

    cases: dict[str, tuple[list[bytes], list[bytes], str, int, str | None]] = {}
    for name in _CREATES:
        txns, per = map(int, name.split("x"))
        d = work / name
        d.mkdir()
        payloads, rid, n = _payloads((txns, per), d)
        cases[name] = ([], payloads, rid, n, "u0")
    seed, edits = _edits()
    cases["edits"] = (seed, edits, _ORIGIN, 3000, None)
    seed, sets = _edits(counter=False)
    cases["sets"] = (seed, sets, _ORIGIN, 3000, None)
    return cases


def main(argv: list[str]) -> None:
    other = Path(argv[0]).resolve()
    rounds = int(argv[1]) if len(argv) > 1 else 8
    here = Path(__file__).resolve().parent.parent
    work = Path(tempfile.mkdtemp(prefix="tidesync-ab-", dir="/dev/shm"))
    try:
        cases = _cases(work)
        data = work / "cases.pkl"
        data.write_bytes(pickle.dumps(cases))
        trees = {"this": here, "other": other}
        procs = {
            name: subprocess.Popen([sys.executable, "-c", _WORKER, str(data)], cwd=tree,
                                   env={**os.environ, "PYTHONPATH": str(tree / "src")},
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for name, tree in trees.items()}
        got: dict[tuple[str, str], list[tuple[float, float]]] = {(t, c): [] for t in trees for c in SHAPES}
        for r in range(rounds):
            for case in SHAPES:
                for name in (("other", "this") if r % 2 == 0 else ("this", "other")):
                    proc = procs[name]
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(case + "\n")
                    proc.stdin.flush()
                    d, i = map(float, proc.stdout.readline().split())
                    got[(name, case)].append((d, i))
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(60)
        for case in SHAPES:
            unit = "us/doc" if case in _CREATES else "us/txn"
            for name in ("other", "this"):
                v = got[(name, case)]
                cols = []
                for label, xs in (("decode", [a for a, _ in v]), ("integrate", [b for _, b in v]),
                                  ("both", [a + b for a, b in v])):
                    cols.append(f"{label} {min(xs):6.1f} / {statistics.median(xs):6.1f}")
                print(f"{case:>8} {name:>5} (min / median {unit}): " + " | ".join(cols), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
