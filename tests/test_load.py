"""A short run of bench/load.py against the real server while its worker ingests a watched directory."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_cli import ROOT
from tests.test_crash_safety import Server, make_corpus, progress, seed

DURATION, CONNECTIONS = 5, 20


def test_mixed_load_during_a_bulk_ingest_has_no_5xx_and_loses_no_upload(tmp_path):
    watched = tmp_path / "watched"
    files = make_corpus(watched / "alice", copies=100, pad=100_000)
    tokens = seed(tmp_path, ["alice@example.com", "load1@example.com", "load2@example.com", "load3@example.com"])
    load_tokens = [t for email, t in tokens.items() if email.startswith("load")]
    server = Server(tmp_path, AGNES_SESSION_DIR=str(watched), AGNES_SCAN_INTERVAL="0.5", AGNES_PARSE_WORKERS="1",
                    AGNES_LOG_LEVEL="WARNING")
    try:
        server.wait_ready()
        at_start = progress(tmp_path / "cli.db")[0]
        cmd = [sys.executable, str(ROOT / "bench" / "load.py"), "--base-url", server.base, "--duration", str(DURATION),
               "--connections", str(CONNECTIONS), "--settle", "30", "--seed", "3"]
        for token in load_tokens:
            cmd += ["--token", token]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DURATION + 60)
        at_end = progress(tmp_path / "cli.db")[0]
        assert server.proc.poll() is None, server.tail()
    finally:
        server.stop()
        server.reap_group()
    assert done.stdout, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], done.stdout[-3000:]
    # The bulk ingest was still under way when the load began (uploads go first in the worker's
    # queue, so it advances only between them).
    assert at_start < files and at_start <= at_end, (at_start, at_end, files)
    assert report["server_errors"] == 0 and report["transport_errors"] == {}
    routes = report["by_route"]
    assert set(routes) == {"GET /home", "GET /api/me/home-stats", "GET /api/sync/manifest", "GET /api/me",
                           "POST /api/upload/sessions"}
    for label, route in routes.items():
        assert route["statuses"] == {"200": route["count"]} and route["count"] > 0, (label, route)
        assert route["p99_ms"] is not None
    uploads = report["uploads"]
    assert uploads["sent"] == uploads["ok"] == uploads["processed"] > 0 and uploads["lost"] == 0, uploads
    assert report["latency"]["p99_ms"] is not None and report["requests"] > 100
    print(f"{report['requests']} requests in {report['duration_s']}s, p50 {report['latency']['p50_ms']} ms, "
          f"p99 {report['latency']['p99_ms']} ms, {uploads['ok']} uploads all processed "
          f"(settled in {uploads['settle_s']}s), ingest {at_start}->{at_end} of {files} files")
