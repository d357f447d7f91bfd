"""Operator endpoints: only AGNES_ADMIN_EMAILS may force a reprocess or release quarantined files."""

from __future__ import annotations

import pytest

from service import ingest, keys
from service.app import create_app
from service.config import load_settings
from service.store import ingest as store
from tests.conftest import NOW, ingest_files, make_caller, sample_files


@pytest.fixture
async def admin_client(database_url, aiohttp_client, tmp_path):
    settings = load_settings(environ={}, database_url=database_url,
                             db_path=str(tmp_path / "a.db"), data_dir=str(tmp_path / "d"),
                             secret_key="s", parse_workers=0, admin_emails=["Ops@Example.com"])
    return await aiohttp_client(create_app(settings))


async def test_only_operators_may_call_admin_routes(admin_client):
    db = admin_client.app[keys.DB]
    analyst = await make_caller(db, "ana@example.com")
    for method, path in (("POST", "/api/admin/reprocess"), ("GET", "/api/admin/quarantine"),
                         ("POST", "/api/admin/quarantine/retry")):
        resp = await admin_client.request(method, path, headers=analyst.headers)
        assert resp.status == 403 and (await resp.json())["code"] == "admin_only", path
        assert (await admin_client.request(method, path)).status == 401


async def test_reprocess_and_quarantine_round_trip(admin_client, tmp_path):
    db = admin_client.app[keys.DB]
    ops = await make_caller(db, "ops@example.com")
    ana = await make_caller(db, "ana@example.com")
    await ingest_files(db, ana.user.id, sample_files("bob"))
    resp = await admin_client.post("/api/admin/reprocess", json={"user": "ana@example.com"}, headers=ops.headers)
    assert await resp.json() == {"status": "ok", "files": 5}
    assert await store.stale_files(db, ingest.USAGE_PROCESSOR_VERSION, 10) != []
    resp = await admin_client.post("/api/admin/reprocess", json={"user": "nobody@example.com"}, headers=ops.headers)
    assert resp.status == 404
    resp = await admin_client.post("/api/admin/reprocess", json={"users": "x"}, headers=ops.headers)
    assert resp.status == 400 and "users" in (await resp.json())["detail"]

    file_id = (await store.register_files(db, ana.user.id, [str(tmp_path / "gone.jsonl")], "cli", NOW))[0]
    await db.execute_write("UPDATE session_files SET quarantined_at = ?, failure_count = 5, last_error = 'boom' "
                           "WHERE id = ?", ("2026-11-21T00:00:00.000000Z", file_id))
    listed = await (await admin_client.get("/api/admin/quarantine", headers=ops.headers)).json()
    assert listed == {"files": [{"id": file_id, "email": "ana@example.com", "path": str(tmp_path / "gone.jsonl"),
                                 "failure_count": 5, "last_error": "boom",
                                 "quarantined_at": "2026-11-21T00:00:00Z"}]}
    for bad in (2**63, 0, -1):  # past SQLite's integers, or not an id at all: 400 naming the field
        resp = await admin_client.post("/api/admin/quarantine/retry", json={"id": bad}, headers=ops.headers)
        assert resp.status == 400 and "$.id" in (await resp.json())["detail"], bad
    resp = await admin_client.post("/api/admin/quarantine/retry", headers=ops.headers)
    assert await resp.json() == {"status": "ok", "released": [file_id]}
    assert await (await admin_client.get("/api/admin/quarantine", headers=ops.headers)).json() == {"files": []}
