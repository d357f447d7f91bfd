"""The caller's profile and status-frame numbers as JSON."""

from __future__ import annotations

import msgspec
from aiohttp import web

from .. import keys
from ..store import clients, stats
from ..store.users import User
from ..timeutil import to_api
from .base import json


class Profile(msgspec.Struct):
    id: int
    email: str
    name: str
    onboarded: bool
    last_pull_at: str | None
    # The `agnes` client last seen (User-Agent) and how the last pull ended (pull-confirm); null before any.
    client: clients.ClientSeen | None = None
    last_pull: clients.LastPull | None = None


def profile_of(user: User) -> Profile:
    return Profile(user.id, user.email, user.name, user.onboarded, to_api(user.last_pull_at))


async def me(request: web.Request) -> web.Response:
    """The caller's profile (GET /api/me and GET /api/me/profile)."""
    user = request[keys.USER]
    profile = profile_of(user)
    client, last_pull = await clients.client_state(request.app[keys.DB], user.id)
    return json(msgspec.structs.replace(profile, client=client, last_pull=last_pull))


async def home_stats(request: web.Request) -> web.Response:
    """The status frame numbers for ?window=24h|7d (anything else: 24h)."""
    app = request.app
    result = await stats.home_stats(app[keys.DB], request[keys.USER].id, request.query.get("window"),
                                    app[keys.CLOCK]())
    return json(result)
