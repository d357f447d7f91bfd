"""The registry of data tables the sync manifest distributes, and who may read them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ..db import BaseDatabase
from ..timeutil import to_store, utcnow

TABLE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def valid_table_id(value: str) -> bool:
    """^[A-Za-z0-9_.-]{1,128}$ with no leading dot (so no '.', '..' or hidden names)."""
    return TABLE_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class Table:
    id: str
    path: str          # relative to data_dir
    rows: int | None
    query_mode: str
    source_type: str
    public: bool
    md5: str | None
    hash_size: int | None
    hash_mtime_ns: int | None


_COLS = "id, path, rows, query_mode, source_type, public, md5, hash_size, hash_mtime_ns"


def _table(row) -> Table:
    return Table(row["id"], row["path"], row["rows"], row["query_mode"], row["source_type"], bool(row["public"]),
                 row["md5"], row["hash_size"], row["hash_mtime_ns"])


async def register(db: BaseDatabase, table_id: str, path: str, *, rows: int | None, query_mode: str = "local",
                   source_type: str = "", public: bool = False) -> Table:
    """Add or update a table; changing its file drops the cached hash."""
    await db.execute_write(
        "INSERT INTO data_tables (id, path, rows, query_mode, source_type, public, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET path = excluded.path, rows = excluded.rows, "
        "query_mode = excluded.query_mode, source_type = excluded.source_type, public = excluded.public, "
        "md5 = NULL, hash_size = NULL, hash_mtime_ns = NULL",
        (table_id, path, rows, query_mode, source_type, int(public), to_store(utcnow())))
    found = await get(db, table_id)
    assert found is not None
    return found


async def grant(db: BaseDatabase, table_id: str, user_id: int) -> None:
    await db.execute_write("INSERT INTO data_table_grants (table_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                           (table_id, user_id))


async def get(db: BaseDatabase, table_id: str) -> Table | None:
    row = await db.fetchone(f"SELECT {_COLS} FROM data_tables WHERE id = ?", (table_id,))
    return None if row is None else _table(row)


async def list_all(db: BaseDatabase) -> list[tuple[Table, list[str]]]:
    """Every table with the emails it is granted to (operator listing)."""
    tables = [_table(r) for r in await db.fetchall(f"SELECT {_COLS} FROM data_tables ORDER BY id")]
    grants = await db.fetchall("SELECT g.table_id, u.email FROM data_table_grants g JOIN users u ON u.id = g.user_id "
                               "ORDER BY u.email")
    by_table: dict[str, list[str]] = {}
    for g in grants:
        by_table.setdefault(g["table_id"], []).append(g["email"])
    return [(t, by_table.get(t.id, [])) for t in tables]


async def readable(db: BaseDatabase, user_id: int) -> list[Table]:
    """The tables one user may read: public ones and those granted to them."""
    rows = await db.fetchall(
        f"SELECT {_COLS} FROM data_tables t WHERE t.public = 1 OR EXISTS "
        "(SELECT 1 FROM data_table_grants g WHERE g.table_id = t.id AND g.user_id = ?) ORDER BY t.id", (user_id,))
    return [_table(r) for r in rows]


async def readable_one(db: BaseDatabase, table_id: str, user_id: int) -> Table | None:
    """One table if the user may read it; None both when it is missing and when it is not theirs."""
    row = await db.fetchone(
        f"SELECT {_COLS} FROM data_tables t WHERE t.id = ? AND (t.public = 1 OR EXISTS "
        "(SELECT 1 FROM data_table_grants g WHERE g.table_id = t.id AND g.user_id = ?))", (table_id, user_id))
    return None if row is None else _table(row)


def cache_hash(db: BaseDatabase, table_id: str, md5: str, size: int, mtime_ns: int) -> None:
    """Remember a file's md5 for its (size, mtime); best effort, never waited for by a request."""
    db.write_later("UPDATE data_tables SET md5 = ?, hash_size = ?, hash_mtime_ns = ? WHERE id = ?",
                   (md5, size, mtime_ns, table_id), what="cache a table's hash")


async def save_local_md(db: BaseDatabase, user_id: int, content: str) -> None:
    await db.execute_write(
        "INSERT INTO user_local_md (user_id, content, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET content = excluded.content, updated_at = excluded.updated_at",
        (user_id, content, to_store(utcnow())))


async def redact_local_md(db: BaseDatabase, redact: Callable[[str], tuple[str, int]]) -> int:
    """Rewrite the stored local CLAUDE.md files that hold a token through ``redact`` (text -> (text,
    count)) in one transaction; returns the tokens replaced."""
    total = 0
    async with db.transaction() as conn:
        async with conn.execute("SELECT user_id, content FROM user_local_md WHERE content LIKE ? ESCAPE '\\'",
                                ("%agnes\\_pat\\_%",)) as cur:
            rows = await cur.fetchall()
        for row in rows:
            content, count = redact(row["content"])
            if count:
                await conn.execute("UPDATE user_local_md SET content = ? WHERE user_id = ?", (content, row["user_id"]))
                total += count
    return total


async def local_md(db: BaseDatabase, user_id: int) -> str | None:
    return await db.fetchval("SELECT content FROM user_local_md WHERE user_id = ?", (user_id,))
