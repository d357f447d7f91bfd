"""Container health checks: liveness without database work, readiness with it."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .. import keys
from .auth import public
from ..migrations import latest_version

READY_TIMEOUT = 2.0
# What `agnes push` (0.84.8 and later) looks for before it gzips transcripts; an old server without
# it must never get .gz (it would store the compressed bytes), so the client asks each push run.
ACCEPTS = {"X-Agnes-Accepts": "session-gzip"}


@public
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. No database work."""
    return web.json_response({"status": "ok"})


@public
async def api_health(request: web.Request) -> web.Response:
    """GET /api/health: the client's capability probe. No credential and no database work, like /healthz."""
    return web.json_response({"status": "ok"}, headers=ACCEPTS)


@public
async def readyz(request: web.Request) -> web.Response:
    """Readiness: database reachable, schema at the latest version, ingest worker alive."""
    checks: dict[str, str] = {}
    db = request.app[keys.DB]
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            version = await db.schema_version()  # a round trip to the database, on either backend
        checks["database"] = "ok"
        latest = latest_version(db.dialect)
        checks["schema"] = "ok" if version == latest else f"at version {version}, expected {latest}"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["schema"] = "unknown"
    worker = request.app.get(keys.WORKER)
    if worker is not None:
        checks["worker"] = worker.health()
    failed = [name for name, value in checks.items() if value != "ok"]
    if failed:
        detail = "; ".join(f"{name}: {checks[name]}" for name in failed)
        return web.json_response({"status": "unavailable", "detail": f"not ready: {detail}",
                                  "code": "not_ready", "failed": failed, "checks": checks}, status=503)
    return web.json_response({"status": "ok", "checks": checks})
