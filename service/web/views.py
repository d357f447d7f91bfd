"""Server-rendered pages: sign-in, sign-out and /home."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit
import re
from datetime import datetime
from typing import Any, Callable

import aiohttp_jinja2
from aiohttp import web

from .. import keys
from . import clients
from .base import shows_cost
from .auth import end_session, origin_refusal, public, read_form, request_csrf_token, set_session_cookie
from ..store import activity as activity_store
from ..store import clients as client_store, stats, users
from ..timeutil import from_store, to_api

logger = logging.getLogger(__name__)

WINDOW_LABELS = {"24h": "Last 24 hours", "7d": "Last 7 days"}

# Number formatting and relative time are mirrored in static/home.js, which redraws
# the cards after a toggle; both sides use integer arithmetic so they agree digit
# for digit (tests/test_browser.py runs the JS against the same cases).
_UNITS = ((10**3, "k"), (10**6, "M"), (10**9, "B"), (10**12, "T"))


def abbreviate(value: int) -> str:
    """12.3k, 4.5M: one decimal below 100 of a unit, none above; rounds half up; exact below 1000."""
    n = int(value)
    if n < 0:
        return "-" + abbreviate(-n)
    if n < 1000:
        return str(n)
    for unit, suffix in _UNITS:
        tenths = (n * 10 + unit // 2) // unit
        if tenths < 1000:
            whole, frac = divmod(tenths, 10)
            return f"{whole}.{frac}{suffix}" if frac else f"{whole}{suffix}"
        whole = (n + unit // 2) // unit
        if whole < 1000 or suffix == "T":
            return f"{whole}{suffix}"
    raise AssertionError("unreachable")


def grouped(value: int) -> str:
    """The exact value with thousands separators (64,504), for titles and the token split."""
    return f"{int(value):,}"


def reltime(value: str | datetime | None, now: datetime) -> str:
    """Relative time: "just now" under a minute, then "3m ago", "5h ago", "2d ago"; "never" without a value."""
    when = from_store(value) if isinstance(value, str) else value
    if when is None:
        return "never"
    seconds = int((now - when).total_seconds())
    if seconds < 60:
        return "just now"  # also a stamp slightly in the future (clock skew between writers)
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def day_label(day: str | None) -> str:
    """'2025-10-03' as '3 Oct 2025' (English month abbreviations, whatever the locale); '' for None."""
    if not day:
        return ""
    year, month, date = day.split("-")
    return f"{int(date)} {_MONTHS[int(month) - 1]} {year}"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def utc_label(value: str | datetime | None) -> str:
    """An exact moment for a title attribute: 2026-11-21 11:57:00 UTC."""
    if isinstance(value, str) and len(value) >= 20 and value[10] == "T" and value.endswith("Z"):
        return f"{value[:10]} {value[11:19]} UTC"  # already UTC (to_api, to_store): no parse
    when = from_store(value) if isinstance(value, str) else value
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when is not None else "No agnes pull yet"


def exact_note(value: int) -> str:
    """What a screen reader hears after an abbreviated number ("12.3k"): its exact value, which
    sighted mouse users get from the title. Empty when nothing was abbreviated."""
    return "" if abbreviate(value) == grouped(value) else f"(exactly {grouped(value)})"


def template_filters() -> dict[str, Callable[..., Any]]:
    return {"abbreviate": abbreviate, "grouped": grouped, "reltime": reltime, "utc_label": utc_label,
            "exact_note": exact_note}


_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def server_url(request: web.Request) -> str:
    """What analysts pass to `agnes init --server-url`: the configured public URL, else this request's origin.

    The Host header is the client's to choose: one that is not a host name (markup, bytes that are
    not UTF-8) is not echoed into pages or JSON; the configured listen address stands in.
    """
    settings = request.app[keys.SETTINGS]
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = request.host
    if not _HOST.fullmatch(host):
        host = f"{settings.host}:{settings.port}"
    return f"{request.scheme}://{host}"


def _safe_next(value: str | None) -> str:
    """Only local paths are allowed as a post-sign-in target (no open redirects).

    Control characters and white space are refused outright: URL libraries drop some of them
    (``/\t/evil.example`` becomes ``//evil.example``), which would turn a path into a host.
    """
    if (not value or not value.startswith("/") or value.startswith("//") or "\\" in value
            or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value)):
        return "/home"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/home"


@public
async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/home")


@public
async def login_page(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template(
        "login.html", request, {"next": _safe_next(request.query.get("next")), "error": None})


@public
async def login_submit(request: web.Request) -> web.Response:
    # Another site must not sign this browser in (to the other site's account, say, so that what
    # the analyst then does lands there): the same Origin check as sign-out.
    refused = origin_refusal(request, opaque_ok=False)
    if refused is not None:
        raise refused
    form = await read_form(request)
    token = str(form.get("token", "")).strip()
    target = _safe_next(str(form.get("next", "")) or None)
    found = await users.authenticate(request.app[keys.DB], token) if token else None
    if found is None:
        logger.info("sign-in refused")
        return aiohttp_jinja2.render_template(
            "login.html", request, {"next": target, "error": "That token is not valid. Check it and try again."},
            status=401)
    user, token_id = found
    response = web.HTTPSeeOther(target)
    await set_session_cookie(request, response, user.id, token_id)
    logger.info("signed in", extra={"signed_in_user": user.id})
    raise response


@public
async def logout(request: web.Request) -> web.Response:
    """Signing out always works: from a page whose session has died (a revoked token) or whose
    CSRF token went stale (signed out and in again elsewhere). It ends the sign-in the cookie
    names and clears the cookie, so it needs no credential or CSRF token (ending one's own
    sign-in is all it can do); another site still cannot post it."""
    refused = origin_refusal(request, opaque_ok=False)
    if refused is not None:
        raise refused
    response = web.HTTPSeeOther("/login")
    await end_session(request, response)
    raise response


async def home(request: web.Request) -> web.Response:
    """/home: the status frame behind two gates (operator switch, onboarded), else the install hero.

    When either gate is closed the stats query is not run at all: the page of someone
    who has not set up the client must not cost a database scan.
    """
    app = request.app
    settings = app[keys.SETTINGS]
    user = request[keys.USER]
    now = app[keys.CLOCK]()
    window = stats.clamp_window(request.query.get("window"))
    show_frame = settings.show_status_frame and user.onboarded
    frame = await stats.home_stats(app[keys.DB], user.id, window, now) if show_frame else None
    context_ = await activity_store.frame_context(app[keys.DB], user.id, window, now, app[keys.PRICES]) \
        if show_frame else None
    pull_errors = clients.pull_errors(await client_store.last_pull(app[keys.DB], user.id),
                                      frame.last_pull_at) if frame is not None and frame.last_pull_at else 0
    # An empty window says when the analyst was last active (or that nothing arrived yet), rather
    # than five bare zeros; read for any window, since the toggle can land on an empty one.
    last_active = await stats.last_active_day(app[keys.DB], user.id) if show_frame else None
    context = {
        "user": user,
        "csrf_token": request_csrf_token(request),
        "show_frame": show_frame,
        "frame_context": context_,
        "show_cost": show_frame and shows_cost(settings, user),
        "frame_switch_on": settings.show_status_frame,
        "show_automode": settings.show_automode,
        "stats": frame,
        "pull_errors": pull_errors,
        "last_active": day_label(last_active),
        "window": window,
        "windows": WINDOW_LABELS,
        "now": now,
        "now_iso": to_api(now),
        "server_url": server_url(request),
    }
    return aiohttp_jinja2.render_template("home.html", request, context)
