"""The status frame's numbers: activity inside a 24h or 7d window, in one read."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import msgspec

from ..db import BaseDatabase
from ..timeutil import UTC, from_store, to_api, to_store

WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "24h"
_INT64_MAX = 2**63 - 1


class Tokens(msgspec.Struct, frozen=True):
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    total: int = 0


class HomeStats(msgspec.Struct, frozen=True):  # frozen: one answer may serve many requests
    window: str
    last_pull_at: str | None
    sessions: int
    prompts: int
    tokens: Tokens
    projects: int


def clamp_window(value: str | None) -> str:
    """Unknown or missing windows fall back to 24h (a clamp, not an error)."""
    return value if value in WINDOWS else DEFAULT_WINDOW


# One statement over the per-user tables that ingest maintains (schemas 0005 and 0007): whole
# hours of the window come from user_hours (a row per active hour), the window's first,
# partial hour [since, edge) from the deduplicated rows themselves, and sessions (in the
# window when their latest activity is) from user_sessions. Every part is a range of a
# (user_id, time) key, so the cost is bounded by the hours in the window, not by the size
# of the database or how busy the analyst was.
_HOME_STATS_SQL = """
SELECT
    (SELECT last_pull_at FROM users WHERE id = :user) AS last_pull_at,
    s.sessions, s.projects,
    CAST(h.prompts AS BIGINT)
        + (SELECT COUNT(*) FROM user_prompts WHERE user_id = :user AND ts >= :since AND ts < :edge) AS prompts,
    CAST(h.input + m.input AS BIGINT) AS input, CAST(h.output + m.output AS BIGINT) AS output,
    CAST(h.cache_read + m.cache_read AS BIGINT) AS cache_read,
    CAST(h.cache_creation + m.cache_creation AS BIGINT) AS cache_creation,
    (SELECT MIN(t) FROM (SELECT MIN(ts) AS t FROM user_messages WHERE user_id = :user AND ts >= :since
                         UNION ALL SELECT MIN(ts) FROM user_prompts WHERE user_id = :user AND ts >= :since
                         UNION ALL SELECT MIN(last_ts) FROM user_sessions
                                   WHERE user_id = :user AND last_ts >= :since) AS firsts) AS next_out
FROM (SELECT COUNT(*) AS sessions, COUNT(DISTINCT project) AS projects
      FROM user_sessions WHERE user_id = :user AND last_ts >= :since) AS s,
     (SELECT TOTAL(input_tokens) AS input, TOTAL(output_tokens) AS output, TOTAL(cache_read_tokens) AS cache_read,
             TOTAL(cache_creation_tokens) AS cache_creation, TOTAL(prompts) AS prompts
      FROM user_hours WHERE user_id = :user AND hour >= :hour) AS h,
     (SELECT TOTAL(input_tokens) AS input, TOTAL(output_tokens) AS output, TOTAL(cache_read_tokens) AS cache_read,
             TOTAL(cache_creation_tokens) AS cache_creation
      FROM user_messages WHERE user_id = :user AND ts >= :since AND ts < :edge) AS m
"""
# TOTAL, not SUM: SUM raises "integer overflow" on absurd (but int64) counters in a transcript;
# TOTAL is exact below 2**53 and the CAST saturates at the int64 maximum (PostgreSQL's CAST raises
# instead: its twin uses int64() from schema/postgresql/0014, which saturates).
_HOME_STATS = {"sqlite": _HOME_STATS_SQL,
               "postgresql": re.sub(r"CAST\(([^()]*) AS BIGINT\)", r"int64(\1)", _HOME_STATS_SQL)}
# next_out: the earliest activity inside the window, the first to leave it as time passes (NULL
# when the window holds none). Until then, and while the database is unchanged, the answer stays
# the same.


def window_bounds(now: datetime, window: str) -> dict[str, str]:
    """The window's start, the first whole hour at or after it, and that hour's user_hours key."""
    since = now - WINDOWS[window]
    # Hours are UTC hours (user_hours keys are stored timestamps): floor in UTC, not in now's zone,
    # or a +05:30 clock would count half an hour twice.
    since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    floor = since.replace(minute=0, second=0, microsecond=0)
    edge = floor if floor == since else floor + timedelta(hours=1)
    edge_text = to_store(edge)
    return {"since": to_store(since), "edge": edge_text, "hour": edge_text[:13]}


async def home_stats(db: BaseDatabase, user_id: int, window: str | None, now: datetime) -> HomeStats:
    """The status frame for one user at ``now``; zeros and no last pull for a user without data or row.

    An answer is reused while the database is unchanged (BaseDatabase.snapshot) and ``now`` has
    neither gone back past the moment it was read for nor moved its window's start past the
    earliest activity it counted: exactly the span in which a fresh read gives the same numbers.
    Analysts' pages poll it; a database that takes writes (an ingest) reads afresh each time.
    """
    window = clamp_window(window)
    if now.tzinfo is None:  # naive: UTC, as window_bounds takes it
        now = now.replace(tzinfo=UTC)
    version = db.snapshot()
    key = ("home_stats", user_id, window)
    kept = db.cached(version, key)
    if kept is not None:
        read_at, last_start, answer = kept
        if read_at <= now and (last_start is None or now - WINDOWS[window] <= last_start):
            return answer
    row = await db.fetchone(_HOME_STATS[db.dialect], {"user": user_id, **window_bounds(now, window)})
    parts = (row["input"], row["output"], row["cache_read"], row["cache_creation"])
    tokens = Tokens(*parts, total=min(sum(parts), _INT64_MAX))
    answer = HomeStats(window=window, last_pull_at=to_api(row["last_pull_at"]), sessions=row["sessions"],
                       prompts=row["prompts"], tokens=tokens, projects=row["projects"])
    # The window may start as late as the earliest activity in it; with none, any later start
    # leaves the numbers as they are (nothing newer exists until a commit changes the version).
    db.cache(version, key, (now, from_store(row["next_out"]), answer))
    return answer


async def last_active_day(db: BaseDatabase, user_id: int) -> str | None:
    """The UTC day ('YYYY-MM-DD') of the user's latest counted activity, or None when nothing has
    arrived: what /home says when a window is empty. One seek to the end of user_hours' key."""
    hour = await db.fetchval("SELECT MAX(hour) FROM user_hours WHERE user_id = ?", (user_id,))
    return hour[:10] if hour else None
