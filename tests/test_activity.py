"""The analyst's activity over local days, on a real database: carol's samples, hand-checked."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

from service.activity import sort_sessions
from service.cost import load_price_table
from service.days import day_starts, parse_zone
from service.store.activity import activity, session_detail, sessions
from tests.conftest import EXPECTED, NOW, ingest_files, make_caller, sample_files
from tests.test_cost import library
from tests.test_parser import jsonl

PRICES = load_price_table(None)


@pytest.fixture
async def carol(db):
    caller = await make_caller(db, "carol@example.com")
    report = await ingest_files(db, caller.user.id, sample_files("carol"))
    assert report.failed == 0, report.errors
    return caller


def by_date(result) -> dict[str, tuple[int, int, int, int]]:
    """date -> (sessions, prompts, messages, total tokens), days with activity only."""
    return {d.date: (d.sessions, d.prompts, d.messages, d.tokens.total) for d in result.days if d.messages or d.prompts}


async def test_carols_week_in_utc_day_by_day(db, carol):
    week = await activity(db, carol.user.id, "7d", None, NOW, PRICES)
    assert [d.date for d in week.days] == [f"2026-11-{n}" for n in range(15, 22)]
    files = EXPECTED["files"]

    def total(name: str) -> int:
        f = files[f"carol/{name}.jsonl"]
        return f["input_tokens"] + f["output_tokens"] + f["cache_read_tokens"] + f["cache_creation_tokens"]

    original, resumed = total("7e2f5a03-4f6d-4081-b293-ad4e5f607182"), total("8f306b14-5a7e-4192-83a4-be5f60718293")
    # 9a417c25's file: the 0b528d36 session on the 18th (two prompts, two messages), its own on the 19th.
    survey_c = 15 + 240 + 8700 + 600  # msg_13SurvC, from the file's last assistant line
    assert by_date(week) == {
        "2026-11-17": (1, 1, 3, total("6d1e4f92-3e5c-4f70-a182-9c3d4e5f6071")),
        "2026-11-18": (1, 2, 2, total("9a417c25-6b8f-4203-94b5-cf607182930a") - survey_c),
        "2026-11-19": (2, 3, 3, original + survey_c),
        "2026-11-20": (1, 2, 3, total("5c0d3e81-2d4b-4e6f-9071-8b2c3d4e5f60")),
        # the resume's own prompt and message only: its copies stayed with the original
        "2026-11-21": (2, 4, 6, total("4b9e2f70-1c3a-4d5e-8f60-7a1b2c3d4e5f") + resumed - original),
    }
    frame = EXPECTED["users"]["carol"]["7d"]
    assert (week.totals.sessions, week.totals.prompts, week.totals.tokens.total) == \
        (frame["sessions"], frame["prompts"], frame["tokens"]["total"])
    assert week.totals.unpriced_messages == 0 and week.price_table == PRICES.version


async def test_by_model_costs_come_from_the_price_library(db, carol):
    week = await activity(db, carol.user.id, "7d", None, NOW, PRICES)
    models = {m.model: m for m in week.by_model}
    assert {name: m.messages for name, m in models.items()} == {
        "claude-opus-4-5-20251101": 2, "claude-haiku-4-5-20251001": 2, "claude-sonnet-4-5-20250929": 7,
        "claude-sonnet-4-20250514": 3, "claude-opus-4-1-20250805": 3}
    # carol's 4b9e2f70 file: msg_09MainA (5-minute 1,000, 1-hour 3,000) and msg_09MainB (600, 0).
    opus = (library("claude-opus-4-5-20251101", 6, 150, 12000, 1000, 3000)
            + library("claude-opus-4-5-20251101", 8, 400, 16000, 600, 0))
    assert models["claude-opus-4-5-20251101"].cost_usd == pytest.approx(opus, abs=1e-6)
    # The subagent's messages, found only in progress lines: all their cache writes are 1-hour ones.
    haiku = (library("claude-haiku-4-5-20251001", 3, 40, 9000, 0, 2398)
             + library("claude-haiku-4-5-20251001", 5, 220, 11398, 0, 300))
    assert models["claude-haiku-4-5-20251001"].cost_usd == pytest.approx(haiku, abs=1e-6)
    assert week.totals.cost_usd == pytest.approx(sum(m.cost_usd for m in week.by_model), abs=1e-5)
    assert week.totals.cost_usd == pytest.approx(sum(d.cost_usd for d in week.days), abs=1e-5)
    projects = {p.project: (p.sessions, p.prompts) for p in week.by_project}
    assert projects == {"/home/carol/work/ltv": (1, 3), "/home/carol/work/forecast": (2, 3),
                        "/home/carol/work/pricing-exp": (2, 3), "/home/carol/work/survey": (2, 3)}


async def test_an_unpriced_model_counts_its_tokens_and_no_cost(db, tmp_path):
    dora = await make_caller(db, "dora@example.com")
    path = tmp_path / "s.jsonl"
    path.write_bytes(jsonl(
        {"type": "assistant", "uuid": "a1", "sessionId": "s", "timestamp": "2026-11-21T10:00:00Z",
         "message": {"id": "m1", "model": "gpt-4o", "usage": {"input_tokens": 10, "output_tokens": 5}}},
        {"type": "assistant", "uuid": "a2", "sessionId": "s", "timestamp": "2026-11-21T10:00:09Z",
         "message": {"id": "m2", "model": "claude-haiku-4-5-20251001",
                     "usage": {"input_tokens": 1000, "output_tokens": 100}}}))
    await ingest_files(db, dora.user.id, [str(path)])
    week = await activity(db, dora.user.id, "7d", None, NOW, PRICES)
    models = {m.model: m.cost_usd for m in week.by_model}
    assert models["gpt-4o"] is None
    assert models["claude-haiku-4-5-20251001"] == pytest.approx(library("claude-haiku-4-5-20251001", 1000, 100, 0, 0, 0))
    assert (week.totals.unpriced_messages, week.totals.tokens.total) == (1, 1115)
    assert week.totals.active_seconds == 9


@pytest.mark.parametrize(("zone", "before", "after"), [
    ("Asia/Kolkata", "2026-11-20T18:29:59Z", "2026-11-20T18:30:00Z"),  # +05:30
    ("America/Los_Angeles", "2026-11-21T07:59:59Z", "2026-11-21T08:00:00Z"),  # -08:00 in November
])
async def test_local_midnight_splits_days_in_half_hour_and_negative_zones(db, tmp_path, zone, before, after):
    erin = await make_caller(db, "erin@example.com")
    path = tmp_path / "s.jsonl"
    prompt = {"type": "user", "sessionId": "s", "message": {"role": "user", "content": "Go."}}
    path.write_bytes(jsonl({**prompt, "uuid": "u1", "timestamp": before}, {**prompt, "uuid": "u2", "timestamp": after}))
    await ingest_files(db, erin.user.id, [str(path)])
    week = await activity(db, erin.user.id, "7d", zone, datetime(2026, 11, 21, 20, 0, tzinfo=timezone.utc), PRICES)
    found = [(d.date, d.prompts, d.active_seconds) for d in week.days if d.prompts]
    # one day each; the second between them lies before midnight
    assert len(found) == 2 and found[0][1:] == (1, 1) and found[1][1:] == (1, 0)
    assert week.tz == zone and week.totals.active_seconds == 1


def test_day_bounds_are_local_midnights_and_zone_names_are_validated():
    zone = parse_zone("Asia/Kolkata")
    bounds = day_starts(datetime(2026, 11, 21, 20, 0, tzinfo=timezone.utc), 2, zone)
    assert [b.isoformat() for b in bounds] == ["2026-11-20T18:30:00+00:00", "2026-11-21T18:30:00+00:00",
                                               "2026-11-22T18:30:00+00:00"]
    for bad in ("../../etc/passwd", "Mars/Olympus", "/usr/share/zoneinfo/UTC", "Europe/Prague\n"):
        with pytest.raises(ValueError):
            parse_zone(bad)
    assert str(parse_zone(None)) == "UTC"


async def test_json_shape_is_plain_builtins(db, carol):
    week = await activity(db, carol.user.id, "30d", "Europe/Prague", NOW, PRICES)
    body = msgspec.to_builtins(week)
    assert set(body) == {"range", "tz", "price_table", "totals", "days", "by_model", "by_project"}
    assert len(body["days"]) == 30 and body["tz"] == "Europe/Prague"


async def test_carols_sessions_are_formats_sessions_and_sum_to_the_totals(db, carol):
    week = await activity(db, carol.user.id, "7d", None, NOW, PRICES)
    rows = sort_sessions(await sessions(db, carol.user.id, "7d", None, NOW, PRICES), "start")
    assert [r.session_id[:8] for r in rows] == ["8f306b14", "4b9e2f70", "5c0d3e81", "9a417c25", "7e2f5a03",
                                                "0b528d36", "6d1e4f92"]  # newest first; the copies-only resume is none
    assert sum(r.prompts for r in rows) == week.totals.prompts == 12
    assert sum(r.messages for r in rows) == week.totals.messages == 17
    assert sum(r.tokens.total for r in rows) == week.totals.tokens.total
    assert sum(r.cost_usd for r in rows) == pytest.approx(week.totals.cost_usd, abs=1e-5)
    assert sum(r.active_seconds for r in rows) == week.totals.active_seconds
    resumed = next(r for r in rows if r.session_id.startswith("8f306b14"))
    assert (resumed.prompts, resumed.messages, resumed.started_at) == (1, 1, "2026-11-21T09:00:20Z")
    first = rows[1]
    assert (first.primary_model, first.tool_calls, first.tool_errors) == ("claude-opus-4-5-20251101", 1, 0)
    assert first.project == "/home/carol/work/ltv"
    by_tokens = sort_sessions(rows, "tokens")
    assert [r.tokens.total for r in by_tokens] == sorted((r.tokens.total for r in rows), reverse=True)
    assert [r.tokens.total for r in sort_sessions(rows, "+tokens")] == sorted(r.tokens.total for r in rows)


async def test_a_session_view_lists_its_tools_and_hours_and_never_another_users_session(db, carol):
    detail = await session_detail(db, carol.user.id, "4b9e2f70-1c3a-4d5e-8f60-7a1b2c3d4e5f", PRICES)
    assert {(t.kind, t.name, t.uses, t.errors) for t in detail.tools} == {
        ("subagent", "cohort-analyst", 1, 0), ("tool_use", "Bash", 1, 0), ("slash_command", "model", 1, 0)}
    assert detail.hours == [{"hour": "2026-11-21T06:00:00Z", "prompts": 3, "messages": 5, "tokens": 73625}]
    assert detail.session.prompts == 3 and detail.price_table == PRICES.version
    dora = await make_caller(db, "dora@example.com")
    assert await session_detail(db, dora.user.id, "4b9e2f70-1c3a-4d5e-8f60-7a1b2c3d4e5f", PRICES) is None
    assert await session_detail(db, carol.user.id, "f0e1d2c3-b4a5-4697-8877-665544332211", PRICES) is None
