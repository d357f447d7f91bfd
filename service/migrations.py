"""Schema migrations: numbered plain SQL scripts per backend, ``schema/sqlite/`` and
``schema/postgresql/``, applied in order.

The version reached is recorded in ``PRAGMA user_version`` (SQLite) or the one-row table
``schema_version`` (PostgreSQL). Each pending script runs in one transaction together with the
version bump, so a failing script leaves the database exactly at the version before it. Running
again is a no-op. PostgreSQL's scripts start at a baseline (0014, today's schema: no PostgreSQL
database needs SQLite's backfills) and from there the numbers move together. On PostgreSQL the run
holds an advisory lock, so replicas starting at once never run a script twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite

if TYPE_CHECKING:
    import asyncpg

    from .db import BaseDatabase

logger = logging.getLogger(__name__)

SCHEMAS = Path(__file__).resolve().parent.parent / "schema"
SCHEMA_DIR = SCHEMAS / "sqlite"
PG_SCHEMA_DIR = SCHEMAS / "postgresql"
# pg_advisory_lock's key for schema changes (any fixed 64-bit number; "agnes" in ASCII).
MIGRATION_LOCK = 0x61676E6573
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    """A script failed or did not move the version; the database is at the version before it."""


@dataclass(frozen=True)
class Script:
    version: int
    path: Path


def schema_dir_for(dialect: str) -> Path:
    return PG_SCHEMA_DIR if dialect == "postgresql" else SCHEMA_DIR


def scripts(schema_dir: Path = SCHEMA_DIR, *, baseline: bool = False) -> list[Script]:
    """The numbered scripts, in order; numbering must have no gaps, from 1 (or from a baseline: the
    first script of a backend that started later, which builds the whole schema of that version)."""
    found = []
    for path in sorted(schema_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: schema scripts are named NNNN_what_it_does.sql")
        found.append(Script(int(match.group(1)), path))
    first = found[0].version if found and baseline else 1
    for expected, script in enumerate(found, start=first):
        if script.version != expected:
            raise MigrationError(f"{script.path.name}: expected version {expected:04d}")
    return found


def latest_version(schema_dir: Path | str = SCHEMA_DIR) -> int:
    """The newest script's version (of a directory, or of a dialect's)."""
    baseline = isinstance(schema_dir, str) and schema_dir == "postgresql"
    if isinstance(schema_dir, str):
        schema_dir = schema_dir_for(schema_dir)
    found = scripts(schema_dir, baseline=baseline)
    return found[-1].version if found else 0


def _applied(script: Script, reached: int, applied: list[int]) -> None:
    """After a script's transaction: the version it recorded must be its own."""
    if reached != script.version:
        raise MigrationError(f"{script.path.name}: version is {reached}, expected {script.version}")
    logger.info("applied migration %s", script.path.name)
    applied.append(script.version)


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


def _due(known: list, found: int, target: int | None) -> list:
    """The scripts up to ``target`` (all: None), in order; each is applied unless the database has it.

    An older build (a rolled-back image) must not write into a schema it does not know."""
    newest = known[-1].version if known else 0
    if found > newest:
        raise MigrationError(f"the database schema is at version {found}, newer than this agnes-home knows "
                             f"({newest}): run a newer agnes-home, or restore a backup")
    return [script for script in known if target is None or script.version <= target]


async def _apply(conn: aiosqlite.Connection, schema_dir: Path, target: int | None) -> list[int]:
    applied = []
    for script in _due(scripts(schema_dir), await current_version(conn), target):
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
        _applied(script, await current_version(conn), applied)
    return applied


async def migrate_database(db: BaseDatabase, target: int | None = None) -> list[int]:
    """Bring an open database of either backend up to date; returns the versions applied."""
    if db.dialect == "postgresql":
        async with db.connection() as conn:  # type: ignore[attr-defined]
            return await migrate_postgres(conn, target=target)
    return await migrate(db.writer, target=target)  # type: ignore[attr-defined]


_PG_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version);
"""


async def pg_current_version(conn: asyncpg.Connection) -> int:
    """0 for a database no script ran on yet."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return int(await conn.fetchval("SELECT version FROM schema_version"))


async def migrate_postgres(conn: asyncpg.Connection, schema_dir: Path = PG_SCHEMA_DIR,
                           target: int | None = None) -> list[int]:
    """migrate() for PostgreSQL, on one connection, under a session advisory lock: a replica that
    starts while another migrates waits for it, then finds nothing left to do."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(_PG_VERSION_TABLE)
        return await _apply_pg(conn, schema_dir, target)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def _apply_pg(conn: asyncpg.Connection, schema_dir: Path, target: int | None) -> list[int]:
    applied = []
    for script in _due(scripts(schema_dir, baseline=True), await pg_current_version(conn), target):
        version = await pg_current_version(conn)
        if script.version <= version:
            continue
        if version and version != script.version - 1:
            raise MigrationError(f"{script.path.name}: the database is at version {version}")
        sql = script.path.read_text(encoding="utf-8")
        try:
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("UPDATE schema_version SET version = $1", script.version)
        except Exception as exc:
            raise MigrationError(f"{script.path.name} failed: {exc}") from exc
        _applied(script, await pg_current_version(conn), applied)
    return applied
