"""The application factory: ``create_app(settings)`` is the only way to build the app."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import AsyncIterator

import aiohttp_jinja2
import jinja2
from aiohttp import web

from . import keys
from .config import ConfigError, Settings
from .cost import load_price_table
from .db import open_database
from .ingest.worker import IngestWorker
from .migrations import migrate_database
from .timeutil import Clock
from .web.auth import load_secret, make_signer
from .web.clients import ClientTracker
from .web.fragments import FragmentCache
from .web.metrics import Metrics
from .web.middlewares import InFlight, auth_middleware, error_middleware, observe_prepared, request_id_middleware
from .web.routes import setup_routes
from .web.sync import load_memory
from .web.upload import remove_stale_uploads
from .web.filters import template_filters

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    db = open_database(settings)
    await db.open()
    app[keys.DB] = db
    yield
    await db.close()  # waits for background writes (last-pull and last-use stamps) first


async def migrations_ctx(app: web.Application) -> AsyncIterator[None]:
    applied = await migrate_database(app[keys.DB])
    if applied:
        logger.info("schema migrated to version %s", applied[-1])
    yield


async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
    await asyncio.to_thread(remove_stale_uploads, app[keys.SETTINGS].data_dir)
    metrics = app[keys.METRICS]
    worker = IngestWorker(app[keys.DB], app[keys.SETTINGS], app[keys.CLOCK], on_outcome=metrics.observe_outcome)
    metrics.bind_worker(worker)
    metrics.bind_database(app[keys.DB])
    app[keys.WORKER] = worker
    await worker.processor.start()
    worker.start()
    yield
    await worker.stop()


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        # Templates change with a deploy only; checking their mtimes cost three stat() calls a page.
        auto_reload=False,
        extensions=[FragmentCache],
    )
    app[aiohttp_jinja2.static_root_key] = "/static"
    # Versioned asset URLs (?v=<content hash>), so a deploy never leaves browsers on a stale script.
    # aiohttp hashes the file on every url_for call; assets only change with a deploy, so once is enough.
    env.globals["static"] = functools.cache(lambda path: str(app.router["static"].url_for(filename=path)))
    env.filters.update(template_filters())
    # URLs of named routes (web/routes.py): url("session", session_id=...) -> /activity/sessions/...
    env.globals["url"] = lambda name, **parts: str(app.router[name].url_for(**{k: str(v) for k, v in parts.items()}))


def create_app(settings: Settings, *, extra_ctx: tuple = ()) -> web.Application:
    """Build a fresh application; resources start in cleanup_ctx order: database, migrations, worker."""
    app = web.Application(middlewares=[request_id_middleware, error_middleware, auth_middleware])
    app[keys.SETTINGS] = settings
    app[keys.CLOCK] = Clock()
    secret = load_secret(settings)
    app[keys.SECRET] = secret
    app[keys.SIGNER] = make_signer(secret)
    try:
        app[keys.MEMORY] = load_memory(settings.memory_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"instance.memory_file ({settings.memory_file}): {exc}") from None
    try:
        app[keys.PRICES] = load_price_table(settings.prices_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"instance.prices_file ({settings.prices_file}): {exc}") from None
    app[keys.METRICS] = Metrics()
    app[keys.IN_FLIGHT] = InFlight()
    app[keys.CLIENTS] = ClientTracker()
    app.on_response_prepare.append(observe_prepared)
    setup_templates(app)
    setup_routes(app, STATIC_DIR)
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(migrations_ctx)
    app.cleanup_ctx.append(worker_ctx)
    for ctx in extra_ctx:
        app.cleanup_ctx.append(ctx)
    return app
