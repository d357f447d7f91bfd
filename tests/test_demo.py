"""`agnes-home demo` (what `make run` loads): populated windows, a table, idempotent re-runs."""

from __future__ import annotations

from service.demo import DEMO_USERS, load_demo
from service.store import stats, tables, users
from service.timeutil import from_store


async def test_demo_populates_both_windows_and_is_idempotent(db, settings):
    now = from_store("2026-11-21T12:00:00Z")
    token, reports = await load_demo(db, settings, now)
    assert token.startswith("agnes_pat_")
    assert sorted(reports) == ["ana@example.com", "ben@example.com"]
    assert all(r.processed == 14 and r.failed == 0 for r in reports.values())
    ana = await users.get_user_by_email(db, "ana@example.com")
    day = await stats.home_stats(db, ana.id, "24h", now)
    week = await stats.home_stats(db, ana.id, "7d", now)
    assert day.sessions == 5 and week.sessions == 14
    assert 0 < day.prompts < week.prompts and 0 < day.tokens.total < week.tokens.total
    assert 1 <= day.projects <= week.projects <= 4
    # A pull is simulated, so Last sync does not read "never".
    assert day.last_pull_at == "2026-11-21T11:57:00Z"
    ben = await users.get_user_by_email(db, "ben@example.com")
    assert (await stats.home_stats(db, ben.id, "24h", now)).last_pull_at == "2026-11-20T10:00:00Z"
    cleo = await users.get_user_by_email(db, "cleo@example.com")
    assert cleo.onboarded is False
    assert [t.id for t in await tables.readable(db, cleo.id)] == ["demo_customers"]

    token2, _ = await load_demo(db, settings, now)
    assert token2 != token
    # A second `make run` must not sign out a browser that used the first run's token.
    assert (await users.authenticate(db, token))[0].id == ana.id
    assert (await users.authenticate(db, token2))[0].id == ana.id
    assert await db.fetchval("SELECT COUNT(*) FROM api_tokens WHERE token_hash IN (?, ?)",
                             (token, token2)) == 0  # stored as hashes only
    assert await stats.home_stats(db, ana.id, "7d", now) == week
    assert len(await users.list_users(db)) == len(DEMO_USERS)
