"""The real `agnes` client's exact sequences against the running app over loopback HTTP."""

from __future__ import annotations

import hashlib
import re

import aiohttp
import pytest

from service import keys
from service.store import tables, users
from service.timeutil import from_store
from tests.agnes_client import CHUNK_THRESHOLD, CURRENT, LEGACY, AgnesClient, ClientFailure, encode_workspace
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


@pytest.mark.parametrize("version", [LEGACY, CURRENT])
async def test_status_falls_back_to_the_home_page(client, session, db, monkeypatch, version):
    # 0.84.8 looks for class="offboard-strip", 0.54.9 for the button's text; neither is on the hero.
    for onboarded in (True, False):
        caller = await make_caller(db, f"fallback-{onboarded}@example.com", onboarded=onboarded)
        agnes = AgnesClient(session, base_url(client), caller.token, version=version)
        original = agnes._call

        async def profile_broken(method, path, _original=original, **kw):
            if path == "/api/me/profile":
                raise ClientFailure(502, "bad gateway")
            return await _original(method, path, **kw)

        monkeypatch.setattr(agnes, "_call", profile_broken)
        assert await agnes.onboarded_status() is onboarded


@pytest.mark.parametrize("version", [LEGACY, CURRENT])
async def test_agnes_catalog_lists_the_tables(client, session, alice, datasets, version):
    agnes = AgnesClient(session, base_url(client), alice.token, version=version)
    code, catalog = await agnes.catalog()
    assert code == 0
    # What cli/commands/catalog.py prints: id, source_type and query_mode as text; name, entity_type optional.
    assert [(t["id"], t["query_mode"], t["source_type"]) for t in catalog["tables"]] == \
        [("customers", "local", ""), ("events", "local", ""), ("warehouse", "remote", "")]


async def test_welcome_says_where_tables_land_and_how_to_query_them(client, session, alice):
    text = await AgnesClient(session, base_url(client), alice.token, version=CURRENT).welcome("https://a.example")
    assert "`server/parquet/`" in text and 'agnes query "SELECT' in text and "./data/" not in text


@pytest.mark.parametrize("version", [LEGACY, CURRENT])
async def test_init_onboards_the_analyst_on_the_first_welcome_fetch(client, session, db, datasets, version):
    caller = await make_caller(db, "fresh@example.com", onboarded=False)
    agnes = AgnesClient(session, base_url(client), caller.token, version=version)
    claude_md = await agnes.init("https://agnes.example.com")
    assert "https://agnes.example.com" in claude_md and "agnes pull" in claude_md
    user = await users.get_user(db, caller.user.id)
    assert user.onboarded is True and user.last_pull_at is not None
    paths = [p for _, p, _ in agnes.log]
    assert paths[:4] == ["/api/catalog/tables", "/api/initial-workspace", "/api/welcome", "/cli/latest"]
    assert ("GET", "/api/initial-workspace", 404) in agnes.log
    # Neither release posts /api/me/onboarded: the welcome fetch is what onboarded them.
    assert "/api/me/onboarded" not in paths
    assert paths[-1] == ("/api/sync/pull-confirm" if version == CURRENT else "/api/memory/bundle")
    audit = [(r["action"], r["source"], r["detail"]) for r in await users.audit_rows(db, caller.user.id)
             if r["action"] in ("onboarded", "offboarded")]
    assert audit == [("onboarded", "agnes_init", "first GET /api/welcome")]
    assert await agnes.onboarded_status() is True


async def test_agnes_update_at_every_session_start_never_undoes_onboarded_off(client, session, db, tmp_path):
    caller = await make_caller(db, "leaver@example.com", onboarded=False)
    agnes = AgnesClient(session, base_url(client), caller.token, version=CURRENT)
    await agnes.init("https://agnes.example.com")
    assert await agnes.onboarded(False) is False
    for _ in range(3):  # three Claude Code session starts
        await agnes.update_quiet("https://agnes.example.com", tmp_path / "projects", tmp_path / "ws")
    assert (await users.get_user(db, caller.user.id)).onboarded is False
    assert await agnes.onboarded_status() is False
    audit = [(r["action"], r["source"]) for r in await users.audit_rows(db, caller.user.id)
             if r["action"] in ("onboarded", "offboarded")]
    assert audit == [("onboarded", "agnes_init"), ("offboarded", "self_unmark")]


async def test_a_welcome_fetch_after_any_onboarding_record_changes_nothing(client, session, db):
    # Marked on, then off, by hand before ever running init: the record says they chose; init keeps it.
    caller = await make_caller(db, "choosy@example.com", onboarded=False)
    agnes = AgnesClient(session, base_url(client), caller.token, version=CURRENT)
    await agnes.onboarded(True)
    await agnes.onboarded(False)
    await agnes.welcome("https://agnes.example.com")
    assert (await users.get_user(db, caller.user.id)).onboarded is False
    # One onboarded by the operator (`users add --onboarded`) gets no second record either.
    operator_made = await make_caller(db, "made@example.com", onboarded=True)
    await AgnesClient(session, base_url(client), operator_made.token).welcome("https://agnes.example.com")
    assert [r["action"] for r in await users.audit_rows(db, operator_made.user.id)] == ["user_added", "token_issued"]


async def test_a_browser_fetching_welcome_with_its_cookie_is_not_onboarded(client, db):
    # Another site can make a signed-in browser GET any URL: only the client's bearer token onboards.
    caller = await make_caller(db, "browser@example.com", onboarded=False)
    resp = await client.post("/login", data={"token": caller.token}, allow_redirects=False)
    assert resp.status == 303
    resp = await client.get("/api/welcome?server_url=https://agnes.example.com")
    assert resp.status == 200 and "agnes pull" in (await resp.json())["content"]
    assert (await users.get_user(db, caller.user.id)).onboarded is False
    assert not await users.has_onboarding_record(db, caller.user.id)
    # Nor does a HEAD with the token (aiohttp answers HEAD on GET routes; the client never sends one).
    resp = await client.head("/api/welcome", headers={"Authorization": f"Bearer {caller.token}"})
    assert resp.status == 200 and (await users.get_user(db, caller.user.id)).onboarded is False


async def test_after_a_pull_last_sync_is_just_now(client, session, alice):
    agnes = AgnesClient(session, base_url(client), alice.token)
    await agnes.pull()
    stats = await (await client.get("/api/me/home-stats", headers=alice.headers)).json()
    from service.timeutil import from_store, utcnow

    assert 0 <= (utcnow() - from_store(stats["last_pull_at"])).total_seconds() < 1
    page = await (await client.get("/home", headers=alice.headers)).text()
    assert re.search(r"just now", page)


# --- The current client (0.84.8) ---------------------------------------------------------------------

SAMPLE = SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl"


@pytest.fixture
def workspace(tmp_path):
    """A workspace and Claude Code's project folder for it, holding one transcript and one subagent file."""
    root, ws = tmp_path / "claude" / "projects", tmp_path / "home" / "ana" / "Agnes work"
    folder = root / encode_workspace(ws)
    (folder / SAMPLE.stem / "subagents").mkdir(parents=True)
    (folder / SAMPLE.name).write_bytes(SAMPLE.read_bytes())
    (folder / SAMPLE.stem / "subagents" / "agent-a1b2.jsonl").write_bytes(SAMPLE.read_bytes())
    assert folder.name.endswith("-home-ana-Agnes-work")  # "/" and " " both become "-"
    return root, ws, folder


def stored(settings, caller) -> dict[str, bytes]:
    from pathlib import Path

    folder = Path(settings.data_dir) / "sessions" / str(caller.user.id)
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


async def test_current_push_probes_health_once_sends_gzip_and_never_subagent_files(
        client, session, alice, settings, workspace):
    root, ws, folder = workspace
    agnes = AgnesClient(session, base_url(client), alice.token, version=CURRENT)
    result = await agnes.push_workspace(root, ws)
    assert result.gzip is True and result.sent == [SAMPLE.name] and not result.dropped
    assert agnes.log == [("GET", "/api/health", 200), ("POST", "/api/upload/sessions", 200)]
    # Stored decompressed, under the name without .gz; the subagent file never left the machine.
    assert stored(settings, alice) == {SAMPLE.name: SAMPLE.read_bytes()}
    # Nothing new: no upload, and no probe either.
    again = await agnes.push_workspace(root, ws)
    assert again.skipped_unchanged == 1 and not again.sent and len(agnes.log) == 2
    # A grown transcript is sent again, whole, and replaces the stored one.
    with open(folder / SAMPLE.name, "ab") as fh:
        fh.write(b'{"type":"summary","summary":"later"}\n')
    grown = await agnes.push_workspace(root, ws)
    assert grown.sent == [SAMPLE.name]
    assert stored(settings, alice)[SAMPLE.name] == (folder / SAMPLE.name).read_bytes()


async def profile(client, caller) -> dict:
    await client.app[keys.DB].settle()  # the client version is written after the answer, not before
    resp = await client.get("/api/me/profile", headers=caller.headers)
    assert resp.status == 200
    return await resp.json()


async def test_each_release_is_kept_as_the_analysts_client_and_only_0848_confirms_its_pull(
        client, session, alice, datasets):
    assert (await profile(client, alice))["client"] is None and (await profile(client, alice))["last_pull"] is None
    legacy = AgnesClient(session, base_url(client), alice.token, version=LEGACY, os_name="darwin")
    await legacy.pull()
    seen = await profile(client, alice)
    assert seen["client"]["version"] == "0.54.9" and seen["client"]["os"] == "darwin"
    assert seen["last_pull"] is None and seen["last_pull_at"] is not None
    # An upgrade shows at once (a new version is written whatever the minute), with its pull's outcome.
    current = AgnesClient(session, base_url(client), alice.token, version=CURRENT, os_name="windows")
    result = await current.pull()
    assert result.requests[-1] == ("POST", "/api/sync/pull-confirm", 200)
    seen = await profile(client, alice)
    assert {k: seen["client"][k] for k in ("version", "os")} == {"version": "0.84.8", "os": "windows"}
    assert from_store(seen["client"]["seen_at"]) <= from_store(seen["last_pull"]["finished_at"])
    assert seen["last_pull"]["errors"] == 0 and 0 <= seen["last_pull"]["duration_ms"] < 60_000
    assert from_store(seen["last_pull_at"]) <= from_store(seen["last_pull"]["finished_at"])


async def test_only_the_clients_own_user_agent_on_bearer_calls_names_a_client(client, session, db, alice, bob):
    # The v2 catalog helper sends httpx's User-Agent; a browser sends its own; neither is a client version.
    await client.get("/api/me", headers={**alice.headers, "User-Agent": "python-httpx/0.28.1"})
    await client.get("/api/me", headers={**alice.headers, "User-Agent": "agnes/1.0 (linux); rm -rf"})
    assert (await profile(client, alice))["client"] is None
    await client.post("/login", data={"token": bob.token}, allow_redirects=False)
    await client.get("/api/me", headers={"User-Agent": "agnes/0.84.8 (linux)"})
    assert (await profile(client, bob))["client"] is None


async def test_pull_confirm_takes_unknown_keys_and_a_failed_pull_marks_last_sync(client, session, alice, datasets):
    current = AgnesClient(session, base_url(client), alice.token, version=CURRENT)
    current.pull_errors = ["customers: md5 mismatch", "memory bundle: timeout"]
    await current.pull()
    seen = await profile(client, alice)
    assert seen["last_pull"]["errors"] == 2
    page = await (await client.get("/home", headers=alice.headers)).text()
    assert 'data-field="last_pull_errors">that pull had 2 errors' in page
    # home-stats keeps its shape: the outcome lives on the profile.
    stats = await (await client.get("/api/me/home-stats", headers=alice.headers)).json()
    assert set(stats) == {"window", "last_pull_at", "sessions", "prompts", "tokens", "projects"}
    # A later pull by 0.54.9 (no confirm) is a new Last sync: the old outcome no longer describes it.
    await AgnesClient(session, base_url(client), alice.token, version=LEGACY).pull()
    page = await (await client.get("/home", headers=alice.headers)).text()
    assert "last_pull_errors" not in page
    # And a clean 0.84.8 pull clears the mark.
    current.pull_errors = []
    await current.pull()
    assert (await profile(client, alice))["last_pull"]["errors"] == 0


async def test_a_browser_cannot_record_a_pull_outcome(client, alice):
    await client.post("/login", data={"token": alice.token}, allow_redirects=False)
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', await (await client.get("/home")).text()).group(1)
    resp = await client.post("/api/sync/pull-confirm", json={"errors": 3}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200 and await resp.json() == {"status": "ok", "recorded": False}
    assert (await profile(client, alice))["last_pull"] is None


async def test_which_answers_make_each_release_give_a_transcript_up(client, session, alice, settings, workspace):
    from pathlib import Path

    root, ws, folder = workspace
    transcript = folder / SAMPLE.name
    # 401 (a revoked or mistyped token): 0.84.8 tries again on its next push, 0.54.9 gives up for good.
    revoked = "agnes_pat_" + "r" * 43
    assert (await AgnesClient(session, base_url(client), revoked, version=CURRENT).push_workspace(root, ws)).requeued \
        == [SAMPLE.name]
    assert await AgnesClient(session, base_url(client), revoked, version=LEGACY).push(transcript) == "dropped"
    # A failure on our side is a 5xx, which both releases re-queue: here the analyst's upload folder
    # cannot be created (a file stands in its way).
    blocker = Path(settings.data_dir) / "sessions" / str(alice.user.id)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"")
    current = AgnesClient(session, base_url(client), alice.token, version=CURRENT)
    failed = await current.push_workspace(root, ws)
    assert failed.requeued == [SAMPLE.name] and not failed.dropped
    assert ("POST", "/api/upload/sessions", 500) in current.log
    assert await AgnesClient(session, base_url(client), alice.token, version=LEGACY).push(transcript) == "requeued"
    blocker.unlink()
    assert (await current.push_workspace(root, ws)).sent == [SAMPLE.name]
