"""The operators' view of the team (/admin, /api/admin/usage): adoption, spend, tools and ingest health,
read from the aggregates ingest keeps per (UTC day, analyst) (schema 0014) and the daily rollups."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Callable

from ..cost import PriceTable, Rates, cost_of, tier_prompt
from ..db import BaseDatabase
from ..timeutil import to_api, to_store

RANGES = {"7d": 7, "30d": 30, "90d": 90}
INACTIVE_DAYS = 14
_TOKEN_KEYS = ("input", "output", "cache_read", "cache_creation")


def clamp_range(value: str | None) -> str:
    return value if value in RANGES else "7d"


def day_list(now: datetime, days: int, offset: int = 0) -> list[str]:
    """The ``days`` UTC days ending today (``offset`` periods back), oldest first."""
    today = now.astimezone(UTC).date() - timedelta(days=days * offset)
    return [(today - timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]


def _tokens(i: float = 0, o: float = 0, cr: float = 0, cc: float = 0) -> dict[str, int]:
    t = {"input": int(i), "output": int(o), "cache_read": int(cr), "cache_creation": int(cc)}
    t["total"] = sum(t.values())
    return t


_DAYS_SQL = """
SELECT day, COUNT(DISTINCT user_id) AS analysts, COUNT(*) AS sessions, TOTAL(prompts) AS prompts,
       TOTAL(messages) AS messages, TOTAL(input_tokens) AS i, TOTAL(output_tokens) AS o,
       TOTAL(cache_read_tokens) AS cr, TOTAL(cache_creation_tokens) AS cc, TOTAL(active_seconds) AS active
FROM admin_session_days WHERE day >= ? AND day <= ? GROUP BY day
"""
_RANGE_SQL = """
SELECT COUNT(DISTINCT user_id) AS analysts,
       (SELECT COUNT(*) FROM (SELECT DISTINCT user_id, session_id FROM admin_session_days
                              WHERE day >= :since AND day <= :until) AS pairs) AS sessions
FROM admin_session_days WHERE day >= :since AND day <= :until
"""
_ANALYSTS_SQL = """
SELECT user_id, COUNT(DISTINCT session_id) AS sessions, TOTAL(prompts) AS prompts, TOTAL(input_tokens) AS i,
       TOTAL(output_tokens) AS o, TOTAL(cache_read_tokens) AS cr, TOTAL(cache_creation_tokens) AS cc,
       TOTAL(active_seconds) AS active
FROM admin_session_days WHERE day >= ? AND day <= ? GROUP BY user_id
"""
_USERS_SQL = """
SELECT u.id, u.email, u.name, u.onboarded, u.last_pull_at, c.version AS client_version,
       (SELECT MAX(s.last_ts) FROM user_sessions s WHERE s.user_id = u.id) AS last_active_at,
       EXISTS (SELECT 1 FROM session_files f WHERE f.user_id = u.id) AS has_files
FROM users u LEFT JOIN client_seen c ON c.user_id = u.id ORDER BY u.email
"""
# From the per (day, analyst, session) tool aggregates the worker's rollups keep (schema 0015), per
# tool and analyst: a session is one analyst's (and may span days), so the analysts' counts add up.
_TOOLS_SQL = """
SELECT kind, name, source, user_id, TOTAL(invocations) AS invocations, TOTAL(errors) AS errors,
       COUNT(DISTINCT session_id) AS sessions
FROM admin_tool_days WHERE day >= ? AND day <= ? GROUP BY kind, name, source, user_id
"""
_HEALTH_SQL = """
SELECT (SELECT COUNT(*) FROM session_files WHERE processed_at >= ?) AS files_last_hour,
       (SELECT COUNT(*) FROM session_files WHERE next_attempt_at IS NOT NULL AND quarantined_at IS NULL) AS failing,
       (SELECT TOTAL(skipped_lines) FROM session_summaries) AS skipped_lines,
       (SELECT COUNT(*) FROM session_files WHERE processor_version < ? AND quarantined_at IS NULL
                                             AND processed_at IS NOT NULL) AS awaiting_reprocess
"""
_QUARANTINED_SQL = """
SELECT f.id, u.email, u.name, f.path, f.failure_count, f.last_error, f.quarantined_at FROM session_files f
JOIN users u ON u.id = f.user_id WHERE f.quarantined_at IS NOT NULL ORDER BY f.quarantined_at, f.id
"""


def _noon(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time(12), UTC)


# Token sums per (day, model, speed, tier): a few hundred rows for a range, each priced once (prices are
# per token, so a group's cost is the sum of its messages' costs).
_MODEL_DAYS_SQL = """
SELECT day, model, speed, price_tier, TOTAL(messages) AS messages, TOTAL(input_tokens) AS i, TOTAL(output_tokens) AS o,
       TOTAL(cache_read_tokens) AS cr, TOTAL(cache_5m_tokens) AS c5, TOTAL(cache_1h_tokens) AS c1
FROM admin_model_days WHERE day >= ? AND day <= ? GROUP BY day, model, speed, price_tier
"""
# The same per analyst: over the whole range when every key's rates hold for all of it (the usual
# case), else per day as well.
_USER_MODELS_SQL = """
SELECT user_id, model, speed, price_tier, {day} AS day, TOTAL(input_tokens) AS i, TOTAL(output_tokens) AS o,
       TOTAL(cache_read_tokens) AS cr, TOTAL(cache_5m_tokens) AS c5, TOTAL(cache_1h_tokens) AS c1
FROM admin_model_days WHERE day >= ? AND day <= ? GROUP BY user_id, model, speed, price_tier{by_day}
"""
_MODEL_USERS_SQL = ("SELECT model, COUNT(DISTINCT user_id) AS analysts FROM admin_model_days "
                    "WHERE day >= ? AND day <= ? GROUP BY model")
# Days shown in privacy mode: those of at least min_group analysts (the same test as _suppressed_day's).
_SHOWN_DAYS = ("SELECT day FROM admin_session_days WHERE day >= ? AND day <= ? GROUP BY day "
               "HAVING COUNT(DISTINCT user_id) >= ?")
_SHOWN_MODEL_USERS_SQL = (f"SELECT DISTINCT model, user_id FROM admin_model_days WHERE day >= ? AND day <= ? "
                          f"AND day IN ({_SHOWN_DAYS})")


def _day_rates(prices: PriceTable, model: str, speed: str, tier: int, day: str) -> Rates | None:
    """The rates of a (model, speed, tier) group on a day (the library's lookups are cached in cost.py)."""
    found = prices.rates(model or None, _noon(day), speed == "fast", tier_prompt(tier))
    return None if found is None else found[0]


def _price(prices: PriceTable, r) -> float | None:
    """A group's US dollars; None when its model has no known price."""
    rates = _day_rates(prices, r["model"], r["speed"], r["price_tier"], r["day"])
    return None if rates is None else cost_of(rates, r["i"], r["o"], r["cr"], r["c5"], r["c1"])


async def _period(db: BaseDatabase, days: list[str], prices: PriceTable, *, full: bool) -> dict:
    """What the figures of one period need: per day, and (``full``) per analyst and per model."""
    since, until = days[0], days[-1]
    day_rows = {r["day"]: r for r in await db.fetchall(_DAYS_SQL, (since, until))}
    model_days = [(r, _price(prices, r)) for r in await db.fetchall(_MODEL_DAYS_SQL, (since, until))]
    day_cost: dict[str, float] = defaultdict(float)
    for r, usd in model_days:
        day_cost[r["day"]] += usd or 0.0
    out_days = []
    for day in days:
        r = day_rows.get(day)
        out_days.append({
            "date": day, "active_analysts": r["analysts"] if r else 0, "sessions": r["sessions"] if r else 0,
            "prompts": int(r["prompts"]) if r else 0,
            "tokens": _tokens(r["i"], r["o"], r["cr"], r["cc"]) if r else _tokens(),
            "cost_usd": round(day_cost.get(day, 0.0), 6), "active_seconds": int(r["active"]) if r else 0})
    period = {"days": out_days, "range": await db.fetchone(_RANGE_SQL, {"since": since, "until": until}),
              "model_days": model_days}
    if full:
        period["analysts"] = {r["user_id"]: r for r in await db.fetchall(_ANALYSTS_SQL, (since, until))}
        # Rates that move inside the range (a price change) need the analysts' sums per day too.
        steady = all(_day_rates(prices, r["model"], r["speed"], r["price_tier"], since)
                     == _day_rates(prices, r["model"], r["speed"], r["price_tier"], r["day"]) for r, _ in model_days)
        sql = _USER_MODELS_SQL.format(day="CAST(? AS TEXT)" if steady else "day", by_day="" if steady else ", day")
        user_cost: dict[int, float] = defaultdict(float)
        for r in await db.fetchall(sql, (since, since, until) if steady else (since, until)):
            user_cost[r["user_id"]] += _price(prices, r) or 0.0
        period["user_cost"] = user_cost
    return period


async def _by_model(db: BaseDatabase, period: dict, per_analyst: bool, min_group: int) -> tuple[list[dict], list[set]]:
    """Spend by model, the most first, and each row's analysts; privacy mode counts the shown days only."""
    since, until = period["days"][0]["date"], period["days"][-1]["date"]
    shown = {d["date"] for d in period["days"] if not d.get("suppressed")}
    models: dict[str, dict] = {}
    for r, usd in period["model_days"]:
        if not per_analyst and r["day"] not in shown:
            continue
        m = models.setdefault(r["model"], {"model": r["model"] or "(none)", "analysts": 0, "messages": 0,
                                            "cost_usd": 0.0, "unpriced": 0})
        m["messages"] += int(r["messages"])
        if usd is None:
            m["unpriced"] += int(r["messages"])
        else:
            m["cost_usd"] += usd
    users: dict[str, set[int]] = defaultdict(set)
    if per_analyst:
        for r in await db.fetchall(_MODEL_USERS_SQL, (since, until)):
            models[r["model"]]["analysts"] = r["analysts"]
    else:  # the fold unions the analysts of the rows it folds
        for r in await db.fetchall(_SHOWN_MODEL_USERS_SQL, (since, until, since, until, min_group)):
            users[r["model"]].add(r["user_id"])
        for key, m in models.items():
            m["analysts"] = len(users[key])
    keys = sorted(models, key=lambda k: (-models[k]["cost_usd"], models[k]["model"]))
    period["unpriced_messages"] = sum(m["unpriced"] for m in models.values())
    rows = [{"model": models[k]["model"], "analysts": models[k]["analysts"], "messages": models[k]["messages"],
             "cost_usd": None if models[k]["unpriced"] else round(models[k]["cost_usd"], 6)} for k in keys]
    return rows, [users[k] for k in keys]


def _sum_days(days: list[dict]) -> dict:
    tokens = _tokens()
    for d in days:
        for key in _TOKEN_KEYS:
            tokens[key] += d["tokens"][key]
    tokens["total"] = sum(tokens[k] for k in _TOKEN_KEYS)
    return {"prompts": sum(d["prompts"] for d in days), "tokens": tokens,
            "cost_usd": round(sum(d["cost_usd"] for d in days), 6),
            "active_seconds": sum(d["active_seconds"] for d in days)}


def _suppressed_day(day: dict) -> dict:
    return {"date": day["date"], "suppressed": True, "active_analysts": None, "sessions": None, "prompts": None,
            "tokens": None, "cost_usd": None, "active_seconds": None}


_SESSIONS_ON_SQL = f"""
SELECT COUNT(*) FROM (SELECT DISTINCT user_id, session_id FROM admin_session_days WHERE day IN ({_SHOWN_DAYS})) AS s
"""


def _kpis(period: dict, onboarded: int, per_analyst: bool, min_group: int) -> dict:
    """The headline figures of a period. Privacy mode: days covering fewer than ``min_group`` analysts
    are left out of every sum (so no total less the shown days gives a suppressed day away), and the
    whole period is suppressed when it covers fewer."""
    analysts = period["range"]["analysts"]
    if per_analyst:
        shown = period["days"]
        sessions = period["range"]["sessions"]
    else:
        shown = [d for d in period["days"] if not d.get("suppressed")]
        sessions = period["shown_sessions"]  # of the shown days only
        if analysts < min_group:
            return {"active_analysts": None, "onboarded": onboarded, "sessions": None, "prompts": None,
                    "tokens": None, "cost_usd": None, "active_seconds": None, "suppressed": True}
    return {"active_analysts": analysts, "onboarded": onboarded, "sessions": sessions, **_sum_days(shown)}


def _fold(rows: list[dict], analysts_of: dict[int, set[int]], min_group: int, other: dict,
          add: Callable[[dict, dict], None]) -> list[dict]:
    """Rows covering fewer than ``min_group`` analysts fold into one "other" row. While that row covers
    fewer, the smallest shown row folds in too (else the shown rows, less the total, would give the
    suppressed row away); an "other" that never reaches ``min_group`` is left out."""
    kept = [i for i, row in enumerate(rows) if row["analysts"] >= min_group]
    folded = [i for i, row in enumerate(rows) if row["analysts"] < min_group]
    if not folded:
        return rows

    def users() -> set[int]:
        return set().union(*(analysts_of[i] for i in folded))

    while len(users()) < min_group and kept:
        folded.append(kept.pop())  # rows come largest first: the last is the smallest
    found = [rows[i] for i in kept]
    if len(users()) >= min_group:
        for i in folded:
            add(other, rows[i])
        other["analysts"] = len(users())
        found.append(other)
    return found


async def usage(db: BaseDatabase, range_name: str, now: datetime, prices: PriceTable, *, per_analyst: bool,
                min_group: int, processor_version: int, queue_depth: int = 0, lag_seconds: float = 0.0) -> dict:
    """GET /api/admin/usage's document (issue 22): the range's figures against the period before,
    per day, per model, per analyst (``per_analyst`` only), per tool, who needs help and the pipeline.

    Kept while the database is unchanged (BaseDatabase.snapshot) and the UTC day is the same; the
    pipeline's health while it is unchanged and the minute is the same (the files of the last hour move
    with the clock), with the worker's queue and lag as they are now. Callers must not change what they
    get."""
    key = ("admin_usage", range_name, now.astimezone(UTC).date(), prices.version, per_analyst, min_group)
    found = await db.cached_read(
        key, lambda: _usage(db, range_name, now, prices, per_analyst=per_analyst, min_group=min_group))
    minute = now.replace(second=0, microsecond=0)  # the last hour's files, counted to the minute
    health = await db.cached_read(("admin_health", minute, per_analyst, processor_version),
                                  lambda: _health(db, minute, per_analyst, processor_version))
    health = {**health, "queue_depth": queue_depth, "lag_seconds": round(lag_seconds, 3)}
    return {**found, "health": health}


async def _health(db: BaseDatabase, now: datetime, per_analyst: bool, processor_version: int) -> dict:
    """The pipeline: files of the last hour, failing and quarantined files, the reprocess still to do."""
    health_row = await db.fetchone(_HEALTH_SQL, (to_store(now - timedelta(hours=1)), processor_version))
    quarantined = []
    for r in await db.fetchall(_QUARANTINED_SQL):
        row = {"id": r["id"], "failure_count": r["failure_count"], "last_error": r["last_error"],
               "quarantined_at": to_api(r["quarantined_at"])}
        if per_analyst:  # a transcript's path names its analyst
            row.update(email=r["email"], path=r["path"])
        quarantined.append(row)
    return {"queue_depth": 0, "lag_seconds": 0.0, "files_last_hour": health_row["files_last_hour"],
            "skipped_lines": int(health_row["skipped_lines"]), "failing": health_row["failing"],
            "quarantined": quarantined, "processor_version": processor_version,
            "awaiting_reprocess": health_row["awaiting_reprocess"]}


async def _usage(db: BaseDatabase, range_name: str, now: datetime, prices: PriceTable, *, per_analyst: bool,
                 min_group: int) -> dict:
    n = RANGES[range_name]
    days, previous_days = day_list(now, n), day_list(now, n, offset=1)
    current = await _period(db, days, prices, full=True)
    previous = await _period(db, previous_days, prices, full=False)
    people = [dict(r) for r in await db.fetchall(_USERS_SQL)]
    onboarded = sum(1 for p in people if p["onboarded"])
    if not per_analyst:
        for period in (current, previous):
            period["days"] = [d if d["active_analysts"] == 0 or d["active_analysts"] >= min_group
                              else _suppressed_day(d) for d in period["days"]]
            period["shown_sessions"] = await db.fetchval(
                _SESSIONS_ON_SQL, (period["days"][0]["date"], period["days"][-1]["date"], min_group))
    kpis = _kpis(current, onboarded, per_analyst, min_group)
    kpis["previous"] = _kpis(previous, onboarded, per_analyst, min_group)

    # Spend by model: privacy mode counts the shown days only, and folds models of few analysts.
    by_model, model_users = await _by_model(db, current, per_analyst, min_group)
    if not per_analyst:
        for row in by_model:  # message counts cover every day: only the cost is kept per shown day
            row.pop("messages")

        def add_model(other: dict, row: dict) -> None:
            other["cost_usd"] = round((other["cost_usd"] or 0) + (row["cost_usd"] or 0), 6)

        by_model = _fold(by_model, dict(enumerate(model_users)), min_group,
                         {"model": "other", "analysts": 0, "cost_usd": 0.0}, add_model)

    # Tools, skills, subagents, MCP servers, slash commands, by plugin source.
    tool_rows: dict[tuple, dict] = {}
    tool_users: dict[tuple, set[int]] = defaultdict(set)
    for r in await db.fetchall(_TOOLS_SQL, (days[0], days[-1])):
        key = (r["kind"], r["name"], r["source"])
        row = tool_rows.get(key)
        if row is None:
            row = tool_rows[key] = {"kind": r["kind"], "name": r["name"], "source": r["source"], "invocations": 0,
                                    "analysts": 0, "sessions": 0, "errors": 0}
        row["invocations"] += int(r["invocations"])
        row["errors"] += int(r["errors"])
        row["sessions"] += r["sessions"]
        row["analysts"] += 1
        tool_users[key].add(r["user_id"])
    ordered = sorted(tool_rows, key=lambda k: (-tool_rows[k]["invocations"], k))
    tools = [tool_rows[k] for k in ordered]
    if not per_analyst:
        def add_tool(other: dict, row: dict) -> None:
            for field in ("invocations", "sessions", "errors"):
                other[field] += row[field]

        tools = _fold(tools, {i: tool_users[k] for i, k in enumerate(ordered)}, min_group,
                      {"kind": "other", "name": "other", "source": "other", "invocations": 0, "analysts": 0,
                       "sessions": 0, "errors": 0}, add_tool)

    # Who needs help.
    cutoff = (now.astimezone(UTC).date() - timedelta(days=INACTIVE_DAYS)).isoformat()  # days, as the key
    never_synced = [p for p in people if p["onboarded"] and p["last_pull_at"] is None]
    no_transcripts = [p for p in people if p["last_pull_at"] is not None and not p["has_files"]]
    inactive = [p for p in people if p["last_active_at"] is not None and p["last_active_at"] < cutoff]

    def names(found: list[dict]) -> list[dict]:
        return [{"email": p["email"], "name": p["name"]} for p in found]

    needs_help = ({"never_synced": names(never_synced), "no_transcripts": names(no_transcripts),
                   "inactive_14d": names(inactive)} if per_analyst else
                  {"never_synced": len(never_synced), "no_transcripts": len(no_transcripts),
                   "inactive_14d": len(inactive)})

    result = {"range": range_name, "price_table": prices.version, "days_are": "UTC",
              "per_analyst": per_analyst, "min_group": None if per_analyst else min_group,
              "kpis": kpis, "days": current["days"], "by_model": by_model,
              "unpriced_messages": current["unpriced_messages"] if per_analyst else None}
    if per_analyst:
        analysts = []
        for p in people:
            a = current["analysts"].get(p["id"])
            analysts.append({
                "user_id": p["id"], "email": p["email"], "name": p["name"], "onboarded": bool(p["onboarded"]),
                "last_pull_at": to_api(p["last_pull_at"]), "last_active_at": to_api(p["last_active_at"]),
                "client_version": p["client_version"], "sessions": a["sessions"] if a else 0,
                "prompts": int(a["prompts"]) if a else 0,
                "tokens": _tokens(a["i"], a["o"], a["cr"], a["cc"]) if a else _tokens(),
                "cost_usd": round(current["user_cost"].get(p["id"], 0.0), 6),
                "active_seconds": int(a["active"]) if a else 0})
        result["analysts"] = analysts
    result.update(tools=tools, needs_help=needs_help)
    return result
