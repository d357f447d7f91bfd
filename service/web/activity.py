"""The analyst's activity: /activity and a session's page, and the same numbers as JSON and CSV."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
import msgspec
from aiohttp import web

from .. import keys
from ..activity import Activity, SessionRow, sort_sessions
from ..days import DEFAULT_ZONE, RANGES, parse_zone
from ..store import activity as store
from ..store.users import User
from ..timeutil import to_api
from . import base
from .auth import request_csrf_token
from .base import csv_response, decode_json_body, json
from .charts import activity_charts
from .errors import AppError

DEFAULT_RANGE = "30d"
RANGE_LABELS = {"7d": "Last 7 days", "30d": "Last 30 days", "90d": "Last 90 days"}
PAGE_SIZE = 25
MAX_LIMIT = 200
DEFAULT_SORT = "start"


def clamp_range(value: str | None) -> str:
    """Unknown or missing ranges fall back to 30 days (a clamp, as home-stats clamps its window)."""
    return value if value in RANGES else DEFAULT_RANGE


def shows_cost(request: web.Request, user: User) -> bool:
    return base.shows_cost(request.app[keys.SETTINGS], user)


async def _zone(request: web.Request, user: User) -> str:
    """?tz= when given (400 if it is not a zone), else the analyst's remembered zone, else UTC."""
    asked = request.query.get("tz")
    if asked:
        try:
            parse_zone(asked)
        except ValueError as exc:
            raise AppError(400, f"tz: {exc}", "invalid_tz") from None
        return asked
    return await store.stored_zone(request.app[keys.DB], user.id) or DEFAULT_ZONE


def _without_cost(result: Activity) -> Activity:
    """A copy with every cost left out (the store's answer may be shared by other requests)."""
    data = msgspec.to_builtins(result)
    for row in (*data["days"], *data["by_model"], *data["by_project"], data["totals"]):
        row["cost_usd"] = None
    data["totals"]["fast_messages"] = data["totals"]["unpriced_messages"] = 0
    data["price_table"] = None
    return msgspec.convert(data, Activity)


async def _activity(request: web.Request) -> tuple[Activity, bool]:
    app = request.app
    user = request[keys.USER]
    range_name = clamp_range(request.query.get("range"))
    zone = await _zone(request, user)
    result = await store.activity(app[keys.DB], user.id, range_name, zone, app[keys.CLOCK](), app[keys.PRICES])
    cost = shows_cost(request, user)
    return (result if cost else _without_cost(result)), cost


_TOKEN_COLUMNS = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "total_tokens"]


def _tokens(t) -> list[int]:
    return [t.input, t.output, t.cache_read, t.cache_creation, t.total]


def _wantscsv_response(request: web.Request) -> bool:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise AppError(400, "format must be json or csv.", "invalid_format")
    return fmt == "csv"


async def activity_json(request: web.Request) -> web.Response:
    """GET /api/me/activity?range=7d|30d|90d&tz=Area/City[&format=csv]."""
    csv_wanted = _wantscsv_response(request)
    result, _ = await _activity(request)
    if csv_wanted:
        return csv_response(["date", "sessions", "prompts", "messages", *_TOKEN_COLUMNS, "cost_usd", "active_seconds"],
                    [[d.date, d.sessions, d.prompts, d.messages, *_tokens(d.tokens), d.cost_usd, d.active_seconds]
                     for d in result.days], f"activity-{result.range}")
    return json(result)


class SessionsPage(msgspec.Struct):
    sessions: list[SessionRow]
    next_cursor: str | None
    price_table: str | None


def _int(value: str | None, default: int, low: int, high: int, name: str) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise AppError(400, f"{name} must be a whole number.", f"invalid_{name}") from None
    return min(max(number, low), high)


async def _sessions(request: web.Request, limit: int) -> tuple[SessionsPage, str, str, str]:
    app = request.app
    user = request[keys.USER]
    range_name = clamp_range(request.query.get("range"))
    zone = await _zone(request, user)
    sort = request.query.get("sort") or DEFAULT_SORT
    if sort.lstrip("+-") not in _SORTS:
        raise AppError(400, f"sort must be one of {', '.join(_SORTS)} (a leading + sorts ascending).", "invalid_sort")
    offset = _int(request.query.get("cursor") or None, 0, 0, 10**9, "cursor")
    rows = sort_sessions(await store.sessions(app[keys.DB], user.id, range_name, zone, app[keys.CLOCK](),
                                              app[keys.PRICES]), sort)
    page = rows[offset:offset + limit]
    if not shows_cost(request, user):
        page = [msgspec.structs.replace(row, cost_usd=None) for row in page]
    more = offset + limit < len(rows)
    price_table = app[keys.PRICES].version if shows_cost(request, user) else None
    return SessionsPage(page, str(offset + limit) if more else None, price_table), range_name, zone, sort


_SORTS = ("start", "project", "duration", "active", "prompts", "tokens", "cost", "model", "tool_calls", "tool_errors")


async def sessions_json(request: web.Request) -> web.Response:
    """GET /api/me/sessions?range=&limit=&cursor=&sort=[&format=csv]: newest first unless sorted."""
    csv_wanted = _wantscsv_response(request)
    limit = _int(request.query.get("limit"), 50, 1, MAX_LIMIT, "limit")
    page, range_name, _, _ = await _sessions(request, limit)
    if csv_wanted:
        return csv_response(["session_id", "project", "started_at", "ended_at", "active_seconds", "prompts", "messages",
                     *_TOKEN_COLUMNS, "cost_usd", "primary_model", "tool_calls", "tool_errors"],
                    [[s.session_id, s.project, s.started_at, s.ended_at, s.active_seconds, s.prompts, s.messages,
                      *_tokens(s.tokens), s.cost_usd, s.primary_model, s.tool_calls, s.tool_errors]
                     for s in page.sessions], f"sessions-{range_name}")
    return json(page)


async def _detail(request: web.Request):
    user = request[keys.USER]
    session_id = request.match_info["session_id"]
    found = await store.session_detail(request.app[keys.DB], user.id, session_id, request.app[keys.PRICES])
    if found is None:  # another analyst's session is as unknown as one that never existed
        raise AppError(404, "No such session among yours.", "not_found")
    if not shows_cost(request, user):
        found = msgspec.structs.replace(found, session=msgspec.structs.replace(found.session, cost_usd=None),
                                        price_table=None)
    return found


async def session_json(request: web.Request) -> web.Response:
    """GET /api/me/sessions/{session_id}: one session's counters, hours and tools (never its text)."""
    return json(await _detail(request))


class ZoneBody(msgspec.Struct, forbid_unknown_fields=True):
    tz: str


async def set_zone(request: web.Request) -> web.Response:
    """POST /api/me/timezone {"tz": "Area/City"}: remember the analyst's zone for their days."""
    body = await decode_json_body(request, ZoneBody)
    try:
        await store.remember_zone(request.app[keys.DB], request[keys.USER].id, body.tz)
    except ValueError as exc:
        raise AppError(400, f"tz: {exc}", "invalid_tz") from None
    return json({"tz": body.tz})


# --- Pages.

def _gated(request: web.Request, user: User) -> bool:
    return request.app[keys.SETTINGS].show_status_frame and user.onboarded


async def activity_page(request: web.Request) -> web.Response:
    """/activity: the same sign-in and gates as /home; without them, a pointer to /home's setup."""
    user = request[keys.USER]
    context: dict[str, Any] = {"user": user, "csrf_token": request_csrf_token(request), "gated": _gated(request, user),
                               "ranges": RANGE_LABELS, "operator_view": None, "body_key": None,
                               "page_url": str(request.app.router["activity"].url_for())}
    if context["gated"]:
        result, cost = await _activity(request)
        page, _, zone, sort = await _sessions(request, PAGE_SIZE)
        stored = await store.stored_zone(request.app[keys.DB], user.id)
        cursor = request.query.get("cursor") or "0"
        # One rendering of the body per set of numbers: the store's answers are kept while the
        # database is unchanged (the snapshot's version), and the key names all else the body reads.
        version = request.app[keys.DB].snapshot()
        body_key = None if version is None else (
            "activity", user.id, version, result.range, zone, result.days[0].date, sort, cursor, cost, stored or "")
        context.update(a=result, cost=cost, charts=lambda: activity_charts(result, cost), page=page, sort=sort, zone=zone,
                       zone_stored=stored, range=result.range, sorts=_SORTS, cursor=cursor, body_key=body_key)
    return aiohttp_jinja2.render_template("activity.html", request, context)


async def session_page(request: web.Request) -> web.Response:
    """/activity/sessions/{session_id}: one session, never its text."""
    user = request[keys.USER]
    detail = await _detail(request)
    return aiohttp_jinja2.render_template("session.html", request, {
        "user": user, "csrf_token": request_csrf_token(request), "d": detail, "s": detail.session,
        "cost": shows_cost(request, user), "now_iso": to_api(request.app[keys.CLOCK]())})


