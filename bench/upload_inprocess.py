"""``python -m bench.upload_inprocess [PASSES]``: the server's CPU for an upload, in-process.

For each shape of the sync bench's upload case (1 x 10,000, 100 x 100, 1,000 x 10 documents):
write the documents on a device file, read its log in the replicator's batches (at most 500
transactions and 1 MiB) and encode each as ``Changes``; then, on a fresh server data dir on
/dev/shm (the bench server's configuration), ``codec.decode`` each payload (cyclic GC paused,
as the server does) and ``Enforcer.integrate`` it for a partition session. Prints the CPU
(``time.process_time``) per document of each step, the minimum over PASSES (default 3): what
the server's two threads spend without the socket, the event loop and the fsyncs' waits.
Compare trees back to back (``PYTHONPATH=src`` from each), the machine's load moves the figures.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import tidesync
from tidesync.protocol import codec
from tidesync.protocol.messages import Changes
from tidesync.server.app import ServerState
from tidesync.server.config import ServerConfig
from tidesync.server.enforcement import Enforcer
from tidesync.store.database import _gc_paused

from .sync_bench import SyncDoc, make_doc

SHAPES = ((1, 10_000), (100, 100), (1_000, 10))


def _payloads(shape: tuple[int, int], work: Path) -> tuple[list[bytes], str, int]:
    txns, per = shape
    db = tidesync.open(work / "device.db", schema=[SyncDoc])
    i = 0
    for _ in range(txns):
        with db.write():
            for _ in range(per):
                db.create(SyncDoc, make_doc(i, "u0"))
                i += 1
    out: list[bytes] = []
    after = 0
    for _ in range(100_000):
        batch = db.read_log(after, limit=500, max_bytes=1 << 20, scope={}, exclude_origin=None)
        if not batch.entries:
            break
        out.append(codec.encode(Changes(after, batch.scanned_to, batch.head, batch.entries)))
        after = batch.scanned_to
    rid = str(db.replica_id)
    db.close()
    return out, rid, txns * per


def measure(shape: tuple[int, int], passes: int) -> tuple[float, float]:
    """(decode, integrate) CPU microseconds per document, the minimum over ``passes``."""
    base = Path(f"/dev/shm/tidesync-upload-{os.getpid()}")
    best_d = best_i = float("inf")
    try:
        for _ in range(passes):
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            payloads, rid, n = _payloads(shape, base)
            state = ServerState(ServerConfig(data_dir=base / "server", port=0))
            enforcer = Enforcer(state, None, "u0", True)
            gc.collect()
            t_decode = t_integrate = 0.0
            for payload in payloads:
                t0 = time.process_time()
                with _gc_paused():
                    message: Any = codec.decode(payload)
                t1 = time.process_time()
                enforcer.integrate([t for _, t in message.entries], rid, message.to_seq)
                t_decode += t1 - t0
                t_integrate += time.process_time() - t1
            state.backend.close()
            best_d = min(best_d, t_decode / n * 1e6)
            best_i = min(best_i, t_integrate / n * 1e6)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return best_d, best_i


def main(argv: list[str]) -> None:
    passes = int(argv[0]) if argv else 3
    for shape in SHAPES:
        d, i = measure(shape, passes)
        print(f"{shape[0]} x {shape[1]}: decode {d:.1f} us/doc, integrate {i:.1f} us/doc", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
