"""Schema migrations: numbered plain SQL scripts in ``schema/``, applied in order.

The version reached is recorded in ``PRAGMA user_version``. Each pending script
runs in one transaction together with the version bump, so a failing script
leaves the database exactly at the version before it. Running again is a no-op.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

logger = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema" / "sqlite"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    """A script failed or did not move the version; the database is at the version before it."""


@dataclass(frozen=True)
class Script:
    version: int
    path: Path


def scripts(schema_dir: Path = SCHEMA_DIR) -> list[Script]:
    """The numbered scripts, in order; numbering must be 1..N without gaps."""
    found = []
    for path in sorted(schema_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: schema scripts are named NNNN_what_it_does.sql")
        found.append(Script(int(match.group(1)), path))
    for expected, script in enumerate(found, start=1):
        if script.version != expected:
            raise MigrationError(f"{script.path.name}: expected version {expected:04d}")
    return found


def latest_version(schema_dir: Path = SCHEMA_DIR) -> int:
    found = scripts(schema_dir)
    return found[-1].version if found else 0


async def current_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0])


async def migrate(conn: aiosqlite.Connection, schema_dir: Path = SCHEMA_DIR,
                  target: int | None = None) -> list[int]:
    """Apply every pending script (up to ``target``); returns the versions applied.

    Scripts run with temporary storage on disk: a backfill may sort a whole table, which must not
    have to fit in memory (connections otherwise keep temporary data in memory, see db.prepare).
    """
    async with conn.execute("PRAGMA temp_store") as cur:
        temp_store = (await cur.fetchone())[0]
    await conn.execute("PRAGMA temp_store = FILE")
    try:
        return await _apply(conn, schema_dir, target)
    finally:
        await conn.execute(f"PRAGMA temp_store = {int(temp_store)}")


async def _apply(conn: aiosqlite.Connection, schema_dir: Path, target: int | None) -> list[int]:
    applied = []
    known = scripts(schema_dir)
    newest = known[-1].version if known else 0
    if (found := await current_version(conn)) > newest:
        # An older build (a rolled-back image) must not write into a schema it does not know.
        raise MigrationError(f"the database schema is at version {found}, newer than this agnes-home knows "
                             f"({newest}): run a newer agnes-home, or restore a backup")
    for script in known:
        if target is not None and script.version > target:
            break
        version = await current_version(conn)
        if script.version <= version:
            continue
        sql = script.path.read_text(encoding="utf-8")
        try:
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\n;PRAGMA user_version = {script.version};\nCOMMIT;")
        except Exception as exc:
            if conn.in_transaction:
                await conn.rollback()
            raise MigrationError(f"{script.path.name} failed: {exc}") from exc
        reached = await current_version(conn)
        if reached != script.version:
            raise MigrationError(f"{script.path.name}: version is {reached}, expected {script.version}")
        logger.info("applied migration %s", script.path.name)
        applied.append(script.version)
    return applied
