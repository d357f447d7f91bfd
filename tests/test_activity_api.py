"""/api/me/activity, /api/me/sessions and the pages over real HTTP: CSV equals JSON, cost behind the
operator switch, the remembered zone, and one analyst never seeing another's sessions."""

from __future__ import annotations

import csv
import io
import shutil

import pytest

from service import keys
from service.app import create_app
from service.config import load_settings
from service.store.activity import frame_context
from service.timeutil import from_store
from tests.conftest import NOW, ingest_files, make_caller, sample_files

SESSION = "4b9e2f70-1c3a-4d5e-8f60-7a1b2c3d4e5f"


async def seed(client):
    client.app[keys.CLOCK].fixed = NOW
    db = client.app[keys.DB]
    carol = await make_caller(db, "carol@example.com")
    await ingest_files(db, carol.user.id, sample_files("carol"))
    return carol


async def get(client, path: str, caller, status: int = 200):
    resp = await client.get(path, headers=caller.headers)
    assert resp.status == status, await resp.text()
    return resp


async def test_csv_equals_json_for_days_and_sessions(client):
    carol = await seed(client)
    body = await (await get(client, "/api/me/activity?range=7d", carol)).json()
    rows = list(csv.DictReader(io.StringIO(await (await get(client, "/api/me/activity?range=7d&format=csv",
                                                          carol)).text())))
    assert [r["date"] for r in rows] == [d["date"] for d in body["days"]]
    for row, day in zip(rows, body["days"]):
        assert int(row["prompts"]) == day["prompts"] and int(row["total_tokens"]) == day["tokens"]["total"]
        assert float(row["cost_usd"]) == pytest.approx(day["cost_usd"])
    page = await (await get(client, "/api/me/sessions?range=7d&limit=3", carol)).json()
    assert len(page["sessions"]) == 3 and page["next_cursor"] == "3"
    rest = await (await get(client, "/api/me/sessions?range=7d&limit=3&cursor=3", carol)).json()
    last = await (await get(client, "/api/me/sessions?range=7d&limit=3&cursor=6", carol)).json()
    assert (len(rest["sessions"]), len(last["sessions"]), last["next_cursor"]) == (3, 1, None)
    every = page["sessions"] + rest["sessions"] + last["sessions"]
    assert sum(s["prompts"] for s in every) == body["totals"]["prompts"]
    sheet = list(csv.DictReader(io.StringIO(await (await get(
        client, "/api/me/sessions?range=7d&limit=200&format=csv", carol)).text())))
    assert [r["session_id"] for r in sheet] == [s["session_id"] for s in every]


async def test_another_analysts_session_is_a_404_and_their_numbers_stay_theirs(client):
    carol = await seed(client)
    dave = await make_caller(client.app[keys.DB], "dave@example.com")
    await get(client, f"/api/me/sessions/{SESSION}", carol)
    for path in (f"/api/me/sessions/{SESSION}", f"/activity/sessions/{SESSION}"):
        resp = await get(client, path, dave, 404)
        assert SESSION not in await resp.text()
    body = await (await get(client, "/api/me/activity?range=90d", dave)).json()
    assert body["totals"]["sessions"] == 0 and body["by_project"] == []
    assert (await (await get(client, "/api/me/sessions?range=90d", dave)).json())["sessions"] == []


async def test_the_remembered_zone_sets_the_days_and_tz_overrides_it(client):
    carol = await seed(client)
    resp = await client.post("/api/me/timezone", json={"tz": "America/Los_Angeles"}, headers=carol.headers)
    assert resp.status == 200
    body = await (await get(client, "/api/me/activity?range=7d", carol)).json()
    assert body["tz"] == "America/Los_Angeles" and body["days"][-1]["date"] == "2026-11-21"
    # 4b9e2f70's prompts at 06:00 UTC fall on the 20th in Los Angeles (-08:00).
    by_date = {d["date"]: d["prompts"] for d in body["days"]}
    assert by_date["2026-11-20"] == 2 + 3 and by_date["2026-11-21"] == 1
    utc = await (await get(client, "/api/me/activity?range=7d&tz=UTC", carol)).json()
    assert {d["date"]: d["prompts"] for d in utc["days"]}["2026-11-21"] == 4
    bad = await client.post("/api/me/timezone", json={"tz": "../../etc/passwd"}, headers=carol.headers)
    assert bad.status == 400 and (await bad.json())["code"] == "invalid_tz"


@pytest.mark.parametrize("switch", ["0", "1"])
async def test_cost_hidden_from_analysts_when_switched_off_but_shown_to_operators(database_url, aiohttp_client,
                                                                                  tmp_path, switch):
    settings = load_settings(environ={"AGNES_HOME_SHOW_COST": switch}, database_url=database_url,
                             db_path=str(tmp_path / "a.db"),
                             data_dir=str(tmp_path / "data"), secret_key="k", parse_workers=0,
                             admin_emails=["ops@example.com"])
    client = await aiohttp_client(create_app(settings))
    carol = await seed(client)
    ops = await make_caller(client.app[keys.DB], "ops@example.com")
    copies = tmp_path / "ops"
    copies.mkdir()
    for path in sample_files("carol"):  # a file has one owner: the operator's own copies
        shutil.copy(path, copies)
    await ingest_files(client.app[keys.DB], ops.user.id, sorted(str(p) for p in copies.iterdir()))
    mine = await (await get(client, "/api/me/activity?range=7d", carol)).json()
    theirs = await (await get(client, "/api/me/activity?range=7d", ops)).json()
    assert theirs["totals"]["cost_usd"] > 0 and theirs["price_table"].startswith("genai-prices")
    page = await (await get(client, "/activity?range=7d", carol)).text()
    if switch == "0":
        assert mine["totals"]["cost_usd"] is None and mine["price_table"] is None
        assert all(d["cost_usd"] is None for d in mine["days"])
        assert "Estimated cost" not in page and "$" not in page
        detail = await (await get(client, f"/api/me/sessions/{SESSION}", carol)).json()
        assert detail["session"]["cost_usd"] is None
    else:
        assert mine["totals"]["cost_usd"] == theirs["totals"]["cost_usd"]
        assert "Estimated cost" in page


async def test_an_operators_price_file_changes_the_cost_and_names_itself(database_url, aiohttp_client, tmp_path):
    prices = tmp_path / "negotiated.yaml"
    prices.write_text("models:\n  claude-haiku-4-5:\n    input: 0\n    output: 0\n    cache_read: 0\n"
                      "    cache_write: 0\n")
    settings = load_settings(environ={"AGNES_PRICES_FILE": str(prices)}, database_url=database_url,
                             db_path=str(tmp_path / "a.db"),
                             data_dir=str(tmp_path / "data"), secret_key="k", parse_workers=0)
    client = await aiohttp_client(create_app(settings))
    carol = await seed(client)
    body = await (await get(client, "/api/me/activity?range=7d", carol)).json()
    haiku = next(m for m in body["by_model"] if m["model"].startswith("claude-haiku-4-5"))
    assert haiku["cost_usd"] == 0.0 and "negotiated.yaml" in body["price_table"]


async def test_activity_is_behind_the_same_gates_as_home(client):
    carol = await seed(client)
    page = await (await get(client, "/activity", carol)).text()
    assert "Your activity" in page
    newcomer = await make_caller(client.app[keys.DB], "new@example.com", onboarded=False)
    page = await (await get(client, "/activity", newcomer)).text()
    assert "Set it up on Home" in page and "<h1>Your activity</h1>" not in page
    resp = await client.get("/activity", allow_redirects=False)
    assert resp.status in (302, 303) and "/login" in resp.headers["Location"]


async def test_home_cards_show_the_change_against_the_previous_period_and_a_trend(client):
    carol = await seed(client)
    ctx = await frame_context(client.app[keys.DB], carol.user.id, "24h", NOW, client.app[keys.PRICES])
    # The day before: the 9a417c25 session's own prompt and msg_13SurvC (15 + 240 + 8,700 + 600 tokens).
    assert (ctx.previous.sessions, ctx.previous.prompts, ctx.previous.tokens, ctx.previous.projects) == (1, 1, 9555, 1)
    # Hours from 2026-11-20 12:00: 5c0d3e81 at 16:00, 4b9e2f70 at 06:00, the resume's own prompt at 09:00.
    assert len(ctx.trend.prompts) == 24
    assert {i: n for i, n in enumerate(ctx.trend.prompts) if n} == {4: 2, 18: 3, 21: 1}
    assert sum(ctx.trend.tokens) == 117497 and ctx.unpriced_messages == 0 and ctx.cost_usd > 0
    page = await (await get(client, "/home", carol)).text()
    assert "▲ 200% vs the previous 24h" in page  # sessions: 3 against 1
    assert "▲ 500% vs the previous 24h" in page  # prompts: 6 against 1
    assert f"≈ ${ctx.cost_usd:,.2f} estimated" in page
    week = await (await get(client, "/home?window=7d", carol)).text()
    assert "new against the previous 7d" in week  # nothing in the week before


async def test_the_kept_activity_page_changes_as_soon_as_new_data_arrives(client, tmp_path):
    carol = await seed(client)
    first = await (await get(client, "/activity?range=7d", carol)).text()
    assert first == await (await get(client, "/activity?range=7d", carol)).text()  # kept: the same page
    assert ">12<" in first  # prompts
    extra = tmp_path / "more.jsonl"
    extra.write_text('{"type":"user","uuid":"late-1","sessionId":"late","timestamp":"2026-11-21T11:00:00Z",'
                     '"cwd":"/home/carol/work/late","message":{"role":"user","content":"One more."}}\n')
    await ingest_files(client.app[keys.DB], carol.user.id, [str(extra)])
    second = await (await get(client, "/activity?range=7d", carol)).text()
    assert ">13<" in second and "late" in second


async def test_the_cards_cost_is_the_sum_of_the_windows_messages_priced_one_by_one(client):
    carol = await seed(client)
    db, prices = client.app[keys.DB], client.app[keys.PRICES]
    ctx = await frame_context(db, carol.user.id, "7d", NOW, prices)
    rows = await db.fetchall("SELECT model, ts, speed, input_tokens, output_tokens, cache_read_tokens, "
                             "cache_creation_tokens, cache_5m_tokens, cache_1h_tokens FROM user_messages "
                             "WHERE user_id = ? AND ts >= '2026-11-14T12:00:00.000000Z'", (carol.user.id,))
    one_by_one = sum(prices.message_cost(r[0], from_store(r[1]), *tuple(r)[2:]).usd for r in rows)
    assert len(rows) == 17 and ctx.cost_usd == pytest.approx(one_by_one, abs=1e-6)
