"""Processor state, session summaries, activity and usage events: the ingest side of the data layer."""

from __future__ import annotations

import sqlite3
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, NamedTuple

import msgspec

from ..cost import tier_sql
from ..db import BaseDatabase
from ..records import EventRow, ParseResult
from ..timeutil import to_store
from .dialect import by_dialect, postgresql
from .replicas import lock_all_users, lock_users


@dataclass(frozen=True)
class FileState:
    id: int
    user_id: int
    path: str
    origin: str
    size: int
    mtime_ns: int
    content_hash: str | None
    processor_version: int
    failure_count: int
    received_at: str
    quarantined_at: str | None
    last_error: str | None


_FILE_COLS = ("id, user_id, path, origin, size, mtime_ns, content_hash, processor_version, failure_count, "
              "received_at, quarantined_at, last_error")


# A file's failure state: the test for it, and the assignments that clear it (a new chance).
_FAILING = "(next_attempt_at IS NOT NULL OR quarantined_at IS NOT NULL)"
_NO_FAILURE = "failure_count = 0, quarantined_at = NULL, next_attempt_at = NULL, last_error = NULL"


def _state(row) -> FileState | None:
    return None if row is None else FileState(*tuple(row))


class FileOwnedElsewhere(Exception):
    """The path is already registered to another user; a file has one owner."""


async def register_file(db: BaseDatabase, user_id: int, path: str, origin: str, now: datetime) -> int:
    """Insert or refresh the processor-state row of a file; returns its id.

    A known file keeps its id (so its activity is replaced, not duplicated); a new
    upload of it clears quarantine and failures, since its content is new.
    """
    stamp = to_store(now)
    async with db.transaction() as conn:
        async with conn.execute(
                "INSERT INTO session_files (user_id, path, origin, received_at) VALUES (?, ?, ?, ?) "
                f"ON CONFLICT (path) DO UPDATE SET received_at = excluded.received_at, {_NO_FAILURE} "
                "WHERE session_files.user_id = excluded.user_id RETURNING id", (user_id, path, origin, stamp)) as cur:
            row = await cur.fetchone()
    if row is None:
        raise FileOwnedElsewhere(path)
    return row[0]


_PATHS_SQL = {
    "sqlite": "SELECT f.path, f.id, f.user_id FROM json_each(?) AS j JOIN session_files f ON f.path = j.value",
    "postgresql": "SELECT f.path, f.id, f.user_id FROM json_array_elements_text(CAST(? AS json)) AS j (value) "
                  "JOIN session_files f ON f.path = j.value",
}


async def register_files(db: BaseDatabase, user_id: int, paths: Iterable[str], origin: str,
                         now: datetime) -> list[int]:
    """register_file for many paths in one transaction (bulk ingest): ids in the order of paths."""
    stamp = to_store(now)
    paths = list(paths)
    async with db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO session_files (user_id, path, origin, received_at) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT (path) DO UPDATE SET {_NO_FAILURE} WHERE session_files.user_id = excluded.user_id",
            [(user_id, path, origin, stamp) for path in paths])
        # One read for all of them (the paths travel as one JSON array, whatever their number).
        rows = await conn.execute_fetchall(_PATHS_SQL[db.dialect], (msgspec.json.encode(paths).decode(),))
        found = {path: (file_id, owner) for path, file_id, owner in rows}
        for path in paths:
            if found[path][1] != user_id:  # rolls the whole registration back
                raise FileOwnedElsewhere(path)
    return [found[path][0] for path in paths]


async def get_file(db: BaseDatabase, file_id: int) -> FileState | None:
    return _state(await db.fetchone(f"SELECT {_FILE_COLS} FROM session_files WHERE id = ?", (file_id,)))


class KnownFile(NamedTuple):
    """What a scan needs of a registered file."""

    id: int
    size: int | None  # as last processed
    mtime_ns: int | None
    failing: bool  # waiting for a retry, or quarantined
    user_id: int
    failed_stat: tuple[int | None, int | None]  # (size, mtime_ns) when its last failure was recorded


async def files_under(db: BaseDatabase, root: str) -> dict[str, KnownFile]:
    """path -> KnownFile of every known file below a directory, whatever its origin.

    ``failing`` files wait for their retry (or an operator) instead of being re-queued by every
    scan, unless they changed since they failed.
    """
    prefix = root.rstrip("/") + "/"
    # A range on the unique path index: every path that starts with the prefix sorts in it.
    rows = await db.fetchall(
        f"SELECT path, id, size, mtime_ns, {_FAILING} AS failing, "
        "user_id, failed_size, failed_mtime_ns FROM session_files WHERE path >= ? AND path < ?",
        (prefix, prefix[:-1] + "0"))
    return {r["path"]: KnownFile(r["id"], r["size"], r["mtime_ns"], bool(r["failing"]), r["user_id"],
                                 (r["failed_size"], r["failed_mtime_ns"])) for r in rows}


async def release_changed(db: BaseDatabase, file_id: int) -> bool:
    """A failing file whose content changed since it failed goes back in line with a clean
    failure count, as a new upload of it would; False when it is no longer failing."""
    return await db.execute_write(
        f"UPDATE session_files SET {_NO_FAILURE}, failed_size = NULL, failed_mtime_ns = NULL "
        f"WHERE id = ? AND {_FAILING}", (file_id,)) == 1


async def mark_unchanged(db: BaseDatabase, file_id: int, size: int, mtime_ns: int, now: datetime) -> None:
    """Size or mtime moved but the content hash did not: remember the new stat, rewrite nothing."""
    await db.execute_write(
        "UPDATE session_files SET size = ?, mtime_ns = ?, processed_at = ?, failure_count = 0, "
        "last_error = NULL, next_attempt_at = NULL WHERE id = ?", (size, mtime_ns, to_store(now), file_id))


async def record_failure(db: BaseDatabase, file_id: int, error: str, now: datetime, *, max_failures: int,
                         backoff: timedelta, stat: tuple[int, int] | None = None) -> bool:
    """Count a failure; schedule a retry with backoff, or quarantine. Returns True when quarantined.

    ``stat``: the file's (size, mtime_ns) now, so a scan can tell when it changes (None: no stat)."""
    async with db.transaction() as conn:
        async with conn.execute("SELECT failure_count FROM session_files WHERE id = ?", (file_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return False
        failures = row[0] + 1
        quarantined = failures >= max_failures
        await conn.execute(
            "UPDATE session_files SET failure_count = ?, last_error = ?, next_attempt_at = ?, quarantined_at = ?, "
            "failed_size = ?, failed_mtime_ns = ? WHERE id = ?",
            (failures, error[:2000], None if quarantined else to_store(now + backoff * (2 ** (failures - 1))),
             to_store(now) if quarantined else None, *(stat or (None, None)), file_id))
    return quarantined


async def due_retries(db: BaseDatabase, now: datetime, limit: int) -> list[int]:
    rows = await db.fetchall(
        "SELECT id FROM session_files WHERE quarantined_at IS NULL AND next_attempt_at IS NOT NULL "
        "AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?", (to_store(now), limit))
    return [r[0] for r in rows]


async def stale_files(db: BaseDatabase, version: int, limit: int) -> list[int]:
    """Files processed by an older processor version, oldest first (the reprocess loop's batch)."""
    rows = await db.fetchall(
        "SELECT id FROM session_files WHERE processor_version < ? AND quarantined_at IS NULL "
        "AND next_attempt_at IS NULL ORDER BY processed_at IS NOT NULL, processed_at, id LIMIT ?",
        (version, limit))
    return [r[0] for r in rows]


async def reset_versions(db: BaseDatabase, user_id: int | None = None) -> int:
    """Force a full reprocess: every (or one user's) file goes back to version 0."""
    sql = "UPDATE session_files SET processor_version = 0, next_attempt_at = NULL"
    if user_id is None:
        return await db.execute_write(sql)
    return await db.execute_write(sql + " WHERE user_id = ?", (user_id,))


async def quarantined(db: BaseDatabase) -> list[dict]:
    rows = await db.fetchall(
        "SELECT f.id, u.email, f.path, f.failure_count, f.last_error, f.quarantined_at FROM session_files f "
        "JOIN users u ON u.id = f.user_id WHERE f.quarantined_at IS NOT NULL ORDER BY f.quarantined_at")
    return [dict(r) for r in rows]


async def quarantined_count(db: BaseDatabase) -> int:
    return await db.fetchval("SELECT COUNT(*) FROM session_files WHERE quarantined_at IS NOT NULL")


async def release_quarantine(db: BaseDatabase, file_id: int | None = None) -> list[int]:
    """Put quarantined files (one, or all) back in line with a clean failure count."""
    where, params = ("AND id = ?", (file_id,)) if file_id is not None else ("", ())
    async with db.transaction() as conn:
        async with conn.execute(
                f"UPDATE session_files SET quarantined_at = NULL, failure_count = 0, next_attempt_at = NULL, "
                f"processor_version = 0 WHERE quarantined_at IS NOT NULL {where} RETURNING id", params) as cur:
            return [r[0] for r in await cur.fetchall()]


ATTRIBUTION_TABLES = {"skill": "skill_attribution", "agent": "agent_attribution", "command": "command_attribution"}


async def set_attribution(db: BaseDatabase, kind: str, name: str, source: str, ref_id: str) -> None:
    """List a skill, subagent type or command under a plugin source ('curated' or 'flea').

    New events are attributed at once; already stored events keep theirs until their file is
    reprocessed (``agnes-home reprocess``).
    """
    table = ATTRIBUTION_TABLES[kind]  # a fixed table name chosen from the dict, never from input
    await db.execute_write(f"INSERT INTO {table} (name, source, ref_id) VALUES (?, ?, ?) "
                           "ON CONFLICT (name, source) DO UPDATE SET ref_id = excluded.ref_id", (name, source, ref_id))


async def remove_attribution(db: BaseDatabase, kind: str, name: str, source: str) -> int:
    table = ATTRIBUTION_TABLES[kind]
    return await db.execute_write(f"DELETE FROM {table} WHERE name = ? AND source = ?", (name, source))


async def list_attribution(db: BaseDatabase) -> list[dict]:
    rows = await db.fetchall("SELECT kind, name, source, ref_id FROM plugin_attribution ORDER BY kind, name, source")
    return [dict(r) for r in rows]


def _attribution_key(event: EventRow) -> tuple[str | None, str | None]:
    """Which attribution list names this event: skills by skill name, subagents by type, commands by name."""
    if event.skill_name:
        return "skill", event.skill_name
    if event.event_type == "subagent" and event.subagent_type:
        return "agent", event.subagent_type
    if event.event_type == "slash_command" and event.command_name:
        return "command", event.command_name
    return None, None


_SUMMARY_COLS = ("session_id", "started_at", "ended_at", "active_seconds", "wall_seconds", "user_messages",
                 "assistant_messages", "tool_calls", "tool_errors", "skill_invocations", "subagent_dispatches",
                 "mcp_calls", "slash_commands", "distinct_tools", "distinct_skills", "primary_model", "prompts",
                 "project", "skipped_lines", "input_tokens", "output_tokens", "cache_read_tokens",
                 "cache_creation_tokens")

def statements(script: str) -> tuple[str, ...]:
    """A script's statements one by one: executescript would first commit an open transaction."""
    found, start, end = [], 0, script.find(";")
    while end >= 0:
        if sqlite3.complete_statement(script[start:end + 1]):  # not a ';' inside a string or comment
            found.append(script[start:end + 1].strip())
            start = end + 1
        end = script.find(";", end + 1)
    if script[start:].strip():
        raise ValueError(f"incomplete statement at the end of a script: {script[start:].strip()[:80]!r}")
    return tuple(found)


# Files are written in two steps on the writer connection, inside one transaction: their
# rows go into TEMP staging tables (private to the connection, cleared first), then a fixed
# list of set-based statements applies everything. The transaction is all-or-nothing, and a
# bulk ingest shares one commit among many files (the commit is the largest cost per file).
# Staging must happen inside the transaction: outside one, every staged row was a transaction
# of its own, each taking the main database's read lock (16 us a row, half the write time).
# Hourly totals (schema 0007) are recomputed for the hours listed in temp.touched_hours: the
# hours of every per-user message and prompt row that is replaced, before and after.
_TEXT_SUMMARY_COLS = frozenset({"session_id", "started_at", "ended_at", "primary_model", "project"})
# The SQLite-only pieces of the ingest statements and their PostgreSQL twins (every timestamp is UTC ISO
# text; PostgreSQL's sessions run in UTC, see service/postgres.py). Purely syntactic differences
# (INSERT OR IGNORE, temp.) are rewritten by dialect.postgresql().
_FRAGMENTS = {
    "sqlite": {
        "epoch": "(julianday({}) - 2440587.5) * 86400",
        "day_from": "strftime('%Y-%m-%dT%H:%M:%f', d.day, '-600 seconds')",
        "day_until": "strftime('%Y-%m-%dT%H:%M:%f', d.day, '+1 day', '+600 seconds')",
        "day_before": "date(substr(hour, 1, 10), '-1 day')",
        "day_after": "date(substr(hour, 1, 10), '+1 day')",
        "min": "MIN", "max": "MAX",  # two arguments: SQLite's scalar min and max
        "serial": "INTEGER PRIMARY KEY",  # numbered on insert
        "active_spans": "rowid",  # how the active seconds pair each stamp with the one before it
        "any_fast": "MAX(a.speed = 'fast')",
        "real": "REAL", "without_rowid": " WITHOUT ROWID",
        "sum": "TOTAL",  # into an INTEGER column: SQLite keeps a sum past int64 as a REAL
        "prompt": "(m.input_tokens + m.cache_read_tokens + m.cache_creation_tokens)",  # past int64: a REAL
        "summary_cols": ", ".join(_SUMMARY_COLS),
        "insert_or_replace": "INSERT OR REPLACE", "summaries_conflict": "", "row_in": "",
        "rows_in_range": "CROSS JOIN {table} {alias} ON {where}",
        "lock_files": "",  # one writer, and the per-file rows keep their keys
    },
    "postgresql": {
        # SQLite's arithmetic to the bit: julianday() is whole milliseconds since the Julian epoch over
        # 86400000.0, so both backends round a session's seconds the same way (11.4999.. is 11 on both).
        "epoch": "((CAST(extract(epoch FROM date_trunc('milliseconds', CAST({} AS timestamptz))) * 1000 AS BIGINT) "
                 "+ 210866760000000) / CAST(86400000.0 AS DOUBLE PRECISION) - 2440587.5) * 86400",
        "day_from": "to_char(CAST(d.day AS timestamp) - interval '600 seconds', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS')",
        "day_until": "to_char(CAST(d.day AS timestamp) + interval '1 day 600 seconds', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS')",
        "day_before": "to_char(CAST(substr(hour, 1, 10) AS date) - 1, 'YYYY-MM-DD')",
        "day_after": "to_char(CAST(substr(hour, 1, 10) AS date) + 1, 'YYYY-MM-DD')",
        "min": "LEAST", "max": "GREATEST",
        "serial": "BIGSERIAL PRIMARY KEY",
        "active_spans": "window",
        "any_fast": "bool_or(a.speed = 'fast')",
        "real": "DOUBLE PRECISION", "without_rowid": "",
        "sum": "total_int64",  # a BIGINT column: a sum past int64 stops at its maximum (schema 0014)
        "prompt": "(CAST(m.input_tokens AS DOUBLE PRECISION) + m.cache_read_tokens + m.cache_creation_tokens)",
        "summary_cols": ", ".join(f"{c} {'TEXT' if c in _TEXT_SUMMARY_COLS else 'BIGINT'}" for c in _SUMMARY_COLS),
        "insert_or_replace": "INSERT", "row_in": "yes",
        # OFFSET 0 keeps the planner from flattening the subquery into a join it may hash (_RANGE_ROWS).
        "rows_in_range": "JOIN LATERAL (SELECT * FROM {table} {alias} WHERE {where} OFFSET 0) {alias} ON true",
        # The per-file rows have no key of their file (schema 0018): their files' rows are locked as the
        # keys' checks locked them, and none is written for a file deleted meanwhile (the batch then
        # fails on ingest_carry's key, as it failed on the per-file rows' keys before).
        "lock_files": """WITH held AS (SELECT id FROM session_files WHERE id IN (SELECT file_id FROM temp.stage_file)
                         FOR KEY SHARE)
                         DELETE FROM temp.stage_file WHERE file_id NOT IN (SELECT id FROM held);""",
        "summaries_conflict": " ON CONFLICT (file_id) DO UPDATE SET " + ", ".join(
            f"{c} = excluded.{c}" for c in ("user_id", *_SUMMARY_COLS, "processor_version", "extracted_at")),
    },
}


def _scripts(d: dict[str, str]) -> dict[str, Any]:
    """The ingest statements in one dialect, its SQLite-only fragments taken from ``d``.

    Built once per dialect at import (_SQL below): every name assigned here is returned, and
    write_results, prune and the tests look them up by name in ``_SQL[db.dialect]``.
    """
    # The rows of a touched (user, hour) or (user, day) in its time range, for the sums of the hours and
    # the operators' model days: a nested loop into the (user_id, ts) index, SQLite's only join. Left
    # to choose, PostgreSQL (a TEMP table it never analysed is ~1,200 rows to it; a freshly loaded table
    # has no statistics) hash-joined on user_id alone and filtered the ranges afterwards, reading the
    # analyst's whole history per batch (155,000 pairs for 1,157 rows): its twin is a LATERAL subquery.
    _RANGE_ROWS = d["rows_in_range"]
    _HOURS_TABLE = ("CREATE TEMP TABLE IF NOT EXISTS touched_hours "
                    "(user_id INTEGER NOT NULL, hour TEXT NOT NULL, PRIMARY KEY (user_id, hour))")
    # The hours of the touched keys' rows (run before they are replaced and after), and the sessions
    # of those rows per hour: the operators' per-session days are recomputed for these sessions only.
    _SESSION_HOURS_TABLE = ("CREATE TEMP TABLE IF NOT EXISTS touched_session_hours (user_id INTEGER NOT NULL, "
                            "hour TEXT NOT NULL, session_id TEXT NOT NULL, PRIMARY KEY (user_id, hour, session_id))"
                            f"{d['without_rowid']}")
    _TOUCH_HOURS = """
    INSERT OR IGNORE INTO temp.touched_session_hours (user_id, hour, session_id)
        SELECT DISTINCT m.user_id, substr(m.ts, 1, 13), m.session_id FROM temp.ingest_touched t
        CROSS JOIN user_messages m ON m.user_id = t.user_id AND m.message_key = t.key WHERE t.kind = 'm'
        UNION ALL SELECT DISTINCT p.user_id, substr(p.ts, 1, 13), p.session_id FROM temp.ingest_touched t
        CROSS JOIN user_prompts p ON p.user_id = t.user_id AND p.prompt_key = t.key WHERE t.kind = 'p';
    """
    _HOURS_OF_SESSIONS = ("INSERT OR IGNORE INTO temp.touched_hours (user_id, hour) "
                          "SELECT DISTINCT user_id, hour FROM temp.touched_session_hours")
    # The operators' aggregates per (user, UTC day) (schema 0014) are recomputed for the days of the
    # touched hours, and the day beside an hour that touches midnight (a session's active span may cross
    # it). Active seconds: consecutive stamps of a session at most 600 s apart, the span cut at midnight;
    # the stamps read are the day's and 600 s either side of it. Grouped and ordered by a session id
    # spelled `session_id || ''`: by the column itself, SQLite read the rows through the (user, session)
    # index, that is every row of the user's whole history for each day recomputed, rather than the
    # day's range of the (user, ts) index (issue 24: a pass must cost what is new, not the history).
    def _among(table: str, row: tuple[str, ...], lists: tuple[str, ...], source: tuple[str, ...] = ()) -> str:
        """Rows whose ``row`` columns are a row of a TEMP table (its columns ``source``, by default
        the same names), found by key.

        The row-value test alone, ``(user_id, key) IN (...)``, made SQLite search by user only and
        read every row of the user (their whole history, for each file ingested); a list of each
        column first (``lists``, in that order) lets it look each row up. PostgreSQL plans the
        row-value test alone as one semi-join on the key; the lists beside it made it walk
        ingest_touched's index for each row (210,621 heap fetches to find 478 prompts) and gave its
        planner join orders to weigh (the active seconds' UPDATE planned 4.3 ms for 1 ms of work).
        """
        of = dict(zip(row, source or row))
        found = f"({', '.join(row)}) IN (SELECT {', '.join(of[c] for c in row)} FROM {table})"
        if d["row_in"]:
            return found
        return " AND ".join([*(f"{c} IN (SELECT {of[c]} FROM {table})" for c in lists), found])

    _DAYS_TABLE = ("CREATE TEMP TABLE IF NOT EXISTS touched_days "
                   "(user_id INTEGER NOT NULL, day TEXT NOT NULL, PRIMARY KEY (user_id, day))")
    _EPOCH = d["epoch"]
    _TOUCHED_DAYS = _among("temp.touched_days", ("user_id", "day"), ("user_id", "day"))
    # (_RANGE_ROWS: read through the (user, ts) or (user, session, ts) index from the touched rows, on
    # PostgreSQL too: left to itself its planner sorted and merge-joined the analyst's whole table.)
    def _DAY_STAMPS(table: str) -> str:
        return _RANGE_ROWS.format(table=table, alias="m", where=(
            f"m.user_id = d.user_id AND m.ts >= {d['day_from']} AND m.ts < {d['day_until']}"))
    _RECOMPUTE_DAYS = (
        _DAYS_TABLE,
        f"""INSERT OR IGNORE INTO temp.touched_days (user_id, day)
        SELECT user_id, substr(hour, 1, 10) FROM temp.touched_hours
        UNION ALL SELECT user_id, {d['day_before']} FROM temp.touched_hours WHERE substr(hour, 12) = '00'
        UNION ALL SELECT user_id, {d['day_after']} FROM temp.touched_hours WHERE substr(hour, 12) = '23'""",
        f"DELETE FROM admin_session_days WHERE {_TOUCHED_DAYS}",
        f"""INSERT INTO admin_session_days (user_id, day, session_id, messages, input_tokens, output_tokens,
                                        cache_read_tokens, cache_creation_tokens)
        SELECT d.user_id, d.day, m.session_id || '', COUNT(*), {d['sum']}(m.input_tokens), {d['sum']}(m.output_tokens),
               {d['sum']}(m.cache_read_tokens), {d['sum']}(m.cache_creation_tokens)
        FROM temp.touched_days d
        CROSS JOIN user_messages m ON m.user_id = d.user_id AND m.ts >= d.day AND m.ts < d.day || 'U'
        GROUP BY d.user_id, d.day, m.session_id || ''""",
        """INSERT INTO admin_session_days (user_id, day, session_id, prompts)
        SELECT d.user_id, d.day, p.session_id || '', COUNT(*)
        FROM temp.touched_days d
        CROSS JOIN user_prompts p ON p.user_id = d.user_id AND p.ts >= d.day AND p.ts < d.day || 'U'
        WHERE true GROUP BY d.user_id, d.day, p.session_id || ''
        ON CONFLICT (user_id, day, session_id) DO UPDATE SET prompts = excluded.prompts""",
        # Into a keyed table first: an UPDATE ... FROM (subquery) compared every row with every row.
        "CREATE TEMP TABLE IF NOT EXISTS day_active (user_id INTEGER NOT NULL, day TEXT NOT NULL, "
        f"session_id TEXT NOT NULL, seconds {d['real']} NOT NULL, PRIMARY KEY (user_id, day, session_id)){d['without_rowid']}",
        f"""INSERT INTO temp.day_active (user_id, day, session_id, seconds)
            SELECT user_id, day, session_id,
                   TOTAL({d['max']}(0, {d['min']}(t, day_start + 86400) - {d['max']}(prev, day_start)))
            FROM (SELECT user_id, day, session_id, t, {_EPOCH.format("day")} AS day_start,
                         LAG(t) OVER (PARTITION BY user_id, day, session_id ORDER BY t) AS prev
                  FROM (SELECT d.user_id, d.day, m.session_id || '' AS session_id, {_EPOCH.format("m.ts")} AS t
                        FROM temp.touched_days d
                        {_DAY_STAMPS("user_messages")}
                        UNION ALL SELECT d.user_id, d.day, m.session_id || '', {_EPOCH.format("m.ts")}
                        FROM temp.touched_days d
                        {_DAY_STAMPS("user_prompts")}) AS stamps) AS spans
            WHERE t - prev <= 600 GROUP BY user_id, day, session_id""",
        f"""UPDATE admin_session_days SET active_seconds = (
            SELECT CAST(ROUND(a.seconds) AS BIGINT) FROM temp.day_active a WHERE a.user_id = admin_session_days.user_id
            AND a.day = admin_session_days.day AND a.session_id = admin_session_days.session_id)
        WHERE {_TOUCHED_DAYS} AND (user_id, day, session_id) IN (SELECT user_id, day, session_id FROM temp.day_active)""",
        "DELETE FROM temp.day_active",
        f"DELETE FROM admin_model_days WHERE {_TOUCHED_DAYS}",
        f"""INSERT INTO admin_model_days
        SELECT d.user_id, d.day, COALESCE(m.model, ''), COALESCE(m.speed, ''),
               {tier_sql(d['prompt'])}, COUNT(*),
               {d['sum']}(m.input_tokens), {d['sum']}(m.output_tokens), {d['sum']}(m.cache_read_tokens),
               {d['sum']}(m.cache_creation_tokens - {d['min']}(m.cache_1h_tokens, m.cache_creation_tokens)),
               {d['sum']}({d['min']}(m.cache_1h_tokens, m.cache_creation_tokens))
        FROM temp.touched_days d
        {_RANGE_ROWS.format(table="user_messages", alias="m", where="m.user_id = d.user_id AND m.ts >= d.day AND m.ts < d.day || 'U'")}
        GROUP BY 1, 2, 3, 4, 5""",
        "DELETE FROM temp.touched_days",
    )
    # Ingest knows the sessions whose rows changed (those of the touched keys' rows, before and after:
    # touched_session_hours): a session's day depends on its own rows only, so only those sessions'
    # rows of admin_session_days are recomputed, each read from the (user, session, ts) index, which
    # holds every column the active seconds need (issue 24: most of an incremental pass's day work).
    # admin_model_days has no session: it is recomputed per touched (user, day) as above.
    _TOUCHED_SESSION_DAYS = _among("temp.touched_session_days", ("user_id", "day", "session_id"),
                                   ("day", "user_id", "session_id"))
    def _SESSION_STAMPS(table: str) -> str:
        return _RANGE_ROWS.format(table=table, alias="m", where=(
            "m.user_id = d.user_id AND m.session_id = d.session_id AND m.ts >= d.day_from AND m.ts < d.day_until"))
    # The stamps of the touched session days (the day and 600 s either side), with the day's start.
    _STAMPS = f"""SELECT d.id, d.day_start, {_EPOCH.format("m.ts")} AS t
                  FROM temp.touched_session_days d {_SESSION_STAMPS("user_messages")}
                  UNION ALL SELECT d.id, d.day_start, {_EPOCH.format("m.ts")}
                  FROM temp.touched_session_days d {_SESSION_STAMPS("user_prompts")}"""
    # Each stamp's gap to the one before it in its session day, when at most 600 s, cut at the day's bounds.
    _SPAN = f"TOTAL({d['max']}(0, {d['min']}(b.t, b.day_start + 86400) - {d['max']}({{prev}}, b.day_start)))"
    if d["active_spans"] == "rowid":
        # SQLite: the stamps sorted into a table numbered in that order, each joined to the one numbered
        # before it: half the CPU of the LAG() window over the same rows (SQLite 3.40's window
        # functions cost ~1 us a row), which was the largest statement of an incremental pass.
        _SESSION_ACTIVE = (
            "CREATE TEMP TABLE IF NOT EXISTS session_stamps (n INTEGER PRIMARY KEY, id INTEGER NOT NULL, "
            "day_start REAL NOT NULL, t REAL NOT NULL)",
            f"INSERT INTO temp.session_stamps (id, day_start, t) SELECT * FROM ({_STAMPS}) AS s ORDER BY id, t",
            f"""INSERT INTO temp.day_active (user_id, day, session_id, seconds)
            SELECT d.user_id, d.day, d.session_id, s.seconds FROM temp.touched_session_days d
            JOIN (SELECT b.id, {_SPAN.format(prev="a.t")} AS seconds FROM temp.session_stamps b
                  JOIN temp.session_stamps a ON a.n = b.n - 1 AND a.id = b.id
                  WHERE b.t - a.t <= 600 GROUP BY b.id) AS s ON s.id = d.id""",
            "DELETE FROM temp.session_stamps",
        )
    else:
        _SESSION_ACTIVE = (
            f"""INSERT INTO temp.day_active (user_id, day, session_id, seconds)
            SELECT d.user_id, d.day, d.session_id, s.seconds FROM temp.touched_session_days d
            JOIN (SELECT b.id, {_SPAN.format(prev="b.prev")} AS seconds
                  FROM (SELECT id, day_start, t, LAG(t) OVER (PARTITION BY id ORDER BY t) AS prev
                        FROM ({_STAMPS}) AS stamps) AS b
                  WHERE b.t - b.prev <= 600 GROUP BY b.id) AS s ON s.id = d.id""",
        )
    # Each session day gets a small integer (the window below partitions by it rather than by three
    # text columns) and its bounds computed once, not once per stamp: ~40% of the active seconds' cost.
    _RECOMPUTE_SESSION_DAYS = (
        f"CREATE TEMP TABLE IF NOT EXISTS touched_session_days (id {d['serial']}, user_id INTEGER NOT NULL, "
        f"day TEXT NOT NULL, session_id TEXT NOT NULL, day_start {d['real']}, day_from TEXT, day_until TEXT, "
        "UNIQUE (user_id, day, session_id))",
        f"""INSERT OR IGNORE INTO temp.touched_session_days (user_id, day, session_id, day_start, day_from, day_until)
        SELECT d.user_id, d.day, d.session_id, {_EPOCH.format("d.day")}, {d['day_from']}, {d['day_until']}
        FROM (SELECT user_id, substr(hour, 1, 10) AS day, session_id FROM temp.touched_session_hours
              UNION SELECT user_id, {d['day_before']}, session_id FROM temp.touched_session_hours
              WHERE substr(hour, 12) = '00'
              UNION SELECT user_id, {d['day_after']}, session_id FROM temp.touched_session_hours
              WHERE substr(hour, 12) = '23') AS d""",
        f"DELETE FROM admin_session_days WHERE {_TOUCHED_SESSION_DAYS}",
        f"""INSERT INTO admin_session_days (user_id, day, session_id, messages, input_tokens, output_tokens,
                                        cache_read_tokens, cache_creation_tokens)
        SELECT d.user_id, d.day, d.session_id, COUNT(*), {d['sum']}(m.input_tokens), {d['sum']}(m.output_tokens),
               {d['sum']}(m.cache_read_tokens), {d['sum']}(m.cache_creation_tokens)
        FROM temp.touched_session_days d
        {_RANGE_ROWS.format(table="user_messages", alias="m", where="m.user_id = d.user_id AND m.session_id = d.session_id AND m.ts >= d.day AND m.ts < d.day || 'U'")}
        GROUP BY d.user_id, d.day, d.session_id""",
        f"""INSERT INTO admin_session_days (user_id, day, session_id, prompts)
        SELECT d.user_id, d.day, d.session_id, COUNT(*)
        FROM temp.touched_session_days d
        {_RANGE_ROWS.format(table="user_prompts", alias="p", where="p.user_id = d.user_id AND p.session_id = d.session_id AND p.ts >= d.day AND p.ts < d.day || 'U'")}
        WHERE true GROUP BY d.user_id, d.day, d.session_id
        ON CONFLICT (user_id, day, session_id) DO UPDATE SET prompts = excluded.prompts""",
        "CREATE TEMP TABLE IF NOT EXISTS day_active (user_id INTEGER NOT NULL, day TEXT NOT NULL, "
        f"session_id TEXT NOT NULL, seconds {d['real']} NOT NULL, PRIMARY KEY (user_id, day, session_id)){d['without_rowid']}",
        *_SESSION_ACTIVE,
        f"""UPDATE admin_session_days SET active_seconds = (
            SELECT CAST(ROUND(a.seconds) AS BIGINT) FROM temp.day_active a WHERE a.user_id = admin_session_days.user_id
            AND a.day = admin_session_days.day AND a.session_id = admin_session_days.session_id)
        WHERE {_TOUCHED_SESSION_DAYS} AND (user_id, day, session_id) IN (SELECT user_id, day, session_id FROM temp.day_active)""",
        "DELETE FROM temp.day_active",
        "DELETE FROM temp.touched_session_days",
    )
    _RECOMPUTE_MODEL_DAYS = tuple(statement for statement in _RECOMPUTE_DAYS
                                  if "admin_session_days" not in statement and "day_active" not in statement)
    # Separate statements (not a script) so that retention can run them inside its transaction.
    # Every timestamp of hour 'YYYY-MM-DDTHH' sorts in [hour, hour || ';'): ':' follows the hour.
    _RECOMPUTE_HOURS = (
        # (users, then hours, then the pairs: see _touched)
        f"DELETE FROM user_hours WHERE {_among('temp.touched_hours', ('user_id', 'hour'), ('user_id', 'hour'))}",
        f"""INSERT INTO user_hours (user_id, hour, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens)
        SELECT h.user_id, h.hour, {d['sum']}(m.input_tokens), {d['sum']}(m.output_tokens), {d['sum']}(m.cache_read_tokens),
               {d['sum']}(m.cache_creation_tokens)
        FROM temp.touched_hours h
        {_RANGE_ROWS.format(table="user_messages", alias="m", where="m.user_id = h.user_id AND m.ts >= h.hour AND m.ts < h.hour || ';'")}
        GROUP BY h.user_id, h.hour""",
        f"""INSERT INTO user_hours (user_id, hour, prompts)
        SELECT h.user_id, h.hour, COUNT(*)
        FROM temp.touched_hours h
        {_RANGE_ROWS.format(table="user_prompts", alias="p", where="p.user_id = h.user_id AND p.ts >= h.hour AND p.ts < h.hour || ';'")}
        WHERE true GROUP BY h.user_id, h.hour
        ON CONFLICT (user_id, hour) DO UPDATE SET prompts = excluded.prompts""",
        *_RECOMPUTE_DAYS,
        "DELETE FROM temp.touched_hours",
    )
    # Ingest's: the touched keys' hours, and the per-session days of their sessions (see above); the
    # model days and the hours last, as they read and then clear temp.touched_hours.
    _RECOMPUTE_HOURS_SCRIPT = "".join(f"{statement};\n" for statement in (
        _HOURS_OF_SESSIONS, *_RECOMPUTE_SESSION_DAYS, *_RECOMPUTE_MODEL_DAYS,
        *(statement for statement in _RECOMPUTE_HOURS if statement not in _RECOMPUTE_DAYS),
        "DELETE FROM temp.touched_session_hours"))

    _STAGING = f"""
    CREATE TEMP TABLE IF NOT EXISTS stage_file (
        file_id INTEGER PRIMARY KEY, user_id INTEGER, size INTEGER, mtime_ns INTEGER, content_hash TEXT,
        version INTEGER, items INTEGER, stamp TEXT, {d['summary_cols']});
    CREATE TEMP TABLE IF NOT EXISTS stage_messages (
        file_id INTEGER, message_key TEXT, session_id TEXT, ts TEXT, i INTEGER, o INTEGER, cr INTEGER, cc INTEGER,
        model TEXT, speed TEXT, c5 INTEGER, c1 INTEGER);
    CREATE TEMP TABLE IF NOT EXISTS stage_prompts (file_id INTEGER, prompt_key TEXT, session_id TEXT, ts TEXT);
    CREATE TEMP TABLE IF NOT EXISTS stage_sessions (file_id INTEGER, session_id TEXT, project TEXT, last_ts TEXT);
    CREATE TEMP TABLE IF NOT EXISTS stage_events (
        file_id INTEGER, event_id TEXT, session_id TEXT, event_type TEXT, tool_name TEXT, skill_name TEXT,
        subagent_type TEXT, command_name TEXT, is_error INTEGER, ts TEXT, kind TEXT, name TEXT);
    CREATE TEMP TABLE IF NOT EXISTS ingest_touched (
        user_id INTEGER NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (user_id, kind, key));
    {_HOURS_TABLE};
    {_SESSION_HOURS_TABLE};
    DELETE FROM temp.stage_file; DELETE FROM temp.stage_messages; DELETE FROM temp.stage_prompts;
    DELETE FROM temp.stage_events; DELETE FROM temp.stage_sessions; DELETE FROM temp.ingest_touched;
    DELETE FROM temp.touched_hours; DELETE FROM temp.touched_session_hours;
    """
    _STAGE_FILE_SQL = (f"INSERT INTO temp.stage_file VALUES ({', '.join('?' * (8 + len(_SUMMARY_COLS)))})")
    _STAGE_MESSAGES_SQL = "INSERT INTO temp.stage_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    _STAGE_PROMPTS_SQL = "INSERT INTO temp.stage_prompts VALUES (?, ?, ?, ?)"
    _STAGE_SESSIONS_SQL = "INSERT INTO temp.stage_sessions VALUES (?, ?, ?, ?)"
    _STAGE_EVENTS_SQL = "INSERT INTO temp.stage_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

    _FILES = "(SELECT file_id FROM temp.stage_file)"
    # Keys the files contribute (run before the old rows go and after the new ones land), per user
    # and kind: m(essage), p(rompt), s(ession); their per-user deduplicated rows are then recomputed.
    _TOUCH = f"""
    INSERT OR IGNORE INTO temp.ingest_touched (user_id, kind, key)
        SELECT user_id, 'm', message_key FROM activity_messages WHERE file_id IN {_FILES}
        UNION ALL SELECT user_id, 'p', prompt_key FROM activity_prompts WHERE file_id IN {_FILES}
        UNION ALL SELECT DISTINCT user_id, 's', session_id FROM activity_messages WHERE file_id IN {_FILES}
        UNION ALL SELECT DISTINCT user_id, 's', session_id FROM activity_prompts WHERE file_id IN {_FILES}
        UNION ALL SELECT user_id, 's', session_id FROM file_sessions WHERE file_id IN {_FILES};
    """
    # After the new rows landed, the same keys are read from the staged rows they were inserted from
    # (each staged row lands: activity rows replace the file's own), not looked up again in the tables.
    _TOUCH_STAGED = """
    INSERT OR IGNORE INTO temp.ingest_touched (user_id, kind, key)
        SELECT f.user_id, 'm', m.message_key FROM temp.stage_messages m JOIN temp.stage_file f ON f.file_id = m.file_id
        UNION ALL SELECT f.user_id, 'p', p.prompt_key FROM temp.stage_prompts p JOIN temp.stage_file f ON f.file_id = p.file_id
        UNION ALL SELECT DISTINCT f.user_id, 's', m.session_id FROM temp.stage_messages m JOIN temp.stage_file f ON f.file_id = m.file_id
        UNION ALL SELECT DISTINCT f.user_id, 's', p.session_id FROM temp.stage_prompts p JOIN temp.stage_file f ON f.file_id = p.file_id
        UNION ALL SELECT f.user_id, 's', s.session_id FROM temp.stage_sessions s JOIN temp.stage_file f ON f.file_id = s.file_id;
    """
    _DIRTY_DAYS = (f"INSERT OR IGNORE INTO rollup_dirty_days (day) SELECT DISTINCT substr(ts, 1, 10) FROM usage_events "
                   f"WHERE file_id IN {_FILES};")
    # (The parser gives each event id once per file: the staged events are the rows just inserted.)
    _DIRTY_DAYS_STAGED = "INSERT OR IGNORE INTO rollup_dirty_days (day) SELECT DISTINCT substr(ts, 1, 10) FROM temp.stage_events;"
    def _touched(user_col: str, key_col: str, kind: str) -> str:
        """Rows of the touched keys of a kind, found by primary key (see _among)."""
        return _among(f"temp.ingest_touched WHERE kind = '{kind}'", (user_col, key_col), (user_col, key_col),
                      ("user_id", "key"))


    # A message or prompt belongs to the session it was copied from (FORMAT.md "Resumed sessions"): among
    # the sessions whose lines carry its key, the one whose latest line is earliest, ties to the smaller
    # id. A session's latest line is the largest last_ts of its rows in file_sessions, over all the
    # user's files; no timestamp at all sorts last.
    def _owner(table: str, key_col: str) -> str:
        """The session a touched key (t.user_id, t.key) belongs to, among its rows in ``table``."""
        last = ("(SELECT MAX(s.last_ts) FROM file_sessions s "
                "WHERE s.user_id = c.user_id AND s.session_id = c.session_id)")
        # One session among the copies (nearly every key): no need to compare sessions.
        return (f"CASE WHEN MIN(a.session_id) = MAX(a.session_id) THEN MIN(a.session_id) ELSE "
                f"(SELECT c.session_id FROM {table} c WHERE c.user_id = t.user_id AND c.{key_col} = t.key "
                f"ORDER BY {last} IS NULL, {last}, c.session_id LIMIT 1) END")


    # When a file's sessions change (their latest line moves, or they appear or go), the keys that other
    # files hold under the same sessions may change owner: they are recomputed too.
    _TOUCH_SHARED = f"""
    INSERT OR IGNORE INTO temp.ingest_touched (user_id, kind, key)
        SELECT a.user_id, 'm', a.message_key FROM temp.ingest_touched t
        CROSS JOIN file_sessions s ON s.user_id = t.user_id AND s.session_id = t.key
        CROSS JOIN activity_messages a ON a.file_id = s.file_id AND a.session_id = t.key
        WHERE t.kind = 's' AND s.file_id NOT IN {_FILES}
        UNION ALL SELECT p.user_id, 'p', p.prompt_key FROM temp.ingest_touched t
        CROSS JOIN file_sessions s ON s.user_id = t.user_id AND s.session_id = t.key
        CROSS JOIN activity_prompts p ON p.file_id = s.file_id AND p.session_id = t.key
        WHERE t.kind = 's' AND s.file_id NOT IN {_FILES};
    """
    # When a key moves to or from another file's session, that session is recomputed too (its owner
    # before, and after).
    _SESSIONS_OF_TOUCHED = f"""
    INSERT OR IGNORE INTO temp.ingest_touched (user_id, kind, key)
        SELECT DISTINCT user_id, 's', session_id FROM user_messages WHERE {_touched("user_id", "message_key", "m")}
        UNION ALL SELECT DISTINCT user_id, 's', session_id FROM user_prompts WHERE {_touched("user_id", "prompt_key", "p")};
    """

    # The per-user rows of every touched key, recomputed from the per-file rows (and their hours);
    # joins start from the touched keys (CROSS JOIN keeps that order) and look rows up by key.
    if d["row_in"]:
        # PostgreSQL: the hours and sessions of the rows about to be replaced are those the DELETE
        # returns, not looked up by key before it (two index probes per touched key, ~5% of the server's
        # time in a bulk ingest). touched_session_hours is empty until here (_STAGING cleared it).
        def _replace(table: str, key_col: str, kind: str, hours_known: bool) -> str:
            new_hours = "" if not hours_known else (
                "WHERE NOT EXISTS (SELECT 1 FROM temp.touched_session_hours h WHERE h.user_id = g.user_id "
                "AND h.hour = substr(g.ts, 1, 13) AND h.session_id = g.session_id)")
            return f"""
    WITH gone AS (DELETE FROM {table} WHERE {_touched("user_id", key_col, kind)} RETURNING user_id, ts, session_id),
         hours AS (INSERT INTO temp.touched_session_hours (user_id, hour, session_id)
                   SELECT DISTINCT g.user_id, substr(g.ts, 1, 13), g.session_id FROM gone g {new_hours})
    INSERT INTO temp.ingest_touched (user_id, kind, key)
        SELECT DISTINCT g.user_id, 's', g.session_id FROM gone g
        WHERE NOT EXISTS (SELECT 1 FROM temp.ingest_touched t WHERE t.user_id = g.user_id AND t.kind = 's'
                          AND t.key = g.session_id);"""
        _REPLACE_MESSAGES, _REPLACE_PROMPTS = (_replace("user_messages", "message_key", "m", False),
                                               _replace("user_prompts", "prompt_key", "p", True))
    else:
        _REPLACE_MESSAGES = f"""
    {_TOUCH_HOURS}
    {_SESSIONS_OF_TOUCHED}
    DELETE FROM user_messages WHERE {_touched("user_id", "message_key", "m")};"""
        _REPLACE_PROMPTS = f"""
    DELETE FROM user_prompts WHERE {_touched("user_id", "prompt_key", "p")};"""
    _DERIVE_WINDOWS = f"""
    {_REPLACE_MESSAGES}
    INSERT INTO user_messages (user_id, message_key, session_id, ts, input_tokens, output_tokens, cache_read_tokens,
                               cache_creation_tokens, model, speed, cache_5m_tokens, cache_1h_tokens)
        SELECT t.user_id, t.key, {_owner("activity_messages", "message_key")}, MIN(a.ts), MAX(a.input_tokens),
               MAX(a.output_tokens), MAX(a.cache_read_tokens), MAX(a.cache_creation_tokens), MAX(a.model),
               CASE WHEN {d['any_fast']} THEN 'fast' ELSE MAX(a.speed) END,
               MAX(a.cache_5m_tokens), MAX(a.cache_1h_tokens)
        FROM temp.ingest_touched t
        CROSS JOIN activity_messages a ON a.user_id = t.user_id AND a.message_key = t.key
        WHERE t.kind = 'm' GROUP BY t.user_id, t.key;
    {_REPLACE_PROMPTS}
    INSERT INTO user_prompts (user_id, prompt_key, session_id, ts)
        SELECT t.user_id, t.key, {_owner("activity_prompts", "prompt_key")}, MIN(a.ts)
        FROM temp.ingest_touched t
        CROSS JOIN activity_prompts a ON a.user_id = t.user_id AND a.prompt_key = t.key
        WHERE t.kind = 'p' GROUP BY t.user_id, t.key;
    {_TOUCH_HOURS}
    {_RECOMPUTE_HOURS_SCRIPT}
    {_SESSIONS_OF_TOUCHED}
    DELETE FROM user_sessions WHERE {_touched("user_id", "session_id", "s")};
    INSERT INTO user_sessions
        SELECT t.user_id, t.key, t.last_ts,
               (SELECT s.project FROM file_sessions s
                WHERE s.user_id = t.user_id AND s.session_id = t.key AND s.project IS NOT NULL
                ORDER BY s.started_at IS NULL, s.started_at LIMIT 1)
        FROM (SELECT x.user_id, x.key, NULLIF({d['max']}(
                  COALESCE((SELECT MAX(ts) FROM user_messages m WHERE m.user_id = x.user_id AND m.session_id = x.key), ''),
                  COALESCE((SELECT MAX(ts) FROM user_prompts p WHERE p.user_id = x.user_id AND p.session_id = x.key), '')),
                  '') AS last_ts
              FROM temp.ingest_touched x WHERE x.kind = 's') t
        WHERE t.last_ts IS NOT NULL;
    """
    # The staged rows into the per-file tables (the full pass deleted the file's rows first, the
    # incremental one those of the staged keys), and the files' summaries and sessions.
    _INSERT_ROWS = f"""
    INSERT INTO activity_messages (file_id, message_key, user_id, session_id, ts, input_tokens, output_tokens,
                                   cache_read_tokens, cache_creation_tokens, model, speed, cache_5m_tokens,
                                   cache_1h_tokens)
        SELECT m.file_id, m.message_key, f.user_id, m.session_id, m.ts, m.i, m.o, m.cr, m.cc, m.model, m.speed, m.c5, m.c1
        FROM temp.stage_messages m JOIN temp.stage_file f ON f.file_id = m.file_id;
    INSERT INTO activity_prompts (file_id, prompt_key, user_id, session_id, ts)
        SELECT p.file_id, p.prompt_key, f.user_id, p.session_id, p.ts
        FROM temp.stage_prompts p JOIN temp.stage_file f ON f.file_id = p.file_id;
    -- Events are kept per file (a copy of a session in another file has the same event ids; the
    -- rollups count each once per user). 'curated' attribution wins over 'flea'; unlisted is 'builtin'.
    -- The parser gives each event id once per file, and the file's rows of the staged ids went above:
    -- a plain INSERT (PostgreSQL's ON CONFLICT probed the key and wrote a speculative tuple per row).
    INSERT INTO usage_events (event_id, file_id, user_id, session_id, event_type, tool_name, skill_name,
                                         subagent_type, command_name, source, ref_id, is_error, ts)
        SELECT e.event_id, e.file_id, f.user_id, e.session_id, e.event_type, e.tool_name, e.skill_name,
               e.subagent_type, e.command_name, COALESCE(n.source, 'builtin'), n.ref_id, e.is_error, e.ts
        FROM temp.stage_events e JOIN temp.stage_file f ON f.file_id = e.file_id
        -- looked up once per (kind, name) of the batch (a few dozen), not once per event (thousands)
        LEFT JOIN (SELECT k.kind, k.name,
                          (SELECT a.source FROM plugin_attribution a WHERE a.kind = k.kind AND a.name = k.name
                           ORDER BY a.source = 'curated' DESC LIMIT 1) AS source,
                          (SELECT a.ref_id FROM plugin_attribution a WHERE a.kind = k.kind AND a.name = k.name
                           ORDER BY a.source = 'curated' DESC LIMIT 1) AS ref_id
                   FROM (SELECT DISTINCT kind, name FROM temp.stage_events) AS k) AS n
            ON n.kind = e.kind AND n.name = e.name;
    {d['insert_or_replace']} INTO session_summaries (file_id, user_id, {", ".join(_SUMMARY_COLS)}, processor_version,
                                              extracted_at)
        SELECT file_id, user_id, {", ".join(_SUMMARY_COLS)}, version, stamp FROM temp.stage_file{d['summaries_conflict']};
    DELETE FROM file_sessions WHERE file_id IN {_FILES};
    INSERT INTO file_sessions (file_id, user_id, session_id, started_at, project, last_ts)
        SELECT s.file_id, f.user_id, s.session_id, f.started_at, s.project, s.last_ts
        FROM temp.stage_sessions s JOIN temp.stage_file f ON f.file_id = s.file_id;
"""
    _UPDATE_FILES = """UPDATE session_files SET size = f.size, mtime_ns = f.mtime_ns, content_hash = f.content_hash,
           processor_version = f.version, items = f.items, last_error = NULL, failure_count = 0,
           next_attempt_at = NULL, quarantined_at = NULL, processed_at = f.stamp
        FROM temp.stage_file f
        WHERE session_files.id = f.file_id AND session_files.id IN (SELECT file_id FROM temp.stage_file);
    """
    _WRITE_SCRIPT = f"""
    {d['lock_files']}
    {_DIRTY_DAYS}
    {_TOUCH}
    DELETE FROM activity_messages WHERE file_id IN {_FILES};
    DELETE FROM activity_prompts WHERE file_id IN {_FILES};
    DELETE FROM usage_events WHERE file_id IN {_FILES};
    {_INSERT_ROWS}
    {_DIRTY_DAYS_STAGED}
    {_TOUCH_STAGED}
    {_TOUCH_SHARED}
    {_DERIVE_WINDOWS}{_UPDATE_FILES}"""

    # An incremental pass (ParseResult.incremental, one file per statement list) writes only the rows
    # that changed: those staged replace the file's rows of the same keys, the prompt keys staged in
    # stage_gone are deleted, the events in stage_flips turn is_error (their tool result came now), and
    # only their keys are derived again. A session whose latest line moved
    # may change the owner of keys it shares with another session (FORMAT.md "Resumed sessions"): the
    # full pass touches every key other files hold under the sessions it writes; here only the keys a
    # moved session shares with another session are touched, and only when another session's latest
    # line lies between the moved one's latest before and after (or it had none before): no owner can
    # change otherwise.
    _INC_STAGING = """
    CREATE TEMP TABLE IF NOT EXISTS stage_gone (file_id INTEGER, prompt_key TEXT);
    CREATE TEMP TABLE IF NOT EXISTS stage_flips (file_id INTEGER, event_id TEXT);
    CREATE TEMP TABLE IF NOT EXISTS session_moves (
        user_id INTEGER NOT NULL, session_id TEXT NOT NULL, old_last TEXT, new_last TEXT);
    DELETE FROM temp.stage_gone; DELETE FROM temp.stage_flips; DELETE FROM temp.session_moves;
    """
    _INC_WRITE_SCRIPT = f"""
    {d['lock_files']}
    INSERT OR IGNORE INTO rollup_dirty_days (day) SELECT DISTINCT substr(e.ts, 1, 10) FROM temp.stage_events s
        CROSS JOIN usage_events e ON e.file_id = s.file_id AND e.event_id = s.event_id
        UNION ALL SELECT substr(e.ts, 1, 10) FROM temp.stage_flips s
        CROSS JOIN usage_events e ON e.file_id = s.file_id AND e.event_id = s.event_id;
    UPDATE usage_events SET is_error = 1 WHERE file_id IN {_FILES}
        AND event_id IN (SELECT event_id FROM temp.stage_flips);
    INSERT OR IGNORE INTO temp.ingest_touched (user_id, kind, key)
        SELECT f.user_id, 'm', m.message_key FROM temp.stage_messages m JOIN temp.stage_file f ON f.file_id = m.file_id
        UNION ALL SELECT f.user_id, 'p', p.prompt_key FROM temp.stage_prompts p JOIN temp.stage_file f ON f.file_id = p.file_id
        UNION ALL SELECT f.user_id, 'p', g.prompt_key FROM temp.stage_gone g JOIN temp.stage_file f ON f.file_id = g.file_id
        UNION ALL SELECT f.user_id, 's', s.session_id FROM temp.stage_sessions s JOIN temp.stage_file f ON f.file_id = s.file_id;
    INSERT INTO temp.session_moves (user_id, session_id, old_last, new_last)
        SELECT x.user_id, x.session_id, x.old_last,
               CASE WHEN x.old_last IS NULL OR x.last_ts > x.old_last THEN x.last_ts ELSE x.old_last END
        FROM (SELECT f.user_id, s.session_id, s.last_ts,
                     (SELECT MAX(o.last_ts) FROM file_sessions o
                      WHERE o.user_id = f.user_id AND o.session_id = s.session_id) AS old_last
              FROM temp.stage_sessions s JOIN temp.stage_file f ON f.file_id = s.file_id) x;
    DELETE FROM temp.session_moves WHERE new_last IS NULL OR old_last = new_last
        OR (old_last IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM file_sessions o WHERE o.user_id = session_moves.user_id
            AND o.session_id <> session_moves.session_id AND o.last_ts >= session_moves.old_last
            AND o.last_ts <= session_moves.new_last));
    DELETE FROM activity_messages WHERE file_id IN {_FILES}
        AND message_key IN (SELECT message_key FROM temp.stage_messages);
    DELETE FROM activity_prompts WHERE file_id IN {_FILES}
        AND prompt_key IN (SELECT prompt_key FROM temp.stage_prompts UNION ALL SELECT prompt_key FROM temp.stage_gone);
    DELETE FROM usage_events WHERE file_id IN {_FILES} AND event_id IN (SELECT event_id FROM temp.stage_events);
    {_INSERT_ROWS}
    {_DIRTY_DAYS_STAGED}
    INSERT OR IGNORE INTO temp.ingest_touched (user_id, kind, key)
        SELECT a.user_id, 'm', a.message_key FROM temp.session_moves t
        CROSS JOIN file_sessions s ON s.user_id = t.user_id AND s.session_id = t.session_id
        CROSS JOIN activity_messages a ON a.file_id = s.file_id AND a.session_id = t.session_id
        WHERE EXISTS (SELECT 1 FROM activity_messages b WHERE b.user_id = a.user_id
                      AND b.message_key = a.message_key AND b.session_id <> a.session_id)
        UNION ALL SELECT a.user_id, 'p', a.prompt_key FROM temp.session_moves t
        CROSS JOIN file_sessions s ON s.user_id = t.user_id AND s.session_id = t.session_id
        CROSS JOIN activity_prompts a ON a.file_id = s.file_id AND a.session_id = t.session_id
        WHERE EXISTS (SELECT 1 FROM activity_prompts b WHERE b.user_id = a.user_id
                      AND b.prompt_key = a.prompt_key AND b.session_id <> a.session_id);
    {_DERIVE_WINDOWS}{_UPDATE_FILES}
    """

    # The TEMP tables are created once per writer connection (a write that fails takes its creation back
    # with it, so the connection is forgotten then); each write only clears them.
    _STAGING_CREATE = tuple(s for s in statements(_STAGING + _INC_STAGING) if s.startswith("CREATE"))
    _STAGING_STATEMENTS = tuple(s for s in statements(_STAGING) if not s.startswith("CREATE"))
    _INC_STAGING_STATEMENTS = tuple(s for s in statements(_INC_STAGING) if not s.startswith("CREATE"))
    _INC_WRITE_STATEMENTS = statements(_INC_WRITE_SCRIPT)
    _STAGE_GONE_SQL = "INSERT INTO temp.stage_gone VALUES (?, ?)"
    _STAGE_FLIPS_SQL = "INSERT INTO temp.stage_flips VALUES (?, ?)"
    # The same cutoff as prune(): rows stamped before it are what retention has deleted.
    _DROP_EXPIRED = tuple(f"DELETE FROM temp.{table} WHERE ts < ?" for table in
                          ("stage_messages", "stage_prompts", "stage_events"))
    _WRITE_STATEMENTS = statements(_WRITE_SCRIPT)
    return locals()


# What write_results and prune run, per dialect.
_RUN = ("_STAGING_STATEMENTS", "_STAGE_FILE_SQL", "_STAGE_MESSAGES_SQL", "_STAGE_PROMPTS_SQL", "_STAGE_SESSIONS_SQL",
        "_STAGE_EVENTS_SQL", "_DROP_EXPIRED", "_WRITE_STATEMENTS", "_HOURS_TABLE", "_RECOMPUTE_HOURS",
        "_STAGING_CREATE", "_INC_STAGING_STATEMENTS", "_INC_WRITE_STATEMENTS", "_STAGE_GONE_SQL", "_STAGE_FLIPS_SQL")
_STAGED: weakref.WeakSet = weakref.WeakSet()  # SQLite writer connections whose TEMP tables exist
# The parser's state for a file's next pass (schema 0016), or none (gzip): the next pass is full.
_CARRY_SQL = ("INSERT INTO ingest_carry (file_id, state) VALUES (?, ?) "
              "ON CONFLICT (file_id) DO UPDATE SET state = excluded.state")
_NO_CARRY_SQL = "DELETE FROM ingest_carry WHERE file_id = ?"


def _in_dialect(dialect: str) -> dict[str, Any]:
    found = _scripts(_FRAGMENTS[dialect])
    if dialect == "postgresql":
        found.update({name: tuple(map(postgresql, found[name])) if isinstance(found[name], tuple)
                      else postgresql(found[name]) for name in _RUN})
    return found


_SQL = {dialect: _in_dialect(dialect) for dialect in _FRAGMENTS}
_SQLITE = _SQL["sqlite"]

def _summary_values(result: ParseResult) -> list:
    s = result.summary
    values = [getattr(s, c) for c in _SUMMARY_COLS]
    values[1] = to_store(s.started_at) if s.started_at else None
    values[2] = to_store(s.ended_at) if s.ended_at else None
    return values


@dataclass(frozen=True)
class Parsed:
    """One parsed file ready to be stored: which file, whose, its stat and its parse result."""

    file_id: int
    user_id: int
    result: ParseResult
    size: int
    mtime_ns: int
    version: int


async def write_results(db: BaseDatabase, batch: list[Parsed], now: datetime,
                        keep_since: datetime | None = None) -> None:
    """Store what the files contribute, in one transaction: all of it, or none of it.

    A full pass replaces everything a file contributes: its summary, activity and usage events,
    the per-user deduplicated rows of every message, prompt and session it touches, the rollup days
    to rebuild, and its processor state. An incremental pass (ParseResult.incremental) replaces
    only the rows it holds, and the derived rows of their keys. A file may appear once per batch.
    Activity and events from before ``keep_since`` (the retention cutoff) are not stored: prune()
    deleted them, and a reprocess must not bring them back.
    """
    stamp = to_store(now)
    full = [p for p in batch if not p.result.incremental]
    try:
        await _write(db, batch, full, stamp, keep_since)
    except BaseException:
        if db.dialect == "sqlite":
            _STAGED.discard(db.writer)
        raise


async def _write(db: BaseDatabase, batch: list[Parsed], full: list[Parsed], stamp: str,
                 keep_since: datetime | None) -> None:
    q = _SQL[db.dialect]
    steps: list[tuple] = []
    async with db.transaction() as conn:
        await lock_users(conn, db.dialect, {p.user_id for p in batch})  # other replicas' writes (PostgreSQL)
        # SQLite: one writer connection for the process's life. PostgreSQL's pooled connections come
        # and go (a restarted server drops them all): the backend knows which have them (temp_made).
        if not (conn in _STAGED if db.dialect == "sqlite" else conn.temp_made):
            steps += [(statement, ()) for statement in q["_STAGING_CREATE"]]
        if full:
            _stage(steps, q, full, stamp, keep_since)
            steps += [(statement, ()) for statement in q["_WRITE_STATEMENTS"]]
        for p in batch:
            if p.result.incremental:
                _stage(steps, q, [p], stamp, keep_since)
                steps += [(statement, ()) for statement in q["_INC_STAGING_STATEMENTS"]]
                _many(steps, q["_STAGE_GONE_SQL"], [(p.file_id, key) for key in p.result.deleted_prompts])
                _many(steps, q["_STAGE_FLIPS_SQL"], [(p.file_id, e) for e in p.result.flipped_events])
                steps += [(statement, ()) for statement in q["_INC_WRITE_STATEMENTS"]]
        _many(steps, _CARRY_SQL, [(p.file_id, p.result.carry) for p in batch if p.result.carry])
        _many(steps, _NO_CARRY_SQL, [(p.file_id,) for p in batch if not p.result.carry])
        # Built whole first, then run in one go: on SQLite, one hop to the writer's thread.
        await db.run_steps(conn, steps)
        if db.dialect == "sqlite":
            _STAGED.add(conn)
        else:  # its files' rows changed: no need to ask the server whether to notify the replicas
            conn.temp_made = conn.wrote = True


def _stage(steps: list[tuple], q: dict[str, Any], batch: list[Parsed], stamp: str,
           keep_since: datetime | None) -> None:
    """The steps that put the files' rows into the connection's TEMP staging tables (cleared first)."""
    steps += [(statement, ()) for statement in q["_STAGING_STATEMENTS"]]
    _many(steps, q["_STAGE_FILE_SQL"], [
        (p.file_id, p.user_id, p.size, p.mtime_ns, p.result.content_hash, p.version, p.result.lines, stamp,
         *_summary_values(p.result)) for p in batch])
    _many(steps, q["_STAGE_MESSAGES_SQL"], [
        (p.file_id, m.key, m.session_id, m.ts, m.input, m.output, m.cache_read, m.cache_creation, m.model,
         m.speed, m.cache_5m, m.cache_1h) for p in batch for m in p.result.messages])
    _many(steps, q["_STAGE_PROMPTS_SQL"], [
        (p.file_id, r.key, r.session_id, r.ts) for p in batch for r in p.result.prompts])
    _many(steps, q["_STAGE_SESSIONS_SQL"], [
        (p.file_id, r.session_id, r.project, r.last_ts) for p in batch for r in p.result.sessions])
    _many(steps, q["_STAGE_EVENTS_SQL"], [
        (p.file_id, e.event_id, e.session_id, e.event_type, e.tool_name, e.skill_name, e.subagent_type,
         e.command_name, int(e.is_error), e.ts, *_attribution_key(e)) for p in batch for e in p.result.events])
    if keep_since is not None:
        steps += [(statement, (to_store(keep_since),)) for statement in q["_DROP_EXPIRED"]]


def _many(steps: list[tuple], sql: str, rows: list) -> None:
    """An executemany step, none for no rows."""
    if rows:
        steps.append((sql, rows, True))


async def get_carry(db: BaseDatabase, file_id: int) -> bytes | None:
    """The parser's state a file's last pass left (schema 0016), or None."""
    return await db.fetchval("SELECT state FROM ingest_carry WHERE file_id = ?", (file_id,))


# Every per-user window table derived anew from the per-file rows, by the same statements as
# ingest: for data loaded around ingest (bench/serve_bench.py's dataset) and for repairs.
REBUILD_WINDOWS_SCRIPT = f"""
BEGIN IMMEDIATE;
{_SQLITE["_STAGING"]}
DELETE FROM user_messages; DELETE FROM user_prompts; DELETE FROM user_sessions; DELETE FROM user_hours;
DELETE FROM admin_session_days; DELETE FROM admin_model_days;
INSERT OR IGNORE INTO temp.ingest_touched (user_id, kind, key)
    SELECT user_id, 'm', message_key FROM activity_messages
    UNION ALL SELECT user_id, 'p', prompt_key FROM activity_prompts
    UNION ALL SELECT user_id, 's', session_id FROM activity_messages
    UNION ALL SELECT user_id, 's', session_id FROM activity_prompts;
{_SQLITE["_DERIVE_WINDOWS"]}
COMMIT;
"""



# The daily tool and plugin rollups (and the operators' admin_tool_days) of up to :limit dirty days
# (the latest first), set-based: a statement per step for all the days at once, not five per day.
# Each day counts its usage events once per user (files holding copies of a session share event ids).
_EVENTS_ONCE = """(SELECT d.day, e.user_id, e.event_id, MIN(e.session_id) AS session_id,
        MIN(e.tool_name) AS tool_name, MIN(e.command_name) AS command_name, MIN(e.source) AS source,
        MIN(e.ref_id) AS ref_id, MAX(e.is_error) AS is_error,
        CASE WHEN MIN(e.skill_name) IS NOT NULL THEN 'skill' ELSE MIN(e.event_type) END AS kind,
        COALESCE(MIN(e.skill_name), CASE MIN(e.event_type) WHEN 'subagent' THEN MIN(e.subagent_type)
                 WHEN 'slash_command' THEN '/' || MIN(e.command_name) END, MIN(e.tool_name), '(unnamed)') AS name
    FROM temp.rollup_days d
    CROSS JOIN usage_events e ON e.ts >= d.day || 'T' AND e.ts < d.day || 'U'
    GROUP BY d.day, e.user_id, e.event_id) AS once"""
REBUILD_ROLLUPS_SQLITE = statements(f"""
CREATE TEMP TABLE IF NOT EXISTS rollup_days (day TEXT PRIMARY KEY);
CREATE TEMP TABLE IF NOT EXISTS rollup_events (day TEXT, user_id INTEGER, session_id TEXT, tool_name TEXT,
    command_name TEXT, source TEXT, ref_id TEXT, is_error INTEGER, kind TEXT, name TEXT);
DELETE FROM temp.rollup_days;
DELETE FROM temp.rollup_events;
INSERT INTO temp.rollup_days SELECT day FROM rollup_dirty_days ORDER BY day DESC LIMIT :limit;
-- Each event once per (day, user), gathered once for the three rollups below.
INSERT INTO temp.rollup_events SELECT day, user_id, session_id, tool_name, command_name, source, ref_id, is_error,
                                      kind, name FROM {_EVENTS_ONCE};
DELETE FROM usage_tool_daily WHERE day IN (SELECT day FROM temp.rollup_days);
DELETE FROM usage_plugin_daily WHERE day IN (SELECT day FROM temp.rollup_days);
INSERT INTO usage_tool_daily (day, tool, source, invocations, errors, distinct_users, distinct_sessions)
    SELECT day, COALESCE(tool_name, '/' || command_name, '(unnamed)'), source, COUNT(*), SUM(is_error),
           COUNT(DISTINCT user_id), COUNT(DISTINCT user_id || ':' || session_id)
    FROM temp.rollup_events GROUP BY day, 2, source;
INSERT INTO usage_plugin_daily (day, source, ref_id, invocations, distinct_users, distinct_sessions)
    SELECT day, source, ref_id, COUNT(*), COUNT(DISTINCT user_id), COUNT(DISTINCT user_id || ':' || session_id)
    FROM temp.rollup_events WHERE ref_id IS NOT NULL GROUP BY day, source, ref_id;
DELETE FROM admin_tool_days WHERE day IN (SELECT day FROM temp.rollup_days);
INSERT INTO admin_tool_days (day, user_id, session_id, kind, name, source, invocations, errors)
    SELECT day, user_id, session_id, kind, name, source, COUNT(*), SUM(is_error)
    FROM temp.rollup_events GROUP BY day, user_id, session_id, kind, name, source;
DELETE FROM rollup_dirty_days WHERE day IN (SELECT day FROM temp.rollup_days);
""")
# PostgreSQL's TEMP tables keep their rows' dead space (service/postgres.py, TEMP_ROWS_BEFORE_DISCARD
# counts the ingest's staged rows): the rollups' two tables, filled from usage_events and not staged,
# are emptied by TRUNCATE instead of DELETE, so that each rebuild starts from empty files.
_REBUILD_ROLLUPS = {"sqlite": REBUILD_ROLLUPS_SQLITE,
                    "postgresql": tuple(
                        "TRUNCATE pg_temp.rollup_days, pg_temp.rollup_events" if s == "DELETE FROM temp.rollup_days;"
                        else postgresql(s) for s in REBUILD_ROLLUPS_SQLITE if s != "DELETE FROM temp.rollup_events;")}


_ROLLUP_DAYS_DONE = by_dialect("SELECT day FROM temp.rollup_days ORDER BY day DESC")
# Retention recomputes the hour (and the operators' day) it cuts through.
_CLEAR_HOURS = by_dialect("DELETE FROM temp.touched_hours")
_CUT_HOUR = by_dialect("INSERT OR IGNORE INTO temp.touched_hours (user_id, hour) "
                       "SELECT user_id, hour FROM user_hours WHERE hour = ?")
_CUT_DAY_DIRTY = by_dialect("INSERT OR IGNORE INTO rollup_dirty_days (day) VALUES (?)")
_CUT_DAY = by_dialect("INSERT OR IGNORE INTO temp.touched_hours (user_id, hour) "
                      "SELECT DISTINCT user_id, CAST(? AS TEXT) FROM admin_session_days WHERE day = ?")


async def rebuild_rollups(db: BaseDatabase, limit: int = 31) -> list[str]:
    """Recompute the daily tool and plugin rollups of the days marked dirty (at most ``limit``, the
    latest first), in one transaction; returns the days done."""
    async with db.transaction() as conn:
        await lock_all_users(conn, db.dialect)
        await db.run_steps(conn, [(statement, {"limit": limit} if ":limit" in statement else ())
                                  for statement in _REBUILD_ROLLUPS[db.dialect]])
        async with conn.execute(_ROLLUP_DAYS_DONE[db.dialect]) as cur:
            return [r[0] for r in await cur.fetchall()]


async def prune(db: BaseDatabase, before: datetime) -> dict[str, int]:
    """Delete usage events and activity older than ``before`` (retention)."""
    cutoff = to_store(before)
    counts = {}
    async with db.transaction() as conn:
        await lock_all_users(conn, db.dialect)
        for table in ("usage_events", "activity_messages", "activity_prompts"):
            cur = await conn.execute(f"DELETE FROM {table} WHERE ts < ?", (cutoff,))
            counts[table] = cur.rowcount
        # The deduplicated windows forget the same activity (their rows are derived from it).
        await conn.execute("DELETE FROM user_messages WHERE ts < ?", (cutoff,))
        await conn.execute("DELETE FROM user_prompts WHERE ts < ?", (cutoff,))
        await conn.execute("DELETE FROM user_sessions WHERE last_ts < ?", (cutoff,))
        # Hours wholly before the cutoff go; the hour it cuts through is recomputed.
        await conn.execute("DELETE FROM user_hours WHERE hour < ?", (cutoff[:13],))
        q = _SQL[db.dialect]
        await conn.execute(q["_HOURS_TABLE"])
        await conn.execute(_CLEAR_HOURS[db.dialect])  # empty already, unless an earlier transaction left rows
        await conn.execute(_CUT_HOUR[db.dialect], (cutoff[:13],))
        # The operators' day it cuts through is recomputed for whoever had activity that day.
        await conn.execute(_CUT_DAY[db.dialect], (cutoff[:13], cutoff[:10]))
        for statement in q["_RECOMPUTE_HOURS"]:
            await conn.execute(statement)
        await conn.execute("DELETE FROM admin_session_days WHERE day < ?", (cutoff[:10],))
        await conn.execute("DELETE FROM admin_model_days WHERE day < ?", (cutoff[:10],))
        await conn.execute("DELETE FROM usage_tool_daily WHERE day < ?", (cutoff[:10],))
        await conn.execute("DELETE FROM usage_plugin_daily WHERE day < ?", (cutoff[:10],))
        await conn.execute("DELETE FROM admin_tool_days WHERE day < ?", (cutoff[:10],))
        if counts["usage_events"]:  # the day it cut through may have lost some: rolled up again next tick
            await conn.execute(_CUT_DAY_DIRTY[db.dialect], (cutoff[:10],))
    return counts


async def summaries_for_user(db: BaseDatabase, user_id: int) -> list[dict]:
    rows = await db.fetchall(
        f"SELECT f.path, {', '.join('s.' + c for c in _SUMMARY_COLS)}, s.processor_version FROM session_summaries s "
        "JOIN session_files f ON f.id = s.file_id WHERE s.user_id = ? ORDER BY f.path", (user_id,))
    return [dict(r) for r in rows]


ORIGINS = ("upload", "watch", "cli")


async def stored_by_origin(db: BaseDatabase) -> dict[str, tuple[int, int]]:
    """Processed transcript files and their bytes, by origin (upload, watch, cli), whichever process
    ingested them: /metrics reads it, so `agnes-home ingest` runs count too."""
    rows = await db.fetchall("SELECT origin, COUNT(*) AS files, TOTAL(size) AS bytes FROM session_files "
                             "WHERE processed_at IS NOT NULL GROUP BY origin")
    found = {origin: (0, 0) for origin in ORIGINS}
    found.update({r["origin"]: (r["files"], int(r["bytes"])) for r in rows})
    return found
