"""The activity pages' speed: /api/me/activity (7d, 30d, 90d), /api/me/sessions and /activity
against a hello-world aiohttp handler, on serve_bench's dataset (200 analysts x 60 days).

    python bench/activity_bench.py [--users 200] [--days 60] [--seconds 8] [--reuse]

Issue targets: /api/me/activity?range=30d at >= 25% of hello-world's requests per second at 32
connections and p99 < 20 ms at 8; /activity >= 10%; 90d no slower than 2x 7d. Each is measured with
the read cache on and again off (AGNES_READ_CACHE=0: every request reads and sums afresh).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import loadgen  # noqa: E402
from serve_bench import BIN, Server, _get_json, setup  # noqa: E402


def main() -> None:
    args = common.dataset_args(__doc__, port=18180, work="/tmp/agnes-bench/serve",
                               out=str(ROOT / "bench" / "results" / "activity.json"))
    common.compile_service()
    res: dict = {}
    hello = Server([sys.executable, str(ROOT / "bench" / "hello.py"), str(args.port + 1)], dict(os.environ),
                   args.port + 1, "/")
    try:
        res["hello"] = loadgen.run(f"{hello.base}/", 32, args.seconds, [])
    finally:
        hello.stop()
    print(json.dumps({"hello": res["hello"]}), flush=True)
    # Read-only: the scaling dataset of serve_bench at scale 1 may be reused.
    env, info, token = setup(Path(args.work), "activity", args.users, args.days, args.port, args.reuse)
    res["dataset"] = info
    auth = [f"Authorization: Bearer {token}"]
    for cache in ("1", "0"):
        env["AGNES_READ_CACHE"] = cache
        srv = Server([str(BIN / "agnes-home"), "serve"], env, args.port, "/healthz")
        part: dict = {}
        try:
            base = srv.base
            part["numbers_30d"] = _get_json(f"{base}/api/me/activity?range=30d", token)["totals"]
            for rng in ("7d", "30d", "90d"):
                part[f"activity_{rng}"] = loadgen.run(f"{base}/api/me/activity?range={rng}", 32, args.seconds, auth)
            part["activity_30d_8conn"] = loadgen.run(f"{base}/api/me/activity?range=30d", 8, args.seconds, auth)
            part["sessions_30d"] = loadgen.run(f"{base}/api/me/sessions?range=30d", 32, args.seconds, auth)
            part["activity_page_30d"] = loadgen.run(f"{base}/activity?range=30d", 32, args.seconds, auth)
        finally:
            srv.stop()
        hello_rps = res["hello"]["rps"]
        part["ratios"] = {
            "activity_30d_vs_hello": round(part["activity_30d"]["rps"] / hello_rps, 3),
            "activity_page_vs_hello": round(part["activity_page_30d"]["rps"] / hello_rps, 3),
            "p99_30d_8conn_ms": part["activity_30d_8conn"]["p99_ms"],
            "p50_90d_vs_7d": round(part["activity_90d"]["p50_ms"] / max(part["activity_7d"]["p50_ms"], 1e-9), 2),
        }
        res["cache_on" if cache == "1" else "cache_off"] = part
        print(json.dumps({("cache_on" if cache == "1" else "cache_off"): part["ratios"]}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
