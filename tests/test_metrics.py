"""GET /metrics in Prometheus text, and /readyz watching the ingest worker."""

from __future__ import annotations

import io
import re

import aiohttp
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
    assert 3 <= m[("agnes_db_reads_total", (("path", "inline"),))] <= db.inline_reads  # each bearer request reads
    assert m[("agnes_db_reads_total", (("path", "thread"),))] <= db.thread_reads


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
