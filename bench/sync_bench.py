"""Sync benchmarks (issue 3): bootstrap, upload, propagation and fan-out against a real server.

::

    python -m bench sync                    # every sync case, full size; updates bench/RESULTS.md
    python -m bench sync --quick            # small sizes, a smoke run (never writes RESULTS.md)
    python -m bench sync --only fanout      # some cases (never writes RESULTS.md)
    python -m bench.sync_bench ...          # the same, without the bench/__main__ front door

Every case starts its own server process (``python -m tidesync serve`` on 127.0.0.1, through
``tests.helpers.servers.ServerProcess``) and runs in its own bench process
(``python -m bench.sync_bench --case NAME JSON-ARGS``), whose figures come back as one JSON
line. Many lightweight clients (propagation's 100 others, fan-out's 1,000) run in more
processes, :mod:`bench.sync_clients` (propagation: one; fan-out: ``procs`` of them, 4 at full
size, so that one client loop's own queueing is not counted as the server's latency). The
propagation case runs a second time with device B in a process of its own,
:mod:`bench.sync_device` (``propagation_bproc``), as real devices are. Every loop is bounded in
count and in time.

Files live on the real disk (``tempfile.gettempdir()``) unless ``--storage tmpfs`` puts them in
``/dev/shm``; propagation runs on both by default, because an fsync here costs milliseconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import queue
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tidesync  # noqa: E402
from tidesync import field  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
WORK = HERE / ".work"
BEGIN, END = "<!-- bench:sync:begin -->", "<!-- bench:sync:end -->"
CASES = ("bootstrap", "upload", "propagation", "fanout")

FULL: dict[str, Any] = {
    "bootstrap": {"n": 100_000, "runs": 2},
    "upload": {"n": 10_000, "shapes": [[1, 10_000], [100, 100], [1_000, 10]]},
    "propagation": {"samples": 1_000, "others": 100, "gap": 0.005, "others_in": "own"},
    "propagation_same": {"samples": 200, "others": 100, "gap": 0.005, "others_in": "same"},
    "fanout": {"clients": 1_000, "writes": 10, "gap": 1.0, "procs": 4},
}
QUICK: dict[str, Any] = {
    "bootstrap": {"n": 10_000, "runs": 1},
    "upload": {"n": 2_000, "shapes": [[1, 2_000], [100, 20]]},
    "propagation": {"samples": 100, "others": 10, "gap": 0.005, "others_in": "own"},
    "propagation_same": {"samples": 50, "others": 10, "gap": 0.005, "others_in": "same"},
    "fanout": {"clients": 100, "writes": 3, "gap": 0.5, "procs": 2},
}
TARGETS = {
    "bootstrap_docs_per_s": 50_000, "bootstrap_vs_raw": 4.0, "upload_docs_per_s": 20_000,
    "propagation_p50_ms": 5.0, "propagation_p99_ms": 25.0, "fanout_p99_ms": 500.0,
    "fanout_kb_per_connection": 100.0,
}
CASE_TIMEOUT = 420.0


class SyncDoc(tidesync.Model):
    """About 200 bytes of JSON (the local benchmarks' document plus its partition)."""

    _id: str = field(primary_key=True)
    _partition: str = "p"
    category: str = ""
    title: str = ""
    status: str = "open"
    priority: int = 0
    score: float = 0.0
    note: str = ""


def make_doc(i: int, partition: str = "p") -> dict[str, Any]:
    from bench.data import make_doc as local_doc

    return {**local_doc(i), "_partition": partition}


def log(msg: str) -> None:
    sys.stderr.write(f"[sync-bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


# -- processes ----------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Spy:
    """With ``TIDESYNC_BENCH_SPY=DIR`` (and py-spy on PATH), record a py-spy profile of a process
    (raw collapsed stacks, DIR/NAME.txt) while a measured phase runs. Otherwise does nothing."""

    def __init__(self, name: str, pid: int) -> None:
        out = os.environ.get("TIDESYNC_BENCH_SPY")
        exe = shutil.which("py-spy")
        self.proc = None
        if out and exe:
            Path(out).mkdir(parents=True, exist_ok=True)
            self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                                          "-o", str(Path(out) / f"{name}.txt")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)
            self.proc.wait(30)


def start_server(data_dir: Path, name: str = "server") -> Any:
    """A server process on 127.0.0.1; under cProfile (bench/profile_server.py) when
    ``TIDESYNC_BENCH_PROFILE=DIR`` is set, its statistics in DIR/NAME.prof at its stop."""
    from tests.helpers.servers import ServerProcess

    out = os.environ.get("TIDESYNC_BENCH_PROFILE")
    if not out:
        return ServerProcess(data_dir).start()
    Path(out).mkdir(parents=True, exist_ok=True)
    return ServerProcess(data_dir, launcher=["-m", "bench.profile_server",
                                             str(Path(out).resolve() / f"{name}.prof")]).start()


class LineProcess:
    """A child ``python -m MODULE ARGS`` spoken to in JSON lines (a client fleet): one command
    per stdin line, one answer per stdout line; the first line must say ``"event": "ready"``."""

    def __init__(self, module: str, args: list[str], timeout: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self.read(timeout)
        if self.ready.get("event") != "ready":
            raise RuntimeError(f"the client fleet did not start: {self.ready}")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the client fleet said nothing for {timeout} s") from None
        if line is None:
            raise RuntimeError(f"the client fleet exited ({self.proc.poll()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def ask(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(cmd)
        return self.read(timeout)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.ask({"cmd": "quit"}, 40)
        except (RuntimeError, OSError, ValueError):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)



class DeviceProcess(LineProcess):
    """``python -m bench.sync_device``: propagation's device B in its own process."""

    def __init__(self, url: str, db_path: Path, users: Path, partition: str, timeout: float) -> None:
        super().__init__("bench.sync_device", [url, str(db_path), str(users), partition], timeout)

    def seen(self, value: int, timeout: float) -> float | None:
        """The ``time.monotonic()`` at which B's listener saw ``priority == value``, or None
        after ``timeout`` seconds (earlier values it reports are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msg = self.read(left)
            except RuntimeError:
                return None
            if msg.get("v") == value:
                return float(msg["t"])


class FleetProcess(LineProcess):
    """``python -m bench.sync_clients``: N lightweight clients in one asyncio process."""

    def __init__(self, url: str, n: int, partition: str, timeout: float) -> None:
        super().__init__("bench.sync_clients", [url, str(n), partition, "50"], timeout)

def login(url: str, work: Path) -> tidesync.User:
    app = tidesync.App("default", base_url=url, storage_dir=work / f"users-{time.monotonic_ns()}")
    return app.log_in(tidesync.Credentials.anonymous())


def open_synced(path: Path, user: tidesync.User, partition: str, **config: Any) -> tidesync.Database:
    return tidesync.open(path, schema=[SyncDoc],
                         sync=tidesync.SyncConfig(user=user, partition=partition, **config))


# -- bootstrap ----------------------------------------------------------------------------------


def seed_server(data_dir: Path, n: int, per_txn: int = 1_000) -> float:
    """Write ``n`` documents of partition ``p`` into a server's data dir before it starts, as
    transactions integrated from a device (what many uploads would have left there)."""
    import secrets

    from tidesync.core.clock import HybridClock
    from tidesync.core.operations import CreateDoc
    from tidesync.core.stamp import ZERO, ReplicaId
    from tidesync.core.transaction import Transaction
    from tidesync.store.database import Database

    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    db = Database(data_dir / "sync.db", (), partition_key="_partition")
    rid = ReplicaId(secrets.token_hex(8))
    clock = HybridClock(rid, lambda: time.time_ns() // 1_000_000)
    heads: tuple[str, ...] = ()
    txns = []
    for start in range(0, n, per_txn):
        ops = tuple(CreateDoc("SyncDoc", f"item-{i:07d}", clock.now(), ZERO, make_doc(i), {})
                    for i in range(start, min(n, start + per_txn)))
        txn = Transaction(ops[0].stamp, rid, ops[0].stamp, heads, ops)  # type: ignore[arg-type]
        heads = (txn.id,)
        txns.append(txn)
        if len(txns) == 10:
            db.integrate(txns, peer=rid, peer_seq=start)
            txns = []
    if txns:
        db.integrate(txns, peer=rid, peer_seq=n)
    db.close()
    return time.perf_counter() - t0


def raw_sqlite_insert(path: Path, docs: list[dict[str, Any]]) -> float:
    """The baseline: stdlib sqlite3 with tidesync's settings (WAL, synchronous=FULL), compact
    JSON made from the same dicts, one executemany in one transaction."""
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.remove(f"{path}{suffix}")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, body TEXT)")
    gc.collect()
    t0 = time.perf_counter()
    rows = [(d["_id"], encode(d)) for d in docs]
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO docs (id, body) VALUES (?, ?)", rows)
    conn.execute("COMMIT")
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds


def case_bootstrap(args: dict[str, Any], work: Path) -> dict[str, Any]:
    n, runs = int(args["n"]), int(args["runs"])
    seed_s = seed_server(work / "server", n)
    log(f"bootstrap: seeded {n} documents in {seed_s:.1f} s")
    docs = [make_doc(i) for i in range(n)]
    raw = [raw_sqlite_insert(work / f"raw{r}.db", docs) for r in range(runs)]
    del docs
    server = start_server(work / "server", "bootstrap")
    out: dict[str, Any] = {"n": n, "seed_s": seed_s, "raw_s": raw, "runs": []}
    try:
        user = login(server.url, work)
        for r in range(runs):
            gc.collect()
            spies = [Spy(f"bootstrap-server-{r}", server.proc.pid), Spy(f"bootstrap-client-{r}", os.getpid())]
            s_cpu, c_cpu = cpu_s(server.proc.pid), time.process_time()
            t0 = time.perf_counter()
            db = open_synced(work / f"client{r}.db", user, "p")
            try:
                db.sync_session.wait_for_download_completion(timeout=max(60.0, n / 1_000))
                seconds = time.perf_counter() - t0
                count = len(db.objects(SyncDoc))
            finally:
                db.close()
                for spy in spies:
                    spy.stop()
            run = {"seconds": seconds, "docs_per_s": n / seconds, "count": count,
                   "server_cpu_s": cpu_s(server.proc.pid) - s_cpu, "client_cpu_s": time.process_time() - c_cpu}
            out["runs"].append(run)
            log(f"bootstrap run {r}: {seconds:.2f} s, {n / seconds:,.0f} docs/s, {count} docs")
    finally:
        server.stop()
    best = min(out["runs"], key=lambda x: x["seconds"])
    out["seconds"] = best["seconds"]
    out["docs_per_s"] = n / best["seconds"]
    out["raw_best_s"] = min(raw)
    out["vs_raw"] = best["seconds"] / min(raw)
    return out


# -- upload -------------------------------------------------------------------------------------


def case_upload(args: dict[str, Any], work: Path) -> dict[str, Any]:
    n = int(args["n"])
    server = start_server(work / "server", "upload")
    out: dict[str, Any] = {"n": n, "shapes": []}
    try:
        user = login(server.url, work)
        for k, (txns, per_txn) in enumerate(args["shapes"]):
            assert txns * per_txn == n, "a shape must write n documents"
            partition = f"u{k}"
            db = open_synced(work / f"upload{k}.db", user, partition)
            try:
                db.sync_session.wait_for_download_completion(timeout=30)
                db.sync_session.pause()
                t_local = time.perf_counter()
                # Every shape writes new documents: the same _ids again would measure a
                # concurrent create of existing documents (a merge), not an upload.
                i = k * n
                for _ in range(txns):
                    with db.write():
                        for _ in range(per_txn):
                            db.create(SyncDoc, make_doc(i, partition))
                            i += 1
                local_s = time.perf_counter() - t_local
                gc.collect()
                spies = [Spy(f"upload-server-{k}", server.proc.pid), Spy(f"upload-client-{k}", os.getpid())]
                s_cpu, c_cpu = cpu_s(server.proc.pid), time.process_time()
                t0 = time.perf_counter()
                db.sync_session.resume()
                db.sync_session.wait_for_upload_completion(timeout=max(60.0, n / 200))
                seconds = time.perf_counter() - t0
                for spy in spies:
                    spy.stop()
            finally:
                db.close()
            shape = {"txns": txns, "docs_per_txn": per_txn, "seconds": seconds, "docs_per_s": n / seconds,
                     "local_write_s": local_s, "server_cpu_s": cpu_s(server.proc.pid) - s_cpu,
                     "client_cpu_s": time.process_time() - c_cpu}
            out["shapes"].append(shape)
            log(f"upload {txns} x {per_txn}: {seconds:.2f} s, {n / seconds:,.0f} docs/s")
    finally:
        server.stop()
    return out


# -- propagation --------------------------------------------------------------------------------


def case_propagation(args: dict[str, Any], work: Path) -> dict[str, Any]:
    samples, others, gap = int(args["samples"]), int(args["others"]), float(args["gap"])
    others_in = args.get("others_in", "own")
    # B in a process of its own (bench/sync_device.py), as a second device is; else in this
    # one beside A (one interpreter: A's Ack and B's integration share the GIL).
    b_process = bool(args.get("b_process", False))
    server = start_server(work / "server", f"propagation-{others_in}-{Path(work).parent.name}")
    fleet = None
    a = b = None
    bproc: DeviceProcess | None = None
    out: dict[str, Any] = {"samples": samples, "others": others, "others_in": others_in, "storage": str(work),
                           "b_process": b_process}
    try:
        fleet = FleetProcess(server.url, others, "p" if others_in == "same" else "own", timeout=120)
        out["others_connected"] = fleet.ready["connected"]
        user = login(server.url, work)
        a = open_synced(work / "a.db", user, "p")
        if not b_process:
            b = open_synced(work / "b.db", login(server.url, work), "p")
        with a.write():
            a.create(SyncDoc, make_doc(0))
        a.sync_session.wait_for_upload_completion(timeout=30)
        if b is not None:
            b.sync_session.wait_for_download_completion(timeout=30)
            obj_b = b.get(SyncDoc, "item-0000000")
            assert obj_b is not None
        else:
            bproc = DeviceProcess(server.url, work / "b.db", work / f"users-b-{time.monotonic_ns()}", "p", timeout=120)
        obj_a = a.get(SyncDoc, "item-0000000")
        assert obj_a is not None
        fired = threading.Event()
        target = [-1]
        seen_at = [0.0]

        def on_change(obj: Any, change: Any) -> None:
            if not change.deleted and obj.priority == target[0] and not fired.is_set():
                seen_at[0] = time.perf_counter()
                fired.set()

        token = obj_b.add_listener(on_change) if b is not None else None
        lat: list[float] = []
        commit: list[float] = []
        lost = 0
        lost_detail: list[dict[str, Any]] = []
        spy = Spy("propagation-server", server.proc.pid)
        if os.environ.get("TIDESYNC_BENCH_PROFILE"):
            os.kill(server.proc.pid, signal.SIGUSR1)  # bench/profile_server.py: profile from here
        s_cpu, c_cpu = cpu_s(server.proc.pid), time.process_time()
        b_cpu = cpu_s(bproc.proc.pid) if bproc is not None else 0.0
        deadline = time.monotonic() + float(args.get("max_seconds", 100))
        for i in range(1, samples + 1):
            if time.monotonic() > deadline:
                break
            if bproc is not None:
                # The same span, on the clock both processes share (time.monotonic).
                m_begin = time.monotonic()
                with a.write():
                    obj_a.priority = i
                m0 = time.monotonic()
                seen = bproc.seen(i, 5.0)
                if seen is not None:
                    lat.append((seen - m0) * 1000)
                    commit.append((m0 - m_begin) * 1000)
                else:
                    lost += 1
                    lost_detail.append({"i": i, "a": a.sync_session.connection_state})
                time.sleep(gap)
                continue
            fired.clear()
            target[0] = i
            t_begin = time.perf_counter()
            with a.write():
                obj_a.priority = i
            t0 = time.perf_counter()
            if fired.wait(5.0):
                lat.append((seen_at[0] - t0) * 1000)
                commit.append((t0 - t_begin) * 1000)
            else:
                lost += 1
                later = b.get(SyncDoc, "item-0000000")
                lost_detail.append({"i": i, "b_value_after_5s": later.priority if later is not None else None,
                                    "a": a.sync_session.connection_state, "b": b.sync_session.connection_state})
            time.sleep(gap)
        spy.stop()
        if token is not None:
            token.remove()
        b_cpu = cpu_s(bproc.proc.pid) - b_cpu if bproc is not None else 0.0
        out.update({
            "measured": len(lat), "lost": lost, "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else float("nan"),
            "mean_ms": statistics.fmean(lat) if lat else float("nan"),
            "commit_p50_ms": pct(commit, 50), "commit_p99_ms": pct(commit, 99), "lost_detail": lost_detail[:10],
            "server_cpu_s": cpu_s(server.proc.pid) - s_cpu,
            "client_cpu_s": time.process_time() - c_cpu + b_cpu,  # A and B (all their threads)
            "b_cpu_s": b_cpu if bproc is not None else None,  # B alone, when in its own process
            "others_busy_s": fleet.ask({"cmd": "status"}, 30)["busy_s"],
        })
        log(f"propagation ({work}): p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms over {len(lat)}")
    finally:
        for db in (a, b):
            if db is not None:
                db.close()
        if bproc is not None:
            bproc.close()
        if fleet is not None:
            fleet.close()
        server.stop()
    return out


# -- fan-out ------------------------------------------------------------------------------------


def case_fanout(args: dict[str, Any], work: Path) -> dict[str, Any]:
    clients, writes, gap = int(args["clients"]), int(args["writes"]), float(args["gap"])
    procs = max(1, min(int(args.get("procs", 1)), clients))
    raise_nofile(clients * 2 + 512)  # inherited by the server and the fleets
    server = start_server(work / "server", "fanout")
    fleets: list[FleetProcess] = []
    a = None
    out: dict[str, Any] = {"clients": clients, "writes": writes, "procs": procs}
    try:
        a = open_synced(work / "a.db", login(server.url, work), "p")
        with a.write():
            a.create(SyncDoc, make_doc(0))
        a.sync_session.wait_for_upload_completion(timeout=30)
        time.sleep(1.0)
        gc.collect()
        rss0 = rss_kb(server.proc.pid)
        t0 = time.perf_counter()
        # The clients in several processes, started one after the other (each connects its
        # share, then says it is ready): one asyncio loop decoding and acknowledging for all
        # of them would queue the last ones behind the others and add that to the p99.
        for k in range(procs):
            share = clients // procs + (1 if k < clients % procs else 0)
            fleets.append(FleetProcess(server.url, share, "p", timeout=max(120.0, share * 0.3)))
        out["connect_s"] = time.perf_counter() - t0
        out["connected"] = sum(f.ready["connected"] for f in fleets)
        out["fleet_errors"] = [e for f in fleets for e in f.ready.get("errors", [])][:5]
        time.sleep(3.0)  # idle: every client synced, acknowledgements settled
        rss1 = rss_kb(server.proc.pid)
        out.update({"rss_before_kb": rss0, "rss_after_kb": rss1,
                    "kb_per_connection": (rss1 - rss0) / max(1, out["connected"])})
        log(f"fan-out: {out['connected']} clients in {procs} processes connected in {out['connect_s']:.1f} s; "
            f"server RSS {rss0} -> {rss1} KB, {out['kb_per_connection']:.1f} KB per connection")
        lat: list[float] = []
        per_write = []
        spy = Spy("fanout-server", server.proc.pid)
        if os.environ.get("TIDESYNC_BENCH_PROFILE"):
            os.kill(server.proc.pid, signal.SIGUSR1)  # bench/profile_server.py: profile from here
        s_cpu = cpu_s(server.proc.pid)
        busy0 = sum(f.ask({"cmd": "status"}, 30)["busy_s"] for f in fleets)
        f_cpu = sum(cpu_s(f.proc.pid) for f in fleets)
        for k in range(writes):
            with a.write():
                a.create(SyncDoc, make_doc(1_000_000 + k) | {"_id": f"fan-{k}"})
            t_commit = time.monotonic()
            for f in fleets:
                f.send({"cmd": "collect", "marker": f"fan-{k}", "timeout": 20})
            got = [f.read(40) for f in fleets]
            ms = [(t - t_commit) * 1000 for g in got for t in g["times"]]
            missing = sum(g["missing"] for g in got)
            lat.extend(ms)
            per_write.append({"received": len(ms), "missing": missing, "p50_ms": pct(ms, 50),
                              "p99_ms": pct(ms, 99), "max_ms": max(ms) if ms else float("nan")})
            log(f"fan-out write {k}: {len(ms)} received, p50 {pct(ms, 50):.0f} ms, p99 {pct(ms, 99):.0f} ms, "
                f"max {per_write[-1]['max_ms']:.0f} ms")
            time.sleep(gap)
        spy.stop()
        server_cpu = cpu_s(server.proc.pid) - s_cpu
        fleets_cpu = sum(cpu_s(f.proc.pid) for f in fleets) - f_cpu
        busy = sum(f.ask({"cmd": "status"}, 30)["busy_s"] for f in fleets)
        out.update({"samples": len(lat), "missing": sum(w["missing"] for w in per_write), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                    "max_ms": max(lat) if lat else float("nan"), "per_write": per_write,
                    "server_cpu_s": server_cpu, "fleet_busy_s": busy - busy0, "fleet_cpu_s": fleets_cpu})
    finally:
        if a is not None:
            a.close()
        for f in fleets:
            f.close()
        server.stop()
    return out


RUNNERS = {"bootstrap": case_bootstrap, "upload": case_upload, "propagation": case_propagation,
           "fanout": case_fanout}


def run_case_here(name: str, args: dict[str, Any]) -> dict[str, Any]:
    root = args.pop("storage_root", None) or tempfile.gettempdir()
    work = Path(tempfile.mkdtemp(prefix=f"tidesync-sync-{name}-", dir=root))
    try:
        t0 = time.perf_counter()
        result = RUNNERS[name](args, work)
        result["case_s"] = time.perf_counter() - t0
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_case(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one case in its own process; its figures come back as the last line of stdout."""
    cmd = [sys.executable, "-m", "bench.sync_bench", "--case", name, json.dumps(args)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=CASE_TIMEOUT, env=_env(), cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"sync bench case {name} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- report -------------------------------------------------------------------------------------


def _ok(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(results: dict[str, Any], command: str, seconds: float) -> str:
    t = TARGETS
    lines = [
        f"Command: `{command}` ({seconds:.0f} s). Machine: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average before the run {results['loadavg'][0]:.1f} "
        f"(other work shares these 2 cores; figures move with it). Server: `python -m tidesync serve` "
        "on 127.0.0.1 in its own process; files on the real disk unless marked tmpfs. Durability: the "
        "default (server `synchronous=FULL`; a device commits a downloaded batch before its fsync, "
        "wakes its listeners, then flushes the WAL before the Ack: docs/sync.md).",
        "",
        "| benchmark | figure | target | |",
        "| --- | --- | --- | --- |",
    ]
    if "bootstrap" in results:
        r = results["bootstrap"]
        lines.append(f"| bootstrap: fresh client pulls {r['n']:,} docs (~200 B) | {r['docs_per_s']:,.0f} docs/s "
                     f"({r['seconds']:.2f} s) | >= {t['bootstrap_docs_per_s']:,} docs/s | "
                     f"{_ok(r['docs_per_s'] >= t['bootstrap_docs_per_s'])} |")
        lines.append(f"| bootstrap vs raw sqlite3 insert of the same docs ({r['raw_best_s']:.2f} s) | "
                     f"{r['vs_raw']:.1f}x | <= {t['bootstrap_vs_raw']:.0f}x | {_ok(r['vs_raw'] <= t['bootstrap_vs_raw'])} |")
    if "upload" in results:
        r = results["upload"]
        for s in r["shapes"]:
            lines.append(f"| upload: {r['n']:,} docs as {s['txns']:,} txn(s) x {s['docs_per_txn']:,}, until "
                         f"acknowledged | {s['docs_per_s']:,.0f} docs/s ({s['seconds']:.2f} s) | "
                         f">= {t['upload_docs_per_s']:,} docs/s | {_ok(s['docs_per_s'] >= t['upload_docs_per_s'])} |")
    for key in ("propagation", "propagation_tmpfs", "propagation_bproc", "propagation_same"):
        if key in results:
            r = results[key]
            where = "tmpfs" if "/dev/shm" in r["storage"] else "disk"
            whom = ("in their own partitions" if r.get("others_in", "own") == "own"
                    else "in the same partition (each write goes to them too)")
            if r.get("b_process"):
                where += ", B in its own process"
            lost = f", {r['lost']} lost" if r["lost"] else ""
            lines.append(f"| propagation ({where}): A commits -> B's listener fires; {r['others']} other clients "
                         f"connected {whom}; {r['measured']:,} samples{lost} | p50 {r['p50_ms']:.1f} ms | "
                         f"<= {t['propagation_p50_ms']:.0f} ms | {_ok(r['p50_ms'] <= t['propagation_p50_ms'])} |")
            lines.append(f"| | p99 {r['p99_ms']:.1f} ms (max {r['max_ms']:.1f}) | <= {t['propagation_p99_ms']:.0f} ms "
                         f"| {_ok(r['p99_ms'] <= t['propagation_p99_ms'] and r['lost'] == 0)} |")
    if "fanout" in results:
        r = results["fanout"]
        procs = r.get("procs", 1)
        missing = r.get("missing", 0)
        lines.append(f"| fan-out: one write reaches {r['connected']:,} connected clients in {procs} client "
                     f"process{'es' if procs != 1 else ''} ({r['samples']:,} samples, {r['writes']} writes"
                     f"{f', {missing} never received' if missing else ''}) | p99 {r['p99_ms']:.0f} ms "
                     f"(p50 {r['p50_ms']:.0f}, max {r['max_ms']:.0f}) "
                     f"| <= {t['fanout_p99_ms']:.0f} ms | {_ok(r['p99_ms'] <= t['fanout_p99_ms'] and not missing)} |")
        lines.append(f"| fan-out: server memory per idle connection (RSS {r['rss_before_kb']:,} -> "
                     f"{r['rss_after_kb']:,} KB) | {r['kb_per_connection']:.1f} KB | <= {t['fanout_kb_per_connection']:.0f} KB "
                     f"| {_ok(r['kb_per_connection'] <= t['fanout_kb_per_connection'])} |")
    lines += ["", "CPU seconds (user + system, from /proc; they move less with the machine's load than wall time):", ""]
    if "bootstrap" in results:
        r = results["bootstrap"]
        best = min(r["runs"], key=lambda x: x["seconds"])
        lines.append(f"- bootstrap: client {best['client_cpu_s']:.1f} s ({best['client_cpu_s'] / r['n'] * 1e6:.0f} us/doc), "
                     f"server {best['server_cpu_s']:.1f} s ({best['server_cpu_s'] / r['n'] * 1e6:.0f} us/doc); "
                     f"every run: {', '.join(format(x['seconds'], '.2f') + ' s' for x in r['runs'])}; "
                     f"raw insert runs: {', '.join(format(x, '.2f') + ' s' for x in r['raw_s'])}")
    if "upload" in results:
        r = results["upload"]
        lines.append("- upload: " + "; ".join(
            f"{s['txns']:,} x {s['docs_per_txn']:,}: server {s['server_cpu_s']:.2f} s ({s['server_cpu_s'] / r['n'] * 1e6:.0f} us/doc), "
            f"client {s['client_cpu_s']:.2f} s" for s in r["shapes"]))
    for key in ("propagation", "propagation_tmpfs", "propagation_bproc", "propagation_same"):
        if key in results:
            r = results[key]
            b_alone = r.get("b_cpu_s")
            b_note = f" (B {b_alone / max(1, r['measured']) * 1000:.1f})" if b_alone is not None else ""
            lines.append(f"- {key}: server {r['server_cpu_s'] / max(1, r['measured']) * 1000:.1f} ms per write, "
                         f"devices A and B {r.get('client_cpu_s', float('nan')) / max(1, r['measured']) * 1000:.1f}{b_note} ms per write, "
                         f"the {r['others']} others {r['others_busy_s']:.1f} s in all; p90 {r['p90_ms']:.1f} ms; "
                         f"A's own commit p50 {r['commit_p50_ms']:.1f} ms")
    if "fanout" in results:
        r = results["fanout"]
        procs = r.get("procs", 1)
        lines.append(f"- fanout: server {r['server_cpu_s'] / r['writes'] * 1000:.0f} ms per write, the {r['connected']:,} "
                     f"clients {r['fleet_busy_s'] / r['writes'] * 1000:.0f} ms per write handling messages "
                     f"({procs} process{'es' if procs != 1 else ''}, "
                     f"{r.get('fleet_cpu_s', float('nan')) / r['writes'] * 1000:.0f} ms CPU per write in all); "
                     f"connecting them took {r['connect_s']:.1f} s")
    return "\n".join(lines)


def write_results(text: str) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        notes = "\n\nWhat the figures mean and what dominates: see the notes under the table.\n"
        new = old.rstrip("\n") + "\n\n## Sync (issue 3)\n\n" + block + notes
    RESULTS.write_text(new)


def plan(only: tuple[str, ...], sizes: dict[str, Any], storage: str | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(result key, case, args) of every run. Propagation runs on the disk and on tmpfs (an
    fsync costs milliseconds here), with the 100 others in their own partitions, once more on
    the disk with device B in a process of its own (``propagation_bproc``), and once more on
    the disk with the others in the same partition (each write goes to all of them)."""
    runs: list[tuple[str, str, dict[str, Any]]] = []
    for name in only:
        where = storage or ("both" if name == "propagation" else "disk")
        roots = {"disk": [""], "tmpfs": ["tmpfs"], "both": ["", "tmpfs"]}[where]
        for root in roots:
            args = dict(sizes[name])
            if root:
                args["storage_root"] = "/dev/shm"
            runs.append((name + (f"_{root}" if root and where == "both" else ""), name, args))
        if name == "propagation":
            # The same case with B in its own process (bench/sync_device.py), as real devices are.
            args = dict(sizes[name], b_process=True)
            if where == "tmpfs":
                args["storage_root"] = "/dev/shm"
            runs.append(("propagation_bproc", name, args))
            args = dict(sizes["propagation_same"])
            if where == "tmpfs":
                args["storage_root"] = "/dev/shm"
            runs.append(("propagation_same", name, args))
    return runs


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--case"]:
        name, args = argv[1], json.loads(argv[2])
        print(json.dumps(run_case_here(name, args)), flush=True)
        return
    parser = argparse.ArgumentParser(prog="python -m bench sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run; never writes RESULTS.md")
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}")
    parser.add_argument("--storage", choices=["disk", "tmpfs", "both"], default=None,
                        help="where files live (default: disk; propagation: both)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument("--set", action="append", default=[], metavar="CASE.KEY=VALUE",
                        help="change one size, e.g. fanout.clients=300 or fanout.procs=1 (repeatable; "
                             "never writes RESULTS.md)")
    ns = parser.parse_args(argv)
    only = tuple(x.strip() for x in ns.only.split(",") if x.strip())
    unknown = set(only) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}")
    sizes = json.loads(json.dumps(QUICK if ns.quick else FULL))
    for item in ns.set:
        target, _, value = item.partition("=")
        case, _, key = target.partition(".")
        if case not in sizes or not key or not value:
            parser.error(f"--set {item!r}: expected CASE.KEY=VALUE with CASE one of {sorted(sizes)}")
        sizes[case][key] = json.loads(value)
    results: dict[str, Any] = {"loadavg": os.getloadavg()}
    t0 = time.perf_counter()
    for key, name, args in plan(only, sizes, ns.storage):
        log(f"case {key} ...")
        results[key] = run_case(name, args)
    seconds = time.perf_counter() - t0
    command = "python -m bench sync" + ("" if not argv else " " + " ".join(argv))
    text = report(results, command, seconds)
    WORK.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (WORK / f"sync-{stamp}.json").write_text(json.dumps(results, indent=1))
    print(text)
    if not ns.quick and not ns.no_write and not ns.set and set(only) == set(CASES) and ns.storage is None:
        write_results(text)
        log(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
