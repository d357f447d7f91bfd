"""Copy a SQLite database into an empty PostgreSQL one (``agnes-home copy-database``): every table,
rows as they are, then identity counters moved past the copied ids and row counts compared.

Contract: the target is migrated to the latest schema first and must then hold no rows at all (a
copy never merges into live data); the source is read in one read transaction, a consistent
snapshot even while another process writes it (stop the service anyway: what it writes after the
snapshot is not copied). Runs with blocking sqlite3 reads in a thread, asyncpg's binary COPY for
the writes, in one PostgreSQL transaction: a failed copy leaves the target empty.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable

import asyncpg

from ..migrations import migrate_postgres

CHUNK_ROWS = 10_000
# Kept by PostgreSQL's migration runner itself; SQLite keeps its version in PRAGMA user_version.
_NOT_COPIED = frozenset({"schema_version"})


class CopyError(Exception):
    """The copy cannot start or did not arrive whole; the message says why."""


@dataclass(frozen=True)
class TableCount:
    table: str
    source: int
    target: int


_PG_TABLES = """
SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
"""
_PG_COLUMNS = """
SELECT column_name, data_type, is_identity = 'YES' OR COALESCE(column_default, '') LIKE 'nextval(%' AS counter
FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position
"""
_PG_REFERENCES = """
SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint
WHERE contype = 'f' AND connamespace = 'public'::regnamespace
"""


def _ordered(tables: list[str], references: list[tuple[str, str]]) -> list[str]:
    """Tables with every table a foreign key points to before the table holding the key."""
    needs = {t: {parent for child, parent in references if child == t and parent != t} for t in tables}
    done: list[str] = []
    while len(done) < len(tables):
        ready = sorted(t for t in tables if t not in done and needs[t] <= set(done))
        if not ready:
            raise CopyError(f"foreign keys form a cycle among {sorted(set(tables) - set(done))}")
        done.extend(ready)
    return done


def _converter(data_type: str) -> Callable[[Any], Any]:
    """SQLite's loosely typed value as the PostgreSQL column's type wants it for a binary COPY."""
    if data_type == "boolean":
        return lambda v: None if v is None else bool(v)
    if data_type in ("bigint", "integer", "smallint"):
        return lambda v: None if v is None else int(v)
    if data_type in ("double precision", "real", "numeric"):
        return lambda v: None if v is None else float(v)
    if data_type == "bytea":
        return lambda v: None if v is None else (v if isinstance(v, bytes) else str(v).encode())
    return lambda v: v if v is None or isinstance(v, str) else (
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))


async def copy_database(sqlite_path: str, url: str, *, progress: Callable[[str, int], None] | None = None
                        ) -> list[TableCount]:
    """Copy every table of the (migrated) SQLite database at sqlite_path into the empty PostgreSQL
    database at url; returns each table's row counts on both sides (equal, or CopyError)."""
    source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True, check_same_thread=False)
    conn = await asyncpg.connect(url)
    try:
        await migrate_postgres(conn)
        tables = sorted(r[0] for r in await conn.fetch(_PG_TABLES) if r[0] not in _NOT_COPIED)
        for table in tables:
            if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}")'):
                raise CopyError(f"the target database is not empty (table {table} has rows): "
                                "copy-database fills an empty database only")
        source.execute("BEGIN")  # one snapshot for every table
        in_source = {r[0] for r in source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        missing = sorted(t for t in in_source - set(tables)
                         if source.execute(f'SELECT EXISTS (SELECT 1 FROM "{t}")').fetchone()[0])
        if missing:
            raise CopyError(f"tables with rows that PostgreSQL's schema lacks: {', '.join(missing)}")
        order = _ordered([t for t in tables if t in in_source], [tuple(r) for r in await conn.fetch(_PG_REFERENCES)])
        counts = []
        async with conn.transaction():
            for table in order:
                columns = await conn.fetch(_PG_COLUMNS, table)
                names = [c["column_name"] for c in columns]
                convert = [_converter(c["data_type"]) for c in columns]
                quoted = ", ".join(f'"{n}"' for n in names)
                cursor = source.execute(f'SELECT {quoted} FROM "{table}"')  # names from the catalogue, not input
                copied = 0
                while rows := await asyncio.to_thread(cursor.fetchmany, CHUNK_ROWS):
                    records = [tuple(f(v) for f, v in zip(convert, row)) for row in rows]
                    await conn.copy_records_to_table(table, records=records, columns=names)
                    copied += len(records)
                    if progress is not None:
                        progress(table, copied)
                for column in (c["column_name"] for c in columns if c["counter"]):
                    # Identity counters continue after the copied ids (the next user is not id 1).
                    await conn.execute(
                        f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'), "
                        f'COALESCE((SELECT MAX("{column}") FROM "{table}"), 0) + 1, false)')
                target = await conn.fetchval(f'SELECT COUNT(*) FROM "{table}"')
                expected = source.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
                counts.append(TableCount(table, expected, target))
            wrong = [c for c in counts if c.source != c.target]
            if wrong:  # raising inside the transaction rolls the whole copy back
                raise CopyError("row counts differ after the copy: " + ", ".join(
                    f"{c.table} {c.source} in SQLite, {c.target} in PostgreSQL" for c in wrong))
        return counts
    finally:
        source.close()
        await conn.close()
