"""Health checks: liveness without the database, readiness naming the failed check."""

from __future__ import annotations

from service import keys
from service.migrations import latest_version


async def test_healthz_needs_no_auth(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_healthz_works_with_the_database_closed(client):
    await client.app[keys.DB].close()
    assert (await client.get("/healthz")).status == 200


async def test_readyz_ok(client):
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["checks"]["database"] == "ok" and body["checks"]["schema"] == "ok"


async def test_readyz_names_an_old_schema(client):
    db = client.app[keys.DB]
    async with db.writing() as conn:  # not inside a transaction the worker may hold
        await conn.execute(f"PRAGMA user_version = {latest_version() - 1}")
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failed"] == ["schema"]
    assert f"expected {latest_version()}" in body["detail"]
