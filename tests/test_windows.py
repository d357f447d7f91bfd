"""Window edges and the hourly totals (schema 0007) the status frame reads.

A window starting mid-hour takes that hour's first part from the deduplicated rows and the
rest from user_hours; ingest, rewrites, copies and retention keep user_hours equal to what
it sums. Numbers below are hand-checked from the transcripts written here.
"""

from __future__ import annotations

import collections
from datetime import timedelta

import msgspec
import pytest

from service.ingest import bulk
from service.store import ingest as store
from service.store import stats
from service.timeutil import from_store
from tests.conftest import ingest_files, make_caller, sample_files
from tests.test_parser import assistant, jsonl, usage, user

T = from_store


def transcript(*lines) -> bytes:
    return jsonl(*lines)


# One session: messages at 11:20, 11:40, 12:10 (day 1) and 09:00 (day 2); prompts at 11:45, 11:50.
SESSION_A = transcript(
    assistant("a1", "m1", ts="2026-11-20T11:20:00.000Z", usage=usage(1, 10)),
    assistant("a2", "m2", ts="2026-11-20T11:40:00.000Z", usage=usage(2, 20)),
    user("p2", "second question", ts="2026-11-20T11:45:00.000Z"),
    user("p1", "first question", ts="2026-11-20T11:50:00.000Z"),
    assistant("a3", "m3", ts="2026-11-20T12:10:00.000Z", usage=usage(4, 40)),
    assistant("a4", "m4", ts="2026-11-21T09:00:00.000Z", usage=usage(8, 80)),
)


@pytest.fixture
async def alice_id(db):
    return (await make_caller(db, "alice@example.com")).user.id


async def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


async def frame(db, user_id: int, now: str, window: str = "24h") -> dict:
    return msgspec.to_builtins(await stats.home_stats(db, user_id, window, T(now)))


async def reference_frame(db, user_id: int, now: str, window: str) -> tuple:
    """The same numbers straight from the deduplicated rows (the read before schema 0007)."""
    since = stats.window_bounds(T(now), window)["since"]
    row = await db.fetchone(
        "SELECT (SELECT COUNT(*) FROM user_sessions WHERE user_id = :u AND last_ts >= :s), "
        "(SELECT COUNT(DISTINCT project) FROM user_sessions WHERE user_id = :u AND last_ts >= :s), "
        "(SELECT COUNT(*) FROM user_prompts WHERE user_id = :u AND ts >= :s), "
        "(SELECT CAST(TOTAL(input_tokens) AS INTEGER) FROM user_messages WHERE user_id = :u AND ts >= :s), "
        "(SELECT CAST(TOTAL(output_tokens) AS INTEGER) FROM user_messages WHERE user_id = :u AND ts >= :s), "
        "(SELECT CAST(TOTAL(cache_read_tokens) AS INTEGER) FROM user_messages WHERE user_id = :u AND ts >= :s), "
        "(SELECT CAST(TOTAL(cache_creation_tokens) AS INTEGER) FROM user_messages WHERE user_id = :u AND ts >= :s)",
        {"u": user_id, "s": since})
    return tuple(row)


def as_tuple(f: dict) -> tuple:
    t = f["tokens"]
    return (f["sessions"], f["projects"], f["prompts"], t["input"], t["output"], t["cache_read"], t["cache_creation"])


async def assert_hours_consistent(db) -> None:
    """user_hours holds exactly the per-hour sums of user_messages and counts of user_prompts."""
    want: dict = collections.defaultdict(lambda: [0, 0, 0, 0, 0])
    for r in await db.fetchall("SELECT user_id, ts, input_tokens, output_tokens, cache_read_tokens, "
                               "cache_creation_tokens FROM user_messages"):
        acc = want[(r[0], r[1][:13])]
        for i in range(4):
            acc[i] += r[2 + i]
    for r in await db.fetchall("SELECT user_id, ts FROM user_prompts"):
        want[(r[0], r[1][:13])][4] += 1
    got = {(r[0], r[1]): list(r[2:]) for r in await db.fetchall(
        "SELECT user_id, hour, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, prompts "
        "FROM user_hours")}
    assert got == dict(want)


async def test_a_window_starting_mid_hour_counts_exactly_what_is_inside_it(db, alice_id, tmp_path):
    await ingest_files(db, alice_id, [await write(tmp_path, "a.jsonl", SESSION_A)])
    await assert_hours_consistent(db)
    # since 11:30 on day 1: m2 (11:40), both prompts (raw part of the 11 o'clock hour), m3, m4.
    f = await frame(db, alice_id, "2026-11-21T11:30:00Z")
    assert (f["prompts"], f["tokens"]["input"], f["tokens"]["output"], f["tokens"]["total"]) == (2, 14, 140, 154)
    # since 11:47: p1 (11:50) only, then m3 and m4.
    f = await frame(db, alice_id, "2026-11-21T11:47:00Z")
    assert (f["prompts"], f["tokens"]["input"], f["tokens"]["output"]) == (1, 12, 120)
    # since 12:00 sharp: no partial hour at all.
    f = await frame(db, alice_id, "2026-11-21T12:00:00Z")
    assert (f["prompts"], f["tokens"]["input"], f["tokens"]["output"]) == (0, 12, 120)
    # since 11:20 exactly: m1's timestamp is inside (the window's start is inclusive).
    f = await frame(db, alice_id, "2026-11-21T11:20:00Z")
    assert (f["prompts"], f["tokens"]["input"]) == (2, 15)
    assert (f["sessions"], f["projects"]) == (1, 0)


async def test_every_minute_of_three_hours_agrees_with_a_sum_of_the_rows(db, alice_id, tmp_path):
    await ingest_files(db, alice_id, [await write(tmp_path, "a.jsonl", SESSION_A)])
    await ingest_files(db, alice_id, sample_files("alice"))
    start = T("2026-11-21T10:00:00Z")
    for minute in range(0, 180, 7):
        for window in ("24h", "7d"):
            now = (start + timedelta(minutes=minute, seconds=minute % 11)).isoformat()
            assert as_tuple(await frame(db, alice_id, now, window)) == \
                await reference_frame(db, alice_id, now, window), (now, window)


async def test_an_earlier_copy_moves_a_message_to_its_hour(db, alice_id, tmp_path):
    await ingest_files(db, alice_id, [await write(tmp_path, "a.jsonl", SESSION_A)])
    # The same message m3 in another file, stamped 11:35: its earliest timestamp now counts.
    copy = transcript(assistant("b3", "m3", ts="2026-11-20T11:35:00.000Z", usage=usage(4, 40)))
    await ingest_files(db, alice_id, [await write(tmp_path, "b.jsonl", copy)])
    await assert_hours_consistent(db)
    hours = {r[0]: r[1] for r in await db.fetchall(
        "SELECT hour, input_tokens FROM user_hours WHERE user_id = ?", (alice_id,))}
    assert hours == {"2026-11-20T11": 1 + 2 + 4, "2026-11-21T09": 8}
    f = await frame(db, alice_id, "2026-11-21T11:38:00Z")  # m3 (11:35) is now before the window
    assert (f["tokens"]["input"], f["tokens"]["output"]) == (10, 100)
    # Rewriting the copy without it gives m3 back its own hour.
    await ingest_files(db, alice_id, [await write(tmp_path, "b.jsonl", transcript(
        user("q1", "unrelated", ts="2026-11-20T15:00:00.000Z")))])
    await assert_hours_consistent(db)
    f = await frame(db, alice_id, "2026-11-21T11:38:00Z")
    assert (f["prompts"], f["tokens"]["input"], f["tokens"]["output"]) == (3, 14, 140)  # + q1 at 15:00


async def test_retention_recomputes_the_hour_it_cuts_through(db, alice_id, tmp_path):
    await ingest_files(db, alice_id, [await write(tmp_path, "a.jsonl", SESSION_A)])
    await store.prune(db, T("2026-11-20T11:45:00Z"))  # m1 and m2 go; p2 at 11:45 stays
    await assert_hours_consistent(db)
    hours = {r[0]: (r[1], r[2]) for r in await db.fetchall(
        "SELECT hour, input_tokens, prompts FROM user_hours WHERE user_id = ?", (alice_id,))}
    assert hours == {"2026-11-20T11": (0, 2), "2026-11-20T12": (4, 0), "2026-11-21T09": (8, 0)}


async def test_samples_of_two_users_keep_their_hours_apart(db, tmp_path):
    ids = {name: (await make_caller(db, f"{name}@example.com")).user.id for name in ("alice", "bob")}
    for name, uid in ids.items():
        await ingest_files(db, uid, sample_files(name))
    await assert_hours_consistent(db)
    users_with_hours = {r[0] for r in await db.fetchall("SELECT DISTINCT user_id FROM user_hours")}
    assert users_with_hours == set(ids.values())


@pytest.mark.sqlite_only  # SQLite's scripts (the rebuild, the migration's backfill)
async def test_rebuilding_the_window_tables_gives_what_ingest_kept(db, alice_id, tmp_path):
    await ingest_files(db, alice_id, [await write(tmp_path, "a.jsonl", SESSION_A)])
    await ingest_files(db, alice_id, sample_files("alice"))
    tables = ("user_messages", "user_prompts", "user_sessions", "user_hours")

    async def snapshot() -> dict:
        return {t: sorted(tuple(r) for r in await db.fetchall(f"SELECT * FROM {t}")) for t in tables}

    kept = await snapshot()
    assert all(kept.values())
    async with db.writing() as conn:
        await conn.executescript(store.REBUILD_WINDOWS_SCRIPT)
    assert await snapshot() == kept


async def test_retention_drops_a_message_whose_first_copy_is_past_the_cutoff(db, alice_id, tmp_path):
    """A message is as old as its first line (FORMAT.md): pruning that line drops it from the
    windows, even though a later copy is still kept in another file."""
    await ingest_files(db, alice_id, [await write(tmp_path, "a.jsonl", SESSION_A)])  # m3 at 12:10
    copy = transcript(assistant("b3", "m3", ts="2026-11-20T11:35:00.000Z", usage=usage(4, 40)))
    await ingest_files(db, alice_id, [await write(tmp_path, "b.jsonl", copy)])  # m3 first at 11:35
    await store.prune(db, T("2026-11-20T11:45:00Z"))
    assert await db.fetchval("SELECT COUNT(*) FROM user_messages WHERE message_key = 'm3'") == 0
    await assert_hours_consistent(db)
    f = await frame(db, alice_id, "2026-11-21T11:50:00Z")  # since 11:50: p1 and m4
    assert (f["prompts"], f["tokens"]["input"]) == (1, 8)


async def test_a_reprocess_after_retention_does_not_bring_pruned_activity_back(db, alice_id, tmp_path):
    """Ingest keeps nothing from before the retention cutoff, so reprocessing the transcripts
    (a version bump, a grown file) cannot undo a prune."""
    path = await write(tmp_path, "a.jsonl", SESSION_A)
    now = T("2026-11-21T12:00:00Z")
    keep = timedelta(hours=24, minutes=15)  # cutoff 2026-11-20T11:45: m1 and m2 are older
    kept = {"activity_messages": 2, "activity_prompts": 2, "user_messages": 2, "user_prompts": 2}

    async def counts() -> dict:
        return {t: await db.fetchval(f"SELECT COUNT(*) FROM {t}") for t in kept}

    await bulk.ingest_paths(db, alice_id, [path], workers=0, clock=lambda: now)
    await store.prune(db, now - keep)
    assert await counts() == kept
    for _ in range(2):  # the first run stores, the forced second one replaces
        report = await bulk.ingest_paths(db, alice_id, [path], workers=0, clock=lambda: now, force=True,
                                         retention=keep)
        assert report.processed == 1
        assert await counts() == kept
        await assert_hours_consistent(db)
    f = await frame(db, alice_id, "2026-11-21T11:00:00Z", "7d")  # a window reaching past the cutoff
    assert (f["prompts"], f["tokens"]["input"], f["tokens"]["output"]) == (2, 12, 120)  # m3, m4; p1, p2


async def test_a_resumed_sessions_file_counts_both_sessions_and_their_projects(db, alice_id, tmp_path):
    """The new file starts with the resumed session's copied lines (their own sessionId and cwd)."""
    resumed = transcript(
        user("o1", "old question", ts="2026-11-18T10:00:00.000Z", sessionId="OLD", cwd="/old"),
        assistant("o2", "msg_old", ts="2026-11-18T10:00:05.000Z", sessionId="OLD", usage=usage(1, 10)),
        user("n1", "new question", ts="2026-11-21T10:00:00.000Z", sessionId="NEW", cwd="/new"),
        assistant("n2", "msg_new", ts="2026-11-21T10:00:05.000Z", sessionId="NEW", usage=usage(2, 20)),
    )
    await ingest_files(db, alice_id, [await write(tmp_path, "NEW.jsonl", resumed)])
    week = await frame(db, alice_id, "2026-11-21T11:00:00Z", "7d")
    assert (week["sessions"], week["projects"], week["prompts"], week["tokens"]["input"]) == (2, 2, 2, 3)
    day = await frame(db, alice_id, "2026-11-21T11:00:00Z", "24h")
    assert (day["sessions"], day["projects"], day["prompts"], day["tokens"]["input"]) == (1, 1, 1, 2)
    assert [tuple(r) for r in await db.fetchall(
        "SELECT session_id, project FROM user_sessions ORDER BY session_id")] == [("NEW", "/new"), ("OLD", "/old")]
    # The resumed session's own file, uploaded too, changes nothing: the copies are the same lines.
    original = transcript(
        user("o1", "old question", ts="2026-11-18T10:00:00.000Z", sessionId="OLD", cwd="/old"),
        assistant("o2", "msg_old", ts="2026-11-18T10:00:05.000Z", sessionId="OLD", usage=usage(1, 10)),
    )
    await ingest_files(db, alice_id, [await write(tmp_path, "OLD.jsonl", original)])
    assert await frame(db, alice_id, "2026-11-21T11:00:00Z", "7d") == week
    await assert_hours_consistent(db)


@pytest.mark.parametrize("order", [("a.jsonl", "b.jsonl"), ("b.jsonl", "a.jsonl")])
async def test_the_same_transcript_under_two_names_is_one_session_in_either_order(db, alice_id, tmp_path, order):
    """Without a sessionId each copy is named after its file; the copies' messages and prompt
    belong to the smaller name, and the other session (left without activity) must go."""
    lines = transcript(
        {k: v for k, v in user("p1", "hello", ts="2026-11-21T10:00:00.000Z").items() if k != "sessionId"},
        {k: v for k, v in assistant("a1", "msg_1", ts="2026-11-21T10:00:05.000Z", usage=usage(3, 30)).items()
         if k != "sessionId"},
    )
    for name in order:
        await ingest_files(db, alice_id, [await write(tmp_path, name, lines)])
    f = await frame(db, alice_id, "2026-11-21T11:00:00Z")
    assert (f["sessions"], f["prompts"], f["tokens"]["input"]) == (1, 1, 3)
    assert [tuple(r) for r in await db.fetchall("SELECT session_id FROM user_sessions")] == [("a",)]


async def test_a_clock_in_another_zone_gives_the_same_numbers(db, alice_id, tmp_path):
    from datetime import timezone

    await ingest_files(db, alice_id, [await write(tmp_path, "a.jsonl", SESSION_A)])
    utc = T("2026-11-21T11:30:00Z")
    for offset in (timedelta(hours=5, minutes=30), timedelta(hours=-7), timedelta(minutes=45)):
        local = utc.astimezone(timezone(offset))
        got = msgspec.to_builtins(await stats.home_stats(db, alice_id, "24h", local))
        assert as_tuple(got) == as_tuple(await frame(db, alice_id, "2026-11-21T11:30:00Z")), offset
        assert got["tokens"]["input"] == 14  # m2 (11:40), m3 and m4: hand-counted above


async def test_a_sessions_project_comes_from_its_earliest_file_whatever_the_order(db, alice_id, tmp_path):
    """FORMAT.md "project": for a session spread over several files, the file that starts earliest."""
    files = [("later.jsonl", user("b1", "more", ts="2026-11-21T10:00:00.000Z", sessionId="S1", cwd="/b")),
             ("earlier.jsonl", user("a1", "start", ts="2026-11-21T09:00:00.000Z", sessionId="S1", cwd="/a")),
             ("other.jsonl", user("c1", "else", ts="2026-11-21T09:30:00.000Z", sessionId="S2", cwd="/a"))]
    for name, line in files:  # one ingest each, the later file first
        await ingest_files(db, alice_id, [await write(tmp_path, name, transcript(line))])
    f = await frame(db, alice_id, "2026-11-21T12:00:00Z")
    assert (f["sessions"], f["projects"], f["prompts"]) == (2, 1, 3)  # S1 is in /a, like S2


async def test_each_token_counter_is_its_largest_value_across_files(db, alice_id, tmp_path):
    """FORMAT.md "Streaming duplicates": per message id per user, each counter's largest value."""
    one = assistant("x1", "msg_m", ts="2026-11-21T10:00:00.000Z", usage=usage(10, 5, 7, 0), sessionId="S")
    two = assistant("x2", "msg_m", ts="2026-11-21T10:00:05.000Z", usage=usage(3, 50, 0, 9), sessionId="S")
    await ingest_files(db, alice_id, [await write(tmp_path, "one.jsonl", transcript(one))])
    await ingest_files(db, alice_id, [await write(tmp_path, "two.jsonl", transcript(two))])
    await assert_hours_consistent(db)
    f = await frame(db, alice_id, "2026-11-21T12:00:00Z")
    assert (f["sessions"], f["tokens"]) == (1, {"input": 10, "output": 50, "cache_read": 7, "cache_creation": 9,
                                               "total": 76})
