"""The status frame's numbers: activity inside a 24h or 7d window, in one read."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from ..db import Database
from ..timeutil import to_api, to_store

WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "24h"
_INT64_MAX = 2**63 - 1


class Tokens(msgspec.Struct):
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    total: int = 0


class HomeStats(msgspec.Struct):
    window: str
    last_pull_at: str | None
    sessions: int
    prompts: int
    tokens: Tokens
    projects: int


def clamp_window(value: str | None) -> str:
    """Unknown or missing windows fall back to 24h (a clamp, not an error)."""
    return value if value in WINDOWS else DEFAULT_WINDOW


# One statement over the per-user deduplicated tables that ingest maintains (schema 0005):
# a message counts once per user with its largest counters and earliest timestamp, a prompt
# once by its key, and a session is in the window when its latest activity is. Each part is
# a range scan of a (user_id, ts) index, so the cost follows this user's activity in the
# window, not the size of the database, and no GROUP BY or temporary B-tree is needed.
_HOME_STATS_SQL = """
SELECT
    (SELECT last_pull_at FROM users WHERE id = :user) AS last_pull_at,
    (SELECT COUNT(*) FROM user_sessions WHERE user_id = :user AND last_ts >= :since) AS sessions,
    (SELECT COUNT(DISTINCT project) FROM user_sessions WHERE user_id = :user AND last_ts >= :since) AS projects,
    (SELECT COUNT(*) FROM user_prompts WHERE user_id = :user AND ts >= :since) AS prompts,
    t.input, t.output, t.cache_read, t.cache_creation
FROM (SELECT CAST(TOTAL(input_tokens) AS INTEGER) AS input, CAST(TOTAL(output_tokens) AS INTEGER) AS output,
             CAST(TOTAL(cache_read_tokens) AS INTEGER) AS cache_read,
             CAST(TOTAL(cache_creation_tokens) AS INTEGER) AS cache_creation
      FROM user_messages WHERE user_id = :user AND ts >= :since) AS t
"""
# TOTAL, not SUM: SUM raises "integer overflow" on absurd (but int64) counters in a transcript;
# TOTAL is exact below 2**53 and the CAST saturates at the int64 maximum.


async def home_stats(db: Database, user_id: int, window: str | None, now: datetime) -> HomeStats:
    """The status frame for one user at ``now``; zeros and no last pull for a user without data or row."""
    window = clamp_window(window)
    since = to_store(now - WINDOWS[window])
    row = await db.fetchone(_HOME_STATS_SQL, {"user": user_id, "since": since})
    tokens = Tokens(row["input"], row["output"], row["cache_read"], row["cache_creation"])
    tokens.total = min(tokens.input + tokens.output + tokens.cache_read + tokens.cache_creation, _INT64_MAX)
    return HomeStats(window=window, last_pull_at=to_api(row["last_pull_at"]), sessions=row["sessions"],
                     prompts=row["prompts"], tokens=tokens, projects=row["projects"])
