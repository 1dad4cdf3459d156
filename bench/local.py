"""The local-database benchmark cases, each run in its own process.

``python -m bench.local CASE 'JSON-ARGS'`` runs one case and prints its result as one JSON
line (the last line of stdout). :mod:`bench.__main__` runs them and writes the report.

Baselines use stdlib ``sqlite3`` with the settings tidesync uses (WAL, ``synchronous=FULL``),
start from the same Python dicts and encode them with a compact JSON encoder made once (the
same bytes tidesync stores for a body).
"""

from __future__ import annotations

import gc
import json
import os
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import tidesync

from .data import CATEGORIES, Item, Note, category, make_doc

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _remove(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def _raw_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute("PRAGMA synchronous = FULL")
    return conn


# -- insert and update --------------------------------------------------------------------------


class Timer:
    """Wall-clock and CPU time (this process) of a block."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def _raw_insert(path: str, docs: list[dict[str, Any]], indexed: bool = False) -> tuple[Timer, Timer]:
    """(timer with JSON encoding, timer of executemany + commit alone). ``indexed``: the table
    gets an expression index on category, as tidesync's ``Item`` has (the same work per row)."""
    _remove(path)
    conn = _raw_connect(path)
    conn.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, body TEXT)")
    if indexed:
        conn.execute(_RAW_CATEGORY_INDEX)
    gc.collect()
    with Timer() as whole:
        rows = [(d["_id"], _encode(d)) for d in docs]
        with Timer() as sql:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO docs (id, body) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
    conn.close()
    return whole, sql


_RAW_CATEGORY_INDEX = "CREATE INDEX docs_category ON docs (json_extract(body, '$.category'))"


def _raw_update(path: str, ids: list[str], values: list[int]) -> Timer:
    conn = _raw_connect(path)
    gc.collect()
    with Timer() as t:
        conn.execute("BEGIN")
        conn.executemany("UPDATE docs SET body = json_set(body, '$.priority', ?) WHERE id = ?", zip(values, ids))
        conn.execute("COMMIT")
    conn.close()
    return t


def _raw_update_python(path: str, ids: list[str], values: list[int]) -> Timer:
    """For information: the same update done the way an app holding JSON in raw sqlite3 would do
    it in Python (read each body, decode, set the field, encode, UPDATE)."""
    conn = _raw_connect(path)
    gc.collect()
    with Timer() as t:
        conn.execute("BEGIN")
        rows = []
        for doc_id, v in zip(ids, values):
            (body,) = conn.execute("SELECT body FROM docs WHERE id = ?", (doc_id,)).fetchone()
            doc = json.loads(body)
            doc["priority"] = v
            rows.append((_encode(doc), doc_id))
        conn.executemany("UPDATE docs SET body = ? WHERE id = ?", rows)
        conn.execute("COMMIT")
    conn.close()
    return t


def _ts_insert(path: str, model: type[tidesync.Model], docs: list[dict[str, Any]],
               profile: str | None = None, many: bool = False) -> Timer:
    """``db.create`` per document, or one ``db.create_many`` (``many``), in one transaction."""
    _remove(path)
    db = tidesync.open(path, schema=[model])
    gc.collect()
    prof = _profiler(profile)
    with Timer() as t:
        with db.write():
            if many:
                db.create_many(model, docs)
            else:
                create = db.create
                for d in docs:
                    create(model, d)
    _dump_profile(prof, profile)
    db.close()
    return t


def _ts_update(path: str, model: type[tidesync.Model], ids: list[str], values: list[int],
               profile: str | None = None) -> Timer:
    db = tidesync.open(path, schema=[model])
    objs = list(db.objects(model))  # managed handles, in insertion order (not timed)
    assert len(objs) == len(ids) and objs[0]._id == ids[0] and objs[-1]._id == ids[-1]
    gc.collect()
    prof = _profiler(profile)
    with Timer() as t:
        with db.write():
            for obj, v in zip(objs, values):
                obj.priority = v
    _dump_profile(prof, profile)
    assert db.get(model, ids[-1]).priority == values[-1]  # type: ignore[union-attr]
    db.close()
    return t


def _ts_update_iterating(path: str, model: type[tidesync.Model], values: list[int]) -> Timer:
    """The same update as :func:`_ts_update`, written as an app writes it: the results iterated
    inside the write (``for obj in db.objects(model): obj.priority = v``), the iteration timed."""
    db = tidesync.open(path, schema=[model])
    gc.collect()
    with Timer() as t:
        with db.write():
            for obj, v in zip(db.objects(model), values):
                obj.priority = v
    db.close()
    return t


def _ts_update_many(path: str, model: type[tidesync.Model], ids: list[str], values: list[int]) -> Timer:
    """The same update as :func:`_ts_update` with one ``db.create_many(..., update="modified")``
    call (the bulk way to update many objects), from plain dicts of ``_id`` and the new value."""
    db = tidesync.open(path, schema=[model])
    items = [{"_id": i, "priority": v} for i, v in zip(ids, values)]  # made before the timer, as raw's rows
    gc.collect()
    with Timer() as t:
        with db.write():
            db.create_many(model, items, update="modified")
    assert db.get(model, ids[-1]).priority == values[-1]  # type: ignore[union-attr]
    db.close()
    return t


def case_write(args: dict[str, Any]) -> dict[str, Any]:
    """Insert ``n`` documents in one transaction, then update one field of each, ``rounds`` times,
    alternating which side goes first; fresh files every round."""
    n, rounds, work = int(args["n"]), int(args["rounds"]), args["work"]
    model = Item if args.get("indexed") else Note
    docs = [make_doc(i) for i in range(n)]
    ids = [d["_id"] for d in docs]
    values = [(d["priority"] + 1) % 5 for d in docs]
    raw_path, ts_path = os.path.join(work, "write-raw.db"), os.path.join(work, "write-ts.db")
    out: dict[str, list[float]] = {k: [] for k in (
        "raw_insert", "raw_insert_sql_only", "ts_insert", "ts_insert_many", "raw_update", "ts_update",
        "ts_update_many", "raw_update_python", "raw_insert_cpu", "raw_insert_sql_only_cpu", "ts_insert_cpu",
        "ts_insert_many_cpu", "raw_update_cpu", "ts_update_cpu", "ts_update_many_cpu", "raw_update_python_cpu", "ts_update_iter", "ts_update_iter_cpu")}

    def add(name: str, t: Timer) -> None:
        out[name].append(t.wall)
        out[name + "_cpu"].append(t.cpu)

    for r in range(rounds):
        def raw() -> None:
            a, b = _raw_insert(raw_path, docs, model is Item)
            add("raw_insert", a)
            add("raw_insert_sql_only", b)
            add("raw_update", _raw_update(raw_path, ids, values))
            add("raw_update_python", _raw_update_python(raw_path, ids, [(v + 1) % 5 for v in values]))

        def ts() -> None:
            add("ts_insert_many", _ts_insert(ts_path, model, docs, many=True))
            add("ts_update_many", _ts_update_many(ts_path, model, ids, values))  # on the fresh file, as ts_update
            add("ts_insert", _ts_insert(ts_path, model, docs))
            add("ts_update", _ts_update(ts_path, model, ids, values))
            add("ts_update_iter", _ts_update_iterating(ts_path, model, [(v + 1) % 5 for v in values]))

        for step in ([raw, ts] if r % 2 == 0 else [ts, raw]):
            step()
    if args.get("profile_insert"):  # an extra round under cProfile, not counted in the figures
        _ts_insert(ts_path, model, docs, args["profile_insert"])
        _ts_update(ts_path, model, ids, values, args.get("profile_update"))
    size = os.path.getsize(ts_path) + _size(ts_path + "-wal")
    raw_size = os.path.getsize(raw_path) + _size(raw_path + "-wal")
    _remove(raw_path)
    _remove(ts_path)
    return {"n": n, "model": model.__name__, "doc_bytes": statistics.mean(len(_encode(d)) for d in docs[:1000]),
            "file_bytes": size, "raw_file_bytes": raw_size, **out}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


# -- the big file -------------------------------------------------------------------------------


def case_build(args: dict[str, Any]) -> dict[str, Any]:
    """Build the ``n``-document tidesync file (db.create, ``batch`` per write transaction) and
    the raw file (same documents as JSON, with an expression index on category)."""
    n, batch, path, raw_path = int(args["n"]), int(args["batch"]), args["path"], args["raw_path"]
    _remove(path)
    _remove(raw_path)
    ts = Timer().__enter__()
    db = tidesync.open(path, schema=[Item])
    for start in range(0, n, batch):
        with db.write():
            for i in range(start, min(n, start + batch)):
                db.create(Item, make_doc(i))
    db.close()
    ts.__exit__()
    t1 = time.perf_counter()
    conn = _raw_connect(raw_path)
    conn.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, body TEXT)")
    conn.execute(_RAW_CATEGORY_INDEX)
    for start in range(0, n, batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO docs (id, body) VALUES (?, ?)",
                         ((d["_id"], _encode(d)) for d in map(make_doc, range(start, min(n, start + batch)))))
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    t2 = time.perf_counter()
    return {"n": n, "batch": batch, "ts_build": ts.wall, "ts_build_cpu": ts.cpu, "raw_build": t2 - t1,
            "file_bytes": os.path.getsize(path) + _size(path + "-wal"), "raw_file_bytes": os.path.getsize(raw_path)}


def case_query(args: dict[str, Any]) -> dict[str, Any]:
    """Indexed equality queries returning 100 of the big file's documents: iterate the results and
    read ``title`` of each. Each query asks for a different category (seeded)."""
    count, max_s = int(args["count"]), float(args["max_seconds"])
    rng = random.Random(42)
    cats = [category(c) for c in rng.sample(range(CATEGORIES), min(count, CATEGORIES))]
    db = tidesync.open(args["path"], schema=[Item])
    conn = _raw_connect(args["raw_path"])
    conn.execute("PRAGMA cache_size = -8192")  # the page cache tidesync's engine uses
    # Warm both (first statement compiles, first pages read), then measure alternately.
    [o.title for o in db.objects(Item).filter("category == $0", category(0))]
    [json.loads(b)["title"] for (b,) in conn.execute(
        "SELECT body FROM docs WHERE json_extract(body, '$.category') = ?", (category(0),))]
    ts: list[float] = []
    raw: list[float] = []
    ts_cpu: list[float] = []
    raw_cpu: list[float] = []
    sizes: set[int] = set()
    deadline = time.monotonic() + max_s
    for c in cats:
        if time.monotonic() > deadline:
            break
        with Timer() as t:
            titles = [o.title for o in db.objects(Item).filter("category == $0", c)]
        with Timer() as r:
            raw_titles = [json.loads(b)["title"] for (b,) in conn.execute(
                "SELECT body FROM docs WHERE json_extract(body, '$.category') = ?", (c,))]
        ts.append(t.wall)
        raw.append(r.wall)
        ts_cpu.append(t.cpu)
        raw_cpu.append(r.cpu)
        sizes.add(len(titles))
        assert sorted(titles) == sorted(raw_titles)
    # The same queries again, their pages now in SQLite's page cache: what is left is CPU.
    ts_again: list[float] = []
    raw_again: list[float] = []
    ts_again_cpu: list[float] = []
    raw_sql = "SELECT body FROM docs WHERE json_extract(body, '$.category') = ?"
    for c in cats[:min(len(ts), 100)]:
        [o.title for o in db.objects(Item).filter("category == $0", c)]  # brings its pages in
        with Timer() as t:
            [o.title for o in db.objects(Item).filter("category == $0", c)]
        [json.loads(b)["title"] for (b,) in conn.execute(raw_sql, (c,))]
        with Timer() as r:
            [json.loads(b)["title"] for (b,) in conn.execute(raw_sql, (c,))]
        ts_again.append(t.wall)
        raw_again.append(r.wall)
        ts_again_cpu.append(t.cpu)
    # For information: queries of categories not read yet, alternately with the default database
    # (a memory map advised for random access where the engine can advise it: Linux) and with
    # one opened with no map (mmap_size=0; see docs/architecture.md, "Reading through a memory map").
    used = set(cats)
    fresh = [category(k) for k in rng.sample(range(CATEGORIES), CATEGORIES) if category(k) not in used]
    plain_db = tidesync.open(args["path"], schema=[Item], mmap_size=0)
    [o.title for o in plain_db.objects(Item).filter("category == $0", category(0))]
    default_cpu: list[float] = []
    plain_cpu: list[float] = []
    plain: list[float] = []
    for i in range(0, min(2 * len(ts), 200, len(fresh) - 1), 2):
        with Timer() as t:
            [o.title for o in db.objects(Item).filter("category == $0", fresh[i])]
        with Timer() as m:
            [o.title for o in plain_db.objects(Item).filter("category == $0", fresh[i + 1])]
        default_cpu.append(t.cpu)
        plain_cpu.append(m.cpu)
        plain.append(m.wall)
    plain_db.close()
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT body FROM docs WHERE json_extract(body, '$.category') = ?",
                        (c,)).fetchall()
    ts_plan = db._engine.query(  # the SQL tidesync runs, for the report
        "EXPLAIN QUERY PLAN SELECT documents.rowid FROM documents WHERE documents.collection = ? AND "
        "documents.live = 1 AND (" + _ts_where(db) + ")", ["Item", category(1)])
    db.close()
    conn.close()
    return {"ts": ts, "raw": raw, "ts_cpu": ts_cpu, "raw_cpu": raw_cpu, "ts_again": ts_again, "raw_again": raw_again,
            "ts_again_cpu": ts_again_cpu, "plain_cpu": plain_cpu, "default_cpu": default_cpu, "plain": plain,
            "default_mmap_size": db._engine.mmap_size,
            "result_sizes": sorted(sizes), "raw_plan": [r[-1] for r in plan],
            "ts_plan": [r[-1] for r in ts_plan]}


def _ts_where(db: Any) -> str:
    from tidesync.query import compile_sql, parse_query

    frag, _ = compile_sql(parse_query("category == $0", ("x",)), "Item", db.schema)
    return frag


def _drop_page_cache(path: str) -> bool:
    ok = True
    for suffix in ("", "-wal", "-shm"):
        try:
            fd = os.open(path + suffix, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok


def case_open(args: dict[str, Any]) -> dict[str, Any]:
    """In this fresh process: open the big file and read one object's field. With ``cold``, the
    file's pages are first dropped from the OS page cache (posix_fadvise DONTNEED)."""
    path, key = args["path"], args["key"]
    dropped = _drop_page_cache(path) if args.get("cold") else False
    if args.get("cold"):
        _drop_page_cache(args["raw_path"])
    t0 = time.perf_counter()
    db = tidesync.open(path, schema=[Item])
    obj = db.get(Item, key)
    title = obj.title  # type: ignore[union-attr]
    t1 = time.perf_counter()
    db.close()
    assert title.startswith("Work order")
    t2 = time.perf_counter()
    conn = _raw_connect(args["raw_path"])
    (body,) = conn.execute("SELECT body FROM docs WHERE id = ?", (key,)).fetchone()
    raw_title = json.loads(body)["title"]
    t3 = time.perf_counter()
    conn.close()
    assert raw_title == title
    return {"ts": t1 - t0, "raw": t3 - t2, "cold": bool(args.get("cold")), "dropped": dropped}


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def case_iterate(args: dict[str, Any]) -> dict[str, Any]:
    """Iterate every result of ``db.objects(Item)`` reading one field of each; report the peak
    RSS growth over the RSS before the loop (VmHWM, reset through /proc/self/clear_refs)."""
    db = tidesync.open(args["path"], schema=[Item])
    limit = int(args.get("limit") or 0)
    results = db.objects(Item) if not limit else db.objects(Item).limit(limit)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        reset = True
    except OSError:
        reset = False
    rss0 = _status_kib("VmRSS")
    hwm0 = _status_kib("VmHWM")
    timer = Timer().__enter__()
    n = total = 0
    for obj in results:
        total += obj.priority
        n += 1
    timer.__exit__()
    peak = _status_kib("VmHWM")
    db.close()
    conn = _raw_connect(args["raw_path"])
    t2 = time.perf_counter()
    raw_total = raw_n = 0
    for (body,) in conn.execute("SELECT body FROM docs ORDER BY rowid LIMIT ?", (limit or -1,)):
        raw_total += json.loads(body)["priority"]
        raw_n += 1
    t3 = time.perf_counter()
    conn.close()
    assert (n, total) == (raw_n, raw_total)
    return {"n": n, "rss_before_kib": rss0, "peak_kib": peak, "hwm_before_kib": hwm0, "peak_reset": reset,
            "seconds": timer.wall, "cpu_seconds": timer.cpu, "raw_seconds": t3 - t2}


# -- profiling ----------------------------------------------------------------------------------


def _profiler(path: str | None) -> Any:
    if not path:
        return None
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    return prof


def _dump_profile(prof: Any, path: str | None) -> None:
    if prof is None or not path:
        return
    import io
    import pstats

    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    with open(path, "w") as f:
        f.write(buf.getvalue())


CASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "write": case_write, "build": case_build, "query": case_query, "open": case_open, "iterate": case_iterate,
}


def main(argv: list[str]) -> None:
    case, args = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    result = CASES[case](args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
