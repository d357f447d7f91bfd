"""The operators' view of the team (/admin, /api/admin/usage): adoption, spend, tools and ingest health,
read from the aggregates ingest keeps per (UTC day, analyst) (schema 0014) and the daily rollups."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Callable

import msgspec

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
_DAY_USERS_SQL = "SELECT DISTINCT day, user_id FROM admin_session_days WHERE day >= ? AND day <= ?"
_ANALYSTS_SQL = """
SELECT user_id, COUNT(DISTINCT session_id) AS sessions, TOTAL(prompts) AS prompts, TOTAL(input_tokens) AS i,
       TOTAL(output_tokens) AS o, TOTAL(cache_read_tokens) AS cr, TOTAL(cache_creation_tokens) AS cc,
       TOTAL(active_seconds) AS active
FROM admin_session_days WHERE day >= ? AND day <= ? GROUP BY user_id
"""
_MODELS_SQL = """
SELECT user_id, day, model, speed, price_tier, messages, input_tokens, output_tokens, cache_read_tokens,
       cache_5m_tokens, cache_1h_tokens
FROM admin_model_days WHERE day >= ? AND day <= ?
"""
_USERS_SQL = """
SELECT u.id, u.email, u.name, u.onboarded, u.last_pull_at, c.version AS client_version,
       (SELECT MAX(s.last_ts) FROM user_sessions s WHERE s.user_id = u.id) AS last_active_at,
       EXISTS (SELECT 1 FROM session_files f WHERE f.user_id = u.id) AS has_files
FROM users u LEFT JOIN client_seen c ON c.user_id = u.id ORDER BY u.email
"""
# Each event once per user (files holding copies of a session share event ids), as the rollups count.
_TOOLS_SQL = """
SELECT kind, name, source, user_id, COUNT(*) AS invocations, TOTAL(is_error) AS errors,
       COUNT(DISTINCT session_id) AS sessions
FROM (SELECT e.user_id, MIN(e.session_id) AS session_id, MAX(e.is_error) AS is_error, MIN(e.source) AS source,
             CASE WHEN MIN(e.skill_name) IS NOT NULL THEN 'skill' ELSE MIN(e.event_type) END AS kind,
             COALESCE(MIN(e.skill_name), CASE MIN(e.event_type) WHEN 'subagent' THEN MIN(e.subagent_type)
                      WHEN 'slash_command' THEN '/' || MIN(e.command_name) END, MIN(e.tool_name), '(unnamed)') AS name
      FROM usage_events e WHERE e.ts >= ? AND e.ts < ? GROUP BY e.user_id, e.event_id) AS once
GROUP BY kind, name, source, user_id
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


class _Costs:
    """Cost of the model aggregates: each (model, day, speed, tier) resolves its rates once, then every
    analyst's row of it is priced from its sums (linear within a tier: the sum of its messages' costs)."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self.seen: dict[tuple, Rates | None] = {}

    def cost(self, r) -> float | None:
        key = (r["model"], r["day"], r["speed"], r["price_tier"])
        if key not in self.seen:
            found = self.prices.rates(r["model"] or None, _noon(r["day"]), r["speed"] == "fast",
                                      tier_prompt(r["price_tier"]))
            self.seen[key] = None if found is None else found[0]
        rates = self.seen[key]
        if rates is None:
            return None
        return cost_of(rates, r["input_tokens"], r["output_tokens"], r["cache_read_tokens"], r["cache_5m_tokens"],
                       r["cache_1h_tokens"])


async def _period(db: BaseDatabase, days: list[str], costs: _Costs) -> dict:
    """Everything of one period that the figures need, per day, per analyst and per model."""
    since, until = days[0], days[-1]
    day_rows = {r["day"]: r for r in await db.fetchall(_DAYS_SQL, (since, until))}
    day_users: dict[str, set[int]] = defaultdict(set)
    for r in await db.fetchall(_DAY_USERS_SQL, (since, until)):
        day_users[r["day"]].add(r["user_id"])
    day_cost: dict[str, float] = defaultdict(float)
    user_cost: dict[int, float] = defaultdict(float)
    models: dict[str, dict] = {}
    unpriced = 0
    for r in await db.fetchall(_MODELS_SQL, (since, until)):
        usd = costs.cost(r)
        name, day, user_id = r["model"] or "(none)", r["day"], r["user_id"]
        model = models.get(name)
        if model is None:
            model = models[name] = {"model": name, "messages": 0, "cost_usd": 0.0, "users": set(),
                                    "days": defaultdict(float), "day_users": defaultdict(set), "priced": True}
        model["messages"] += r["messages"]
        model["users"].add(user_id)
        model["day_users"][day].add(user_id)
        if usd is None:
            unpriced += r["messages"]
            model["priced"] = False
            continue
        model["cost_usd"] += usd
        model["days"][day] += usd
        day_cost[day] += usd
        user_cost[user_id] += usd
    out_days = []
    for day in days:
        r = day_rows.get(day)
        out_days.append({
            "date": day, "active_analysts": r["analysts"] if r else 0, "sessions": r["sessions"] if r else 0,
            "prompts": int(r["prompts"]) if r else 0,
            "tokens": _tokens(r["i"], r["o"], r["cr"], r["cc"]) if r else _tokens(),
            "cost_usd": round(day_cost.get(day, 0.0), 6), "active_seconds": int(r["active"]) if r else 0})
    ranged = await db.fetchone(_RANGE_SQL, {"since": since, "until": until})
    analysts = {r["user_id"]: r for r in await db.fetchall(_ANALYSTS_SQL, (since, until))}
    return {"days": out_days, "day_users": day_users, "range": ranged, "analysts": analysts,
            "user_cost": user_cost, "models": models, "unpriced_messages": unpriced}


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


_SESSIONS_ON_SQL = {
    "sqlite": """
SELECT COUNT(*) FROM (SELECT DISTINCT s.user_id, s.session_id FROM json_each(?) AS j
                      JOIN admin_session_days s ON s.day = j.value) AS pairs
""",
    "postgresql": """
SELECT COUNT(*) FROM (SELECT DISTINCT s.user_id, s.session_id FROM json_array_elements_text(CAST(? AS json)) AS j (value)
                      JOIN admin_session_days s ON s.day = j.value) AS pairs
"""}


async def _sessions_on(db: BaseDatabase, days: list[str]) -> int:
    """Distinct sessions with activity on the given days."""
    return await db.fetchval(_SESSIONS_ON_SQL[db.dialect], (msgspec.json.encode(days).decode(),))


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
    pipeline's health is read afresh (the files of the last hour move with the clock). Callers must
    not change what they get."""
    key = ("admin_usage", range_name, now.astimezone(UTC).date(), prices.version, per_analyst, min_group)
    found = await db.cached_read(
        key, lambda: _usage(db, range_name, now, prices, per_analyst=per_analyst, min_group=min_group))
    health = await _health(db, now, per_analyst, processor_version)
    health.update(queue_depth=queue_depth, lag_seconds=round(lag_seconds, 3))
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
    costs = _Costs(prices)
    days, previous_days = day_list(now, n), day_list(now, n, offset=1)
    current = await _period(db, days, costs)
    previous = await _period(db, previous_days, costs)
    people = [dict(r) for r in await db.fetchall(_USERS_SQL)]
    onboarded = sum(1 for p in people if p["onboarded"])
    if not per_analyst:
        for period in (current, previous):
            period["days"] = [d if d["active_analysts"] == 0 or d["active_analysts"] >= min_group
                              else _suppressed_day(d) for d in period["days"]]
            period["shown_sessions"] = await _sessions_on(
                db, [d["date"] for d in period["days"] if not d.get("suppressed")])
    kpis = _kpis(current, onboarded, per_analyst, min_group)
    kpis["previous"] = _kpis(previous, onboarded, per_analyst, min_group)

    # Spend by model: privacy mode counts the shown days only, and folds models of few analysts.
    shown_days = {d["date"] for d in current["days"] if not d.get("suppressed")}
    by_model, model_users = [], []
    for m in sorted(current["models"].values(), key=lambda m: (-m["cost_usd"], m["model"])):
        users = set(m["users"]) if per_analyst else set().union(
            *(u for day, u in m["day_users"].items() if day in shown_days))
        cost = m["cost_usd"] if per_analyst else sum(v for day, v in m["days"].items() if day in shown_days)
        if not users:
            continue
        by_model.append({"model": m["model"], "analysts": len(users), "messages": m["messages"],
                         "cost_usd": round(cost, 6) if m["priced"] else None})
        model_users.append(users)
    if not per_analyst:
        for row in by_model:  # message counts cover every day: only the cost is kept per shown day
            row.pop("messages")

        def add_model(other: dict, row: dict) -> None:
            other["cost_usd"] = round((other["cost_usd"] or 0) + (row["cost_usd"] or 0), 6)

        by_model = _fold(by_model, dict(enumerate(model_users)), min_group,
                         {"model": "other", "analysts": 0, "cost_usd": 0.0}, add_model)

    # Tools, skills, subagents, MCP servers, slash commands, by plugin source.
    until = to_store(datetime.combine(date.fromisoformat(days[-1]) + timedelta(days=1), time(), UTC))
    tool_rows: dict[tuple, dict] = {}
    tool_users: dict[tuple, set[int]] = defaultdict(set)
    for r in await db.fetchall(_TOOLS_SQL, (days[0], until)):
        key = (r["kind"], r["name"], r["source"])
        row = tool_rows.setdefault(key, {"kind": r["kind"], "name": r["name"], "source": r["source"],
                                         "invocations": 0, "analysts": 0, "sessions": 0, "errors": 0})
        row["invocations"] += r["invocations"]
        row["errors"] += int(r["errors"])
        row["sessions"] += r["sessions"]  # a session is one user's: the users' counts add up
        tool_users[key].add(r["user_id"])
    for key, row in tool_rows.items():
        row["analysts"] = len(tool_users[key])
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
