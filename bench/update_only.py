"""Only the update write, for CPU and instruction counts of the update path (issue 2).

::

    python -m bench.update_only build N PATH     # N `Note` documents with create_many
    python -m bench.update_only run N PATH K     # copy PATH, update one field of its first K
                                                 # objects in one write; prints CPU µs/object
    python -m bench.update_only many N PATH K    # the same with one create_many(..., update="modified")
    python -m bench.update_only none N PATH K    # all of "many" but the update itself
    python -m bench.update_only raw N PATH K     # raw sqlite3: N two-column rows in PATH.raw.db (made
                                                 # first), executemany UPDATE ... json_set of K of them

Under ``valgrind --tool=cachegrind``, (K=N) minus (K=small) divided by the difference gives
instructions per object updated. Not a timing assertion; nothing in tests/ uses it.
"""

from __future__ import annotations

import gc
import shutil
import sys
import time

import tidesync

from .data import Note, make_doc
from .local import _raw_insert, _raw_update, _ts_insert


def main(argv: list[str]) -> None:
    """Run the command in ``argv`` (see the module docstring)."""
    n, path = int(argv[1]), argv[2]
    if argv[0] == "build":
        _ts_insert(path, Note, [make_doc(i) for i in range(n)], many=True)
        return
    k = int(argv[3])
    if argv[0] == "raw":
        docs = [make_doc(i) for i in range(n)]
        raw = path + ".raw.db"
        _raw_insert(raw, docs)
        ids = [d["_id"] for d in docs[:k]]
        t = _raw_update(raw, ids, [5] * k).cpu
        print(round(t / k * 1e6, 1))
        return
    shutil.copy(path, path + ".run.db")
    db = tidesync.open(path + ".run.db", schema=[Note])
    objs = list(db.objects(Note))[:k]
    # the keys as create_many takes them (made as the documents were: reading o._id would load each)
    items = [{"_id": make_doc(i)["_id"], "priority": 5} for i in range(k)] if argv[0] in ("many", "none") else []
    gc.collect()
    t0 = time.process_time()
    with db.write():
        if argv[0] == "none":  # everything but the update: subtract it
            pass
        elif argv[0] == "many":
            db.create_many(Note, items, update="modified")
        else:
            for o in objs:
                o.priority = 5
    t = time.process_time() - t0
    db.close()
    print(round(t / max(k, 1) * 1e6, 1))


if __name__ == "__main__":
    main(sys.argv[1:])
