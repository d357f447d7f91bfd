"""The migration runner: fresh equals upgraded, rows survive, re-runs are no-ops, failures roll back."""

from __future__ import annotations

import shutil

import pytest

from service.db import connect
from service.migrations import SCHEMA_DIR, MigrationError, current_version, latest_version, migrate, scripts

STATUS_FRAME_VERSION = 2


async def schema_of(conn) -> list[tuple]:
    async with conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ) as cur:
        rows = [tuple(r) for r in await cur.fetchall()]
    columns = []
    for (kind, name, _tbl, _sql) in rows:
        if kind == "table":
            async with conn.execute(f"PRAGMA table_info('{name}')") as cur:
                columns.append((name, [tuple(r) for r in await cur.fetchall()]))
    return [rows, columns]


@pytest.fixture
async def conn(tmp_path):
    c = await connect(str(tmp_path / "m.db"))
    yield c
    await c.close()


def test_scripts_are_numbered_and_the_status_frame_is_a_later_one():
    found = scripts()
    assert [s.version for s in found] == list(range(1, len(found) + 1))
    assert latest_version() >= STATUS_FRAME_VERSION
    text = found[STATUS_FRAME_VERSION - 1].path.read_text()
    for column in ("last_pull_at", "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens"):
        assert column in text
    earlier = "".join(s.path.read_text() for s in found[: STATUS_FRAME_VERSION - 1])
    assert "last_pull_at" not in earlier and "input_tokens" not in earlier


async def test_fresh_install_reaches_latest(conn):
    applied = await migrate(conn)
    assert applied == list(range(1, latest_version() + 1))
    assert await current_version(conn) == latest_version()


async def test_running_twice_changes_nothing(conn):
    await migrate(conn)
    before = await schema_of(conn)
    assert await migrate(conn) == []
    assert await schema_of(conn) == before
    assert await current_version(conn) == latest_version()


async def test_upgrade_keeps_rows_fills_defaults_and_matches_fresh(tmp_path, conn):
    await migrate(conn, target=STATUS_FRAME_VERSION - 1)
    assert await current_version(conn) == STATUS_FRAME_VERSION - 1
    await conn.executescript("""
        INSERT INTO users (id, email, name, onboarded, created_at)
            VALUES (1, 'old@example.com', 'Old', 1, '2026-01-01T00:00:00.000000Z');
        INSERT INTO api_tokens (user_id, token_hash, prefix, created_at)
            VALUES (1, 'abc', 'agnes_pat_abcdef', '2026-01-01T00:00:00.000000Z');
        INSERT INTO session_files (id, user_id, path, origin, size, received_at, processor_version)
            VALUES (7, 1, '/x/s.jsonl', 'upload', 123, '2026-01-01T00:00:00.000000Z', 1);
        INSERT INTO session_summaries (file_id, user_id, session_id, started_at, user_messages,
                                       assistant_messages, tool_calls, processor_version, extracted_at)
            VALUES (7, 1, 'sess-1', '2026-01-01T00:00:00.000000Z', 4, 3, 2, 1, '2026-01-01T00:00:00.000000Z');
    """)
    assert await migrate(conn) == list(range(STATUS_FRAME_VERSION, latest_version() + 1))

    async with conn.execute("SELECT email, name, onboarded, last_pull_at FROM users") as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [("old@example.com", "Old", 1, None)]
    async with conn.execute(
            "SELECT session_id, user_messages, assistant_messages, tool_calls, input_tokens, output_tokens, "
            "cache_read_tokens, cache_creation_tokens, prompts, project, processor_version "
            "FROM session_summaries") as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [("sess-1", 4, 3, 2, 0, 0, 0, 0, 0, None, 1)]
    async with conn.execute("SELECT COUNT(*) FROM api_tokens") as cur:
        assert (await cur.fetchone())[0] == 1

    fresh = await connect(str(tmp_path / "fresh.db"))
    try:
        await migrate(fresh)
        assert await schema_of(fresh) == await schema_of(conn)
    finally:
        await fresh.close()


async def test_failing_script_leaves_previous_version(tmp_path, conn):
    schema = tmp_path / "schema"
    shutil.copytree(SCHEMA_DIR, schema)
    bad = latest_version() + 1
    (schema / f"{bad:04d}_broken.sql").write_text(
        "-- broken on purpose\nCREATE TABLE half_done (id INTEGER);\nINSERT INTO no_such_table VALUES (1);\n")
    with pytest.raises(MigrationError, match="broken"):
        await migrate(conn, schema)
    assert await current_version(conn) == latest_version()
    async with conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'") as cur:
        assert (await cur.fetchone())[0] == 0
    assert not conn.in_transaction


def test_gap_in_numbering_is_refused(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="0003_c.sql"):
        scripts(tmp_path)


async def test_window_tables_are_backfilled_from_existing_activity(conn):
    await migrate(conn, target=4)
    await conn.executescript("""
        INSERT INTO users (id, email, created_at) VALUES (1, 'a@example.com', '2026-01-01T00:00:00.000000Z');
        INSERT INTO session_files (id, user_id, path, origin, received_at) VALUES
            (1, 1, '/a.jsonl', 'upload', '2026-01-01T00:00:00.000000Z'),
            (2, 1, '/copy.jsonl', 'upload', '2026-01-01T00:00:00.000000Z');
        INSERT INTO session_summaries (file_id, user_id, session_id, started_at, project, processor_version,
                                       extracted_at) VALUES
            (1, 1, 'S', '2026-11-20T10:00:00.000000Z', '/work/late', 2, 'x'),
            (2, 1, 'S', '2026-11-20T09:00:00.000000Z', '/work/early', 2, 'x');
        INSERT INTO activity_messages VALUES
            (1, 'msg_1', 1, 'S', '2026-11-20T10:00:05.000000Z', 10, 50, 100, 7),
            (2, 'msg_1', 1, 'S', '2026-11-20T10:00:04.000000Z', 10, 80, 90, 7),
            (2, 'msg_2', 1, 'S', '2026-11-20T10:05:00.000000Z', 1, 2, 3, 4);
        INSERT INTO activity_prompts VALUES
            (1, 'p1', 1, 'S', '2026-11-20T10:00:00.000000Z'),
            (2, 'p1', 1, 'S', '2026-11-20T10:00:00.000000Z');
    """)
    await migrate(conn)
    rows = await conn.execute_fetchall("SELECT * FROM user_messages ORDER BY message_key")
    # 0010: model, speed and the cache split stay empty until the file is reprocessed.
    assert [tuple(r) for r in rows] == [
        (1, "msg_1", "S", "2026-11-20T10:00:04.000000Z", 10, 80, 100, 7, None, None, 0, 0),
        (1, "msg_2", "S", "2026-11-20T10:05:00.000000Z", 1, 2, 3, 4, None, None, 0, 0)]
    assert [tuple(r) for r in await conn.execute_fetchall("SELECT * FROM user_prompts")] == [
        (1, "p1", "S", "2026-11-20T10:00:00.000000Z")]
    # 0007: the hourly totals of the same rows (hand-summed: msg_1 at its largest counters + msg_2).
    assert [tuple(r) for r in await conn.execute_fetchall("SELECT * FROM user_hours")] == [
        (1, "2026-11-20T10", 11, 82, 103, 11, 1)]
    assert [tuple(r) for r in await conn.execute_fetchall("SELECT * FROM user_sessions")] == [
        (1, "S", "2026-11-20T10:05:00.000000Z", "/work/early")]
    # 0008: each file's one session, from its summary (what a file not yet reprocessed holds); 0010: its
    # latest timestamp, from the file's activity rows (msg_1 at 10:00:05 in the first, msg_2 in the second).
    assert [tuple(r) for r in await conn.execute_fetchall("SELECT * FROM file_sessions ORDER BY file_id")] == [
        (1, 1, "S", "2026-11-20T10:00:00.000000Z", "/work/late", "2026-11-20T10:00:05.000000Z"),
        (2, 1, "S", "2026-11-20T09:00:00.000000Z", "/work/early", "2026-11-20T10:05:00.000000Z")]


async def test_scripts_sort_on_disk_and_connections_in_memory(tmp_path, conn):
    """A backfill may sort a whole table: schema scripts get file-backed temporary storage."""
    schema = tmp_path / "schema"
    schema.mkdir()
    (schema / "0001_probe.sql").write_text("CREATE TABLE probe AS SELECT temp_store FROM pragma_temp_store();\n")

    async def temp_store() -> int:
        async with conn.execute("PRAGMA temp_store") as cur:
            return (await cur.fetchone())[0]

    assert await temp_store() == 2  # MEMORY, from db.prepare
    assert await migrate(conn, schema_dir=schema) == [1]
    async with conn.execute("SELECT temp_store FROM probe") as cur:
        assert (await cur.fetchone())[0] == 1  # FILE while the script ran
    assert await temp_store() == 2
