"""Flexible-sync benchmarks (issue 5): routing changes to many subscribed clients, and changing
the subscriptions of a device that already holds 100,000 matching documents.

::

    python -m bench flexible                  # both cases, full size; updates bench/RESULTS.md
    python -m bench flexible --quick          # small sizes, a smoke run (never writes RESULTS.md)
    python -m bench flexible --only routing   # one case (never writes RESULTS.md)
    python -m bench.flexible_bench ...        # the same, without the bench/__main__ front door
    python -m bench flexible --quick --only routing --clients 300 --profile /tmp/server.prof
                                              # other sizes, the server under cProfile (development)

**routing.** A server process (``python -m tidesync serve``, development mode: every field
queryable) holds ``docs`` documents. ``clients`` lightweight protocol clients
(:mod:`bench.flexible_clients`, all in one more process) connect, each with 3 subscriptions
(its own documents by ``owner``, by ``region``, and its team's urgent ones:
``team == 'g7' AND status == 'urgent'``), and bootstrap their views. Then a writer uploads
``changes`` transactions (one document each: a counter, and for 5% of them the status, which
moves the document in or out of 10 clients' team views) as fast as the server acknowledges.
Measured: from the writer's first read of its log to the moment the last client holds exactly
the documents it should, with their final values (checked document by document: nothing
missing, nothing extra). Figure: changes per second routed to the right clients.

**incremental.** A server holds 100,000 documents of group ``a`` and 1,000 each of ``b`` and
``c``. One client subscribes to group ``a`` (the full download, for reference), then changes its
subscriptions three ways: add ``group == 'b'`` (1,000 more), narrow ``a`` to ``n >= 1000``
(1,000 fewer), and replace everything with ``n >= 1500 AND n < 101500`` (500 in, 500 out).
Measured for each: documents and bytes received, and time until the set is complete.

Every loop is bounded in count and in time; each case runs in its own process with its own
server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT / "src"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench.flexible_clients import (  # noqa: E402
    COLLECTION, FlexClient, Writer, login, sync_url, workload_doc, writer_transactions,
)
from bench.sync_bench import LineProcess, _env, cpu_s, raise_nofile, start_server  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
WORK = HERE / ".work"
BEGIN, END = "<!-- bench:flexible:begin -->", "<!-- bench:flexible:end -->"
CASES = ("routing", "incremental")
FULL: dict[str, Any] = {
    "routing": {"clients": 1000, "docs": 20_000, "changes": 30_000, "seed": 5, "flip": 0.05},
    "incremental": {"n": 100_000, "extra": 1_000},
}
QUICK: dict[str, Any] = {
    "routing": {"clients": 100, "docs": 2_000, "changes": 3_000, "seed": 5, "flip": 0.05},
    "incremental": {"n": 10_000, "extra": 100},
}
TARGETS = {"routing_changes_per_s": 5_000}
CASE_TIMEOUT = 420.0


def log(msg: str) -> None:
    sys.stderr.write(f"[flexible-bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def seed_server(data_dir: Path, docs: list[dict[str, Any]], per_txn: int = 1_000,
                rid: Any = None) -> tuple[float, tuple[str, ...], tuple[Any, int]]:
    """Write documents into a server's data dir before it starts (as a device's uploads would).
    Returns the seconds it took, the id of the last transaction (of replica ``rid``), and the
    server's replica id with the seq of its log's last entry (all of them ``rid``'s)."""
    from tidesync.core.clock import HybridClock
    from tidesync.core.operations import CreateDoc
    from tidesync.core.stamp import ZERO, ReplicaId
    from tidesync.core.transaction import Transaction
    from tidesync.store.database import Database

    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    db = Database(data_dir / "sync.db", (), partition_key="_partition")
    rid = rid or ReplicaId(secrets.token_hex(8))
    clock = HybridClock(rid, lambda: time.time_ns() // 1_000_000)
    parents: tuple[str, ...] = ()
    batch = []
    for start in range(0, len(docs), per_txn):
        ops = tuple(CreateDoc(COLLECTION, d["_id"], clock.now(), ZERO, d, {}) for d in docs[start:start + per_txn])
        txn = Transaction(ops[0].stamp, rid, ops[0].stamp, parents, ops)  # type: ignore[arg-type]
        parents = (txn.id,)
        batch.append(txn)
        if len(batch) == 10:
            db.integrate(batch)
            batch = []
    if batch:
        db.integrate(batch)
    server = (db.replica_id, db.head_seq())
    db.close()
    return time.perf_counter() - t0, parents, server




# -- routing ------------------------------------------------------------------------------------


class FleetProcess(LineProcess):
    """``python -m bench.flexible_clients``: many flexible clients in one asyncio process."""

    def __init__(self, url: str, first: int, count: int, workload: dict[str, Any], timeout: float) -> None:
        super().__init__("bench.flexible_clients", [url, str(first), str(count), json.dumps(workload)], timeout)


def start_profiled_server(data_dir: Path, out: str) -> Any:
    """The server of :func:`start_server`, under cProfile (bench/profiled_serve.py) writing
    ``out`` when it stops."""
    from tests.helpers.servers import ServerProcess

    tool = "bench.sampled_serve" if os.environ.get("TIDESYNC_BENCH_SAMPLE") == "1" else "bench.profiled_serve"
    return ServerProcess(data_dir, launcher=["-m", tool, out]).start()


def case_routing(args: dict[str, Any], work: Path) -> dict[str, Any]:
    w = {k: args[k] for k in ("clients", "docs", "changes", "seed", "flip")}
    raise_nofile(w["clients"] * 2 + 512)
    from tidesync.core.stamp import ReplicaId

    rid = ReplicaId(secrets.token_hex(8))
    seed_s, parents, (server_id, seeded_to) = seed_server(
        work / "server", [workload_doc(k, w["clients"]) for k in range(w["docs"])], rid=rid)
    log(f"routing: seeded {w['docs']:,} documents in {seed_s:.1f} s")
    txns = writer_transactions(w, rid, parents)
    profile = args.get("profile")
    if profile:
        server = start_profiled_server(work / "server", profile)
    elif args.get("round_delay") is not None:
        from tests.helpers.servers import ServerProcess

        server = ServerProcess(work / "server", launcher=["-m", "bench.round_delay_serve",
                                                          str(float(args["round_delay"]))]).start()
    else:
        server = start_server(work / "server")
    fleet = None
    out: dict[str, Any] = {**w, "seed_s": seed_s}
    try:
        t0 = time.perf_counter()
        fleet = FleetProcess(server.url, 0, w["clients"], w, timeout=max(180.0, w["clients"] * 0.3))
        out.update({"connect_s": time.perf_counter() - t0, "connected": fleet.ready["connected"],
                    "bootstrapped": fleet.ready["synced"], "view_docs": fleet.ready["docs"],
                    "bootstrap_bytes": fleet.ready["bytes"], "fleet_errors": fleet.ready["errors"]})
        log(f"routing: {out['connected']} clients connected and bootstrapped {out['view_docs']:,} documents "
            f"in {out['connect_s']:.1f} s")
        idle0 = cpu_s(server.proc.pid)
        time.sleep(2.0)
        out["idle_cpu_per_s"] = (cpu_s(server.proc.pid) - idle0) / 2.0
        log(f"routing: server CPU with {w['clients']} idle clients: {out['idle_cpu_per_s']:.2f} s/s")
        if profile:
            os.kill(server.proc.pid, signal.SIGUSR2)   # profile the measured phase only
        s_cpu = cpu_s(server.proc.pid)
        # The writer made every seeded document (they are its own log): it holds the server's
        # log up to there, as a device that uploaded them would, and is not sent them back.
        writer = Writer(sync_url(server.url), login(server.url), txns, server_id=server_id, held=seeded_to)

        async def upload() -> None:
            task = asyncio.create_task(writer.run())
            await asyncio.wait_for(writer.uploaded.wait(), 300)
            task.cancel()

        holder: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: holder.setdefault("r", asyncio.run(upload())), daemon=True)
        thread.start()
        final = fleet.ask({"cmd": "final", "timeout": 240}, 300)
        thread.join(60)
        start = writer.replica.first_read or 0.0
        seconds = final["done_at"] - start if final["done_at"] else float("nan")
        out.update({"writer_error": writer.error, "upload_s": writer.uploaded_at - start, "seconds": seconds,
                    "changes_per_s": w["changes"] / seconds if seconds == seconds and seconds > 0 else 0.0,
                    "server_cpu_s": cpu_s(server.proc.pid) - s_cpu, **{f"final_{k}": v for k, v in final.items()}})
        if profile:
            os.kill(server.proc.pid, signal.SIGUSR1)
            time.sleep(3.0)
        log(f"routing: {w['changes']:,} changes in {seconds:.2f} s ({out['changes_per_s']:,.0f}/s); "
            f"upload acknowledged after {out['upload_s']:.2f} s; {final['converged']}/{final['clients']} clients "
            f"exact; wrong {final['wrong_docs']}, missing or stale {final['missing_or_stale']}; server CPU "
            f"{out['server_cpu_s']:.1f} s; messages to the clients {final.get('messages')}")
    finally:
        if fleet is not None:
            fleet.close()
        server.stop()
    return out


# -- incremental --------------------------------------------------------------------------------


def case_incremental(args: dict[str, Any], work: Path) -> dict[str, Any]:
    n, extra = int(args["n"]), int(args["extra"])
    docs = ([{"_id": f"a{i:07d}", "group": "a", "n": i, "title": f"document {i}", "pad": "x" * 120} for i in range(n)]
            + [{"_id": f"b{i:07d}", "group": "b", "n": n + i, "title": f"b {i}", "pad": "x" * 120} for i in range(extra)]
            + [{"_id": f"c{i:07d}", "group": "c", "n": n + extra + i, "title": f"c {i}", "pad": "x" * 120}
               for i in range(extra)])
    seed_s, _, _ = seed_server(work / "server", docs)
    log(f"incremental: seeded {len(docs):,} documents in {seed_s:.1f} s")
    server = start_server(work / "server")
    out: dict[str, Any] = {"n": n, "extra": extra, "seed_s": seed_s, "steps": []}
    half = extra // 2
    steps = [
        ("subscribe to group a (full download, for reference)", [("a", 'group == "a"')], n, 0),
        (f"add group b ({extra:,} more)", [("a", 'group == "a"'), ("b", 'group == "b"')], extra, 0),
        (f"narrow a to n >= {extra:,} ({extra:,} fewer)", [("a", f'group == "a" AND n >= {extra}'),
                                                           ("b", 'group == "b"')], 0, extra),
        (f"replace all with one range query ({half:,} in, {half:,} out)",
         [("range", f"n >= {extra + half} AND n < {n + extra + half}")], half, half),
    ]
    try:
        token = login(server.url)

        async def run() -> None:
            client = FlexClient(sync_url(server.url), token, [])
            task = asyncio.create_task(client.run())
            await asyncio.wait_for(client.ready.wait(), 60)
            for title, queries, want_in, want_out in steps:
                b0, e0, l0 = client.bytes_received, client.replica.entered, client.replica.left
                vb0 = client.bytes_by_type.get("view_update", 0)
                t0 = time.perf_counter()
                version = await client.subscribe(queries)
                state = await client.wait_state(version, 300)
                seconds = time.perf_counter() - t0
                step = {"title": title, "state": state, "seconds": seconds,
                        "docs_in": client.replica.entered - e0, "docs_out": client.replica.left - l0,
                        "want_in": want_in, "want_out": want_out,
                        "bytes": client.bytes_received - b0,
                        "view_bytes": client.bytes_by_type.get("view_update", 0) - vb0,
                        "held": len(client.replica.docs)}
                out["steps"].append(step)
                log(f"incremental: {title}: {step['docs_in']:,} in, {step['docs_out']:,} out, "
                    f"{step['bytes'] / 1e6:.2f} MB, {seconds:.2f} s ({state}); holds {step['held']:,}")
            out["errors"] = client.error
            await client.close()
            task.cancel()

        asyncio.run(run())
    finally:
        server.stop()
    full = out["steps"][0]["bytes"]
    for step in out["steps"][1:]:
        step["vs_full"] = step["bytes"] / full if full else float("nan")
    return out


# -- running ------------------------------------------------------------------------------------


RUNNERS = {"routing": case_routing, "incremental": case_incremental}


def run_case_here(name: str, args: dict[str, Any]) -> dict[str, Any]:
    root = args.pop("storage_root", None) or tempfile.gettempdir()
    work = Path(tempfile.mkdtemp(prefix=f"tidesync-flex-{name}-", dir=root))
    try:
        t0 = time.perf_counter()
        result = RUNNERS[name](args, work)
        result["case_s"] = time.perf_counter() - t0
        result["storage"] = root
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_case(name: str, args: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.flexible_bench", "--case", name, json.dumps(args)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=CASE_TIMEOUT, env=_env(), cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"flexible bench case {name} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _ok(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(results: dict[str, Any], command: str, seconds: float) -> str:
    lines = [
        f"Command: `{command}` ({seconds:.0f} s). Machine: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average before the run {results['loadavg'][0]:.1f} (other work "
        "shares these cores; the server, the client fleet and the writer all run on them). Server: "
        "`python -m tidesync serve` on 127.0.0.1 in its own process, files on "
        f"{'tmpfs' if results.get('storage') == '/dev/shm' else 'the real disk'}.",
        "",
        "| benchmark | figure | target | |",
        "| --- | --- | --- | --- |",
    ]
    r = results.get("routing")
    if r:
        exact = r["final_converged"] == r["clients"] and not r["final_wrong_docs"] and not r["final_missing_or_stale"]
        lines.append(
            f"| routing: {r['changes']:,} single-document changes among {r['docs']:,} documents, "
            f"{r['connected']:,} connected clients x 3 subscriptions, until every client holds exactly its "
            f"documents with their final values | **{r['changes_per_s']:,.0f} changes/s** ({r['seconds']:.2f} s; "
            f"upload acknowledged after {r['upload_s']:.2f} s) | >= {TARGETS['routing_changes_per_s']:,}/s | "
            f"{_ok(r['changes_per_s'] >= TARGETS['routing_changes_per_s'] and exact)} |")
        lines.append(
            f"| routing: correctness | {r['final_converged']:,}/{r['clients']:,} clients exact; "
            f"{r['final_wrong_docs']} documents where they should not be, {r['final_missing_or_stale']} missing or "
            f"stale; {r['final_ops']:,} operations, {r['final_entered']:,} documents entered and "
            f"{r['final_left']:,} left views | 0 wrong | {_ok(exact)} |")
        lines.append(
            f"| routing: setup (not timed above) | {r['connected']:,} clients bootstrapped {r['view_docs']:,} "
            f"view documents in {r['connect_s']:.1f} s | (info) | |")
        lines.append(f"| routing: server CPU during the measured phase | {r['server_cpu_s']:.1f} s | (info) | |")
    r = results.get("incremental")
    if r:
        steps = r["steps"]
        full = steps[0]
        lines.append(f"| incremental: {full['title']} | {full['docs_in']:,} documents, {full['bytes'] / 1e6:.1f} MB, "
                     f"{full['seconds']:.1f} s | (reference) | |")
        for step in steps[1:]:
            exact = step["docs_in"] == step["want_in"] and step["docs_out"] == step["want_out"] \
                and step["state"] == "complete"
            lines.append(
                f"| incremental: device holds {steps[0]['docs_in']:,}+ matching documents; {step['title']} | "
                f"{step['docs_in']:,} in, {step['docs_out']:,} out; {step['bytes'] / 1e3:,.0f} KB "
                f"({step['vs_full'] * 100:.2f}% of the full download); {step['seconds']:.2f} s | only the "
                f"difference ({step['want_in']:,} in, {step['want_out']:,} out) | {_ok(exact)} |")
    return "\n".join(lines)


def write_results(text: str) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n## Flexible sync (issue 5)\n\n" + block + "\n"
    RESULTS.write_text(new)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--case"]:
        name, args = argv[1], json.loads(argv[2])
        print(json.dumps(run_case_here(name, args)), flush=True)
        return
    parser = argparse.ArgumentParser(prog="python -m bench flexible", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run; never writes RESULTS.md")
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}")
    parser.add_argument("--storage", choices=["disk", "tmpfs"], default="disk", help="where the files live")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument("--clients", type=int, help="routing: connected clients (never writes RESULTS.md)")
    parser.add_argument("--docs", type=int, help="routing: documents (never writes RESULTS.md)")
    parser.add_argument("--changes", type=int, help="routing: changes (never writes RESULTS.md)")
    parser.add_argument("--profile", metavar="FILE", help="routing: run the server under cProfile, stats to FILE "
                        "(never writes RESULTS.md)")
    parser.add_argument("--round-delay", type=float, metavar="SECONDS",
                        help="routing: the server's [sync.flexible] max_round_delay (default 2; through "
                             "bench/round_delay_serve.py; never writes RESULTS.md)")
    ns = parser.parse_args(argv)
    only = tuple(x.strip() for x in ns.only.split(",") if x.strip())
    unknown = set(only) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}")
    sizes = QUICK if ns.quick else FULL
    results: dict[str, Any] = {"loadavg": os.getloadavg(),
                               "storage": "/dev/shm" if ns.storage == "tmpfs" else tempfile.gettempdir()}
    t0 = time.perf_counter()
    for name in only:
        args = dict(sizes[name])
        if name == "routing":
            for key in ("clients", "docs", "changes", "profile", "round_delay"):
                if getattr(ns, key) is not None:
                    args[key] = getattr(ns, key)
        if ns.storage == "tmpfs":
            args["storage_root"] = "/dev/shm"
        log(f"case {name} ...")
        results[name] = run_case(name, args)
    seconds = time.perf_counter() - t0
    command = "python -m bench flexible" + ("" if not argv else " " + " ".join(argv))
    text = report(results, command, seconds)
    WORK.mkdir(exist_ok=True)
    (WORK / f"flexible-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=1))
    print(text)
    custom = any(getattr(ns, k) is not None for k in ("clients", "docs", "changes", "profile", "round_delay"))
    if not ns.quick and not ns.no_write and not custom and set(only) == set(CASES):
        write_results(text)
        log(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
