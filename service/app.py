"""The application factory: ``create_app(settings)`` is the only way to build the app."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import AsyncIterator

import aiohttp_jinja2
import jinja2
from aiohttp import web

from . import keys
from .auth import load_secret, make_signer
from .config import Settings
from .db import Database
from .middlewares import auth_middleware, error_middleware, request_id_middleware
from .migrations import migrate
from .routes import setup_routes
from .timeutil import utcnow

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    db = Database(app[keys.SETTINGS].db_path)
    await db.open()
    app[keys.DB] = db
    yield
    await db.close()


async def migrations_ctx(app: web.Application) -> AsyncIterator[None]:
    applied = await migrate(app[keys.DB].writer)
    if applied:
        logger.info("schema migrated to version %s", applied[-1])
    yield


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    app[aiohttp_jinja2.static_root_key] = "/static"
    from .views import template_filters  # noqa: PLC0415 (views imports app keys only)

    env.filters.update(template_filters())


def create_app(settings: Settings, *, extra_ctx: tuple = ()) -> web.Application:
    """Build a fresh application; resources start in cleanup_ctx order: database, migrations, worker."""
    app = web.Application(middlewares=[request_id_middleware, error_middleware, auth_middleware])
    app[keys.SETTINGS] = settings
    app[keys.CLOCK] = utcnow
    secret = load_secret(settings)
    app[keys.SECRET] = secret
    app[keys.SIGNER] = make_signer(secret)
    setup_templates(app)
    setup_routes(app, STATIC_DIR)
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(migrations_ctx)
    for ctx in extra_ctx:
        app.cleanup_ctx.append(ctx)
    return app
