"""The operators' view of the team (issue 22): /admin, /api/admin/usage and an analyst's activity as an
operator sees it, on the samples' three analysts, hand-checked; 403 for everyone else; privacy mode."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest

from service import keys
from service.app import create_app
from service.config import load_settings
from service.store import ingest as ingest_store
from service.store.ingest import REBUILD_WINDOWS_SCRIPT
from tests.conftest import EXPECTED, NOW, ROOT, SAMPLE_USERS, ingest_files, make_caller, sample_files

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
NAMES = ("alice", "bob", "carol", "Alice", "Bob", "Carol")
# The samples' UTC days with activity, read off their timestamps (grep '"timestamp"'): carol alone on
# the 17th, alice and carol on the 18th and the 20th, bob and carol on the 19th, all three on the 21st.
ACTIVE_PER_DAY_7D = [0, 0, 1, 2, 2, 2, 3]  # 2026-11-15 .. 2026-11-21


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


def _settings(tmp_path, **overrides):
    return load_settings(environ={}, db_path=str(tmp_path / "agnes.db"), data_dir=str(tmp_path / "data"),
                         secret_key="test-secret", parse_workers=0, admin_emails=["ops@example.com"], **overrides)


async def _usage(client, ops, query: str = "range=7d") -> dict:
    resp = await client.get(f"/api/admin/usage?{query}", headers=ops.headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_the_samples_three_analysts_give_the_hand_checked_team_figures(client, seeded):
    u = await _usage(client, seeded["ops"])
    assert u["range"] == "7d" and u["days_are"] == "UTC" and u["price_table"].startswith("genai-prices")
    assert [d["date"] for d in u["days"]] == [f"2026-11-{day}" for day in range(15, 22)]
    assert [d["active_analysts"] for d in u["days"]] == ACTIVE_PER_DAY_7D
    expected = {name: EXPECTED["users"][name]["7d"] for name in SAMPLE_USERS}
    k = u["kpis"]
    # No activity between the 7d window's start and the 15th's midnight: the UTC days hold the same rows.
    assert k["active_analysts"] == 3 and k["onboarded"] == 4  # the operator counts as onboarded too
    assert k["sessions"] == sum(e["sessions"] for e in expected.values()) == 13
    assert k["prompts"] == sum(e["prompts"] for e in expected.values()) == 27
    assert k["tokens"]["total"] == sum(e["tokens"]["total"] for e in expected.values()) == 398_257
    assert sum(d["sessions"] for d in u["days"]) == 14  # carol's session of the 18th-19th counts on both days
    assert k["previous"]["active_analysts"] == 0 and k["previous"]["tokens"]["total"] == 0

    rows = {a["email"].split("@")[0]: a for a in u["analysts"]}
    for name, e in expected.items():
        assert (rows[name]["sessions"], rows[name]["prompts"], rows[name]["tokens"]) == (
            e["sessions"], e["prompts"], e["tokens"]), name
        assert rows[name]["name"] == name.title() and rows[name]["onboarded"] is True
    assert rows["alice"]["last_active_at"] == "2026-11-21T11:00:59Z"
    assert rows["ops"]["sessions"] == 0 and rows["ops"]["last_active_at"] is None
    assert sum(a["cost_usd"] for a in u["analysts"]) == pytest.approx(k["cost_usd"], abs=1e-5)
    assert sum(d["cost_usd"] for d in u["days"]) == pytest.approx(k["cost_usd"], abs=1e-5)

    # Top tools with error rates: Bash, 5 calls by alice and carol, 2 of them errors (alice's, on the 20th).
    bash = u["tools"][0]
    assert bash == {"kind": "tool_use", "name": "Bash", "source": "builtin", "invocations": 5, "analysts": 2,
                    "sessions": 4, "errors": 2}
    kinds = {t["kind"] for t in u["tools"]}
    assert kinds == {"tool_use", "mcp_call", "skill", "slash_command", "subagent"}
    assert {"kind": "slash_command", "name": "/model", "source": "builtin", "invocations": 1, "analysts": 1,
            "sessions": 1, "errors": 0} in u["tools"]
    assert u["needs_help"] == {"never_synced": [{"email": f"{n}@example.com", "name": n.title()}
                                                for n in ("alice", "bob", "carol")]
                               + [{"email": "ops@example.com", "name": "Opal Operator"}],
                               "no_transcripts": [], "inactive_14d": []}
    assert u["health"]["quarantined"] == [] and u["health"]["skipped_lines"] > 0


async def test_the_cost_from_the_aggregates_equals_the_analysts_own_page(client, seeded):
    """Per (day, model, speed, tier) sums priced at read time give what /activity prices message by message."""
    u = await _usage(client, seeded["ops"])
    for name in SAMPLE_USERS:
        mine = await (await client.get("/api/me/activity?range=7d&tz=UTC", headers=seeded[name].headers)).json()
        row = next(a for a in u["analysts"] if a["email"] == f"{name}@example.com")
        assert row["cost_usd"] == pytest.approx(mine["totals"]["cost_usd"], abs=1e-6), name
        assert row["cost_usd"] > 0
        assert row["active_seconds"] == pytest.approx(mine["totals"]["active_seconds"], abs=2), name


async def test_the_30_day_range_reaches_bobs_month_old_session_and_the_csv_tables_hold_the_same(client, seeded):
    u30 = await _usage(client, seeded["ops"], "range=30d")
    assert len(u30["days"]) == 30 and u30["kpis"]["active_analysts"] == 3
    bob = next(a for a in u30["analysts"] if a["email"] == "bob@example.com")
    assert bob["sessions"] == 2  # 2026-10-23 .. 2026-11-21: not the month-old session of 2026-10-22
    u90 = await _usage(client, seeded["ops"], "range=90d")
    assert next(a for a in u90["analysts"] if a["email"] == "bob@example.com")["sessions"] == 3
    assert u90["kpis"]["sessions"] == 14 and [d["active_analysts"] for d in u90["days"]].count(1) == 2
    days = list(csv.reader(io.StringIO(await (await client.get(
        "/api/admin/usage?range=7d&format=csv&table=days", headers=seeded["ops"].headers)).text())))
    assert days[0][:3] == ["date", "active_analysts", "sessions"]
    assert [int(r[1]) for r in days[1:]] == ACTIVE_PER_DAY_7D
    tools = list(csv.reader(io.StringIO(await (await client.get(
        "/api/admin/usage?format=csv&table=tools", headers=seeded["ops"].headers)).text())))
    assert tools[1] == ["tool_use", "Bash", "builtin", "5", "2", "4", "2"]
    analysts = list(csv.reader(io.StringIO(await (await client.get(
        "/api/admin/usage?format=csv&table=analysts", headers=seeded["ops"].headers)).text())))
    assert [r[0] for r in analysts[1:]] == ["alice@example.com", "bob@example.com", "carol@example.com",
                                            "ops@example.com"]
    bad = await client.get("/api/admin/usage?format=csv&table=nope", headers=seeded["ops"].headers)
    assert bad.status == 400 and (await bad.json())["code"] == "invalid_table"


async def test_the_page_shows_the_team_each_analyst_links_to_a_read_only_view_of_their_activity(client, seeded):
    page = await client.get("/admin?range=7d", headers=seeded["ops"].headers)
    html = await page.text()
    assert page.status == 200 and "The team" in html and "Bash" in html and "40%" in html
    alice_id = seeded["alice"].user.id
    link = f"/admin/analysts/{alice_id}/activity?range=7d"
    assert f'href="{link}"' in html
    view = await client.get(link, headers=seeded["ops"].headers)
    body = await view.text()
    assert view.status == 200 and "Operator's view, read-only" in body and "Activity of Alice" in body
    assert "/activity/sessions/" not in body  # no link into the analyst's (or the operator's) session pages
    assert "churn-model" in body  # alice's project, as her own page shows it
    missing = await client.get("/admin/analysts/999/activity", headers=seeded["ops"].headers)
    assert missing.status == 404


async def test_everyone_but_an_operator_gets_403_from_every_admin_page_and_route(client, seeded):
    alice = seeded["alice"]
    for path in ("/admin", f"/admin/analysts/{alice.user.id}/activity", "/admin/analysts/1/activity?range=90d"):
        resp = await client.get(path, headers={**alice.headers, "Accept": "text/html"})
        assert resp.status == 403 and resp.content_type == "text/html", path  # the error page
        assert "AGNES_ADMIN_EMAILS" in await resp.text()
    for method, path in (("GET", "/api/admin/usage"), ("GET", "/api/admin/usage?format=csv&table=analysts"),
                         ("GET", "/api/admin/quarantine"), ("POST", "/api/admin/reprocess"),
                         ("POST", "/api/admin/quarantine/retry")):
        resp = await client.request(method, path, headers={**alice.headers, "Content-Type": "application/json"},
                                    data=b"{}" if method == "POST" else None)
        assert resp.status == 403 and (await resp.json())["code"] == "admin_only", path


async def test_with_a_cookie_a_retry_without_the_csrf_token_is_refused_and_the_page_s_button_works(client, seeded):
    db = client.app[keys.DB]
    alice = seeded["alice"].user.id
    file_id = await ingest_store.register_file(db, alice, "/tmp/broken.jsonl", "upload", NOW)
    assert await ingest_store.record_failure(db, file_id, "boom: not JSON", NOW, max_failures=1,
                                             backoff=timedelta(seconds=1))
    login = await client.post("/login", data={"token": seeded["ops"].token}, allow_redirects=False)
    assert login.status == 303
    html = await (await client.get("/admin")).text()
    assert "boom: not JSON" in html and "/tmp/broken.jsonl" in html
    token = CSRF_RE.search(html.split('id="health-title"')[1]).group(1)
    refused = await client.post("/api/admin/quarantine/retry", data={"id": str(file_id)}, allow_redirects=False)
    assert refused.status == 403 and (await refused.json())["code"] == "csrf_failed"
    assert len(await ingest_store.quarantined(db)) == 1
    done = await client.post("/api/admin/quarantine/retry", data={"id": str(file_id), "csrf_token": token},
                             allow_redirects=False)
    assert done.status == 303 and done.headers["Location"] == "/admin"
    assert await ingest_store.quarantined(db) == []


async def _privacy_client(aiohttp_client, tmp_path, min_group: int):
    client = await aiohttp_client(create_app(_settings(tmp_path, admin_per_analyst=False, admin_min_group=min_group)))
    return client, await _seed(client)


async def test_with_per_analyst_off_no_response_names_an_analyst(aiohttp_client, tmp_path):
    client, seeded = await _privacy_client(aiohttp_client, tmp_path, 3)
    db = client.app[keys.DB]
    file_id = await ingest_store.register_file(db, seeded["bob"].user.id, "/data/bob/x.jsonl", "upload", NOW)
    await ingest_store.record_failure(db, file_id, "boom", NOW, max_failures=1, backoff=timedelta(seconds=1))
    ops = seeded["ops"].headers
    bodies = []
    for path in ("/admin", "/admin?range=30d", "/admin?range=90d", "/api/admin/usage?range=7d",
                 "/api/admin/usage?range=30d", "/api/admin/usage?range=90d", "/api/admin/usage?format=csv",
                 "/api/admin/usage?format=csv&table=tools", "/api/admin/usage?format=csv&table=analysts",
                 f"/admin/analysts/{seeded['alice'].user.id}/activity", "/api/admin/quarantine"):
        resp = await client.get(path, headers=ops)
        bodies.append((path, resp.status, await resp.text()))
    for path, status, body in bodies:
        for name in NAMES:
            assert name not in body, (path, name)
    statuses = {path: status for path, status, _ in bodies}
    assert statuses["/api/admin/usage?format=csv&table=analysts"] == 400
    assert statuses[f"/admin/analysts/{seeded['alice'].user.id}/activity"] == 404
    u = await _usage(client, seeded["ops"])
    assert "analysts" not in u and u["needs_help"] == {"never_synced": 4, "no_transcripts": 0, "inactive_14d": 0}
    assert "/admin/analysts/" not in next(body for path, _, body in bodies if path == "/admin")


async def test_rows_of_fewer_than_the_minimum_group_are_folded_or_suppressed_and_no_total_gives_them_away(
        aiohttp_client, tmp_path):
    client, seeded = await _privacy_client(aiohttp_client, tmp_path, 3)
    u = await _usage(client, seeded["ops"])
    # Only the 21st has three analysts: every other day with activity is suppressed whole.
    shown = [d for d in u["days"] if not d.get("suppressed")]
    assert [d["date"] for d in u["days"] if d.get("suppressed")] == ["2026-11-17", "2026-11-18", "2026-11-19",
                                                                       "2026-11-20"]
    assert all(d["active_analysts"] is None and d["tokens"] is None for d in u["days"] if d.get("suppressed"))
    day21 = u["days"][-1]
    assert day21["active_analysts"] == 3 and day21["prompts"] == 15
    k = u["kpis"]
    # The totals are the shown days' own: nothing left to subtract.
    assert (k["prompts"], k["tokens"], k["cost_usd"], k["active_seconds"]) == (
        sum(d["prompts"] for d in shown), day21["tokens"], day21["cost_usd"], day21["active_seconds"])
    assert k["sessions"] == day21["sessions"] == 6
    # Models on the 21st: sonnet 4.5 by all three, the others by one each (alice's opus 4.1, carol's haiku
    # and opus 4.5, two analysts together): fewer than three, so the smallest shown row folds in with them.
    assert u["by_model"] == [{"model": "other", "analysts": 3, "cost_usd": pytest.approx(day21["cost_usd"], abs=1e-5)}]
    # Every tool is used by fewer than three analysts: one "other" row of all of them, across alice,
    # bob and carol.
    assert u["tools"] == [{"kind": "other", "name": "other", "source": "other", "invocations": 18, "analysts": 3,
                           "sessions": 17, "errors": 2}]
    assert k["previous"] == {"active_analysts": None, "onboarded": 4, "sessions": None, "prompts": None,
                             "tokens": None, "cost_usd": None, "active_seconds": None, "suppressed": True}


async def test_with_a_minimum_group_of_two_the_rows_of_two_analysts_show(aiohttp_client, tmp_path):
    client, seeded = await _privacy_client(aiohttp_client, tmp_path, 2)
    u = await _usage(client, seeded["ops"])
    assert [d["date"] for d in u["days"] if d.get("suppressed")] == ["2026-11-17"]  # carol alone
    assert [t["name"] for t in u["tools"]][:1] == ["Bash"]
    assert all(row["analysts"] >= 2 for row in u["tools"] + u["by_model"])
    assert sum(row["cost_usd"] for row in u["by_model"]) == pytest.approx(u["kpis"]["cost_usd"], abs=1e-5)


async def test_the_aggregates_kept_by_ingest_equal_a_rebuild_from_scratch(client, seeded):
    """What each file's transaction recomputes for its touched days is what a full derivation gives."""
    db = client.app[keys.DB]

    async def snapshot():
        return ([tuple(r) for r in await db.fetchall("SELECT * FROM admin_session_days ORDER BY 1, 2, 3")],
                [tuple(r) for r in await db.fetchall("SELECT * FROM admin_model_days ORDER BY 1, 2, 3, 4, 5")])

    kept = await snapshot()
    assert len(kept[0]) == 15 and len(kept[1]) == 15  # the 7 days' 14 session-days and bob's of 2026-10-22
    async with db.writing() as conn:
        await conn.executescript(REBUILD_WINDOWS_SCRIPT)
    assert await snapshot() == kept
    # Retention: days wholly before the cutoff go, the others stay as they were.
    await ingest_store.prune(db, NOW - timedelta(days=4))
    after = await snapshot()
    assert {r[1] for r in after[0]} == {"2026-11-17", "2026-11-18", "2026-11-19", "2026-11-20", "2026-11-21"}
    assert [r for r in after[0] if r[1] >= "2026-11-18"] == [r for r in kept[0] if r[1] >= "2026-11-18"]


async def test_the_migration_s_backfill_equals_what_ingest_keeps(client, seeded):
    """Schema 0014 fills the aggregates of a database ingested before it, as ingest would have."""
    db = client.app[keys.DB]
    script = (ROOT / "schema" / "0014_admin_daily.sql").read_text()
    backfill = script[script.index("INSERT INTO admin_session_days"):]

    async def snapshot():
        return ([tuple(r) for r in await db.fetchall("SELECT * FROM admin_session_days ORDER BY 1, 2, 3")],
                [tuple(r) for r in await db.fetchall("SELECT * FROM admin_model_days ORDER BY 1, 2, 3, 4, 5")])

    kept = await snapshot()
    async with db.writing() as conn:
        await conn.executescript("BEGIN; DELETE FROM admin_session_days; DELETE FROM admin_model_days; "
                                 + backfill + "\nCOMMIT;")
    assert await snapshot() == kept


async def test_the_tool_aggregates_backfill_equals_the_rollups_and_prune_marks_the_cut_day(client, seeded):
    """Schema 0015 fills admin_tool_days from the usage events as the worker's rollup step keeps it;
    retention drops the days before its cutoff and has the day it cuts through rolled up again."""
    db = client.app[keys.DB]
    script = (ROOT / "schema" / "0015_admin_tool_days.sql").read_text()
    backfill = script[script.index("INSERT INTO admin_tool_days"):]

    async def snapshot():
        return [tuple(r) for r in await db.fetchall("SELECT * FROM admin_tool_days ORDER BY 1, 2, 3, 4, 5, 6")]

    kept = await snapshot()
    # alice's Bash calls of the 20th: one session, two of them errors (the tools figures above).
    assert ("2026-11-20", seeded["alice"].user.id) in {(r[0], r[1]) for r in kept}
    assert sum(r[6] for r in kept if r[4] == "Bash") == 5 and sum(r[7] for r in kept if r[4] == "Bash") == 2
    async with db.writing() as conn:
        await conn.executescript("BEGIN; DELETE FROM admin_tool_days; " + backfill + "\nCOMMIT;")
    assert await snapshot() == kept
    await ingest_store.prune(db, NOW - timedelta(days=2))  # cuts through 2026-11-19, at noon
    assert await db.fetchval("SELECT COUNT(*) FROM rollup_dirty_days WHERE day = '2026-11-19'") == 1
    assert await db.fetchval("SELECT MIN(day) FROM admin_tool_days") >= "2026-11-19"
    await ingest_store.rebuild_rollups(db)
    assert [r for r in await snapshot() if r[0] >= "2026-11-20"] == [r for r in kept if r[0] >= "2026-11-20"]
