"""JSON API handlers. Bodies decode into msgspec Structs; responses encode with msgspec."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from . import keys
from .store import stats
from .store.users import User
from .timeutil import to_api

_encoder = msgspec.json.Encoder()


def json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json",
                        headers=headers)


class Profile(msgspec.Struct):
    id: int
    email: str
    name: str
    onboarded: bool
    last_pull_at: str | None


def profile_of(user: User) -> Profile:
    return Profile(user.id, user.email, user.name, user.onboarded, to_api(user.last_pull_at))


async def me(request: web.Request) -> web.Response:
    """The caller's profile (GET /api/me and GET /api/me/profile)."""
    return json(profile_of(request[keys.USER]))


async def home_stats(request: web.Request) -> web.Response:
    """The status frame numbers for ?window=24h|7d (anything else: 24h)."""
    app = request.app
    result = await stats.home_stats(app[keys.DB], request[keys.USER].id, request.query.get("window"),
                                    app[keys.CLOCK]())
    return json(result)
