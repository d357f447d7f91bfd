"""Who is calling: bearer tokens, signed session cookies, a trusted proxy header, CSRF."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from .. import keys
from ..config import Settings
from .base import read_body
from .errors import AppError
from ..store import sessions, users
from ..store.users import User

logger = logging.getLogger(__name__)

COOKIE_NAME = "agnes_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})



def public(handler: Callable) -> Callable:
    """Mark a handler as reachable without a credential (health checks, sign-in, version probe)."""
    handler.agnes_public = True  # type: ignore[attr-defined]
    return handler


def load_secret(settings: Settings) -> bytes:
    """The cookie-signing key: the configured one, or one generated once and kept under data_dir."""
    if settings.secret_key:
        return settings.secret_key.encode("utf-8")
    path = Path(settings.data_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        kept = path.read_bytes().strip()
    except FileNotFoundError:
        kept = b""
    if kept:
        return kept
    # An empty key signs cookies anyone can forge. The key is written whole under a temporary name
    # and then put in place, so that neither a crash (or a full disk) mid-write nor another process
    # starting at the same moment ever reads an empty file; one left empty by an older version is
    # replaced.
    tmp = path.with_name(f".secret_key-{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_hex(32).encode())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails when another process put its key in place first
        except FileExistsError:
            if not path.read_bytes().strip():
                os.replace(tmp, path)
        except OSError:  # a file system without hard links
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


MAX_CHECKED_COOKIES = 4096


class SessionSigner:
    """Signs session cookies and checks them; a cookie's signature is verified once per process.

    Verifying is an HMAC, base64 and JSON (~20 us, a tenth of a page); a cookie whose signature
    was verified is kept with its signing time, and its age is still checked on every request,
    as itsdangerous checks it (whole seconds, expired past max_age or from the future).
    """

    def __init__(self, secret: bytes) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="agnes-home.session")
        self._checked: dict[str, tuple[dict[str, Any], int]] = {}

    def dumps(self, data: dict[str, Any]) -> str:
        return self._serializer.dumps(data)

    def loads(self, raw: str, max_age: int) -> dict[str, Any] | None:
        """The cookie's data, or None when it is not ours, malformed or too old."""
        checked = self._checked.get(raw)
        if checked is None:
            if not raw.isascii():  # a signed value is ASCII; anything else is not ours
                return None
            try:
                data, signed = self._serializer.loads(raw, max_age=max_age, return_timestamp=True)
            except BadSignature:
                return None
            if (not isinstance(data, dict) or not isinstance(data.get("u"), int) or not isinstance(data.get("n"), str)
                    or not isinstance(data.get("s"), str) or not data["s"].isascii()):
                return None  # "s" names the sign-in's row; cookies signed before rows existed have none
            checked = (data, int(signed.timestamp()))
            if len(self._checked) >= MAX_CHECKED_COOKIES:
                self._checked.clear()
            self._checked[raw] = checked
        data, signed_at = checked
        age = int(time.time()) - signed_at
        return data if 0 <= age <= max_age else None


def make_signer(secret: bytes) -> SessionSigner:
    return SessionSigner(secret)


def csrf_token(secret: bytes, user_id: int, nonce: str) -> str:
    """Per-session CSRF token, derived so it need not be stored."""
    return hmac.new(secret, f"csrf:{user_id}:{nonce}".encode(), hashlib.sha256).hexdigest()


async def set_session_cookie(request: web.Request, response: web.StreamResponse, user_id: int,
                             token_id: int | None) -> None:
    """Record the sign-in on the server and give the browser a signed cookie naming it."""
    settings = request.app[keys.SETTINGS]
    secret = await sessions.start(request.app[keys.DB], user_id, token_id, settings.session_max_age)
    value = request.app[keys.SIGNER].dumps({"u": user_id, "t": token_id, "n": secrets.token_urlsafe(12),
                                            "s": secret})
    response.set_cookie(COOKIE_NAME, value, max_age=settings.session_max_age, httponly=True,
                        samesite="Lax", secure=settings.cookie_secure, path="/")


async def end_session(request: web.Request, response: web.StreamResponse) -> None:
    """Sign-out: end the sign-in the cookie names on the server (a copy of the cookie dies with it)
    and clear the browser's cookie."""
    raw = request.cookies.get(COOKIE_NAME)
    data = request.app[keys.SIGNER].loads(raw, request.app[keys.SETTINGS].session_max_age) if raw else None
    if data is not None:
        await sessions.end(request.app[keys.DB], data["s"])
    response.del_cookie(COOKIE_NAME, path="/")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    value = value.strip()
    # Tokens are ASCII; other bytes arrive as surrogate escapes that would not even hash.
    return value if value.isascii() else ""


def _from_trusted_proxy(request: web.Request, settings: Settings) -> bool:
    return bool(settings.proxy_header) and _remote_is_trusted(request, settings)


def _remote_is_trusted(request: web.Request, settings: Settings) -> bool:
    """Whether the direct peer is one of the operator's trusted proxies (AGNES_TRUSTED_PROXIES)."""
    if not settings.trusted_proxies or request.remote is None:
        return False
    try:
        remote = ipaddress.ip_address(request.remote)
    except ValueError:
        return False
    # Entries were checked at start-up (config refuses one that is not an address or network).
    return any(remote in ipaddress.ip_network(entry.strip(), strict=False) for entry in settings.trusted_proxies)


class Identity:
    """The result of authentication: the user, how they proved it, and the CSRF nonce."""

    __slots__ = ("user", "method", "nonce")

    def __init__(self, user: User, method: str, nonce: str = "") -> None:
        self.user, self.method, self.nonce = user, method, nonce


async def identify(request: web.Request) -> Identity | None:
    """Authenticate a request. A bearer header, when present, is the only credential considered."""
    app = request.app
    db = app[keys.DB]
    token = _bearer(request)
    if token is not None:
        found = await users.authenticate(db, token) if token else None
        return Identity(found[0], "bearer") if found else None

    settings = app[keys.SETTINGS]
    if _from_trusted_proxy(request, settings):
        values = request.headers.getall(settings.proxy_header, [])
        if len(values) > 1:
            # The proxy sets one identity; a second copy is one the client sent, which a proxy
            # that appends (rather than replaces) would pass on: trust neither.
            logger.warning("refused a request carrying %s %d times", settings.proxy_header, len(values))
            return None
        email = values[0].strip() if values else ""
        if email and not _is_text(email):
            return None
        if email:
            user = await users.get_user_by_email(db, email)
            return Identity(user, "proxy", "proxy") if user else None

    raw = request.cookies.get(COOKIE_NAME)
    if raw:
        data = app[keys.SIGNER].loads(raw, settings.session_max_age)
        if data is None:
            return None
        user = await users.get_user(db, data["u"])
        if user is None:
            return None
        if data.get("t") is not None and not await users.token_active(db, data["t"]):
            return None
        if not await sessions.active(db, user.id, data["s"]):
            return None  # signed out, revoked by an operator, or expired
        return Identity(user, "cookie", data["n"])
    return None


def _is_text(value: str) -> bool:
    """False for a header value carrying bytes that are not UTF-8 (aiohttp keeps them as surrogate escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _own_hosts(request: web.Request, settings: Settings) -> set[str]:
    """The host[:port] values a same-origin browser request may carry in Origin.

    The Host the request arrived with; the host of AGNES_PUBLIC_URL (a reverse proxy commonly
    rewrites Host to the upstream address, nginx by default); and X-Forwarded-Host when the
    direct peer is a trusted proxy.
    """
    hosts = {request.host}
    if settings.public_url:
        hosts.add(urlsplit(settings.public_url).netloc)
    forwarded = request.headers.get("X-Forwarded-Host")
    if forwarded and _remote_is_trusted(request, settings):
        hosts.add(forwarded.split(",", 1)[0].strip())
    return hosts


def origin_refusal(request: web.Request, *, opaque_ok: bool = True) -> AppError | None:
    """403 origin_mismatch when the browser says the request comes from another site; else None.

    ``Origin: null`` is what a sandboxed frame, or any page with a no-referrer policy, sends from
    another site. With ``opaque_ok=False`` it is refused too: for sign-in and sign-out the Origin is
    the only defence, where the other posts still need the session's CSRF token.
    """
    origin = request.headers.get("Origin")
    if not origin or (origin == "null" and opaque_ok):
        return None
    if origin.split("://", 1)[-1] not in _own_hosts(request, request.app[keys.SETTINGS]):
        return AppError(403, f"Cross-site request refused: Origin {origin} is not this site "
                             "(behind a proxy, set AGNES_PUBLIC_URL to the address browsers use).", "origin_mismatch")
    return None


async def check_csrf(request: web.Request, identity: Identity) -> AppError | None:
    """Cookie- and proxy-authenticated state changes need a same-origin Origin (when the browser sends
    one) and the session's CSRF token; the refusal, or None."""
    if request.method in SAFE_METHODS or identity.method == "bearer":
        return None
    refused = origin_refusal(request)
    if refused is not None:
        return refused
    expected = csrf_token(request.app[keys.SECRET], identity.user.id, identity.nonce)
    sent = request.headers.get(CSRF_HEADER)
    # The page's forms are URL-encoded; a multipart body (an upload) is the handler's to stream,
    # so reading it here for a field would consume it: multipart posts send the header.
    if sent is None and request.content_type == "application/x-www-form-urlencoded":
        form = await read_form(request)
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    # compare_digest raises TypeError on non-ASCII text; a real token is hex.
    if sent is not None and sent.isascii() and hmac.compare_digest(sent, expected):
        return None
    return AppError(403, f"Cross-site request refused: missing or wrong CSRF token (send the page's token in the "
                         f"{CSRF_HEADER} header, or as the {CSRF_FIELD} field of a URL-encoded form).", "csrf_failed")


async def read_form(request: web.Request):
    """request.post(), with a body that is not form data in UTF-8 answered 400 rather than 500
    (LookupError: a charset parameter Python does not know; RuntimeError: a multipart part in a
    Content-Transfer-Encoding aiohttp does not know), and a stalled one 408."""
    try:
        return await read_body(request, request.post())
    except (UnicodeDecodeError, LookupError, ValueError, HttpProcessingError,  # HttpProcessingError: a line too long
            RuntimeError):
        raise AppError(400, "The form body is malformed or not UTF-8.", "bad_form") from None


def request_csrf_token(request: web.Request) -> str:
    identity: Identity | None = request.get(keys.IDENTITY)
    if identity is None or identity.method == "bearer":
        return ""
    return csrf_token(request.app[keys.SECRET], identity.user.id, identity.nonce)
