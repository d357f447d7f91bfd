"""GET /metrics in Prometheus text, and /readyz watching the ingest worker."""

from __future__ import annotations

import io
import re

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import ingest, keys
from tests.conftest import SAMPLES


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_request_metrics_by_route_pattern_and_status(client, alice):
    await client.get("/api/me", headers=alice.headers)
    await client.get("/api/me", headers=alice.headers)
    await client.get("/api/me")
    await client.get("/api/data/some-table/download", headers=alice.headers)
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    m = samples_of(await resp.text())
    assert m[("agnes_http_requests_total", (("method", "GET"), ("route", "/api/me"), ("status", "200")))] == 2
    assert m[("agnes_http_requests_total", (("method", "GET"), ("route", "/api/me"), ("status", "401")))] == 1
    # The pattern, not the raw path, so label values stay bounded.
    key = ("agnes_http_requests_total", (("method", "GET"), ("route", "/api/data/{table_id}/download"),
                                         ("status", "404")))
    assert m[key] == 1
    assert m[("agnes_http_request_duration_seconds_count", (("method", "GET"), ("route", "/api/me")))] == 3
    assert m[("agnes_usage_processor_version", ())] == ingest.USAGE_PROCESSOR_VERSION
    db = client.app[keys.DB]  # (the worker may read between the scrape and these lines)
    # The first bearer request reads its token (later ones may be answered from the read cache).
    if db.dialect == "sqlite":  # PostgreSQL's reads all go to its pool: neither inline nor on a thread
        assert 1 <= m[("agnes_db_reads_total", (("path", "inline"),))] <= db.inline_reads
    assert m[("agnes_db_reads_total", (("path", "thread"),))] <= db.thread_reads


def test_latency_buckets_count_a_request_at_its_bound_and_above():
    """Prometheus buckets are cumulative and "le" is inclusive: 1 ms lands in le=0.001."""
    from service.web.metrics import Metrics

    metrics = Metrics()
    for seconds in (0.001, 0.0010001, 0.3, 30.0):
        metrics.observe_request("GET", "/x", 200, seconds)
    metrics.observe_request("GET", "/x", 404, 0.002)
    m = samples_of(metrics.render().decode())
    bucket = lambda le: m[("agnes_http_request_duration_seconds_bucket",  # noqa: E731
                           (("le", le), ("method", "GET"), ("route", "/x")))]
    assert [bucket(le) for le in ("0.001", "0.0025", "0.25", "0.5", "10.0", "+Inf")] == [1, 3, 3, 4, 4, 5]
    assert m[("agnes_http_request_duration_seconds_count", (("method", "GET"), ("route", "/x")))] == 5
    assert m[("agnes_http_request_duration_seconds_sum", (("method", "GET"), ("route", "/x")))] == pytest.approx(30.3040001)
    assert m[("agnes_http_requests_total", (("method", "GET"), ("route", "/x"), ("status", "200")))] == 4
    assert m[("agnes_http_requests_total", (("method", "GET"), ("route", "/x"), ("status", "404")))] == 1
    # Creation times, as the library's own Counter and Histogram export them.
    assert m[("agnes_http_requests_created", (("method", "GET"), ("route", "/x"), ("status", "404")))] > 1.7e9
    assert m[("agnes_http_request_duration_seconds_created", (("method", "GET"), ("route", "/x")))] > 1.7e9


async def test_ingest_metrics_after_an_upload(client, alice):
    raw = (SAMPLES / "bob" / "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d.jsonl").read_bytes()
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(raw), filename="s.jsonl")
    assert (await client.post("/api/upload/sessions", data=form, headers=alice.headers)).status == 200
    await client.app[keys.WORKER].drain()
    m = samples_of(await (await client.get("/metrics")).text())
    assert m[("agnes_ingest_files_total", (("outcome", "processed"),))] == 1
    assert m[("agnes_ingest_lines_total", ())] == 10
    assert m[("agnes_ingest_skipped_lines_total", ())] == 6
    assert m[("agnes_ingest_bytes_total", ())] == len(raw)
    assert m[("agnes_ingest_queue_depth", ())] == 0
    assert m[("agnes_ingest_lag_seconds", ())] == 0
    assert m[("agnes_ingest_quarantined_files", ())] == 0


async def test_readyz_names_a_stopped_worker(client):
    assert (await client.get("/readyz")).status == 200
    await client.app[keys.WORKER].stop()
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failed"] == ["worker"] and "worker: not running" in body["detail"]


async def test_readyz_names_a_stale_heartbeat(client):
    worker = client.app[keys.WORKER]
    await worker.ticked.wait()  # the start-up tick is done; the next is scan_interval away
    worker.last_beat -= 3600
    body = await (await client.get("/readyz")).json()
    assert body["failed"] == ["worker"]
    assert re.search(r"no heartbeat for \d+s", body["checks"]["worker"])


async def test_ranged_and_conditional_downloads_are_counted_and_logged_with_the_status_sent(
        client, alice, db, settings, caplog):
    from pathlib import Path

    from service.store import tables

    caplog.set_level("INFO", logger="service.access")
    folder = Path(settings.data_dir) / "tables"
    folder.mkdir(parents=True)
    (folder / "t.csv").write_bytes(b"id\n" + b"1\n" * 100)
    await tables.register(db, "t", "tables/t.csv", rows=100, public=True)
    path = "/api/data/t/download"
    whole = await client.get(path, headers=alice.headers)
    etag = whole.headers["ETag"]
    answers = [whole.status]
    for extra in ({"Range": "bytes=0-0"}, {"Range": "bytes=10-19"}, {"Range": "bytes=999-"},
                  {"If-None-Match": etag}, {"If-Match": '"other"'}):
        answers.append((await client.get(path, headers={**alice.headers, **extra})).status)
    answers.append((await client.head(path, headers={**alice.headers, "Range": "bytes=0-0"})).status)
    assert answers == [200, 206, 206, 416, 304, 412, 206]
    counts = client.app[keys.METRICS].request_counts()
    route = "/api/data/{table_id}/download"
    assert {s: counts.get(("GET", route, s)) for s in (200, 206, 304, 412, 416)} == \
        {200: 1, 206: 2, 304: 1, 412: 1, 416: 1}
    assert counts[("HEAD", route, 206)] == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "service.access" and "/api/data/t" in r.getMessage()]
    assert [line.split()[2] for line in logged] == ["200", "206", "206", "416", "304", "412", "206"]


async def test_files_ingested_by_the_cli_show_in_the_servers_metrics(client, alice, settings):
    """`agnes-home ingest` runs in its own process: /metrics stayed at zero after it. The stored
    files, by origin, are read from the database, so every process's ingests count."""
    import asyncio
    import os
    import subprocess
    import sys

    files = sorted((SAMPLES / "alice").glob("*.jsonl"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AGNES_DB_PATH": settings.db_path,
           "AGNES_DATABASE_URL": settings.database_url, "AGNES_DATA_DIR": settings.data_dir,
           "AGNES_PARSE_WORKERS": "0"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "service.cli", "ingest", *map(str, files), "--user", alice.user.email],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    m = samples_of(await (await client.get("/metrics")).text())
    assert m[("agnes_stored_files", (("origin", "cli"),))] == len(files)
    assert m[("agnes_stored_bytes", (("origin", "cli"),))] == sum(f.stat().st_size for f in files)
    assert m[("agnes_stored_files", (("origin", "upload"),))] == 0
    # The worker's own counters are this process's, and say nothing about the CLI's run.
    assert m.get(("agnes_ingest_files_total", (("outcome", "processed"),)), 0) == 0
