"""``python -m bench.decode_gc [HEAP]``: the server's decode of upload batches, and the cyclic GC's collections it sets off.

The routing case's writer uploads 30,000 one-field edits in batches of 500 (``python -m bench
flexible``): 60 payloads of about 12 KB, compressed from about 115 KB of msgpack. Each is decoded as
the server's reader task decodes it (``Link.decode_ahead``, with the cyclic GC paused when the
tree's rule says so: ``sync_endpoint._large_payload`` where the tree has it, else 64 KiB or more)
and kept until the next-but-one is decoded (the upload window), on a heap of HEAP (default
3,000,000) long-lived tracked objects, about a server's with 1,000 flexible sessions, with 20,000
short-lived lists made between two batches (the rest of the server's work). Prints the CPU of the
60 decodes and the collections of each generation with their CPU. Compare trees back to back
(``PYTHONPATH=src`` from each). A development aid.
"""

from __future__ import annotations

import gc
import secrets
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tidesync.core.stamp import ReplicaId  # noqa: E402
from tidesync.protocol import codec  # noqa: E402
from tidesync.protocol.link import Link  # noqa: E402
from tidesync.protocol.messages import Changes  # noqa: E402
from tidesync.protocol.states import Role  # noqa: E402
from tidesync.server import sync_endpoint  # noqa: E402
from tidesync.store.database import _gc_paused  # noqa: E402

from bench.flexible_clients import writer_transactions  # noqa: E402


def main(heap_size: int) -> None:
    rid = ReplicaId(secrets.token_hex(8))
    w = {"clients": 1000, "docs": 20_000, "changes": 30_000, "seed": 5, "flip": 0.05}
    txns = writer_transactions(w, rid, ())
    payloads = [codec.encode(Changes(b + 1, b + 1 + 500, 30_001, tuple((b + 2 + i, t) for i, t in
                                                                        enumerate(txns[b:b + 500]))))
                for b in range(0, len(txns), 500)]
    del txns
    large = getattr(sync_endpoint, "_large_payload", lambda p: len(p) >= sync_endpoint.LARGE_PAYLOAD)
    heap = [{"k": i, "v": [i]} for i in range(heap_size // 3)]   # (three tracked objects each)
    gc.collect()
    stats = {g: [0, 0.0] for g in range(3)}
    began = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.process_time()
        else:
            got = stats[info["generation"]]
            got[0] += 1
            got[1] += time.process_time() - began[0]

    link = Link(Role.ACCEPTOR)
    window: list[Any] = []
    gc.callbacks.append(on_gc)
    try:
        c = time.process_time()
        for p in payloads:
            if large(p):
                with _gc_paused(promote=True):
                    message = link.decode_ahead(p)
            else:
                message = link.decode_ahead(p)
            if not isinstance(message, Changes):
                raise SystemExit(f"a payload did not decode: {message!r}")
            window.append(message)
            if len(window) > 2:
                window.pop(0)
            junk = [[i] for i in range(20_000)]
            del junk
        took = time.process_time() - c
    finally:
        gc.callbacks.remove(on_gc)
    print(f"{len(payloads)} payloads of {sum(map(len, payloads)) // len(payloads):,} bytes on average, heap of "
          f"{len(heap) * 3:,} objects: {took * 1e3:.0f} ms CPU; collections: "
          + ", ".join(f"gen{g} {n} ({t * 1e3:.1f} ms)" for g, (n, t) in stats.items()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000)
