"""Only the update write, for CPU and instruction counts of the update path (issue 2).

::

    python -m bench.update_only build N PATH     # N `Note` documents with create_many
    python -m bench.update_only run N PATH K     # copy PATH, update one field of its first K
                                                 # objects in one write; prints CPU µs/object

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
from .local import _ts_insert


def main(argv: list[str]) -> None:
    """Run the command in ``argv`` (see the module docstring)."""
    n, path = int(argv[1]), argv[2]
    if argv[0] == "build":
        _ts_insert(path, Note, [make_doc(i) for i in range(n)], many=True)
        return
    k = int(argv[3])
    shutil.copy(path, path + ".run.db")
    db = tidesync.open(path + ".run.db", schema=[Note])
    objs = list(db.objects(Note))[:k]
    gc.collect()
    t0 = time.process_time()
    with db.write():
        for o in objs:
            o.priority = 4
    t = time.process_time() - t0
    db.close()
    print(round(t / k * 1e6, 1))


if __name__ == "__main__":
    main(sys.argv[1:])
