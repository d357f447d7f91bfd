"""Request id, errors and authentication: the three middlewares, outermost first."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import re
import secrets
import sqlite3
import time

import aiohttp_jinja2
from aiohttp import web

from .. import keys
from .auth import check_csrf, identify
from ..db import bounded_writes, is_busy
from .errors import AppError, code_for, error_response
from ..logs import request_id_var, user_id_var

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("service.access")

CLIENT_CLOSED_REQUEST = 499
PRIVATE = "private, no-store"
# On every response (pages, JSON, files): the pages load only their own script, style and icon
# (no inline code), post only to this site, and may not be framed by another site (the onboarding
# buttons are one click); nothing is sniffed into another type; no URL leaks to other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_INCOMING_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# Generated ids (32 hex digits, like a uuid4 hex): a random prefix per process and a counter,
# unique without a syscall per request (uuid4 reads the kernel's random source each time).
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path == "/api"


def is_browser_form(request: web.Request) -> bool:
    """A page's own form, posted by a browser without JavaScript (the onboarding buttons post to the
    API): its errors are pages, not JSON, and a dead session goes back to sign-in."""
    return (request.method == "POST" and request.content_type == "application/x-www-form-urlencoded"
            and "text/html" in request.headers.get("Accept", "") and "Authorization" not in request.headers)


def route_name(request: web.Request) -> str:
    """The route's pattern (not the raw path), so metrics and logs have bounded labels."""
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class InFlight:
    """The requests being handled, so a shutdown can let them finish while their bodies still
    arrive (aiohttp's own shutdown stops reading from every connection at once)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Whether every request finished within ``timeout`` seconds."""
        if not self.count:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    """Give every request an id (or keep a sane incoming one), put it in the logs and the response."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if incoming and _INCOMING_ID.match(incoming) else f"{_ID_PREFIX}{next(_id_counter):016x}"
    request[keys.REQUEST_ID] = rid
    request_id_var.set(rid)
    user_id_var.set("-")
    started = time.perf_counter()
    in_flight = request.app[keys.IN_FLIGHT]
    in_flight.enter()
    status: int | None = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers.update(SECURITY_HEADERS)
        response.headers["X-Request-Id"] = rid
        if isinstance(response, web.FileResponse) and not response.prepared:
            # A file response picks its status (200, 206, 304, 412, 416) only as it is sent: counting
            # it now would log every ranged download as 200. observe_prepared() counts it then.
            request[keys.OBSERVE_AT_PREPARE] = started
            status = None
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers.update(SECURITY_HEADERS)
        exc.headers["X-Request-Id"] = rid
        raise
    except asyncio.CancelledError:
        # aiohttp's test server cancels the handler when the client disconnects: nginx's 499,
        # "client closed request", in the log and metrics, not a server error.
        status = CLIENT_CLOSED_REQUEST
        raise
    finally:
        in_flight.leave()
        if status is not None:
            _observe(request, status, started)


def _observe(request: web.Request, status: int, started: float) -> None:
    """The request's metrics and access log line."""
    elapsed = time.perf_counter() - started
    metrics = request.app.get(keys.METRICS)
    if metrics is not None:
        metrics.observe_request(request.method, route_name(request), status, elapsed)
    access_logger.info("%s %s %s %.1fms", request.method, request.path, status, elapsed * 1000,
                       extra={"status": status, "ms": round(elapsed * 1000, 2)})


async def observe_prepared(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: count a file response with the status it is sent with (its headers are final)."""
    started = request.get(keys.OBSERVE_AT_PREPARE)
    if started is not None:
        del request[keys.OBSERVE_AT_PREPARE]
        _observe(request, response.status, started)


# A request's write waits at most this long for another process's lock (then 503 database_busy);
# the agnes client re-queues a push answered 5xx.
REQUEST_WRITE_WAIT_S = 1.0
BUSY_RETRY_AFTER_S = 5
FULL_RETRY_AFTER_S = 60


@web.middleware
async def error_middleware(request: web.Request, handler):
    """JSON {"detail", "code"} for /api; an error page for pages; tracebacks only in the log."""
    try:
        with bounded_writes(REQUEST_WRITE_WAIT_S):
            return await handler(request)
    except ConnectionResetError:
        # The client went away mid-request (a dropped upload; aiohttp's own exception for it
        # subclasses this one): nothing can be sent, and it is not a server error.
        logger.info("client closed the connection during %s %s", request.method, request.path)
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except AppError as exc:
        return _render_error(request, exc.status, exc.detail, exc.code, exc.headers)
    except web.RequestPayloadError:
        # The body cannot be read as sent (a Content-Encoding that does not decode): the client's
        # error, wherever the handler read it. aiohttp then drops the connection, so say so.
        response = _render_error(request, 400, "The request body could not be read: its Content-Encoding "
                                               "does not decode.", "bad_body", {})
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return _render_error(request, exc.status, detail, code_for(exc.status),
                             {k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception as exc:
        if is_busy(exc):
            # A lock held by another process (an operator's command, a backup): the client retries.
            logger.warning("database is locked by another process; %s %s answered 503 database_busy",
                           request.method, request.path)
            return _render_error(request, 503, "The database is busy; try again in a moment.", "database_busy",
                                 {"Retry-After": str(BUSY_RETRY_AFTER_S)})
        if _is_full(exc):
            logger.error("no space left for %s %s (%s); answered 503 storage_full: free space under the data "
                         "directory or the database's folder", request.method, request.path, type(exc).__name__)
            return _render_error(request, 503, "The server is out of disk space; try again later.", "storage_full",
                                 {"Retry-After": str(FULL_RETRY_AFTER_S)})
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return _render_error(request, 500, "Internal server error; the request id is in the logs.",
                             "internal_error", {})


def _is_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT from a file write, or SQLite's SQLITE_FULL."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL


def _render_error(request: web.Request, status: int, detail: str, code: str,
                  headers: dict[str, str]) -> web.StreamResponse:
    if (is_api(request) and not is_browser_form(request)) or "text/html" not in request.headers.get("Accept", "text/html"):
        response = error_response(status, detail, code, headers)
    else:
        response = aiohttp_jinja2.render_template(
            "error.html", request, {"status": status, "detail": detail, "code": code}, status=status)
        response.headers.update(headers)
    if keys.IDENTITY in request:  # an error behind a credential can name the caller's own things
        response.headers.setdefault("Cache-Control", PRIVATE)
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """Every route but the public ones identifies a user; pages without a credential go to sign-in."""
    info = request.match_info
    if (info.http_exception is not None or getattr(info.handler, "agnes_public", False)
            or isinstance(info.route.resource, web.StaticResource)):  # the sign-in page needs its CSS
        return await handler(request)
    identity = await identify(request)
    if identity is None:
        if not is_api(request) and "Authorization" not in request.headers and request.method in ("GET", "HEAD"):
            target = request.path_qs
            raise web.HTTPFound(request.app.router["login"].url_for().with_query(next=target))
        if is_browser_form(request):
            raise web.HTTPSeeOther(request.app.router["login"].url_for().with_query(next="/home"))
        raise AppError(401, "Missing or invalid credentials: send 'Authorization: Bearer <token>' or sign in.",
                       "unauthorized", {"WWW-Authenticate": 'Bearer realm="agnes"'})
    refused = await check_csrf(request, identity)
    if refused is not None:
        raise refused
    request[keys.IDENTITY] = identity
    request[keys.USER] = identity.user
    user_id_var.set(str(identity.user.id))
    request.app[keys.CLIENTS].observe(request, identity)
    response = await handler(request)
    # Everything behind a credential is someone's own data: no shared or browser cache keeps it
    # (errors too: _render_error adds it to those).
    response.headers.setdefault("Cache-Control", PRIVATE)
    return response
