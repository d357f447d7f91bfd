"""Server-rendered pages: sign-in, sign-out and /home."""

from __future__ import annotations

import logging
from typing import Any, Callable

import aiohttp_jinja2
from aiohttp import web

from . import keys
from .auth import clear_session_cookie, public, request_csrf_token, set_session_cookie
from .store import users

logger = logging.getLogger(__name__)


def template_filters() -> dict[str, Callable[..., Any]]:
    return {}


def _safe_next(value: str | None) -> str:
    """Only local paths are allowed as a post-sign-in target (no open redirects)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/home"


@public
async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/home")


@public
async def login_page(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template(
        "login.html", request, {"next": _safe_next(request.query.get("next")), "error": None})


@public
async def login_submit(request: web.Request) -> web.Response:
    form = await request.post()
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
    set_session_cookie(request, response, user.id, token_id)
    logger.info("signed in", extra={"signed_in_user": user.id})
    raise response


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/login")
    clear_session_cookie(response)
    raise response


async def home(request: web.Request) -> web.Response:
    user = request[keys.USER]
    context = {"user": user, "csrf_token": request_csrf_token(request)}
    return aiohttp_jinja2.render_template("home.html", request, context)
