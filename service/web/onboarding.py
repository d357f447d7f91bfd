"""POST /api/me/onboarded: the `agnes` client and the /home page mark an analyst (off)boarded."""

from __future__ import annotations

import logging
from typing import Literal, get_args

import msgspec
from aiohttp import web

from .. import keys
from .base import decode_json_body, json
from .auth import CSRF_FIELD, read_form
from .errors import AppError
from ..store import users

logger = logging.getLogger(__name__)

Source = Literal["agnes_init", "self_acknowledged", "self_unmark"]
SOURCES: tuple[str, ...] = get_args(Source)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class OnboardedBody(msgspec.Struct, forbid_unknown_fields=True):
    """The request body; both fields optional, so `{}` (or no body) is what `agnes init` means."""

    source: Source = "agnes_init"
    onboarded: bool = True


class OnboardedResult(msgspec.Struct):
    status: str
    onboarded: bool


def _invalid(exc: msgspec.ValidationError) -> AppError:
    # msgspec's message carries the `$.path` of the bad field; the enum message alone does
    # not say what would have been accepted, so the choices are added for that one field.
    detail = f"Invalid request body: {exc}"
    if "`$.source`" in str(exc):
        detail += f" (expected one of: {', '.join(SOURCES)})"
    return AppError(400, detail, "invalid_body")


async def _decode_json(request: web.Request) -> OnboardedBody:
    # Up to aiohttp's default body limit, as before this endpoint shared the helper.
    return await decode_json_body(request, OnboardedBody, empty=OnboardedBody(), invalid=_invalid,
                                  limit=1024 * 1024)


async def _decode_form(request: web.Request) -> OnboardedBody:
    # The /home buttons are plain forms so they work without JavaScript; the CSRF field
    # was already checked by the auth middleware and is not part of the body's schema.
    form = await read_form(request)
    fields = {key: form[key] for key in form if key != CSRF_FIELD}
    if not all(isinstance(value, str) for value in fields.values()):
        raise AppError(400, "Invalid request body: file fields are not accepted", "invalid_body")
    try:
        # strict=False turns the form's "true"/"false" text into booleans.
        return msgspec.convert(fields, OnboardedBody, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None


async def onboarded(request: web.Request) -> web.StreamResponse:
    """Set the caller's onboarded flag and audit its source. Idempotent: same body, same state and answer.

    JSON callers get ``{"status": "ok", "onboarded": <bool>}``; a form post from /home is
    redirected back to /home (303), so the page needs no JavaScript for it.
    """
    is_form = request.content_type in FORM_TYPES
    body = await (_decode_form(request) if is_form else _decode_json(request))
    user = request[keys.USER]
    if not await users.set_onboarded(request.app[keys.DB], user.id, body.onboarded, body.source):
        # Authenticated a moment ago, gone now (deleted concurrently): nothing to update.
        raise AppError(404, "Your user account no longer exists.", "user_not_found")
    logger.info("onboarded=%s source=%s", body.onboarded, body.source)
    if is_form:
        raise web.HTTPSeeOther(request.app.router["home"].url_for())
    return json(OnboardedResult("ok", body.onboarded))
