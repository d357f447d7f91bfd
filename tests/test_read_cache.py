"""Cached reads (Database.snapshot): a token's user and the status frame are reused only while a
fresh read would give the same answer.

Changes come from another connection, as they do from `agnes-home tokens revoke` or a second
process: the cache must notice them at the very next request, not after some delay.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta

import msgspec
import pytest

pytestmark = pytest.mark.sqlite_only  # about SQLite's data_version; tests/test_postgres.py checks PostgreSQL's cache

from service import keys
from service.db import Database
from service.store import stats
from service.timeutil import from_store, to_store
from tests.conftest import NOW, expected_stats, ingest_files, make_caller, sample_files


@pytest.fixture
async def alice(client, db):
    client.app[keys.CLOCK].fixed = NOW
    caller = await make_caller(db, "alice@example.com", name="Alice")
    report = await ingest_files(db, caller.user.id, sample_files("alice"))
    assert report.failed == 0, report.errors
    return caller


async def elsewhere(settings, *statements: tuple[str, tuple]) -> None:
    """Run writes on a connection of its own, as another process (the CLI) would; in a thread, so
    the service's own writes (a token's last-use stamp) can finish meanwhile."""
    def run() -> None:
        with sqlite3.connect(settings.db_path, isolation_level=None, timeout=10) as conn:
            for sql, params in statements:
                conn.execute(sql, params)
    await asyncio.to_thread(run)


async def stats_status(client, caller, window: str = "24h") -> tuple[int, dict]:
    resp = await client.get(f"/api/me/home-stats?window={window}", headers=caller.headers)
    return resp.status, await resp.json()


async def test_repeated_polls_are_answered_from_the_cache(client, db, alice):
    first = await stats_status(client, alice)
    await db.settle()  # the token's last-use stamp: a commit, which empties the cache once
    assert await stats_status(client, alice) == first
    hits = db.cache_hits
    for _ in range(3):
        assert await stats_status(client, alice) == first == (200, expected_stats("alice", "24h"))
    assert db.cache_hits - hits == 6  # the token and the frame, three times


async def test_a_token_revoked_elsewhere_is_refused_at_the_next_request(client, db, settings, alice):
    assert (await stats_status(client, alice))[0] == 200
    assert (await stats_status(client, alice))[0] == 200  # now cached
    await elsewhere(settings, ("UPDATE api_tokens SET revoked_at = ? WHERE user_id = ?",
                               (to_store(NOW), alice.user.id)))
    status, body = await stats_status(client, alice)
    assert status == 401 and body["code"] == "unauthorized"


async def test_a_signed_in_page_notices_a_revocation_made_elsewhere(client, settings, alice):
    resp = await client.post("/login", data={"token": alice.token, "next": "/home"}, allow_redirects=False)
    assert resp.status == 303
    for _ in range(2):
        page = await client.get("/home", allow_redirects=False)
        assert page.status == 200 and "Welcome, Alice" in await page.text()
    await elsewhere(settings, ("UPDATE api_tokens SET revoked_at = ? WHERE user_id = ?",
                               (to_store(NOW), alice.user.id)))
    page = await client.get("/home", allow_redirects=False)
    assert page.status == 302 and page.headers["Location"].startswith("/login")


async def test_numbers_written_elsewhere_show_at_the_next_request(client, settings, alice):
    assert (await stats_status(client, alice, "7d"))[1] == expected_stats("alice", "7d")
    await elsewhere(settings,
                    ("UPDATE users SET last_pull_at = ? WHERE id = ?",
                     (to_store(NOW - timedelta(minutes=3)), alice.user.id)),
                    ("UPDATE user_hours SET prompts = prompts + 5 WHERE user_id = ? AND hour = "
                     "(SELECT MAX(hour) FROM user_hours WHERE user_id = ?)", (alice.user.id, alice.user.id)))
    body = (await stats_status(client, alice, "7d"))[1]
    assert body["last_pull_at"] == "2026-11-21T11:57:00Z"
    assert body["prompts"] == expected_stats("alice", "7d")["prompts"] + 5


async def test_an_ingest_shows_at_the_next_request(client, db, alice):
    bob = await make_caller(db, "bob@example.com")
    assert (await stats_status(client, bob, "7d"))[1]["prompts"] == 0
    await ingest_files(db, bob.user.id, sample_files("bob"))
    assert (await stats_status(client, bob, "7d"))[1] == expected_stats("bob", "7d")


async def fresh_read(settings, user_id: int, window: str, now) -> dict:
    """The frame read by a Database of its own, whose cache is empty: the answer to compare with."""
    db = Database(settings.db_path, readers=0)
    await db.open()
    try:
        return msgspec.to_builtins(await stats.home_stats(db, user_id, window, now))
    finally:
        await db.close()


@pytest.mark.parametrize("window", ["24h", "7d"])
async def test_a_kept_frame_follows_the_clock_exactly(client, db, settings, alice, window):
    """Activity leaves the window as time passes, with no write: the kept answer must expire at the
    microsecond its earliest activity leaves, and a clock moved back must not reuse it either."""
    user_id = alice.user.id
    length = stats.WINDOWS[window]
    since = to_store(NOW - length)
    stamps = sorted({r[0] for r in await db.fetchall(
        "SELECT ts FROM user_messages WHERE user_id = ? AND ts >= ? UNION "
        "SELECT ts FROM user_prompts WHERE user_id = ? AND ts >= ?", (user_id, since, user_id, since))})
    assert len(stamps) >= 3
    moments = [NOW, NOW + timedelta(minutes=1)]
    for ts in stamps[:3]:
        leaves = from_store(ts) + length
        moments += [leaves, leaves + timedelta(microseconds=1)]
    moments += [NOW + timedelta(hours=2), NOW, NOW - timedelta(hours=1)]  # and back again
    changed = 0
    previous = None
    for now in moments:
        client.app[keys.CLOCK].fixed = now
        status, body = await stats_status(client, alice, window)
        assert status == 200
        assert body == {**await fresh_read(settings, user_id, window, now), "window": window}, now
        changed += previous is not None and body != previous
        previous = body
    assert changed >= 3  # the moments do cross activity leaving the window


async def test_the_operator_can_switch_the_cache_off(aiohttp_client, settings):
    from service.app import create_app
    from service.config import load_settings

    changed = load_settings(environ={"AGNES_READ_CACHE": "off"}, db_path=settings.db_path,
                            data_dir=settings.data_dir, secret_key="test-secret", parse_workers=0)
    client = await aiohttp_client(create_app(changed))
    client.app[keys.CLOCK].fixed = NOW
    db = client.app[keys.DB]
    caller = await make_caller(db, "alice@example.com")
    await ingest_files(db, caller.user.id, sample_files("alice"))
    reads = db.inline_reads + db.thread_reads
    for _ in range(3):
        assert await stats_status(client, caller) == (200, expected_stats("alice", "24h"))
    assert db.cache_hits == 0
    assert db.inline_reads + db.thread_reads - reads >= 6  # the token and the frame, each time


async def test_a_frame_read_for_a_naive_now_is_kept_too(db):
    """A naive now is UTC (window_bounds); a kept answer must compare with it, not raise."""
    caller = await make_caller(db, "carol@example.com")
    await ingest_files(db, caller.user.id, sample_files("alice"))
    naive = NOW.replace(tzinfo=None)
    first = await stats.home_stats(db, caller.user.id, "7d", naive)
    again = await stats.home_stats(db, caller.user.id, "7d", naive + timedelta(seconds=1))
    assert again is first and msgspec.to_builtins(first) == expected_stats("alice", "7d")


async def test_a_reopened_database_forgets_what_it_kept(settings, db):
    """data_version counts per connection, from the same start on every new one."""
    from service.store import users

    carol = await users.add_user(db, "carol@example.com", "Carol", onboarded=True)
    mine = Database(settings.db_path)
    await mine.open()
    try:
        assert (await users.get_user(mine, carol.id)).onboarded
        await mine.close()
        await elsewhere(settings, ("UPDATE users SET onboarded = 0 WHERE id = ?", (carol.id,)))
        await mine.open()
        assert not (await users.get_user(mine, carol.id)).onboarded
    finally:
        await mine.close()


async def test_kept_frames_equal_fresh_reads_around_every_boundary(settings, db):
    """Random activity next to window and hour edges (some of it in the future), the clock moving
    through each edge a microsecond at a time and sometimes back: a kept answer always equals a
    read by a database that keeps nothing."""
    import random

    from service.store.ingest import _SQLITE
    from service.store import users

    rng = random.Random(5)
    uid = (await users.add_user(db, "fuzz@example.com", "Fuzz", True)).id
    hour = NOW.replace(minute=0, second=0, microsecond=0)
    stamps = []
    for _ in range(60):
        base = rng.choice([NOW - timedelta(days=7), NOW - timedelta(hours=24),
                           hour - timedelta(hours=rng.randint(0, 170)), NOW + timedelta(hours=rng.randint(0, 3))])
        stamps.append(base + timedelta(microseconds=rng.choice([-1, 0, 1, rng.randint(-3_600_000_000, 3_600_000_000)])))
    async with db.transaction() as conn:
        for i, ts in enumerate(stamps):
            if i % 3 == 0:
                await conn.execute("INSERT INTO user_messages (user_id, message_key, session_id, ts, input_tokens, "
                                   "output_tokens, cache_read_tokens, cache_creation_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   (uid, f"m{i}", f"s{i % 7}", to_store(ts), i + 1, 2, 3, 4))
            elif i % 3 == 1:
                await conn.execute("INSERT INTO user_prompts VALUES (?, ?, ?, ?)", (uid, f"p{i}", f"s{i % 7}", to_store(ts)))
            else:
                await conn.execute("INSERT OR REPLACE INTO user_sessions VALUES (?, ?, ?, ?)",
                                   (uid, f"s{i}", to_store(ts), f"proj{i % 4}"))
        await conn.execute(_SQLITE["_HOURS_TABLE"])
        await conn.execute("INSERT OR IGNORE INTO temp.touched_hours SELECT user_id, substr(ts, 1, 13) FROM user_messages "
                           "UNION SELECT user_id, substr(ts, 1, 13) FROM user_prompts")
        for statement in _SQLITE["_RECOMPUTE_HOURS"]:
            await conn.execute(statement)
    moments = []
    for ts in sorted(stamps):
        for length in stats.WINDOWS.values():
            moments += [ts + length + timedelta(microseconds=d) for d in (-1, 0, 1)]
            if rng.random() < 0.1:
                moments.append(ts + length - timedelta(microseconds=rng.choice([1, 1000, 3_600_000_000])))
    fresh = Database(settings.db_path, cache=False)
    await fresh.open()
    try:
        hits = db.cache_hits
        for now in moments:
            for window in stats.WINDOWS:
                kept = msgspec.to_builtins(await stats.home_stats(db, uid, window, now))
                assert kept == msgspec.to_builtins(await stats.home_stats(fresh, uid, window, now)), (now, window)
        assert db.cache_hits - hits > len(moments) // 2  # most answers did come from the cache
    finally:
        await fresh.close()


async def test_a_checked_cookie_still_expires(aiohttp_client, settings, monkeypatch):
    """A cookie's signature is verified once (auth.SessionSigner), its age at every request."""
    import time

    from service.app import create_app
    from service.config import load_settings

    changed = load_settings(environ={}, db_path=settings.db_path, data_dir=settings.data_dir,
                            secret_key="test-secret", parse_workers=0, session_max_age=60)
    client = await aiohttp_client(create_app(changed))
    caller = await make_caller(client.app[keys.DB], "alice@example.com", name="Alice")
    resp = await client.post("/login", data={"token": caller.token, "next": "/home"}, allow_redirects=False)
    assert resp.status == 303
    # Sent by hand: the client's own jar would drop the cookie when it expires, and prove nothing.
    cookie = {"Cookie": f"agnes_session={resp.cookies['agnes_session'].value}"}
    client.session.cookie_jar.clear()
    real = time.time
    for shift, status in ((0, 200), (0, 200), (59, 200), (62, 302), (-3600, 302), (0, 200)):
        monkeypatch.setattr(time, "time", lambda shift=shift: real() + shift)
        page = await client.get("/home", headers=cookie, allow_redirects=False)
        assert page.status == status, shift
