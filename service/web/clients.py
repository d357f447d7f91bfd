"""What the `agnes` client tells us about itself: its User-Agent on every call, and how each pull ended.

Releases 0.54.9 and 0.84.8 send ``User-Agent: agnes/<version> (<os>)`` on their API calls (the v2
catalog helper sends httpx's own, which is not a client version and is ignored). 0.84.8 also ends
every pull with ``POST /api/sync/pull-confirm``; 0.54.9 sends none, so ``users.last_pull_at`` stays
the manifest stamp and this is only the outcome next to it.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import msgspec
from aiohttp import web

from .. import keys
from .base import decode_json_body, json
from .errors import AppError
from ..store import clients as store

if TYPE_CHECKING:
    from .auth import Identity

logger = logging.getLogger(__name__)

USER_AGENT = re.compile(r"agnes/([0-9][0-9A-Za-z.+-]{0,63}) \(([A-Za-z0-9._-]{1,32})\)")
# A client's version is written at most this often per analyst (and process): every API call carries
# it, and each write moves SQLite's data_version, which empties the read caches.
SEEN_RESOLUTION = timedelta(minutes=1)
MAX_TRACKED = 100_000
INT64 = 2**63 - 1


def parse_user_agent(value: str) -> tuple[str, str] | None:
    """(version, os) from ``agnes/0.84.8 (darwin)``, or None for any other User-Agent."""
    match = USER_AGENT.fullmatch(value.strip())
    return (match.group(1), match.group(2).lower()) if match else None


class ClientTracker:
    """Notes each analyst's client version and OS from their bearer-authenticated calls."""

    def __init__(self) -> None:
        self._written: dict[int, tuple[str, str, datetime]] = {}

    def observe(self, request: web.Request, identity: Identity) -> None:
        """Queue a write when the version or OS changed, or SEEN_RESOLUTION passed; never waits for it.

        Only bearer calls: a browser's User-Agent is not the client's, and a page cannot set one."""
        if identity.method != "bearer":
            return
        seen = parse_user_agent(request.headers.get("User-Agent", ""))
        if seen is None:
            return
        now = request.app[keys.CLOCK]()
        user_id = identity.user.id
        last = self._written.get(user_id)
        if last is not None and last[:2] == seen and timedelta(0) <= now - last[2] < SEEN_RESOLUTION:
            return
        if len(self._written) >= MAX_TRACKED:
            self._written.clear()
        self._written[user_id] = (*seen, now)
        store.note_client_later(request.app[keys.DB], user_id, *seen, now)


# A count: JSON's integers, and numbers such as 3.0 or 1e3 that JSON Schema counts as integers too.
Count = Annotated[int, msgspec.Meta(ge=0, le=INT64)] | Annotated[float, msgspec.Meta(ge=0, le=INT64)]


class PullConfirm(msgspec.Struct):
    """The confirm body. Unknown keys are accepted on purpose (no forbid_unknown_fields): the client
    also sends direct_tables, data_packages and memory_domains, and later releases may add more."""

    errors: Count = 0
    duration_ms: Count = 0


def _whole(value: int | float, field: str) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise AppError(400, f"Invalid request body: Expected an integer, got {value!r} - at `$.{field}`",
                           "invalid_body")
        return min(int(value), INT64)  # 9223372036854775807.0 is 2**63 as a float
    return value


async def pull_confirm(request: web.Request) -> web.Response:
    """POST /api/sync/pull-confirm: keep how the caller's last pull ended (bearer calls only, as for the
    manifest's Last sync stamp: a browser's cookie does not pull)."""
    body = await decode_json_body(request, PullConfirm)
    errors, duration_ms = _whole(body.errors, "errors"), _whole(body.duration_ms, "duration_ms")
    recorded = request[keys.IDENTITY].method == "bearer"
    if recorded:
        await store.record_pull(request.app[keys.DB], request[keys.USER].id, request.app[keys.CLOCK](),
                                errors, duration_ms)
        if errors:
            logger.info("pull finished with %d error(s) in %d ms", errors, duration_ms)
    return json({"status": "ok", "recorded": recorded})


