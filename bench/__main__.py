"""Run the benchmarks: ``make bench`` (= ``python -m bench``, the local-database suite).

::

    python -m bench                 # every local benchmark, full size; updates bench/RESULTS.md
    python -m bench local --quick   # small sizes, a smoke run (never writes RESULTS.md)
    python -m bench --profile       # also write cProfile reports of insert/update to bench/.work/
    python -m bench --only write,query --no-write
    python -m bench sync ...        # the sync suite (issue 3): see bench/sync_bench.py
    python -m bench flexible ...    # the flexible-sync suite (issue 5): see bench/flexible_bench.py
    python -m bench.partition_load  # server CPU of idle other-partition connections (propagation)

Each case runs in its own subprocess (``python -m bench.local CASE ARGS``); its figures come
back as JSON. The 1,000,000-document file is built once per run in bench/.work/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, ".work")
RESULTS = os.path.join(HERE, "RESULTS.md")
BEGIN, END = "<!-- bench:local:begin -->", "<!-- bench:local:end -->"

FULL = {"write_n": 100_000, "write_rounds": 3, "big_n": 1_000_000, "batch": 100_000, "queries": 300,
        "query_seconds": 60.0, "opens": 5}
QUICK = {"write_n": 10_000, "write_rounds": 1, "big_n": 100_000, "batch": 50_000, "queries": 50,
         "query_seconds": 10.0, "opens": 2}
CASE_TIMEOUT = 900.0
ALL = ("write", "write_indexed", "build", "query", "open", "iterate")


def run_case(case: str, args: dict[str, Any], timeout: float = CASE_TIMEOUT) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.local", case, json.dumps(args)]
    # This checkout's src first: run from another checkout (a worktree of an older commit, to
    # compare), the cases must measure its tidesync, not the one the virtual environment has.
    root = os.path.dirname(HERE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(root, "src"), root,
                                                                     os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=os.path.dirname(HERE))
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"bench case {case} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu or platform.processor(), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform(),
            "load": os.getloadavg() if hasattr(os, "getloadavg") else None}


def run(only: tuple[str, ...], sizes: dict[str, Any], profile: bool, reuse: bool) -> dict[str, Any]:
    os.makedirs(WORK, exist_ok=True)
    out: dict[str, Any] = {"sizes": sizes, "machine": machine(),
                           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    started = time.monotonic()
    for name, indexed in (("write", False), ("write_indexed", True)):
        if name in only:
            # The indexed variant is for information: one round fewer keeps the run near 10 minutes.
            rounds = sizes["write_rounds"] - 1 if indexed and sizes["write_rounds"] > 1 else sizes["write_rounds"]
            args: dict[str, Any] = {"n": sizes["write_n"], "rounds": rounds, "work": WORK, "indexed": indexed}
            if profile and not indexed:
                args["profile_insert"] = os.path.join(WORK, "profile-insert.txt")
                args["profile_update"] = os.path.join(WORK, "profile-update.txt")
            log(f"{name}: insert + update {sizes['write_n']:,} documents x {rounds} rounds")
            out[name] = run_case("write", args)
    big = os.path.join(WORK, f"big-{sizes['big_n']}.db")
    big_raw = os.path.join(WORK, f"big-{sizes['big_n']}-raw.db")
    if any(c in only for c in ("build", "query", "open", "iterate")):
        if reuse and os.path.exists(big) and os.path.exists(big_raw):
            log(f"reusing {big}")
            out["build"] = {"reused": True, "n": sizes["big_n"]}
        else:
            log(f"build: {sizes['big_n']:,} documents in batches of {sizes['batch']:,}")
            out["build"] = run_case("build", {"n": sizes["big_n"], "batch": sizes["batch"], "path": big,
                                              "raw_path": big_raw})
    if "query" in only:
        log(f"query: up to {sizes['queries']} indexed equality queries")
        out["query"] = run_case("query", {"path": big, "raw_path": big_raw, "count": sizes["queries"],
                                          "max_seconds": sizes["query_seconds"]})
    if "open" in only:
        key = f"item-{sizes['big_n'] // 2:07d}"
        out["open"] = {"warm": [], "cold": []}
        for i in range(sizes["opens"]):
            for mode in ("warm", "cold"):
                log(f"open ({mode}) {i + 1}/{sizes['opens']}")
                out["open"][mode].append(run_case("open", {"path": big, "raw_path": big_raw, "key": key,
                                                           "cold": mode == "cold"}))
    if "iterate" in only:
        log(f"iterate: {sizes['big_n']:,} results")
        out["iterate"] = run_case("iterate", {"path": big, "raw_path": big_raw})
    out["seconds"] = time.monotonic() - started
    out["machine"]["load_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return out


# -- the report ---------------------------------------------------------------------------------


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _yes(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def _ms(s: float) -> str:
    return f"{s * 1000:.2f} ms"


def _s(s: float) -> str:
    return f"{s:.2f} s"


def report(r: dict[str, Any], command: str) -> str:
    m = r["machine"]
    load = m.get("load")
    lines = [
        f"Command: `{command}`  ",
        f"Date: {r['date']}; whole run {r['seconds']:.0f} s  ",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, SQLite {m['sqlite']}, {m['platform']}  ",
        (f"Load average (1/5/15 min) at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; at end: "
         f"{m['load_after'][0]:.2f} / {m['load_after'][1]:.2f} / {m['load_after'][2]:.2f} "
         "(the machine is shared; ratios are measured side by side to cancel that out)") if load else "",
        "",
    ]
    for name, title in (("write", "Insert and update, model without secondary index (`Note`)"),
                        ("write_indexed", "Insert and update, model with one indexed field (`Item`; the raw table "
                                          "has the same expression index on category)")):
        w = r.get(name)
        if not w:
            continue
        n = w["n"]
        ins_ts, ins_raw, ins_sql = _med(w["ts_insert"]), _med(w["raw_insert"]), _med(w["raw_insert_sql_only"])
        many = w.get("ts_insert_many") or []
        upd_ts, upd_raw = _med(w["ts_update"]), _med(w["raw_update"])
        upd_many = w.get("ts_update_many") or []
        upd_iter = w.get("ts_update_iter") or []
        ratios_i = [a / b for a, b in zip(w["ts_insert"], w["raw_insert"])]
        ratios_u = [a / b for a, b in zip(w["ts_update"], w["raw_update"])]
        cpu_i = _med(w["ts_insert_cpu"]) / _med(w["raw_insert_cpu"])
        cpu_i_sql = _med(w["ts_insert_cpu"]) / _med(w["raw_insert_sql_only_cpu"])
        cpu_u = _med(w["ts_update_cpu"]) / _med(w["raw_update_cpu"])
        upd_py = _med(w["raw_update_python"])
        cpu_u_py = _med(w["ts_update_cpu"]) / _med(w["raw_update_python_cpu"])
        lines += [
            f"### {title}",
            "",
            f"{n:,} documents of {w['doc_bytes']:.0f} bytes of JSON, one write transaction each way, "
            f"median of {len(w['ts_insert'])} rounds (fresh files each round). File after insert+update: "
            f"tidesync {w['file_bytes'] / 1e6:.1f} MB (log included), raw {w['raw_file_bytes'] / 1e6:.1f} MB.",
            "",
            "| benchmark | tidesync | raw sqlite3 | ratio (wall) | ratio (CPU) | target | |",
            "|---|---|---|---|---|---|---|",
            f"| insert {n:,} (`db.create`, log included) vs `json` encode + `executemany` INSERT | "
            f"{_s(ins_ts)} ({ins_ts / n * 1e6:.1f} µs/doc) | {_s(ins_raw)} ({ins_raw / n * 1e6:.1f} µs/doc) | "
            f"**{ins_ts / ins_raw:.2f}x** | {cpu_i:.2f}x | <= 2x | {_yes(ins_ts / ins_raw <= 2)} |",
            f"| the same, raw without the JSON encoding (documents pre-encoded) | {_s(ins_ts)} | {_s(ins_sql)} | "
            f"{ins_ts / ins_sql:.2f}x | {cpu_i_sql:.2f}x | (info) | |",
            *([f"| insert {n:,} with one `db.create_many` (log included) vs the same raw `json` encode + "
               f"`executemany` INSERT | {_s(_med(many))} ({_med(many) / n * 1e6:.1f} µs/doc) | {_s(ins_raw)} | "
               f"**{_med(many) / ins_raw:.2f}x** | {_med(w['ts_insert_many_cpu']) / _med(w['raw_insert_cpu']):.2f}x | "
               f"<= 2x | {_yes(_med(many) / ins_raw <= 2)} |"] if many else []),
            f"| update one field of {n:,} objects vs `executemany` UPDATE ... `json_set` | {_s(upd_ts)} "
            f"({upd_ts / n * 1e6:.1f} µs/obj) | {_s(upd_raw)} | **{upd_ts / upd_raw:.2f}x** | {cpu_u:.2f}x | "
            f"<= 2.5x | {_yes(upd_ts / upd_raw <= 2.5)} |",
            *([f"| update one field of {n:,} objects with one `db.create_many(..., update=\"modified\")` call vs "
               f"the same `executemany` UPDATE | {_s(_med(upd_many))} ({_med(upd_many) / n * 1e6:.1f} µs/obj) | "
               f"{_s(upd_raw)} | **{_med(upd_many) / upd_raw:.2f}x** | "
               f"{_med(w['ts_update_many_cpu']) / _med(w['raw_update_cpu']):.2f}x | <= 2.5x | "
               f"{_yes(_med(upd_many) / upd_raw <= 2.5)} |"] if upd_many else []),
            *([f"| the same loop as an app writes it, iterating `db.objects()` inside the write (the iteration "
               f"timed too) vs the same `executemany` UPDATE | {_s(_med(upd_iter))} ({_med(upd_iter) / n * 1e6:.1f} "
               f"µs/obj) | {_s(upd_raw)} | {_med(upd_iter) / upd_raw:.2f}x | "
               f"{_med(w['ts_update_iter_cpu']) / _med(w['raw_update_cpu']):.2f}x | (info) | |"] if upd_iter else []),
            f"| the same, raw done in Python (SELECT, `json.loads`, set, `json` encode, `executemany` UPDATE) | "
            f"{_s(upd_ts)} | {_s(upd_py)} | {upd_ts / upd_py:.2f}x | {cpu_u_py:.2f}x | (info) | |",
            "",
            f"Per-round ratios: insert {', '.join(f'{x:.2f}' for x in ratios_i)}; "
            + (f"create_many {', '.join(f'{a / b:.2f}' for a, b in zip(many, w['raw_insert']))}; " if many else "")
            + f"update {', '.join(f'{x:.2f}' for x in ratios_u)}"
            + (f"; update with create_many {', '.join(f'{a / b:.2f}' for a, b in zip(upd_many, w['raw_update']))}"
               if upd_many else "") + ".",
            "",
        ]
    b = r.get("build")
    if b:
        lines += ["### Building the big file", ""]
        if b.get("reused"):
            lines += [f"Reused an existing {b['n']:,}-document file (`--reuse`): no build time this run.", ""]
        else:
            lines += [
                "| what | time | file size |",
                "|---|---|---|",
                f"| tidesync: {b['n']:,} `db.create` of `Item`, {b['batch']:,} per write transaction | "
                f"{_s(b['ts_build'])} (CPU {_s(b['ts_build_cpu'])}) | {b['file_bytes'] / 1e6:.0f} MB |",
                f"| raw sqlite3: same documents, `executemany`, with an expression index on category | "
                f"{_s(b['raw_build'])} | {b['raw_file_bytes'] / 1e6:.0f} MB |",
                "",
            ]
    q = r.get("query")
    if q:
        ts, raw = q["ts"], q["raw"]
        med, rmed = _med(ts), _med(raw)
        p90 = sorted(ts)[int(len(ts) * 0.9)]
        lines += [
            "### Indexed equality query",
            "",
            f"`db.objects(Item).filter(\"category == $0\", c)`, iterating the results and reading `title` of "
            f"each (query construction included); {len(ts)} queries, each a different category, each returning "
            f"{', '.join(map(str, q['result_sizes']))} of {r['sizes']['big_n']:,} documents. Raw: "
            "`SELECT body FROM docs WHERE json_extract(body, '$.category') = ?` on an expression index, "
            "`json.loads` each body, read `title`.",
            "",
            "| benchmark | tidesync median | p90 | CPU median | raw sqlite3 median | ratio | target | |",
            "|---|---|---|---|---|---|---|---|",
            f"| query returning 100 | {_ms(med)} | {_ms(p90)} | {_ms(_med(q['ts_cpu']))} | {_ms(rmed)} | "
            f"{med / rmed:.2f}x | <= 2 ms median | {_yes(med <= 0.002)} |",
            *([f"| the same query run twice in a row, second run (pages in SQLite's cache; "
               f"{len(q['ts_again'])} queries) | {_ms(_med(q['ts_again']))} | "
               f"{_ms(sorted(q['ts_again'])[int(len(q['ts_again']) * 0.9)])} | "
               f"{_ms(_med(q['ts_again_cpu'])) if q.get('ts_again_cpu') else ''} | {_ms(_med(q['raw_again']))} | "
               f"{_med(q['ts_again']) / _med(q['raw_again']):.2f}x | (info) | |"] if q.get("ts_again") else []),
            *([f"| with `mmap_size=0` (no memory map; the default here maps {q.get('default_mmap_size', 0) >> 20} MiB; "
               f"{len(q['plain'])} other categories, alternated with as many through the default database: "
               f"CPU median {_ms(_med(q['default_cpu']))} default) | {_ms(_med(q['plain']))} | "
               f"{_ms(sorted(q['plain'])[int(len(q['plain']) * 0.9)])} | {_ms(_med(q['plain_cpu']))} | | | "
               f"(info) | |"] if q.get("plain") else []),
            "",
            f"Query plans: tidesync `{'; '.join(q['ts_plan'])}`; raw `{'; '.join(q['raw_plan'])}`.",
            "",
        ]
    o = r.get("open")
    if o:
        lines += [
            "### Open the big file and read one object",
            "",
            "A fresh process each time: `tidesync.open(path, schema=[Item])`, `db.get(Item, key)`, read "
            "`title` (imports not included). Cold: the file's pages dropped from the OS page cache first "
            "(`posix_fadvise(DONTNEED)` on the file, its WAL and shm). Raw: `sqlite3.connect` + the same "
            "read by primary key.",
            "",
            "| benchmark | tidesync median | raw sqlite3 median | target | |",
            "|---|---|---|---|---|",
        ]
        for mode in ("warm", "cold"):
            runs = o[mode]
            if runs:
                med = _med([x["ts"] for x in runs])
                lines.append(f"| open + read one, {mode} cache ({len(runs)} runs) | {_ms(med)} | "
                             f"{_ms(_med([x['raw'] for x in runs]))} | <= 50 ms | {_yes(med <= 0.05)} |")
        lines.append("")
    it = r.get("iterate")
    if it:
        growth = (it["peak_kib"] - it["rss_before_kib"]) / 1024
        lines += [
            "### Iterate every result",
            "",
            f"`for obj in db.objects(Item): total += obj.priority` over {it['n']:,} results, in a subprocess. "
            "Measured: growth of the peak resident set size (VmHWM, reset through `/proc/self/clear_refs` "
            f"just before the loop{'' if it['peak_reset'] else ' - the reset FAILED, so the peak includes setup'}"
            ") over the RSS before the loop; this counts SQLite's page cache and every Python object.",
            "",
            "| benchmark | peak RSS growth | RSS before | time | raw sqlite3 time | target | |",
            "|---|---|---|---|---|---|---|",
            f"| iterate {it['n']:,} | {growth:.0f} MB | {it['rss_before_kib'] / 1024:.0f} MB | "
            f"{_s(it['seconds'])} ({it['seconds'] / it['n'] * 1e6:.1f} µs/obj, CPU {_s(it['cpu_seconds'])}) | {_s(it['raw_seconds'])} | "
            f"< 200 MB | {_yes(growth < 200)} |",
            "",
        ]
    return "\n".join(lines)


def write_results(text: str) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            old = f.read()
        if BEGIN in old and END in old:
            new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):]
        else:
            new = old.rstrip() + "\n\n## Local database (issue 2)\n\n" + block + "\n"
    else:
        new = f"# Benchmark results\n\n## Local database (issue 2)\n\n{block}\n"
    with open(RESULTS, "w") as f:
        f.write(new)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sync"]:
        from .sync_bench import main as sync_main

        sync_main(argv[1:])
        return
    if argv[:1] == ["flexible"]:
        from .flexible_bench import main as flexible_main

        flexible_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", nargs="?", default="local", choices=["local"])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run; never writes RESULTS.md")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated cases of {', '.join(ALL)}")
    parser.add_argument("--profile", action="store_true", help="cProfile insert/update into bench/.work/")
    parser.add_argument("--reuse", action="store_true", help="reuse the big file from an earlier run (development)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    ns = parser.parse_args(argv)
    only = tuple(x.strip() for x in ns.only.split(",") if x.strip())
    unknown = set(only) - set(ALL)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}")
    sizes = QUICK if ns.quick else FULL
    result = run(only, sizes, ns.profile, ns.reuse)
    command = "make bench" if not argv else "python -m bench " + " ".join(argv)
    text = report(result, command)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(WORK, f"results-{stamp}.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(WORK, f"results-{stamp}.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    if not ns.quick and not ns.no_write and set(only) == set(ALL) and not ns.reuse:
        write_results(text)
        log(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
