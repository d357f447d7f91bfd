"""Operator endpoints (/api/admin/*): force a full reprocess, list and release quarantined files."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from .. import keys
from .base import decode_json_body, json
from .errors import AppError
from ..store import ingest as ingest_store
from ..store import users
from ..store.users import normalise_email
from ..timeutil import to_api


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
    return json({"files": [{**row, "quarantined_at": to_api(row["quarantined_at"])} for row in rows]})


async def quarantine_retry(request: web.Request) -> web.Response:
    """POST /api/admin/quarantine/retry: release one (or every) quarantined file for another try."""
    require_admin(request)
    body = await decode_json_body(request, RetryBody, empty=RetryBody())
    released = await ingest_store.release_quarantine(request.app[keys.DB], body.id)
    return json({"status": "ok", "released": released})
