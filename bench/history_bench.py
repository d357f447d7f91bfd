"""One analyst's history of N days; today's session grows; "tokens in the last 7 days" asked of ccusage
(reading every transcript each time) and of the service (an incremental pass of today's new lines,
then GET /api/me/home-stats?window=7d). Issue 24, item 4.

    python bench/history_bench.py [--days 7 30 60] [--mb-per-day 3] [--new-mb 0.5] [--ccusage /tmp/ccusage]

The history is bench/corpus.py's sessions spread over the N days before "now" (its sessions start at
random times; today's is the last, started two hours ago). The service ingests the history first
(not timed), then each measurement appends --new-mb of lines to today's session: the pass (Processor,
parse in a thread) and the request are timed apart, in this process (wall and CPU). ccusage runs as its
own process, `ccusage claude daily --since <7 days ago> --json --offline -z UTC`: wall and CPU
including Node's start-up, which is part of what an analyst waits for. Median of --repeat runs each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

import common  # noqa: E402
import corpus  # noqa: E402
from service import keys  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.ingest import bulk  # noqa: E402
from service.ingest.processor import Processor  # noqa: E402
from service.store import ingest as store  # noqa: E402
from service.store import users  # noqa: E402

NOW = datetime(2025, 12, 1, 16, 0, tzinfo=timezone.utc)


def history(out: Path, days: int, mb_per_day: float, seed: int) -> tuple[list[Path], Path, bytes]:
    """Write the sessions of ``days`` days before NOW; returns them, today's file and its growth."""
    rng = random.Random(seed)
    pool = corpus._text_pool(random.Random(seed + 1), 600_000)
    project = out / "projects" / "-home-analyst-work"
    project.mkdir(parents=True)
    files, total, target = [], 0, int(days * mb_per_day * 1e6)
    while total < target:
        sid = f"{rng.getrandbits(128):032x}"
        when = NOW - timedelta(days=days) + timedelta(hours=rng.uniform(0, 24 * days - 4))
        size = min(int(rng.expovariate(1 / 1e6)) + 20_000, 12_000_000)
        n, paths = corpus.write_session(rng, pool, str(project / f"{sid}.jsonl"), sid, "/home/analyst/work",
                                        when, size)
        total += n
        files.extend(Path(p) for p in paths)
    today = project / "today-session.jsonl"
    n, paths = corpus.write_session(rng, pool, str(today), "today-session", "/home/analyst/work",
                                    NOW - timedelta(hours=2), 8_000_000)
    files.extend(Path(p) for p in paths if Path(p) != today)
    data = today.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    today.write_bytes(data[:cut])
    return files, today, data[cut:]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ask_ccusage(exe: Path, config_dir: Path) -> dict:
    since = (NOW - timedelta(days=6)).strftime("%Y%m%d")
    env = dict(os.environ, CLAUDE_CONFIG_DIR=str(config_dir), TZ="UTC")
    cpu0 = children_cpu()
    t = time.perf_counter()
    proc = subprocess.run([str(exe), "claude", "daily", "--since", since, "--json", "--offline", "-z", "UTC"],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"blocked": proc.stderr[-300:]}
    data = json.loads(proc.stdout)
    totals = data.get("totals") or {}
    tokens = sum(totals.get(k, 0) for k in ("inputTokens", "outputTokens", "cacheReadTokens", "cacheCreationTokens"))
    return {"wall_s": wall, "cpu_s": children_cpu() - cpu0, "tokens": tokens}


async def measure(work: Path, days: int, args: argparse.Namespace) -> dict:
    out = work / f"history-{days}d"
    shutil.rmtree(out, ignore_errors=True)
    files, today, growth = history(out / "claude", days, args.mb_per_day, seed=days)
    settings = load_settings(environ={}, db_path=str(out / "agnes.db"), data_dir=str(out / "data"),
                             secret_key="bench", parse_workers=0, scan_interval=3600)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    client.app[keys.CLOCK].fixed = NOW
    db = client.app[keys.DB]
    user = await users.add_user(db, "analyst@example.com", "Analyst", True)
    token, _ = await users.issue_token(db, user.id)
    t = time.perf_counter()
    await bulk.ingest_paths(db, user.id, [str(p) for p in files] + [str(today)], workers=0, clock=lambda: NOW)
    history_ingest = time.perf_counter() - t
    file_id = await store.register_file(db, user.id, str(today), "cli", NOW)
    processor = Processor(db, workers=0, clock=lambda: NOW)
    step = max(1, int(args.new_mb * 1e6))
    runs = []
    exe = Path(args.ccusage) / "node_modules" / ".bin" / "ccusage"
    for i in range(args.repeat):
        with open(today, "ab") as fh:
            fh.write(growth[i * step:(i + 1) * step])
        c, w = time.process_time(), time.perf_counter()
        outcome = await processor.process(file_id)
        pass_cpu, pass_wall = time.process_time() - c, time.perf_counter() - w
        c, w = time.process_time(), time.perf_counter()
        resp = await client.get("/api/me/home-stats?window=7d", headers={"Authorization": f"Bearer {token}"})
        body = await resp.json()
        query_cpu, query_wall = time.process_time() - c, time.perf_counter() - w
        run = {"status": outcome.status, "pass_wall_s": pass_wall, "pass_cpu_s": pass_cpu,
               "query_wall_s": query_wall, "query_cpu_s": query_cpu,
               "tokens": body["tokens"]["total"],
               "ccusage": ask_ccusage(exe, out / "claude") if exe.exists() else {"blocked": f"{exe} missing"}}
        runs.append(run)
    await client.close()

    def median(values: list[float]) -> float:
        return round(sorted(values)[len(values) // 2], 4)

    size = sum(p.stat().st_size for p in files) + today.stat().st_size
    result = {
        "days": days, "history_mb": round(size / 1e6, 1), "files": len(files) + 1,
        "history_ingest_s": round(history_ingest, 2),
        "agnes_pass_wall_s": median([r["pass_wall_s"] for r in runs]),
        "agnes_pass_cpu_s": median([r["pass_cpu_s"] for r in runs]),
        "agnes_query_wall_s": median([r["query_wall_s"] for r in runs]),
        "agnes_tokens_7d": runs[-1]["tokens"],
        "statuses": sorted({r["status"] for r in runs}),
    }
    if all("wall_s" in r["ccusage"] for r in runs):
        result.update(ccusage_wall_s=median([r["ccusage"]["wall_s"] for r in runs]),
                      ccusage_cpu_s=median([r["ccusage"]["cpu_s"] for r in runs]),
                      ccusage_tokens_7d=runs[-1]["ccusage"]["tokens"])
    else:
        result["ccusage"] = runs[-1]["ccusage"]
    return result


async def main_async(args: argparse.Namespace) -> list[dict]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for days in args.days:
        results.append(await measure(work, days, args))
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/agnes-history-bench")
    ap.add_argument("--days", type=int, nargs="+", default=[7, 30, 60])
    ap.add_argument("--mb-per-day", type=float, default=3)
    ap.add_argument("--new-mb", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ccusage", default="/tmp/ccusage")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    common.compile_service()
    results = asyncio.run(main_async(args))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
