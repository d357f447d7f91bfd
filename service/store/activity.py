"""The analyst's activity over local days: the deduplicated per-user rows of a range, summarised."""

from __future__ import annotations

from datetime import datetime

from ..activity import Activity, MessageIn, PromptIn, summarise
from ..cost import PriceTable
from ..days import RANGES, day_starts, parse_zone
from ..db import Database
from ..timeutil import from_store, to_store

# Every row comes from the per-user tables ingest keeps (schema 0005 and 0010): one row per
# deduplicated message and prompt, each already owned by FORMAT.md's session (a resumed session's
# copies belong to the session they were copied from), and each session's project.
_MESSAGES_SQL = """
SELECT ts, session_id, model, speed, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,
       cache_5m_tokens, cache_1h_tokens
FROM user_messages WHERE user_id = ? AND ts >= ? AND ts < ?
"""
_PROMPTS_SQL = "SELECT ts, session_id FROM user_prompts WHERE user_id = ? AND ts >= ? AND ts < ?"
_PROJECTS_SQL = """
SELECT session_id, project FROM user_sessions WHERE user_id = ? AND last_ts >= ?
"""


async def activity(db: Database, user_id: int, range_name: str, zone_name: str | None, now: datetime,
                   prices: PriceTable) -> Activity:
    """The activity page's numbers for ``range_name`` (7d, 30d or 90d) in the zone ``zone_name``.

    ValueError for an unknown zone; an unknown range is the caller's to clamp.
    """
    zone = parse_zone(zone_name)
    bounds = day_starts(now, RANGES[range_name], zone)
    since, until = to_store(bounds[0]), to_store(bounds[-1])
    messages = [MessageIn(from_store(r[0]), *tuple(r)[1:])
                for r in await db.fetchall(_MESSAGES_SQL, (user_id, since, until))]
    prompts = [PromptIn(from_store(r[0]), r[1]) for r in await db.fetchall(_PROMPTS_SQL, (user_id, since, until))]
    projects = {r[0]: r[1] for r in await db.fetchall(_PROJECTS_SQL, (user_id, since))}
    dates = [b.astimezone(zone).date().isoformat() for b in bounds[:-1]]
    return summarise(range_name, str(zone), bounds, messages, prompts, projects, prices, dates)
