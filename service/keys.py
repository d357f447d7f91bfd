"""Every piece of application state, as typed AppKeys in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:

    from .web.auth import Identity, SessionSigner
    from .web.clients import ClientTracker
    from .config import Settings
    from .cost import PriceTable
    from .db import BaseDatabase as Database
    from .ingest.worker import IngestWorker
    from .web.metrics import Metrics
    from .web.middlewares import InFlight
    from .store.users import User
    from .web.sync import MemoryBundle
    from .timeutil import Clock

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DB: web.AppKey[Database] = web.AppKey("db")
SIGNER: web.AppKey[SessionSigner] = web.AppKey("signer")
SECRET = web.AppKey("secret", bytes)
WORKER: web.AppKey[IngestWorker] = web.AppKey("worker")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
IN_FLIGHT: web.AppKey[InFlight] = web.AppKey("in_flight")
# Memory rules served to `agnes pull` (operator-configured, validated at start-up).
MEMORY: web.AppKey[MemoryBundle] = web.AppKey("memory")
# Model prices for estimated cost (genai-prices, with the operator's file on top).
PRICES: web.AppKey[PriceTable] = web.AppKey("prices")
# Each analyst's client version and OS, from the User-Agent of their API calls.
CLIENTS: web.AppKey[ClientTracker] = web.AppKey("clients")
# Clock used for windows and stamps; tests replace it to pin "now".
CLOCK: web.AppKey[Clock] = web.AppKey("clock")

# Per-request state set by the middlewares.
REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
USER: web.RequestKey[User] = web.RequestKey("user")
# When a file response's request started: it is counted and logged once sent (its status is final then).
OBSERVE_AT_PREPARE = web.RequestKey("observe_at_prepare", float)
