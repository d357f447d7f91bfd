"""Health checks: liveness without the database, readiness naming the failed check."""

from __future__ import annotations

import asyncio
import time

from service import keys
from service.migrations import latest_version


async def test_healthz_needs_no_auth(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_healthz_works_with_the_database_closed(client):
    await client.app[keys.DB].close()
    assert (await client.get("/healthz")).status == 200


async def test_api_health_offers_gzip_uploads_without_a_credential_or_the_database(client):
    # `agnes push` (0.84.8) gzips only when this answer carries the capability; it sends its token,
    # a bad one included, and the probe must answer regardless.
    await client.app[keys.DB].close()
    for headers in ({}, {"Authorization": "Bearer agnes_pat_wrong"}):
        resp = await client.get("/api/health", headers=headers)
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
        assert resp.headers["X-Agnes-Accepts"] == "session-gzip"


async def test_readyz_ok(client):
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["checks"]["database"] == "ok" and body["checks"]["schema"] == "ok"


async def test_readyz_names_an_old_schema(client):
    db = client.app[keys.DB]
    async with db.writing() as conn:  # not inside a transaction the worker may hold
        await conn.execute(f"PRAGMA user_version = {latest_version() - 1}" if db.dialect == "sqlite" else
                           f"UPDATE schema_version SET version = {latest_version() - 1}")
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failed"] == ["schema"]
    assert f"expected {latest_version()}" in body["detail"]


async def test_readyz_names_a_stopped_worker(client):
    await client.app[keys.WORKER].stop()
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failed"] == ["worker"] and body["code"] == "not_ready"
    assert "worker: not running" in body["detail"]


async def test_readyz_names_a_worker_without_a_recent_heartbeat(client):
    worker = client.app[keys.WORKER]
    # After the start-up tick, which stamps its heartbeat as it ends (under load it can still be
    # running here, and would overwrite the old stamp); the next is scan_interval (30 s) away.
    await asyncio.wait_for(worker.ticked.wait(), 30)
    worker.last_beat = time.monotonic() - 3600
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failed"] == ["worker"] and "worker: no heartbeat for 3600s" in body["detail"]


async def test_readyz_names_an_unreachable_database(client):
    await client.app[keys.DB].close()
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failed"] == ["database", "schema"] and body["checks"]["database"].startswith("unreachable")
