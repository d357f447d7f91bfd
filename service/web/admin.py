"""Operators (AGNES_ADMIN_EMAILS): the team's view (/admin, /api/admin/usage), an analyst's activity as
they see it, a full reprocess, and quarantined files listed and released."""

from __future__ import annotations

from typing import Annotated, Any

import aiohttp_jinja2
import msgspec
from aiohttp import web

from .. import keys
from ..activity import sort_sessions
from ..ingest import USAGE_PROCESSOR_VERSION
from ..store import activity as activity_store
from ..store import admin as store
from ..store import ingest as ingest_store
from ..store import users
from ..store.users import normalise_email
from ..timeutil import to_api
from .auth import request_csrf_token
from .base import csv_response, decode_json_body, json
from .charts import activity_charts, bar_chart
from .errors import AppError
from .filters import duration, grouped, usd


class ReprocessBody(msgspec.Struct, forbid_unknown_fields=True):
    user: str | None = None  # an email: only that user's files; none: every file


class RetryBody(msgspec.Struct, forbid_unknown_fields=True):
    # One file; none: every quarantined file. Bounded to SQLite's integers (a larger one is a 400).
    id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None


def require_admin(request: web.Request) -> None:
    """Only users listed in AGNES_ADMIN_EMAILS; everyone else gets 403 (the route exists, it is not theirs)."""
    admins = {normalise_email(e) for e in request.app[keys.SETTINGS].admin_emails}
    if request[keys.USER].email not in admins:
        raise AppError(403, "This operation is for operators listed in AGNES_ADMIN_EMAILS.", "admin_only")


async def reprocess(request: web.Request) -> web.Response:
    """POST /api/admin/reprocess: every (or one user's) file goes back in line for the worker."""
    require_admin(request)
    body = await decode_json_body(request, ReprocessBody, empty=ReprocessBody())
    user_id = None
    if body.user is not None:
        user = await users.get_user_by_email(request.app[keys.DB], body.user)
        if user is None:
            raise AppError(404, f"No user with email {body.user!r}.", "user_not_found")
        user_id = user.id
    count = await ingest_store.reset_versions(request.app[keys.DB], user_id)
    return json({"status": "ok", "files": count})


async def quarantine(request: web.Request) -> web.Response:
    """GET /api/admin/quarantine: files that failed too often, with their last error."""
    require_admin(request)
    rows = await ingest_store.quarantined(request.app[keys.DB])
    if not request.app[keys.SETTINGS].admin_per_analyst:  # a transcript's path names its analyst too
        rows = [{**row, "email": None, "path": None} for row in rows]
    return json({"files": [{**row, "quarantined_at": to_api(row["quarantined_at"])} for row in rows]})


async def quarantine_retry(request: web.Request) -> web.Response:
    """POST /api/admin/quarantine/retry: release one (or every) quarantined file for another try.

    /admin's retry button posts a URL-encoded form (its CSRF token checked by the auth middleware, as
    every cookie post's) and is sent back to /admin; JSON callers get JSON."""
    require_admin(request)
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        try:
            file_id = int(form["id"]) if form.get("id") else None
        except ValueError:
            raise AppError(400, "id must be a whole number.", "invalid_body") from None
        if file_id is not None and not 1 <= file_id <= 2**63 - 1:
            raise AppError(400, "id must be a file id.", "invalid_body")
        await ingest_store.release_quarantine(request.app[keys.DB], file_id)
        raise web.HTTPSeeOther(request.app.router["admin"].url_for())
    body = await decode_json_body(request, RetryBody, empty=RetryBody())
    released = await ingest_store.release_quarantine(request.app[keys.DB], body.id)
    return json({"status": "ok", "released": released})


# --- The team's view.

RANGE_LABELS = {"7d": "Last 7 days", "30d": "Last 30 days", "90d": "Last 90 days"}
CSV_TABLES = ("analysts", "tools", "days")
_TOKEN_COLUMNS = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "total_tokens"]


async def _usage(request: web.Request, range_name: str) -> dict:
    app = request.app
    settings = app[keys.SETTINGS]
    worker = app.get(keys.WORKER)
    return await store.usage(app[keys.DB], range_name, app[keys.CLOCK](), app[keys.PRICES],
                             per_analyst=settings.admin_per_analyst, min_group=settings.admin_min_group,
                             processor_version=USAGE_PROCESSOR_VERSION,
                             queue_depth=worker.depth if worker is not None else 0,
                             lag_seconds=worker.lag() if worker is not None else 0.0)


def _tokens(t: dict | None) -> list[Any]:
    return [None] * 5 if t is None else [t["input"], t["output"], t["cache_read"], t["cache_creation"], t["total"]]


async def usage_json(request: web.Request) -> web.Response:
    """GET /api/admin/usage?range=7d|30d|90d[&format=csv&table=analysts|tools|days]."""
    require_admin(request)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise AppError(400, "format must be json or csv.", "invalid_format")
    table = request.query.get("table", "days")
    if fmt == "csv" and table not in CSV_TABLES:
        raise AppError(400, f"table must be one of {', '.join(CSV_TABLES)}.", "invalid_table")
    range_name = store.clamp_range(request.query.get("range"))
    if fmt == "csv" and table == "analysts" and not request.app[keys.SETTINGS].admin_per_analyst:
        raise AppError(400, "table=analysts needs per-analyst rows, switched off (AGNES_ADMIN_PER_ANALYST).",
                       "per_analyst_off")
    found = await _usage(request, range_name)
    if fmt == "json":
        return json(found)
    if table == "days":
        return csv_response(["date", "active_analysts", "sessions", "prompts", *_TOKEN_COLUMNS, "cost_usd", "active_seconds"],
                    [[d["date"], d["active_analysts"], d["sessions"], d["prompts"], *_tokens(d["tokens"]),
                      d["cost_usd"], d["active_seconds"]] for d in found["days"]], f"admin-days-{range_name}")
    if table == "tools":
        return csv_response(["kind", "name", "source", "invocations", "analysts", "sessions", "errors"],
                    [[t["kind"], t["name"], t["source"], t["invocations"], t["analysts"], t["sessions"], t["errors"]]
                     for t in found["tools"]], f"admin-tools-{range_name}")
    return csv_response(["email", "name", "onboarded", "last_pull_at", "last_active_at", "client_version", "sessions",
                 "prompts", *_TOKEN_COLUMNS, "cost_usd", "active_seconds"],
                [[a["email"], a["name"], a["onboarded"], a["last_pull_at"], a["last_active_at"], a["client_version"],
                  a["sessions"], a["prompts"], *_tokens(a["tokens"]), a["cost_usd"], a["active_seconds"]]
                 for a in found["analysts"]], f"admin-analysts-{range_name}")


def _charts(days: list[dict], kpis: dict) -> list:
    dates = [d["date"] for d in days]

    def values(get) -> list[float]:  # a suppressed day draws as no bar
        return [0 if d.get("suppressed") else get(d) for d in days]

    charts = [
        bar_chart("analysts", "Active analysts", dates, [("s-sessions", "analysts", values(lambda d: d["active_analysts"]))],
                  lambda v: grouped(int(v))),
        bar_chart("sessions", "Sessions", dates, [("s-sessions", "sessions", values(lambda d: d["sessions"]))],
                  lambda v: grouped(int(v))),
        bar_chart("prompts", "Prompts", dates, [("s-prompts", "prompts", values(lambda d: d["prompts"]))],
                  lambda v: grouped(int(v))),
        bar_chart("tokens", "Tokens", dates, [
            ("s-input", "input", values(lambda d: d["tokens"]["input"])),
            ("s-output", "output", values(lambda d: d["tokens"]["output"])),
            ("s-cache-read", "cache read", values(lambda d: d["tokens"]["cache_read"])),
            ("s-cache-write", "cache write", values(lambda d: d["tokens"]["cache_creation"]))],
            lambda v: grouped(int(v))),
        bar_chart("cost", "Estimated cost", dates, [("s-cost", "cost", values(lambda d: d["cost_usd"]))], usd),
        bar_chart("active", "Active time", dates, [("s-active", "active", values(lambda d: d["active_seconds"]))],
                  duration),
    ]
    # Analysts and sessions are distinct over the range, not the sum of the days (a session may span two).
    for chart, key in ((charts[0], "active_analysts"), (charts[1], "sessions")):
        chart.total = grouped(kpis[key]) if kpis.get(key) is not None else ""
    return charts


_ANALYST_SORTS = {"email": lambda a: a["email"], "name": lambda a: (a["name"] or "").lower(),
                  "last_active": lambda a: a["last_active_at"] or "", "sessions": lambda a: a["sessions"],
                  "prompts": lambda a: a["prompts"], "tokens": lambda a: a["tokens"]["total"],
                  "cost": lambda a: a["cost_usd"], "active": lambda a: a["active_seconds"]}


def _change(now: Any, before: Any) -> str | None:
    """The change against the previous period, as a signed percentage (None: nothing to compare)."""
    if not isinstance(now, (int, float)) or not isinstance(before, (int, float)) or not before:
        return None
    return f"{(now - before) / before * 100:+.0f}%"


async def admin_page(request: web.Request) -> web.Response:
    """/admin: the team's adoption, spend, tools and the pipeline's health (operators only)."""
    require_admin(request)
    range_name = store.clamp_range(request.query.get("range"))
    found = await _usage(request, range_name)
    sort = request.query.get("sort") or "cost"
    if sort.lstrip("+") not in _ANALYST_SORTS:
        sort = "cost"
    analysts = found.get("analysts")
    if analysts is not None:
        analysts = sorted(analysts, key=_ANALYST_SORTS[sort.lstrip("+")], reverse=not sort.startswith("+"))
    kpis, previous = found["kpis"], found["kpis"]["previous"]
    changes = {key: _change(kpis.get(key), previous.get(key)) for key in
               ("active_analysts", "sessions", "prompts", "cost_usd", "active_seconds")}
    changes["tokens"] = _change((kpis.get("tokens") or {}).get("total"), (previous.get("tokens") or {}).get("total"))
    # One rendering of the figures and tables per set of numbers (the usage answer is kept while the
    # database is unchanged and the day is the same); the pipeline's health is rendered every time.
    app = request.app
    version = app[keys.DB].snapshot()
    settings = app[keys.SETTINGS]
    body_key = None if version is None else (
        "admin", version, range_name, found["days"][-1]["date"], sort, settings.admin_per_analyst,
        settings.admin_min_group, found["price_table"])
    return aiohttp_jinja2.render_template("admin.html", request, {
        "user": request[keys.USER], "csrf_token": request_csrf_token(request), "u": found, "range": range_name,
        "ranges": RANGE_LABELS, "charts": lambda: _charts(found["days"], kpis), "analysts": analysts, "sort": sort,
        "changes": changes, "body_key": body_key})


async def analyst_activity_page(request: web.Request) -> web.Response:
    """/admin/analysts/{user_id}/activity: an analyst's /activity as they see it, read-only, for operators
    (absent when per-analyst rows are off)."""
    require_admin(request)
    app = request.app
    if not app[keys.SETTINGS].admin_per_analyst:
        raise AppError(404, "Per-analyst views are switched off (AGNES_ADMIN_PER_ANALYST).", "per_analyst_off")
    try:
        user_id = int(request.match_info["user_id"])
    except ValueError:
        raise AppError(404, "No such analyst.", "not_found") from None
    analyst = await users.get_user(app[keys.DB], user_id) if 1 <= user_id <= 2**63 - 1 else None
    if analyst is None:
        raise AppError(404, "No such analyst.", "not_found")
    range_name = store.clamp_range(request.query.get("range") or "30d")
    zone = await activity_store.stored_zone(app[keys.DB], analyst.id) or "UTC"
    result = await activity_store.activity(app[keys.DB], analyst.id, range_name, zone, app[keys.CLOCK](),
                                           app[keys.PRICES])
    rows = await activity_store.sessions(app[keys.DB], analyst.id, range_name, zone, app[keys.CLOCK](),
                                         app[keys.PRICES])
    page = {"sessions": sort_sessions(rows, "start")[:50], "next_cursor": None}
    return aiohttp_jinja2.render_template("admin_activity.html", request, {
        "user": request[keys.USER], "csrf_token": request_csrf_token(request), "analyst": analyst,
        "a": result, "cost": True, "charts": lambda: activity_charts(result, True), "page": page, "sort": "start",
        "zone": zone, "zone_stored": zone, "range": range_name, "ranges": RANGE_LABELS, "cursor": "0",
        "operator_view": analyst,
        "page_url": str(app.router["admin_analyst_activity"].url_for(user_id=str(analyst.id)))})

