"""PostgreSQL against SQLite, and two replicas against one, in one run on one machine (issue 23, item 7).

    python bench/replicas_bench.py [--mb 40] [--users 50] [--days 30] [--seconds 8] [--runs 5] [--out FILE]

PostgreSQL is a throwaway cluster this run starts (tests/pg.py: fsync, synchronous_commit and
full_page_writes off, as SQLite runs with synchronous=NORMAL; never the machine's shared server).

- bulk ingest: `agnes-home ingest DIR --workers 1 --json` of one generated corpus (bench/corpus.py)
  into a fresh SQLite database, then into a fresh PostgreSQL one, --runs times interleaved: the median
  MB/s (each run's beside it), and for PostgreSQL the server's CPU seconds (every process of the
  cluster, from /proc) and WAL bytes per MB;
- replicas: the same corpus as a watched directory, processed by one `agnes-home serve` replica,
  then by two on one database (AGNES_PARSE_WORKERS=1 each): wall time from start until every
  file is processed, each replica's share of the files (its /metrics), each replica's CPU seconds
  per MB (its process tree) and the database's CPU seconds and WAL bytes per MB;
- home-stats: serve_bench's dataset (analysts x days) built into SQLite and copied to PostgreSQL
  with `agnes-home copy-database`; requests per second and p99 of GET /api/me/home-stats at 32
  connections against one replica of each, with the read cache on and off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

import corpus  # noqa: E402
import loadgen  # noqa: E402
import serve_bench  # noqa: E402
from tests import pg  # noqa: E402
from tests.test_cli import free_port  # noqa: E402

BIN = Path(sys.executable).parent
EMAIL = "bench@example.com"
TICK = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of a process tree now, reaped children included."""
    total = 0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        except (OSError, IndexError, ValueError):
            continue
    return total / TICK


def postmaster_pid(cluster: pg.Cluster) -> int:
    return int(Path(cluster.datadir, "postmaster.pid").read_text().split()[0])


async def _sql(url: str, sql: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def sql(url: str, text: str, *args):
    return asyncio.run(_sql(url, text, *args))


def new_database(cluster: pg.Cluster, name: str) -> str:
    asyncio.run(_sql(cluster.url, f"DROP DATABASE IF EXISTS {name}"))
    return pg.create_database(cluster.url, name)


def cli(env: dict, *args: str) -> str:
    return subprocess.run([str(BIN / "agnes-home"), *args], env=env, check=True, capture_output=True,
                          text=True).stdout


def base_env(work: Path, name: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGNES_")}
    env.update(AGNES_DB_PATH=str(work / name / "agnes.db"), AGNES_DATA_DIR=str(work / name / "data"),
               AGNES_LOG_LEVEL="WARNING", AGNES_RETENTION_DAYS="36500", AGNES_SECRET_KEY="bench",
               TMPDIR=str(work), **extra)
    (work / name).mkdir(parents=True, exist_ok=True)
    return env


def wal_bytes(url: str) -> int:
    return int(sql(url, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"))


# -- bulk ingest -----------------------------------------------------------------------------

def _one_ingest(work: Path, cluster: pg.Cluster, corpus_dir: Path, mb: float, backend: str) -> dict:
    extra = {}
    if backend == "postgresql":
        extra["AGNES_DATABASE_URL"] = new_database(cluster, "bench_ingest")
    env = base_env(work, f"ingest-{backend}", **extra)
    Path(env["AGNES_DB_PATH"]).unlink(missing_ok=True)  # a fresh database each run
    cli(env, "migrate")
    cli(env, "users", "add", EMAIL)
    db_cpu0 = tree_cpu(postmaster_pid(cluster))
    wal0 = wal_bytes(extra["AGNES_DATABASE_URL"]) if extra else 0
    t = time.perf_counter()
    report = json.loads(cli(env, "ingest", str(corpus_dir), "--user", EMAIL, "--workers", "1", "--json"))
    wall = time.perf_counter() - t
    row = {"mb_per_s": report["mb_per_s"], "process_wall_s": round(wall, 2), "files": report["files"],
           "failed": report["failed"]}
    if extra:
        row["db_cpu_s_per_mb"] = round((tree_cpu(postmaster_pid(cluster)) - db_cpu0) / mb, 4)
        row["wal_bytes_per_mb"] = round((wal_bytes(extra["AGNES_DATABASE_URL"]) - wal0) / mb)
    return row


def bulk_ingest(work: Path, cluster: pg.Cluster, corpus_dir: Path, mb: float, runs: int) -> dict:
    """Each backend ``runs`` times, interleaved, into a fresh database each; the run of median MB/s."""
    rows: dict[str, list[dict]] = {"sqlite": [], "postgresql": []}
    for _ in range(runs):
        for backend in rows:
            rows[backend].append(_one_ingest(work, cluster, corpus_dir, mb, backend))
    found = {}
    for backend, done in rows.items():
        ranked = sorted(done, key=lambda row: row["mb_per_s"])
        found[backend] = {**ranked[len(ranked) // 2], "runs_mb_per_s": [row["mb_per_s"] for row in done]}
    found["postgresql_over_sqlite"] = round(found["postgresql"]["mb_per_s"] / found["sqlite"]["mb_per_s"], 2)
    return found


# -- replicas ----------------------------------------------------------------------------------

def _metric(port: int, name: str, label: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf'^{name}\{{{label}\}} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _ready(port: int, proc: subprocess.Popen, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        assert proc.poll() is None, "replica exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "replica not ready"
        time.sleep(0.1)


def replicas(work: Path, cluster: pg.Cluster, corpus_dir: Path, files: int, mb: float, count: int) -> dict:
    """The replicas start on an empty watched directory; the corpus is moved in at once (a rename)
    once they are ready, and the clock runs from there."""
    url = new_database(cluster, f"bench_replicas_{count}")
    procs, ports = [], []
    env0 = base_env(work, f"replicas-{count}", AGNES_DATABASE_URL=url)
    cli(env0, "migrate")
    cli(env0, "users", "add", EMAIL)
    watched = work / f"replicas-{count}" / "watched"
    watched.mkdir()
    staged = work / f"replicas-{count}" / "staged"
    shutil.copytree(corpus_dir, staged)
    try:
        for i in range(count):
            port = free_port()
            env = dict(env0, AGNES_PORT=str(port), AGNES_HOST="127.0.0.1", AGNES_SESSION_DIR=str(watched),
                       AGNES_SCAN_INTERVAL="0.5", AGNES_PARSE_WORKERS="1")
            procs.append(subprocess.Popen([str(BIN / "agnes-home"), "serve"], env=env, stdout=subprocess.DEVNULL,
                                          stderr=open(work / f"replica-{count}-{i}.log", "w")))
            ports.append(port)
        for port, proc in zip(ports, procs):
            _ready(port, proc)
        cpu0 = [tree_cpu(proc.pid) for proc in procs]
        db_cpu0, wal0 = tree_cpu(postmaster_pid(cluster)), wal_bytes(url)
        t0 = time.perf_counter()
        os.rename(staged, watched / "bench")
        deadline = time.monotonic() + 900
        while (sql(url, "SELECT COUNT(*) FROM session_files WHERE processed_at IS NOT NULL") < files
               or sql(url, "SELECT COUNT(*) FROM ingest_queue")):
            assert time.monotonic() < deadline, "the replicas did not finish within 900 s"
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        per = []
        for port, proc, cpu in zip(ports, procs, cpu0):
            per.append({"files": int(_metric(port, "agnes_ingest_files_total", 'outcome="processed"')),
                        "cpu_s_per_mb": round((tree_cpu(proc.pid) - cpu) / mb, 4)})
        total = sum(r["files"] for r in per)
        for r in per:
            r["share"] = round(r["files"] / total, 3) if total else None
        return {"replicas": count, "wall_s": round(wall, 2), "mb_per_s": round(mb / wall, 2), "per_replica": per,
                "db_cpu_s_per_mb": round((tree_cpu(postmaster_pid(cluster)) - db_cpu0) / mb, 4),
                "wal_bytes_per_mb": round((wal_bytes(url) - wal0) / mb)}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- home-stats --------------------------------------------------------------------------------

def home_stats(work: Path, cluster: pg.Cluster, users: int, days: int, seconds: float) -> dict:
    env = base_env(work, "serve-sqlite")
    serve_bench.build_dataset(env["AGNES_DB_PATH"], env, users, days)
    token = cli(env, "tokens", "issue", serve_bench.ME).strip().splitlines()[-1]
    url = new_database(cluster, "bench_serve")
    cli(env, "copy-database", "--to", url)
    found = {}
    for backend in ("sqlite", "postgresql"):
        for cache in ("1", "0"):
            port = free_port()
            run_env = dict(env, AGNES_PORT=str(port), AGNES_HOST="127.0.0.1", AGNES_READ_CACHE=cache,
                           **({"AGNES_DATABASE_URL": url} if backend == "postgresql" else {}))
            proc = subprocess.Popen([str(BIN / "agnes-home"), "serve"], env=run_env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                _ready(port, proc)
                target = f"http://127.0.0.1:{port}/api/me/home-stats?window=7d"
                loadgen.run(target, 32, 1, [f"Authorization: Bearer {token}"])  # warm up
                result = loadgen.run(target, 32, seconds, [f"Authorization: Bearer {token}"])
            finally:
                proc.terminate()
                proc.wait(20)
            found[f"{backend}_cache_{'on' if cache == '1' else 'off'}"] = result
    for cache in ("on", "off"):
        found[f"rps_ratio_cache_{cache}"] = round(
            found[f"postgresql_cache_{cache}"]["rps"] / found[f"sqlite_cache_{cache}"]["rps"], 2)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=40)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--runs", type=int, default=5, help="bulk ingests per backend, interleaved (the median is reported)")
    ap.add_argument("--work", default="/tmp/agnes-replicas-bench")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "replicas.json"))
    ap.add_argument("--skip", nargs="*", default=[], choices=["ingest", "replicas", "serve"])
    args = ap.parse_args()
    work = Path(args.work)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    cluster = pg.start_cluster()
    try:
        watched = work / "watched"
        described = corpus.generate(str(watched / "bench"), args.mb,
                                    start=datetime.now(timezone.utc) - timedelta(days=70))
        mb = described["bytes"] / 1e6
        result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                  "corpus": {"mb": round(mb, 1), "files": described["files"]},
                  "postgresql": sql(cluster.url, "SHOW server_version")}
        if "ingest" not in args.skip:
            result["bulk_ingest"] = bulk_ingest(work, cluster, watched / "bench", mb, args.runs)
            print(json.dumps(result["bulk_ingest"]), flush=True)
        if "replicas" not in args.skip:
            result["replicas"] = [replicas(work, cluster, watched / "bench", described["files"], mb, n) for n in (1, 2)]
            print(json.dumps(result["replicas"]), flush=True)
        if "serve" not in args.skip:
            result["home_stats"] = home_stats(work, cluster, args.users, args.days, args.seconds)
            print(json.dumps(result["home_stats"]), flush=True)
    finally:
        cluster.stop()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
