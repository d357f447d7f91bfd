"""Every piece of application state, as typed AppKeys in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from itsdangerous import URLSafeTimedSerializer

    from .config import Settings
    from .db import Database
    from .ingest.worker import IngestWorker
    from .metrics import Metrics

SETTINGS = web.AppKey("settings", "Settings")
DB = web.AppKey("db", "Database")
SIGNER = web.AppKey("signer", "URLSafeTimedSerializer")
SECRET = web.AppKey("secret", bytes)
WORKER = web.AppKey("worker", "IngestWorker")
METRICS = web.AppKey("metrics", "Metrics")
# Fire-and-forget tasks (e.g. the last-pull stamp) kept referenced until done.
BACKGROUND = web.AppKey("background", set)
# Memory rules served to `agnes pull` (operator-configured, validated at start-up).
MEMORY = web.AppKey("memory", "MemoryBundle")
# Clock used for windows and stamps; tests replace it to pin "now".
CLOCK = web.AppKey("clock", "Clock")

# Per-request state set by the middlewares.
REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY = web.RequestKey("identity", "Identity")
USER = web.RequestKey("user", "User")
