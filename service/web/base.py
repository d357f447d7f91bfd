"""What handlers share (Datasette's views/base.py): JSON bodies in and out, the server's URL, and
the policies every page and API applies alike. Handlers import this and the store, not each other."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from typing import Any, Awaitable, Callable, TypeVar

import msgspec
from aiohttp import web

from .. import keys
from ..config import Settings
from ..store.users import User, normalise_email
from .errors import AppError

_encoder = msgspec.json.Encoder()
T = TypeVar("T")


def json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json",
                        headers=headers)


async def read_body(request: web.Request, read: Awaitable[T]) -> T:
    """One read of the request body, or 408 when the client sends nothing for client_timeout
    seconds (aiohttp has no body timeout: a stalled upload would hold its file open for good)."""
    seconds = request.app[keys.SETTINGS].client_timeout
    try:
        async with asyncio.timeout(seconds):
            return await read
    except TimeoutError:
        raise AppError(408, f"The request body stalled: nothing arrived for {seconds:g} s.",
                       "request_timeout") from None


async def decode_json_body(request: web.Request, type_: type, *, empty: Any = None, limit: int = 64 * 1024,
                           invalid: Callable[[msgspec.ValidationError], AppError] | None = None):
    """The request's JSON body as a msgspec Struct: 415 for other media types, 413 past ``limit``,
    400 naming the bad field (msgspec's ``$.path``); an empty body gives ``empty`` when that is set."""
    require_json(request)
    if (request.content_length or 0) > limit:
        raise AppError(413, f"The body is limited to {limit} bytes.", "payload_too_large")
    raw = bytearray()
    while chunk := await read_body(request, request.content.read(64 * 1024)):  # what has arrived, not all
        raw += chunk
        if len(raw) > limit:
            raise AppError(413, f"The body is limited to {limit} bytes.", "payload_too_large")
    if not raw.strip() and empty is not None:
        return empty
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise (invalid(exc) if invalid else AppError(400, f"Invalid request body: {exc}", "invalid_body")) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # invalid UTF-8 in a string: UnicodeDecodeError
        raise AppError(400, f"Invalid JSON body: {exc}", "invalid_json") from None


def require_json(request: web.Request) -> None:
    """A JSON endpoint refuses a body declared as another type (415).

    No Content-Type, or application/octet-stream (what HTTP clients send for "no type"),
    is fine. text/plain is what a cross-site form or sendBeacon can send without a CORS
    preflight: such a body is never taken for JSON, whatever the cookie and CSRF checks say.
    """
    ctype = request.content_type  # application/octet-stream when the header is missing
    if ctype in ("application/json", "application/octet-stream") or ctype.endswith("+json"):
        return
    raise AppError(415, f"Send the body as application/json, not {ctype}.", "unsupported_media_type")


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


def is_operator(settings: Settings, user: User) -> bool:
    """Listed in AGNES_ADMIN_EMAILS."""
    return user.email in {normalise_email(e) for e in settings.admin_emails}


def shows_cost(settings: Settings, user: User) -> bool:
    """Analysts see estimated cost unless the operator switched it off; operators always do."""
    return settings.show_cost or is_operator(settings, user)


def csv_response(header: list[str], rows: list[list[Any]], name: str) -> web.Response:
    """A CSV attachment. A cell a spreadsheet would run as a formula (=, +, -, @) is written as text:
    project paths, model, tool and analysts' names come from users."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@") else v for v in row])
    return web.Response(text=out.getvalue(), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
