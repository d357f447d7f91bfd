"""What the `agnes` client reports: each analyst's last client version and OS, and their last pull's outcome."""

from __future__ import annotations

import asyncio

import msgspec

from ..db import BaseDatabase
from ..timeutil import from_store, to_api, to_store


class ClientSeen(msgspec.Struct):
    version: str
    os: str
    seen_at: str | None


class LastPull(msgspec.Struct):
    finished_at: str | None
    errors: int
    duration_ms: int


def note_client_later(db: BaseDatabase, user_id: int, version: str, os_name: str, when) -> asyncio.Task:
    """Keep the client version and OS last seen for the user, without holding the request up."""
    return db.write_later(
        "INSERT INTO client_seen (user_id, version, os, seen_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, os = excluded.os, "
        "seen_at = excluded.seen_at", (user_id, version, os_name, to_store(when)), what="note the client version")


async def record_pull(db: BaseDatabase, user_id: int, when, errors: int, duration_ms: int) -> None:
    """Keep how the user's last pull ended (POST /api/sync/pull-confirm); one row per user, replaced."""
    await db.execute_write(
        "INSERT INTO pull_outcomes (user_id, finished_at, errors, duration_ms) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET finished_at = excluded.finished_at, errors = excluded.errors, "
        "duration_ms = excluded.duration_ms", (user_id, to_store(when), errors, duration_ms))


async def client_state(db: BaseDatabase, user_id: int) -> tuple[ClientSeen | None, LastPull | None]:
    """The user's last client and last pull outcome (None for what was never reported), in one read."""
    row = await db.fetchone(
        "SELECT c.version, c.os, c.seen_at, p.finished_at, p.errors, p.duration_ms FROM users u "
        "LEFT JOIN client_seen c ON c.user_id = u.id LEFT JOIN pull_outcomes p ON p.user_id = u.id "
        "WHERE u.id = ?", (user_id,))
    if row is None:
        return None, None
    client = ClientSeen(row["version"], row["os"], to_api(row["seen_at"])) if row["version"] is not None else None
    pull = LastPull(to_api(row["finished_at"]), row["errors"], row["duration_ms"]) \
        if row["finished_at"] is not None else None
    return client, pull


async def last_pull(db: BaseDatabase, user_id: int) -> LastPull | None:
    """The user's last reported pull outcome, or None (one primary-key read: /home asks it)."""
    row = await db.fetchone("SELECT finished_at, errors, duration_ms FROM pull_outcomes WHERE user_id = ?",
                            (user_id,))
    return LastPull(to_api(row["finished_at"]), row["errors"], row["duration_ms"]) if row is not None else None


def pull_errors(last_pull: LastPull | None, last_pull_at: str | None) -> int:
    """Errors of the last pull when its confirm belongs to the Last sync shown (it came at or after the
    manifest stamp; a later pull by a client that sends no confirm makes it stale), else 0."""
    if last_pull is None or not last_pull.errors or last_pull_at is None:
        return 0
    finished, stamped = from_store(last_pull.finished_at), from_store(last_pull_at)
    return last_pull.errors if finished is not None and stamped is not None and finished >= stamped else 0
