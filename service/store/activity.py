"""The analyst's activity over local days: the deduplicated per-user rows of a range, summarised."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from ..activity import (Activity, EventIn, MessageIn, PromptIn, SessionRow, dedupe_events, session_rows,
                        summarise)
from ..cost import PriceTable, tier_prompt, tier_sql
from ..days import RANGES, day_starts, parse_zone
from ..db import BaseDatabase
from ..timeutil import from_store, to_api, to_store

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


async def _rows(db: BaseDatabase, user_id: int, since: str, until: str
                ) -> tuple[list[MessageIn], list[PromptIn], dict[str, str | None]]:
    messages = [MessageIn(from_store(r[0]), *tuple(r)[1:])
                for r in await db.fetchall(_MESSAGES_SQL, (user_id, since, until))]
    prompts = [PromptIn(from_store(r[0]), r[1]) for r in await db.fetchall(_PROMPTS_SQL, (user_id, since, until))]
    projects = {r[0]: r[1] for r in await db.fetchall(_PROJECTS_SQL, (user_id, since))}
    return messages, prompts, projects


async def activity(db: BaseDatabase, user_id: int, range_name: str, zone_name: str | None, now: datetime,
                   prices: PriceTable) -> Activity:
    """The activity page's numbers for ``range_name`` (7d, 30d or 90d) in the zone ``zone_name``.

    ValueError for an unknown zone; an unknown range is the caller's to clamp.
    """
    zone = parse_zone(zone_name)
    bounds = day_starts(now, RANGES[range_name], zone)

    async def read() -> Activity:
        messages, prompts, projects = await _rows(db, user_id, to_store(bounds[0]), to_store(bounds[-1]))
        dates = [b.astimezone(zone).date().isoformat() for b in bounds[:-1]]
        return summarise(range_name, str(zone), bounds, messages, prompts, projects, prices, dates)

    # Kept while the database is unchanged and the days are the same: callers must not change it.
    return await db.cached_read(("activity", user_id, range_name, str(zone), bounds[0], prices.version), read)


# The rows of a JSON array of ids (one parameter, whatever their number), as table j with column value.
_IDS = {"sqlite": "json_each(?) AS j", "postgresql": "json_array_elements_text(CAST(? AS json)) AS j (value)"}
_SESSION_LASTS_SQL = {dialect: f"""
SELECT s.session_id, MAX(s.last_ts) FROM {ids}
JOIN file_sessions s ON s.user_id = ? AND s.session_id = j.value GROUP BY s.session_id
""" for dialect, ids in _IDS.items()}
_EVENTS_SQL = {
    "sqlite": """
SELECT e.ts, e.session_id, e.event_type, e.tool_name, e.skill_name, e.subagent_type, e.command_name,
       MAX(e.is_error)
FROM json_each(?) AS j JOIN usage_events e ON e.user_id = ? AND e.session_id = j.value
WHERE e.ts >= ? AND e.ts < ?
GROUP BY e.session_id, e.event_id
""",
    # PostgreSQL names no bare column beside an aggregate: the copies of an event (one line of one session,
    # in several files) agree on them, so MIN picks that value.
    "postgresql": """
SELECT MIN(e.ts), e.session_id, MIN(e.event_type), MIN(e.tool_name), MIN(e.skill_name), MIN(e.subagent_type),
       MIN(e.command_name), MAX(e.is_error)
FROM json_array_elements_text(CAST(? AS json)) AS j (value) JOIN usage_events e
    ON e.user_id = ? AND e.session_id = j.value
WHERE e.ts >= ? AND e.ts < ?
GROUP BY e.session_id, e.event_id
"""}
_PROJECTS_OF_SQL = {dialect: f"SELECT s.session_id, s.project FROM {ids} JOIN user_sessions s "
                             "ON s.user_id = ? AND s.session_id = j.value" for dialect, ids in _IDS.items()}


async def _events(db: BaseDatabase, user_id: int, session_ids: list[str], since: str, until: str) -> list[EventIn]:
    """Usage events of the sessions (each once: files holding copies of a line share its event id), the
    copies a resumed session holds of another's tool uses left to the session that owns them."""
    if not session_ids:
        return []
    ids = msgspec.json.encode(session_ids).decode()
    rows = await db.fetchall(_EVENTS_SQL[db.dialect], (ids, user_id, since, until))
    lasts = {r[0]: r[1] for r in await db.fetchall(_SESSION_LASTS_SQL[db.dialect], (ids, user_id))}
    rank = {sid: (last is None, last or "") for sid, last in lasts.items()}
    events = [EventIn(from_store(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7])) for r in rows]
    return dedupe_events(events, rank)


async def sessions(db: BaseDatabase, user_id: int, range_name: str, zone_name: str | None, now: datetime,
                   prices: PriceTable) -> list[SessionRow]:
    """Every session with activity in the range's local days, with its activity inside them (so their
    sums equal the range's totals), unsorted; kept as activity() is (callers must not change it)."""
    zone = parse_zone(zone_name)
    bounds = day_starts(now, RANGES[range_name], zone)
    since, until = to_store(bounds[0]), to_store(bounds[-1])

    async def read() -> list[SessionRow]:
        messages, prompts, projects = await _rows(db, user_id, since, until)
        session_ids = sorted({m.session_id for m in messages} | {p.session_id for p in prompts})
        events = await _events(db, user_id, session_ids, since, until)
        return session_rows(messages, prompts, events, projects, prices, to_api)

    return await db.cached_read(("sessions", user_id, range_name, str(zone), bounds[0], prices.version), read)


class ToolUse(msgspec.Struct):
    kind: str  # tool_use | subagent | mcp_call | skill | slash_command
    name: str
    uses: int = 0
    errors: int = 0


class SessionDetail(msgspec.Struct):
    session: SessionRow
    price_table: str
    hours: list[dict]  # [{"hour": ISO UTC, "prompts", "messages", "tokens"}] with activity
    tools: list[ToolUse]


_SESSION_MESSAGES_SQL = """
SELECT ts, session_id, model, speed, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,
       cache_5m_tokens, cache_1h_tokens
FROM user_messages WHERE user_id = ? AND session_id = ?
"""
_SESSION_PROMPTS_SQL = "SELECT ts, session_id FROM user_prompts WHERE user_id = ? AND session_id = ?"
_SESSION_PROJECT_SQL = "SELECT project FROM user_sessions WHERE user_id = ? AND session_id = ?"


async def session_detail(db: BaseDatabase, user_id: int, session_id: str, prices: PriceTable) -> SessionDetail | None:
    """One of the user's sessions, whole; None when the user has no such session (another user's
    session id is as unknown as a made-up one)."""
    messages = [MessageIn(from_store(r[0]), *tuple(r)[1:])
                for r in await db.fetchall(_SESSION_MESSAGES_SQL, (user_id, session_id))]
    prompts = [PromptIn(from_store(r[0]), r[1])
               for r in await db.fetchall(_SESSION_PROMPTS_SQL, (user_id, session_id))]
    if not messages and not prompts:
        return None
    project = await db.fetchval(_SESSION_PROJECT_SQL, (user_id, session_id))
    events = await _events(db, user_id, [session_id], "", "\uffff")
    (row,) = session_rows(messages, prompts, events, {session_id: project}, prices, to_api)
    hours: dict[str, dict] = {}
    for ts, is_prompt, total in ([(p.ts, 1, 0) for p in prompts]
                                 + [(m.ts, 0, m.input + m.output + m.cache_read + m.cache_creation)
                                    for m in messages]):
        key = to_api(ts.replace(minute=0, second=0, microsecond=0))
        hour = hours.setdefault(key, {"hour": key, "prompts": 0, "messages": 0, "tokens": 0})
        hour["prompts" if is_prompt else "messages"] += 1
        hour["tokens"] += total
    tools: dict[tuple[str, str], ToolUse] = {}
    for ev in events:
        if ev.event_type == "tool_use" and ev.skill_name:
            kind, name = "skill", ev.skill_name
        elif ev.event_type == "subagent":
            kind, name = "subagent", ev.subagent_type or ev.tool_name or "(unnamed)"
        elif ev.event_type == "slash_command":
            kind, name = "slash_command", ev.command_name or "(unnamed)"
        else:
            kind, name = ev.event_type, ev.tool_name or "(unnamed)"
        use = tools.setdefault((kind, name), ToolUse(kind, name))
        use.uses += 1
        use.errors += ev.is_error
    return SessionDetail(row, prices.version, [hours[k] for k in sorted(hours)],
                         sorted(tools.values(), key=lambda t: (t.kind, -t.uses, t.name)))


async def stored_zone(db: BaseDatabase, user_id: int) -> str | None:
    """The analyst's remembered time zone (an IANA name), or None when none was stored; kept while
    the database is unchanged."""
    async def read() -> str:
        return await db.fetchval("SELECT tz FROM users WHERE id = ?", (user_id,)) or ""

    return await db.cached_read(("tz", user_id), read) or None


async def remember_zone(db: BaseDatabase, user_id: int, zone_name: str) -> None:
    """Remember a validated zone name for the analyst's days (ValueError for one that is not a zone)."""
    parse_zone(zone_name)
    await db.execute_write("UPDATE users SET tz = ? WHERE id = ?", (zone_name, user_id))


# --- The status frame's context on /home: the same numbers for the previous period of the same
# length, a small trend over the window, and the window's estimated cost.


class Counts(msgspec.Struct, frozen=True):
    sessions: int
    prompts: int
    tokens: int
    projects: int


class Trend(msgspec.Struct, frozen=True):
    sessions: tuple[int, ...]
    prompts: tuple[int, ...]
    tokens: tuple[int, ...]
    projects: tuple[int, ...]


class FrameContext(msgspec.Struct, frozen=True):  # frozen and hashable: it keys the page's fragment cache
    previous: Counts  # in [now - 2w, now - w)
    trend: Trend  # the same per bucket of the window, oldest first
    cost_usd: float | None  # the window's priced messages
    unpriced_messages: int


_TREND = {"24h": (24, timedelta(hours=1)), "7d": (7, timedelta(days=1))}
# Bucket b of [start, now): the window's buckets are n..2n-1, the previous period's 0..n-1; the split
# between the two periods is the exact text comparison with :since (julianday only places the bucket).
# SQLite's and PostgreSQL's spelling of the pieces that differ: two-argument min and max, and a
# stored timestamp's bucket (days since :start, times buckets per day, rounded down).
_CONTEXT_FRAGMENTS = {
    "sqlite": {"least": "MIN", "greatest": "MAX", "float": "{}",
               "b": "CAST((julianday(ts) - julianday(:start)) * :per_day AS INTEGER)"},
    "postgresql": {"least": "LEAST", "greatest": "GREATEST", "float": "CAST({} AS DOUBLE PRECISION)",
                   "b": "CAST(floor((extract(epoch FROM CAST(ts AS timestamptz)) - extract(epoch FROM CAST(CAST(:start AS TEXT) "
                        "AS timestamptz))) / 86400 * CAST(:per_day AS DOUBLE PRECISION)) AS BIGINT)"},
}
_BUCKET = ("CASE WHEN ts < :since THEN {least}(b, :n - 1) ELSE {greatest}({least}(b, 2 * :n - 1), :n) END")
_CONTEXT_MESSAGES_SQL = {dialect: f"""
SELECT {_BUCKET.format(**d)} AS bucket, session_id, TOTAL(tokens) FROM (
    SELECT ts, session_id,
           {d["float"].format("input_tokens")} + output_tokens + cache_read_tokens + cache_creation_tokens AS tokens,
           {d["b"]} AS b
    FROM user_messages WHERE user_id = :user AND ts >= :start) AS rows
GROUP BY bucket, session_id
""" for dialect, d in _CONTEXT_FRAGMENTS.items()}
_CONTEXT_PROMPTS_SQL = {dialect: f"""
SELECT {_BUCKET.format(**d)} AS bucket, session_id, COUNT(*) FROM (
    SELECT ts, session_id, {d["b"]} AS b
    FROM user_prompts WHERE user_id = :user AND ts >= :start) AS rows
GROUP BY bucket, session_id
""" for dialect, d in _CONTEXT_FRAGMENTS.items()}


# The window's messages summed per model, speed and price tier: prices are per token, so each group
# is priced from its sums.
_CONTEXT_COST_SQL = {dialect: f"""
SELECT model, speed = 'fast', {tier_sql("prompt")} AS tier, TOTAL(input_tokens), TOTAL(output_tokens),
       TOTAL(cache_read_tokens), TOTAL(cache_creation_tokens - one_hour), TOTAL(one_hour), MIN(ts), COUNT(*)
FROM (SELECT model, speed, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, ts,
             {d["float"].format("input_tokens")} + cache_read_tokens + cache_creation_tokens AS prompt,
             {d["least"]}(cache_1h_tokens, cache_creation_tokens) AS one_hour
      FROM user_messages WHERE user_id = :user AND ts >= :since) AS rows
GROUP BY 1, 2, 3
""" for dialect, d in _CONTEXT_FRAGMENTS.items()}


async def frame_context(db: BaseDatabase, user_id: int, window: str, now: datetime, prices: PriceTable) -> FrameContext:
    """Buckets are the window's hours (24h) or days (7d) ending at ``now``, as the frame's windows
    are rolling; the previous period is the same length before the window. Kept for the minute."""
    key = ("frame_context", user_id, window, now.replace(second=0, microsecond=0), prices.version)
    return await db.cached_read(key, lambda: _frame_context(db, user_id, window, now, prices))


async def _frame_context(db: BaseDatabase, user_id: int, window: str, now: datetime, prices: PriceTable
                         ) -> FrameContext:
    buckets, width = _TREND[window]
    start = now - 2 * buckets * width
    params = {"user": user_id, "start": to_store(start), "since": to_store(now - buckets * width), "n": buckets,
              "per_day": timedelta(days=1) / width}
    sessions: list[set[str]] = [set() for _ in range(2 * buckets)]
    prompts = [0] * (2 * buckets)
    tokens = [0] * (2 * buckets)
    for bucket, session_id, total in await db.fetchall(_CONTEXT_MESSAGES_SQL[db.dialect], params):
        sessions[bucket].add(session_id)
        tokens[bucket] += int(total)
    for bucket, session_id, count in await db.fetchall(_CONTEXT_PROMPTS_SQL[db.dialect], params):
        sessions[bucket].add(session_id)
        prompts[bucket] += count
    cost, priced, unpriced = 0.0, False, 0
    for model, fast, tier, i, o, cr, five, one_hour, first, count in await db.fetchall(_CONTEXT_COST_SQL[db.dialect], params):
        found = prices.group_cost(model, from_store(first), bool(fast), tier_prompt(tier), int(i), int(o), int(cr),
                                  int(five), int(one_hour))
        if found is None:
            unpriced += count
        else:
            cost, priced = cost + found.usd, True
    every = set().union(*sessions)
    projects = {}
    if every:
        rows = await db.fetchall(_PROJECTS_OF_SQL[db.dialect], (msgspec.json.encode(sorted(every)).decode(), user_id))
        projects = {r[0]: r[1] for r in rows}
    before = set().union(*sessions[:buckets])
    previous = Counts(len(before), sum(prompts[:buckets]), sum(tokens[:buckets]),
                      len({projects[s] for s in before if projects.get(s)}))
    trend = Trend(tuple(len(s) for s in sessions[buckets:]), tuple(prompts[buckets:]), tuple(tokens[buckets:]),
                  tuple(len({projects[s] for s in b if projects.get(s)}) for b in sessions[buckets:]))
    return FrameContext(previous, trend, round(cost, 6) if priced else (None if unpriced else 0.0), unpriced)
