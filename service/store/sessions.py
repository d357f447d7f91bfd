"""Browser sign-ins kept on the server: a row per sign-in, named by a random id in the cookie."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import msgspec

from ..db import BaseDatabase
from ..timeutil import to_store, utcnow


class BrowserSession(msgspec.Struct, frozen=True):
    id: int
    user_id: int
    email: str
    created_at: str
    expires_at: str
    ended_at: str | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


async def start(db: BaseDatabase, user_id: int, token_id: int | None, max_age: int) -> str:
    """Record a sign-in; returns the random id the cookie carries (only its hash is stored)."""
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    await db.execute_write(
        "INSERT INTO browser_sessions (user_id, token_id, secret_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (user_id, token_id, _hash(secret), to_store(now), to_store(now + timedelta(seconds=max_age))))
    return secret


async def active(db: BaseDatabase, user_id: int, secret: str) -> bool:
    """Whether the sign-in named by ``secret`` belongs to the user and is neither ended nor expired,
    nor made with a token since revoked. Cached while the database is unchanged (a sign-out is a commit)."""
    digest = _hash(secret)

    async def read() -> tuple[int | None, str, bool]:
        found = await db.fetchone(
            "SELECT s.user_id, s.expires_at, s.ended_at IS NULL AND (t.id IS NULL OR t.revoked_at IS NULL) AS live "
            "FROM browser_sessions s LEFT JOIN api_tokens t ON t.id = s.token_id WHERE s.secret_hash = ?", (digest,))
        return (found["user_id"], found["expires_at"], bool(found["live"])) if found else (None, "", False)

    owner, expires_at, live = await db.cached_read(("browser_session", digest), read)
    return live and owner == user_id and to_store(utcnow()) < expires_at


async def end(db: BaseDatabase, secret: str) -> int:
    """Sign-out: end the sign-in the cookie names; returns how many rows ended (0 or 1)."""
    return await db.execute_write("UPDATE browser_sessions SET ended_at = ? WHERE secret_hash = ? AND ended_at IS NULL",
                                  (to_store(utcnow()), _hash(secret)))


async def end_for_user(db: BaseDatabase, user_id: int) -> int:
    """End every sign-in of a user (`agnes-home sessions revoke`); returns how many."""
    now = to_store(utcnow())
    async with db.transaction() as conn:
        cur = await conn.execute(
            "UPDATE browser_sessions SET ended_at = ? WHERE user_id = ? AND ended_at IS NULL", (now, user_id))
        count = cur.rowcount
        await conn.execute(
            "INSERT INTO audit_log (user_id, action, source, detail, created_at) "
            "VALUES (?, 'sessions_revoked', 'cli', ?, ?)", (user_id, f"count={count}", now))
    return count


async def list_sessions(db: BaseDatabase, user_id: int | None = None) -> list[BrowserSession]:
    """Sign-ins not ended and not expired, newest first."""
    sql = ("SELECT s.id, s.user_id, u.email, s.created_at, s.expires_at, s.ended_at FROM browser_sessions s "
           "JOIN users u ON u.id = s.user_id WHERE s.ended_at IS NULL AND s.expires_at > ?")
    params: tuple = (to_store(utcnow()),)
    if user_id is not None:
        sql += " AND s.user_id = ?"
        params += (user_id,)
    return [BrowserSession(*tuple(r)) for r in await db.fetchall(sql + " ORDER BY s.id DESC", params)]


async def prune(db: BaseDatabase, now: datetime) -> int:
    """Delete sign-ins that expired, or ended more than a day ago (the audit log keeps revocations);
    returns how many. The worker runs it with the hourly retention pass."""
    return await db.execute_write(
        "DELETE FROM browser_sessions WHERE expires_at < ? OR ended_at < ?",
        (to_store(now), to_store(now - timedelta(days=1))))
