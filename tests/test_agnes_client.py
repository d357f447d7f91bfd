"""The real `agnes` client's exact sequences against the running app over loopback HTTP."""

from __future__ import annotations

import hashlib
import re

import aiohttp
import pytest

from service.store import tables, users
from tests.agnes_client import CHUNK_THRESHOLD, AgnesClient, ClientFailure
from tests.conftest import SAMPLES, make_caller


@pytest.fixture
async def server(client):
    return client


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def base_url(client) -> str:
    return str(client.make_url("/")).rstrip("/")


@pytest.fixture
async def datasets(db, settings):
    from pathlib import Path

    folder = Path(settings.data_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    small = folder / "customers.csv"
    small.write_bytes(b"id,name\n" + b"".join(b"%d,customer %d\n" % (i, i) for i in range(2000)))
    big = folder / "events.bin"
    # Just over the client's 50 MiB threshold, with content that differs per chunk.
    block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    with open(big, "wb") as fh:
        for i in range(50):
            fh.write(bytes([i]) + block[1:])
        fh.write(b"tail" * 1000)
    assert big.stat().st_size > CHUNK_THRESHOLD
    remote = folder / "warehouse.csv"
    remote.write_bytes(b"x\n")
    await tables.register(db, "customers", "tables/customers.csv", rows=2000, public=True)
    await tables.register(db, "events", "tables/events.bin", rows=None, public=True)
    await tables.register(db, "warehouse", "tables/warehouse.csv", rows=None, query_mode="remote", public=True)
    return {"customers": small.read_bytes(), "events": big}


async def test_pull_with_head_probe_and_parallel_ranges(client, session, alice, datasets):
    agnes = AgnesClient(session, base_url(client), alice.token)
    result = await agnes.pull()
    assert result.fetched["customers"] == datasets["customers"]
    assert hashlib.md5(result.fetched["events"]).hexdigest() == hashlib.md5(datasets["events"].read_bytes()).hexdigest()
    assert result.skipped_remote == ["warehouse"]
    assert result.memory == {"mandatory": [], "approved": []}
    calls = [(m, p, s) for m, p, s in result.requests]
    assert ("HEAD", "/api/data/customers/download", 200) in calls
    assert ("HEAD", "/api/data/events/download", 200) in calls
    assert calls.count(("GET", "/api/data/events/download", 206)) == 4
    assert calls.count(("GET", "/api/data/customers/download", 200)) == 1
    assert calls[0] == ("GET", "/cli/latest", 200)
    assert calls[-1] == ("GET", "/api/memory/bundle", 200)


async def test_pull_falls_back_to_a_range_probe_when_head_fails(client, session, alice, datasets):
    agnes = AgnesClient(session, base_url(client), alice.token, head_works=False)
    result = await agnes.pull()
    assert result.fetched["customers"] == datasets["customers"]
    assert ("GET", "/api/data/customers/download", 206) in result.requests
    assert not [c for c in result.requests if c[0] == "HEAD"]


async def test_cli_latest_sends_no_version_gate(client):
    resp = await client.get("/cli/latest")
    assert resp.status == 200 and await resp.json() == {"version": None}
    assert "X-Agnes-Min-Version" not in resp.headers and "X-Agnes-Latest-Version" not in resp.headers


async def test_push_uploads_exactly_as_the_client_expects(client, session, alice, db):
    agnes = AgnesClient(session, base_url(client), alice.token)
    sample = SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl"
    assert await agnes.push(sample, local_md="# My notes\nPrefer EU tables.\n") == "sent"
    assert await tables.local_md(db, alice.user.id) == "# My notes\nPrefer EU tables.\n"


async def test_push_drops_bad_names_for_good(client, session, alice, tmp_path):
    bad = tmp_path / "bad name!.jsonl"
    bad.write_text("{}\n")
    agnes = AgnesClient(session, base_url(client), alice.token)
    assert await agnes.push(bad) == "dropped"


async def test_bad_token_fails_with_a_printable_detail(client, session):
    agnes = AgnesClient(session, base_url(client), "agnes_pat_not-a-real-token")
    with pytest.raises(ClientFailure) as info:
        await agnes.pull()
    assert info.value.status == 401 and "Bearer" in info.value.detail


async def test_onboarded_on_off_and_status(client, session, db):
    caller = await make_caller(db, "newbie@example.com", onboarded=False)
    agnes = AgnesClient(session, base_url(client), caller.token)
    assert await agnes.onboarded_status() is False
    assert await agnes.onboarded(True) is True
    assert await agnes.onboarded_status() is True
    assert await agnes.onboarded(False) is False
    assert await agnes.onboarded_status() is False
    audit = [(r["action"], r["source"]) for r in await users.audit_rows(db, caller.user.id)
             if r["action"] in ("onboarded", "offboarded")]
    assert audit == [("onboarded", "self_acknowledged"), ("offboarded", "self_unmark")]


async def test_status_falls_back_to_the_home_page(client, session, db, monkeypatch):
    caller = await make_caller(db, "fallback@example.com", onboarded=True)
    agnes = AgnesClient(session, base_url(client), caller.token)

    original = agnes._call

    async def profile_broken(method, path, **kw):
        if path == "/api/me/profile":
            raise ClientFailure(502, "bad gateway")
        return await original(method, path, **kw)

    monkeypatch.setattr(agnes, "_call", profile_broken)
    assert await agnes.onboarded_status() is True


async def test_init_leaves_the_analyst_onboarded(client, session, db, datasets):
    caller = await make_caller(db, "fresh@example.com", onboarded=False)
    agnes = AgnesClient(session, base_url(client), caller.token)
    claude_md = await agnes.init("https://agnes.example.com")
    assert "https://agnes.example.com" in claude_md and "agnes pull" in claude_md
    user = await users.get_user(db, caller.user.id)
    assert user.onboarded is True and user.last_pull_at is not None
    paths = [p for _, p, _ in agnes.log]
    assert paths[:4] == ["/api/catalog/tables", "/api/initial-workspace", "/api/welcome", "/cli/latest"]
    assert ("GET", "/api/initial-workspace", 404) in agnes.log
    assert paths[-1] == "/api/me/onboarded"
    audit = [(r["action"], r["source"]) for r in await users.audit_rows(db, caller.user.id)]
    assert ("onboarded", "agnes_init") in audit


async def test_after_a_pull_last_sync_is_just_now(client, session, alice):
    agnes = AgnesClient(session, base_url(client), alice.token)
    await agnes.pull()
    stats = await (await client.get("/api/me/home-stats", headers=alice.headers)).json()
    from service.timeutil import from_store, utcnow

    assert 0 <= (utcnow() - from_store(stats["last_pull_at"])).total_seconds() < 1
    page = await (await client.get("/home", headers=alice.headers)).text()
    assert re.search(r"just now", page)
