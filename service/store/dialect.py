"""SQL text that differs only in spelling between SQLite and PostgreSQL, rewritten once at import.

Statements are written in SQLite's dialect; where the meaning differs (date arithmetic, two-argument
min and max, json_each) the store module keeps a PostgreSQL twin beside the SQLite text. What is left
is spelling, and postgresql() rewrites exactly that:

- ``INSERT OR IGNORE INTO ...`` is ``INSERT INTO ... ON CONFLICT DO NOTHING``; into one of the ingest's
  TEMP key tables (KEYED_TEMP: each such insert lists exactly the table's key), it inserts the distinct
  rows not there yet instead: ON CONFLICT probed the key and wrote a speculative tuple per row, ~60%
  dearer than a plain insert (28 ms against 17.5 for 5,000 keys), and a bulk ingest makes ~40,000;
- the temporary schema ``temp.`` is ``pg_temp.``;
- a temporary table's ``INTEGER`` is ``BIGINT`` (PostgreSQL's INTEGER has 32 bits: mtime_ns needs 64), its
  ``TEXT`` is ``TEXT COLLATE "C"`` like every text column of the schema (a column of the database's
  "default" collation is another collation to the planner, even where that default is C: its index
  could not look up a key compared with a permanent table's, so each probe of ingest_touched by
  (user, kind, key) read every key of the user's kind), and
  it keeps its rows at commit, as SQLite's do: every script clears what it stages. Autovacuum never
  visits temporary tables, so the space of those deleted rows is never reused; the connection drops its
  TEMP tables once TEMP_ROWS_BEFORE_DISCARD rows have been staged in them (service/postgres.py). Session 9
  emptied them at each commit instead (``ON COMMIT DELETE ROWS``), which truncates every such table of
  the session, with its indexes and TOAST table, at every commit that touched any TEMP table: 4.5 ms of
  the server's time per ingest write (a sixth of a one-file write's), ~7% of a bulk ingest;
- ``CROSS JOIN t ON ...`` (SQLite's inner join that keeps the written order) is ``JOIN t ON ...``
  (PostgreSQL's planner picks the order itself).
"""

from __future__ import annotations

import re

_IGNORE = re.compile(r"^((?:\s*--[^\n]*\n)*\s*)INSERT OR IGNORE INTO\b", re.IGNORECASE)
_IGNORE_TEMP = re.compile(r"^((?:\s*--[^\n]*\n)*\s*)INSERT OR IGNORE INTO temp\.(\w+) \(([^)]*)\)(.*?);?\s*$", re.S)
# The ingest's TEMP tables whose every INSERT OR IGNORE names all of the key's columns and no other.
KEYED_TEMP = frozenset({"ingest_touched", "touched_session_hours", "touched_hours", "touched_days"})
_TEMP = re.compile(r"\btemp\.(?=\w)")
_CREATE_TEMP = re.compile(r"^\s*CREATE TEMP TABLE\b", re.IGNORECASE)
_INTEGER = re.compile(r"\bINTEGER\b")
_TEXT = re.compile(r"\bTEXT\b")
_CROSS_JOIN = re.compile(r"\bCROSS JOIN\b")


def postgresql(statement: str) -> str:
    """One SQLite statement in PostgreSQL's spelling (see the module docstring)."""
    keyed = _IGNORE_TEMP.match(statement)
    if keyed and keyed.group(2) in KEYED_TEMP:
        lead, table, cols, select = keyed.groups()
        names = [c.strip() for c in cols.split(",")]
        alias = ", ".join(f"c{i}" for i in range(len(names)))
        same = " AND ".join(f"t.{n} = x.c{i}" for i, n in enumerate(names))
        statement = (f"{lead}INSERT INTO temp.{table} ({cols}) SELECT DISTINCT * FROM ({select.strip()}) AS x({alias}) "
                     f"WHERE NOT EXISTS (SELECT 1 FROM temp.{table} t WHERE {same})")
    text = _CROSS_JOIN.sub("JOIN", _TEMP.sub("pg_temp.", statement))
    if _IGNORE.match(text):
        text = _IGNORE.sub(r"\1INSERT INTO", text, count=1).rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    if _CREATE_TEMP.match(text):
        text = _TEXT.sub('TEXT COLLATE "C"', _INTEGER.sub("BIGINT", text)).rstrip().rstrip(";")
    return text


def by_dialect(sqlite: str, postgresql_text: str | None = None) -> dict[str, str]:
    """A statement and its twin, keyed by ``db.dialect`` (the twin defaults to the rewritten SQLite text)."""
    return {"sqlite": sqlite, "postgresql": postgresql(sqlite) if postgresql_text is None else postgresql_text}
