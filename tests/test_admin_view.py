"""The operators' view of the team (issue 22): /admin, /api/admin/usage and an analyst's activity as an
operator sees it, on the samples' three analysts, hand-checked; 403 for everyone else; privacy mode."""

from __future__ import annotations

import csv
import io
import re

import pytest

from service import keys
from service.app import create_app
from service.config import load_settings
from service.store import ingest as ingest_store

from tests.conftest import NOW, SAMPLE_USERS, ingest_files, make_caller, sample_files

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _seed(client) -> dict:
    db = client.app[keys.DB]
    client.app[keys.CLOCK].fixed = NOW
    found = {}
    for name in SAMPLE_USERS:
        found[name] = await make_caller(db, f"{name}@example.com", name=name.title())
        await ingest_files(db, found[name].user.id, sample_files(name))
    await ingest_store.rebuild_rollups(db)
    found["ops"] = await make_caller(db, "ops@example.com", name="Opal Operator")
    return found


@pytest.fixture
async def seeded(client):
    return await _seed(client)


async def test_smoke(client, seeded):
    resp = await client.get("/api/admin/usage?range=7d", headers=seeded["ops"].headers)
    assert resp.status == 200, await resp.text()
    page = await client.get("/admin", headers=seeded["ops"].headers)
    assert page.status == 200, await page.text()
    alice = seeded["alice"].user.id
    page = await client.get(f"/admin/analysts/{alice}/activity", headers=seeded["ops"].headers)
    assert page.status == 200, await page.text()
