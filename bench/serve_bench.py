"""Serving benchmark: /api/me/home-stats and /home against a hello-world aiohttp handler.

    python bench/serve_bench.py [--users 200] [--days 60] [--scales 0.01 0.1 10] [--seconds 10] [--reuse]

Builds the dataset straight into SQLite with the store's schema (`agnes-home migrate`, then
bulk inserts of sessions and activity rows, then the per-user window tables derived by
ingest's own statements: ~167 assistant messages and ~30 prompts per
analyst per day, i.e. two million messages for 200 x 60), runs a real `agnes-home serve`
process and bench/hello.py, and loads them over loopback at 32 connections (wrk when
installed, else bench/loadgen.py's asyncio client). Also: home-stats while a bulk upload
is being ingested, the time for an uploaded 5 MB session to show in home-stats, both pages
again with the read cache off (AGNES_READ_CACHE=0: every request reads the database), and the
measured user's p50 as the other users' data grows (--scales, relative to --users; cache off).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import corpus  # noqa: E402
sys.path.insert(0, str(ROOT))
from service.ingest import USAGE_PROCESSOR_VERSION  # noqa: E402
from service.migrations import latest_version  # noqa: E402
from service.store.ingest import REBUILD_ROLLUPS_SQLITE, REBUILD_WINDOWS_SCRIPT  # noqa: E402
import loadgen  # noqa: E402

BIN = Path(sys.executable).parent
ME = "me@example.com"
MSGS_PER_DAY = 167
PROMPTS_PER_DAY = 30
SESSIONS_PER_DAY = 4
# Messages cycle through these (cost and the by-model breakdown have something to price).
MODELS = ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929", "claude-opus-4-5-20251101",
          "claude-haiku-4-5-20251001")
REUSE_HOURS = 12
# Tool events per session (the operators' tools table has rows to count): (event type, tool, skill,
# subagent type, command, source); one in twenty is an error.
EVENTS = (("tool_use", "Bash", None, None, None, "builtin"), ("tool_use", "Read", None, None, None, "builtin"),
          ("tool_use", "Edit", None, None, None, "builtin"), ("tool_use", "Grep", None, None, None, "builtin"),
          ("tool_use", "Skill", "sql-review", None, None, "curated"),
          ("subagent", "Task", None, "Explore", None, "builtin"),
          ("mcp_call", "mcp__warehouse__query", None, None, None, "flea"),
          ("slash_command", None, None, None, "review", "builtin"))
EVENTS_PER_SESSION = 25


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_dataset(db_path: str, env: dict, users: int, days: int, seed: int = 7) -> dict:
    """Fresh schema via the migration runner, then synthetic sessions and activity in bulk."""
    subprocess.run([str(BIN / "agnes-home"), "migrate"], env=env, check=True, capture_output=True)
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    created = _ts(now)
    emails = [ME] + [f"analyst{i:04d}@example.com" for i in range(users)]
    for email in emails:
        conn.execute("INSERT INTO users (email, name, onboarded, created_at, last_pull_at) VALUES (?, ?, 1, ?, ?)",
                     (email, email.split("@")[0], created, _ts(now - timedelta(minutes=5))))
    ids = [r[0] for r in conn.execute("SELECT id FROM users ORDER BY id")]
    messages = prompts = events = 0
    for uid in ids:
        files, summaries, msg_rows, prm_rows, evt_rows = [], [], [], [], []
        for day in range(days, 0, -1):
            day_start = now - timedelta(days=day) + timedelta(hours=8)
            for s in range(SESSIONS_PER_DAY):
                sid = f"{uid:05d}-{day:03d}-{s}"
                path = f"/bench/{uid}/{sid}.jsonl"
                fid = len(files) + 1 + uid * 100_000
                start = day_start + timedelta(hours=2 * s)
                # Stored as processed by this build: an older version would have the server's
                # worker try to reprocess every (made-up) file during the measurement.
                files.append((fid, uid, path, "cli", 1000, 1, "x", USAGE_PROCESSOR_VERSION, created, created))
                summaries.append((fid, uid, sid, _ts(start), _ts(start + timedelta(hours=1)), 3600, 3600,
                                  f"/home/u{uid}/project-{s % 3}", USAGE_PROCESSOR_VERSION, created))
                for m in range(MSGS_PER_DAY // SESSIONS_PER_DAY + (1 if s < MSGS_PER_DAY % SESSIONS_PER_DAY else 0)):
                    msg_rows.append((fid, f"msg_{uid}_{day}_{s}_{m}", uid, sid,
                                     _ts(start + timedelta(seconds=20 * m)), rng.randint(3, 40),
                                     rng.randint(20, 2500), rng.randint(5000, 120000), rng.randint(0, 8000),
                                     MODELS[m % len(MODELS)]))
                for e in range(EVENTS_PER_SESSION):
                    kind, tool, skill, agent, command, source = EVENTS[(e * 7 + uid + day) % len(EVENTS)]
                    evt_rows.append((f"evt_{sid}_{e}", fid, uid, sid, kind, tool, skill, agent, command, source,
                                     int(rng.random() < 0.05), _ts(start + timedelta(seconds=60 * e))))
                for p in range(PROMPTS_PER_DAY // SESSIONS_PER_DAY + (1 if s < PROMPTS_PER_DAY % SESSIONS_PER_DAY else 0)):
                    prm_rows.append((fid, f"uuid_{uid}_{day}_{s}_{p}", uid, sid, _ts(start + timedelta(seconds=90 * p))))
        conn.executemany("INSERT INTO session_files (id, user_id, path, origin, size, mtime_ns, content_hash, "
                         "processor_version, received_at, processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", files)
        conn.executemany("INSERT INTO session_summaries (file_id, user_id, session_id, started_at, ended_at, "
                         "active_seconds, wall_seconds, project, processor_version, extracted_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", summaries)
        conn.executemany("INSERT INTO activity_messages (file_id, message_key, user_id, session_id, ts, input_tokens, "
                         "output_tokens, cache_read_tokens, cache_creation_tokens, model) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", msg_rows)
        conn.executemany("INSERT INTO activity_prompts (file_id, prompt_key, user_id, session_id, ts) "
                         "VALUES (?, ?, ?, ?, ?)", prm_rows)
        conn.executemany("INSERT INTO usage_events (event_id, file_id, user_id, session_id, event_type, tool_name, "
                         "skill_name, subagent_type, command_name, source, is_error, ts) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", evt_rows)
        events += len(evt_rows)
        messages += len(msg_rows)
        prompts += len(prm_rows)
    conn.execute("INSERT INTO file_sessions (file_id, user_id, session_id, started_at, project, last_ts) "
                 "SELECT file_id, user_id, session_id, started_at, project, ended_at FROM session_summaries")
    conn.execute("COMMIT")
    # The per-user window tables that ingest keeps, derived by ingest's own statements.
    conn.executescript(REBUILD_WINDOWS_SCRIPT)
    # The daily tool rollups and the operators' tool aggregates, by the worker's own statements.
    conn.execute("INSERT OR IGNORE INTO rollup_dirty_days (day) SELECT DISTINCT substr(ts, 1, 10) FROM usage_events")
    conn.execute("BEGIN")
    for statement in REBUILD_ROLLUPS_SQLITE:
        conn.execute(statement, {"limit": days + 2} if ":limit" in statement else ())
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return {"users": len(ids), "days": days, "messages": messages, "prompts": prompts, "events": events,
            "schema": latest_version(), "processor_version": USAGE_PROCESSOR_VERSION}


class Server:
    """A real `agnes-home serve` (or bench/hello.py) process on a loopback port."""

    def __init__(self, cmd: list[str], env: dict, port: int, ready_path: str) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(self.base + ready_path, timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{cmd} did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _session_cookie(base: str, token: str) -> str:
    """Sign in as a browser does (POST /login with the token); the session cookie's header value."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    body = urllib.parse.urlencode({"token": token, "next": "/home"}).encode()
    try:
        urllib.request.build_opener(NoRedirect).open(base + "/login", data=body, timeout=10)
    except urllib.error.HTTPError as exc:  # the 303 to /home carries the cookie
        return exc.headers["Set-Cookie"].split(";", 1)[0]
    raise RuntimeError("sign-in did not answer 303")


def _get(url: str, token: str) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def _get_json(url: str, token: str) -> dict:
    return json.loads(_get(url, token))


def _upload(base: str, token: str, path: Path) -> int:
    import aiohttp  # noqa: PLC0415
    import asyncio  # noqa: PLC0415

    async def go() -> int:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
            form = aiohttp.FormData()
            form.add_field("file", path.read_bytes(), filename=path.name)
            async with s.post(base + "/api/upload/sessions", data=form) as r:
                await r.read()
                return r.status
    return asyncio.run(go())


def setup(work: Path, name: str, users: int, days: int, port: int, reuse: bool = False
          ) -> tuple[dict, dict, str]:
    """A dataset directory and a token for the measured user.

    With ``reuse``, a dataset an earlier run built with the same users and days, less than
    REUSE_HOURS ago, is kept (the 10x one takes ~20 minutes to build). Only for the read-only
    scaling datasets: "main" takes uploads during its run. Timestamps are relative to the build,
    and every day of activity has the same shape, so a window moved by a few hours holds as much.
    """
    d = work / name
    marker = d / "dataset.json"
    env = dict(os.environ, AGNES_DB_PATH=str(d / "agnes.db"), AGNES_DATA_DIR=str(d / "data"),
               AGNES_PORT=str(port), AGNES_HOST="127.0.0.1", AGNES_LOG_LEVEL="WARNING",
               AGNES_SCAN_INTERVAL="1")
    info = json.loads(marker.read_text()) if reuse and marker.exists() else None
    if info is None or (info["users"], info["days"]) != (users + 1, days) or (
            (info.get("schema"), info.get("processor_version")) != (latest_version(), USAGE_PROCESSOR_VERSION)) or (
            time.time() - info.get("built_at", 0) > REUSE_HOURS * 3600):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        t = time.perf_counter()
        info = build_dataset(str(d / "agnes.db"), env, users, days)
        info["build_s"] = round(time.perf_counter() - t, 1)
        info["built_at"] = time.time()
        marker.write_text(json.dumps(info))
    out = subprocess.run([str(BIN / "agnes-home"), "tokens", "issue", ME], env=env, check=True,
                         capture_output=True, text=True).stdout
    return env, info, out.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--scales", type=float, nargs="*", default=[0.01, 0.1],
                    help="other users' data relative to --users, besides 1 (the main run)")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--work", default="/tmp/agnes-bench/serve")
    ap.add_argument("--ingest-corpus", default="/tmp/agnes-bench/corpus-20mb/projects",
                    help="transcripts uploaded during the 'while ingesting' run (bench/corpus.py output)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep scaling datasets an earlier run built in the last 12 hours")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = ap.parse_args()
    work = Path(args.work)
    common.compile_service()
    res: dict = {}
    load = lambda url, hdr: loadgen.run(url, args.connections, args.seconds, hdr)  # noqa: E731

    hello = Server([sys.executable, str(ROOT / "bench" / "hello.py"), str(args.port + 1)], dict(os.environ),
                   args.port + 1, "/")
    try:
        res["hello"] = load(f"{hello.base}/", [])
    finally:
        hello.stop()
    print(json.dumps({"hello": res["hello"]}), flush=True)

    env, info, token = setup(work, "main", args.users, args.days, args.port)
    res["dataset"] = info
    auth = [f"Authorization: Bearer {token}"]
    srv = Server([str(BIN / "agnes-home"), "serve"], env, args.port, "/healthz")
    try:
        stats_url = f"{srv.base}/api/me/home-stats?window=24h"
        res["home_stats_numbers"] = _get_json(stats_url, token)
        res["home_stats"] = load(stats_url, auth)
        res["home_stats_7d"] = load(f"{srv.base}/api/me/home-stats?window=7d", auth)
        res["home_page"] = load(f"{srv.base}/home", auth)
        res["home_page_cookie"] = load(f"{srv.base}/home", [f"Cookie: {_session_cookie(srv.base, token)}"])
        print(json.dumps({k: res[k] for k in ("dataset", "home_stats", "home_stats_7d", "home_page", "home_page_cookie")}),
              flush=True)

        # home-stats while the server ingests a bulk upload (its worker parses, its loop serves).
        files = sorted(Path(args.ingest_corpus).rglob("*.jsonl"))
        if not files:
            corpus.generate(str(Path(args.ingest_corpus).parent), 20, 1)
            files = sorted(Path(args.ingest_corpus).rglob("*.jsonl"))
        uploaded: list[int] = []

        upload_span: list[float] = []

        def uploader() -> None:
            t0 = time.perf_counter()
            for f in files:
                uploaded.append(_upload(srv.base, token, f))
            upload_span.append(time.perf_counter() - t0)

        th = threading.Thread(target=uploader)
        th.start()
        time.sleep(0.2)
        res["home_stats_during_ingest"] = load(stats_url, auth)
        th.join()
        res["home_stats_during_ingest"]["uploads"] = len(uploaded)
        res["home_stats_during_ingest"]["upload_statuses"] = sorted(set(uploaded))
        res["home_stats_during_ingest"]["upload_mb"] = round(sum(f.stat().st_size for f in files) / 1e6, 1)
        # Uploads are processed as they arrive, so this is (nearly) the span of the ingest
        # inside the load window.
        res["home_stats_during_ingest"]["uploads_s"] = round(upload_span[0], 2) if upload_span else None

        # A 5 MB session with fresh timestamps: how long until home-stats shows its tokens.
        fresh = work / "fresh"
        fresh.mkdir(exist_ok=True)
        rng = random.Random(5)
        path = fresh / "fresh-5mb.jsonl"
        corpus.write_session(rng, corpus._text_pool(random.Random(6), 600_000), str(path), "fresh-5mb-session",
                             "/home/me/fresh", datetime.now(timezone.utc) - timedelta(minutes=50), 5_000_000)
        time.sleep(2)  # let the bulk upload's queue drain first
        before = _get_json(stats_url, token)["tokens"]["total"]
        t = time.perf_counter()
        status = _upload(srv.base, token, path)
        seen = None
        while time.perf_counter() - t < 30:
            if _get_json(stats_url, token)["tokens"]["total"] != before:
                seen = time.perf_counter() - t
                break
            time.sleep(0.02)
        res["fresh_upload"] = {"mb": round(path.stat().st_size / 1e6, 2), "status": status,
                               "visible_after_s": round(seen, 3) if seen is not None else None}
        print(json.dumps({k: res[k] for k in ("home_stats_during_ingest", "fresh_upload")}), flush=True)
    finally:
        srv.stop()

    # The same two reads with the read cache off: every request reads the database (the path a
    # request takes after any commit, e.g. while ingest runs), and the one that could grow with data.
    srv = Server([str(BIN / "agnes-home"), "serve"], dict(env, AGNES_READ_CACHE="0"), args.port, "/healthz")
    try:
        res["home_stats_uncached"] = load(stats_url, auth)
        res["home_page_uncached"] = load(f"{srv.base}/home", auth)
        print(json.dumps({k: res[k] for k in ("home_stats_uncached", "home_page_uncached")}), flush=True)
    finally:
        srv.stop()

    # The measured user's p50 as the other users' data grows, reading the database every time.
    res["scaling"] = [{"scale": 1.0, "other_messages": info["messages"],
                       "p50_ms": res["home_stats_uncached"]["p50_ms"], "p99_ms": res["home_stats_uncached"]["p99_ms"],
                       "rps": res["home_stats_uncached"]["rps"]}]
    for scale in args.scales:
        n = max(1, round(args.users * scale))
        env_s, info_s, token_s = setup(work, f"scale-{scale:g}", n, args.days, args.port + 2, args.reuse)
        env_s["AGNES_READ_CACHE"] = "0"
        srv = Server([str(BIN / "agnes-home"), "serve"], env_s, args.port + 2, "/healthz")
        try:
            r = load(f"{srv.base}/api/me/home-stats?window=24h", [f"Authorization: Bearer {token_s}"])
        finally:
            srv.stop()
        res["scaling"].append({"scale": scale, "other_messages": info_s["messages"], "p50_ms": r["p50_ms"],
                               "p99_ms": r["p99_ms"], "rps": r["rps"]})
    res["scaling"].sort(key=lambda r: r["scale"])
    print(json.dumps({"scaling": res["scaling"]}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
