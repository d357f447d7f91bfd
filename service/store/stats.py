"""The status frame's numbers: activity inside a 24h or 7d window, in one read."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from ..db import Database
from ..timeutil import to_api, to_store

WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "24h"


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


# One statement: messages are deduplicated per user by message key (largest value per
# counter), prompts by prompt key; sessions are those with a prompt or a message in the
# window; a session's project comes from its earliest-starting file that has one.
# Every activity read uses the covering (user_id, ts, ...) indexes, so the cost follows
# this user's activity in the window, not the size of the database.
_HOME_STATS_SQL = """
WITH msg AS (
    SELECT message_key, MIN(session_id) AS session_id,
           MAX(input_tokens) AS i, MAX(output_tokens) AS o,
           MAX(cache_read_tokens) AS cr, MAX(cache_creation_tokens) AS cc
    FROM activity_messages WHERE user_id = :user AND ts >= :since
    GROUP BY message_key
),
prm AS (
    SELECT prompt_key, MIN(session_id) AS session_id
    FROM activity_prompts WHERE user_id = :user AND ts >= :since
    GROUP BY prompt_key
),
ses AS (
    SELECT session_id FROM msg UNION SELECT session_id FROM prm
)
SELECT
    (SELECT last_pull_at FROM users WHERE id = :user) AS last_pull_at,
    (SELECT COUNT(*) FROM ses) AS sessions,
    (SELECT COUNT(*) FROM prm) AS prompts,
    (SELECT COALESCE(SUM(i), 0) FROM msg) AS input,
    (SELECT COALESCE(SUM(o), 0) FROM msg) AS output,
    (SELECT COALESCE(SUM(cr), 0) FROM msg) AS cache_read,
    (SELECT COALESCE(SUM(cc), 0) FROM msg) AS cache_creation,
    (SELECT COUNT(DISTINCT (
        SELECT s.project FROM session_summaries s
        WHERE s.user_id = :user AND s.session_id = ses.session_id AND s.project IS NOT NULL
        ORDER BY s.started_at IS NULL, s.started_at LIMIT 1)) FROM ses) AS projects
"""


async def home_stats(db: Database, user_id: int, window: str | None, now: datetime) -> HomeStats:
    """The status frame for one user at ``now``; zeros and no last pull for a user without data or row."""
    window = clamp_window(window)
    since = to_store(now - WINDOWS[window])
    row = await db.fetchone(_HOME_STATS_SQL, {"user": user_id, "since": since})
    tokens = Tokens(row["input"], row["output"], row["cache_read"], row["cache_creation"])
    tokens.total = tokens.input + tokens.output + tokens.cache_read + tokens.cache_creation
    return HomeStats(window=window, last_pull_at=to_api(row["last_pull_at"]), sessions=row["sessions"],
                     prompts=row["prompts"], tokens=tokens, projects=row["projects"])
