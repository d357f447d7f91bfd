"""The question analysts ask, side by side with the peer: "how many tokens in the last 7 days?"

    python bench/peer_bench.py [--days 7 30 90] [--mb-per-day 3] [--ccusage /tmp/ccusage]

For each history length, one analyst's transcripts (bench/corpus.py, spread over that many days
before now, ~--mb-per-day a day) are written in Claude Code's layout, then:

- ccusage 20.0.24 answers with `ccusage daily --since <7 days ago> --json --offline`
  (CLAUDE_CONFIG_DIR at the history): it reads and parses every file each time it is asked;
- agnes-home has the history ingested once (`agnes-home ingest`), then today's session is
  uploaded, grows by 0.5 MB of new lines and is uploaded again, whole, as `agnes push` sends it.
  Measured: from the second upload's request to the new tokens showing in
  `GET /api/me/home-stats?window=7d` (the incremental pass: change check, parse of the new lines,
  writes), then that request alone (median of 20, the answer kept after the first).

ccusage is asked after the growth, with today's grown session copied into the history, so both
answer over the same files. Their tokens are reported side by side, not compared for equality:
ccusage counts 7 calendar days in the machine's zone (UTC here), home-stats the last 168 hours.
Results: bench/results/peer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import corpus  # noqa: E402
from serve_bench import BIN, Server, _get_json, _upload  # noqa: E402

ME = "peer@example.com"
GROWTH = 500_000  # bytes of new lines in today's session
TODAY_SESSION = "7d000000-0000-4000-8000-00000000beef"


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def ccusage_7d(exe: Path, history: Path, since: str) -> dict:
    env = dict(os.environ, CLAUDE_CONFIG_DIR=str(history), TZ="UTC")
    runs = []
    for _ in range(3):
        cpu0, t = _children_cpu(), time.perf_counter()
        proc = subprocess.run([str(exe), "daily", "--since", since, "--json", "--offline"], env=env,
                              capture_output=True, text=True, check=True)
        runs.append((time.perf_counter() - t, _children_cpu() - cpu0, proc.stdout))
    wall, cpu, out = sorted(runs)[1]
    totals = json.loads(out).get("totals", {})
    tokens = int(totals.get("totalTokens") or sum(int(totals.get(k, 0)) for k in (
        "inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens")))
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "tokens_7d": tokens}


def grow(path: Path, session_id: str, seed: int) -> None:
    """Append ~GROWTH bytes of new prompts and responses, stamped now, to a session file."""
    rng = random.Random(seed)
    writer = corpus.SessionWriter(rng, corpus._text_pool(random.Random(seed + 1), 600_000), session_id,
                                  "/home/analyst/work/today", datetime.now(timezone.utc) - timedelta(minutes=5))
    lines: list[bytes] = []
    size = 0
    while size < GROWTH:
        for line in [writer.prompt(), *writer.response(), *writer.extras()]:
            lines.append(line)
            size += len(line) + 1
    with open(path, "ab") as fh:
        fh.write(b"\n".join(lines) + b"\n")


def agnes_7d(work: Path, history: Path, port: int, seed: int) -> dict:
    env = dict(os.environ, AGNES_DB_PATH=str(work / "agnes.db"), AGNES_DATA_DIR=str(work / "data"),
               AGNES_PORT=str(port), AGNES_HOST="127.0.0.1", AGNES_LOG_LEVEL="WARNING")
    run = lambda *args: subprocess.run([str(BIN / "agnes-home"), *args], env=env, check=True,  # noqa: E731
                                       capture_output=True, text=True).stdout
    run("migrate")
    run("users", "add", ME, "--onboarded")
    token = run("tokens", "issue", ME).strip().splitlines()[-1]
    t = time.perf_counter()
    run("ingest", str(history / "projects"), "--user", ME)
    ingest_s = time.perf_counter() - t
    today = work / "today"
    today.mkdir()
    sid = TODAY_SESSION
    path = today / f"{sid}.jsonl"
    corpus.write_session(random.Random(seed), corpus._text_pool(random.Random(seed + 1), 600_000), str(path), sid,
                         "/home/analyst/work/today", datetime.now(timezone.utc) - timedelta(hours=2), 2_000_000)
    srv = Server([str(BIN / "agnes-home"), "serve"], env, port, "/healthz")
    try:
        url = f"{srv.base}/api/me/home-stats?window=7d"
        assert _upload(srv.base, token, path) == 200
        before = None
        deadline = time.time() + 60
        while time.time() < deadline:  # the first upload's full pass, then the numbers hold still
            found = _get_json(url, token)["tokens"]["total"]
            if found == before:
                break
            before = found
            time.sleep(0.5)
        grow(path, sid, seed + 2)
        t = time.perf_counter()
        status = _upload(srv.base, token, path)
        visible = None
        while time.perf_counter() - t < 30:
            if _get_json(url, token)["tokens"]["total"] != before:
                visible = time.perf_counter() - t
                break
            time.sleep(0.005)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            answer = _get_json(url, token)
            times.append(time.perf_counter() - t)
    finally:
        srv.stop()
    return {"ingest_history_s": round(ingest_s, 2), "upload_status": status,
            "grown_upload_visible_s": round(visible, 3) if visible is not None else None,
            "home_stats_ms": round(statistics.median(times) * 1000, 2), "tokens_7d": answer["tokens"]["total"],
            "today_file_mb": round(path.stat().st_size / 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, nargs="+", default=[7, 30, 90])
    ap.add_argument("--mb-per-day", type=float, default=3.0)
    ap.add_argument("--ccusage", default=os.environ.get("CCUSAGE_DIR", "/tmp/ccusage"))
    ap.add_argument("--work", default="/tmp/agnes-bench/peer")
    ap.add_argument("--port", type=int, default=18380)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "peer.json"))
    args = ap.parse_args()
    common.compile_service()
    exe = Path(args.ccusage) / "node_modules" / ".bin" / "ccusage"
    now = datetime.now(timezone.utc)
    since = (now - timedelta(days=6)).strftime("%Y%m%d")
    res: dict = {"mb_per_day": args.mb_per_day, "growth_bytes": GROWTH, "since": since, "runs": {}}
    for days in args.days:
        work = Path(args.work) / f"{days}d"
        shutil.rmtree(work, ignore_errors=True)
        history = work / "claude"
        info = corpus.generate(str(history), days * args.mb_per_day, seed=days, span_hours=24 * days - 3,
                               start=now - timedelta(days=days))
        row = {"history_mb": round(info["bytes"] / 1e6, 1), "files": info["files"]}
        row["agnes"] = agnes_7d(work / "agnes", history, args.port, seed=days)
        (history / "projects" / "today").mkdir()
        shutil.copy(work / "agnes" / "today" / f"{TODAY_SESSION}.jsonl", history / "projects" / "today")
        row["ccusage"] = ccusage_7d(exe, history, since) if exe.exists() else {"blocked": f"{exe} not found"}
        res["runs"][f"{days}d"] = row
        print(json.dumps({f"{days}d": row}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
