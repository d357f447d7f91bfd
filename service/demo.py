"""Demo data for `make run`: analysts, and a fresh token for the main one."""

from __future__ import annotations

from .config import Settings
from .db import Database
from .store import users

DEMO_USERS = (
    ("ana@example.com", "Ana Analyst", True),
    ("ben@example.com", "Ben Builder", True),
    ("cleo@example.com", "Cleo Newcomer", False),
)


async def load_demo(db: Database, settings: Settings) -> str:
    """Create the demo users (idempotent) and return a new token for the first one."""
    for email, name, onboarded in DEMO_USERS:
        if await users.get_user_by_email(db, email) is None:
            await users.add_user(db, email, name, onboarded)
    ana = await users.get_user_by_email(db, DEMO_USERS[0][0])
    assert ana is not None
    for token in await users.list_tokens(db, ana.id):
        if token.label == "demo" and token.revoked_at is None:
            await users.revoke_token(db, token_id=token.id)
    token, _ = await users.issue_token(db, ana.id, "demo")
    return token
