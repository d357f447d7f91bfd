"""Server-rendered pages: sign-in, sign-out and /home."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web

from .. import keys
from ..store import activity as activity_store
from ..store import clients as client_store, stats, users
from ..timeutil import to_api
from .auth import end_session, origin_refusal, public, read_form, request_csrf_token, set_session_cookie
from .base import server_url, shows_cost
from .filters import day_label

logger = logging.getLogger(__name__)

WINDOW_LABELS = {"24h": "Last 24 hours", "7d": "Last 7 days"}

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
    raise web.HTTPFound(request.app.router["home"].url_for())


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
    response = web.HTTPSeeOther(request.app.router["login"].url_for())
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
    pull_errors = client_store.pull_errors(await client_store.last_pull(app[keys.DB], user.id),
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
