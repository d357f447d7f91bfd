"""The PostgreSQL backend itself: placeholders, the migration runner under a race, the schema fresh and
upgraded, and read caches that stay correct across replicas (two Database objects on one database)."""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import asynccontextmanager

import asyncpg
import msgspec
import pytest

from service.migrations import PG_SCHEMA_DIR, latest_version, migrate_database, migrate_postgres, pg_current_version, scripts
from service.postgres import PostgresDatabase, translate
from service.ingest import bulk
from service.store import ingest as ingest_store
from service.store import stats, users
from service.timeutil import utcnow
from tests import pg
from tests.conftest import NOW, expected_stats, sample_files

pytestmark = pytest.mark.postgresql


def test_placeholders_become_numbered_once_per_name_and_leave_strings_casts_and_comments_alone():
    assert translate("SELECT ? , ? FROM t WHERE a = '?' -- ?\n AND b = ?") == (
        "SELECT $1 , $2 FROM t WHERE a = '?' -- ?\n AND b = $3", None)
    assert translate("SELECT :user, x::text, ':no' FROM t WHERE u = :user AND s >= :since") == (
        "SELECT $1, x::text, ':no' FROM t WHERE u = $1 AND s >= $2", ("user", "since"))
    assert translate("SELECT to_char(d, 'YYYY-MM-DD\"T\"HH24:MI') FROM t WHERE a = ?") == (
        "SELECT to_char(d, 'YYYY-MM-DD\"T\"HH24:MI') FROM t WHERE a = $1", None)
    with pytest.raises(ValueError):
        translate("SELECT ? WHERE a = :a")


async def test_replicas_starting_at_once_run_each_script_once(empty_pg):
    first, second = await asyncpg.connect(empty_pg), await asyncpg.connect(empty_pg)
    try:
        applied = await asyncio.gather(migrate_postgres(first), migrate_postgres(second))
        assert sorted(applied) == [[], [s.version for s in scripts(PG_SCHEMA_DIR, baseline=True)]]
        assert await pg_current_version(first) == latest_version("postgresql") == latest_version()
        assert await migrate_postgres(first) == []
    finally:
        await first.close()
        await second.close()


_CATALOG = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' '
       || COALESCE(column_default, '') || ' ' || COALESCE(collation_name, '') || ' #' || ordinal_position
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT 'constraint', conrelid::regclass || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT 'view', viewname || ' ' || definition FROM pg_views WHERE schemaname = 'public'
UNION ALL SELECT 'function', proname || '(' || pg_get_function_arguments(oid) || ')' FROM pg_proc
WHERE pronamespace = 'public'::regnamespace
ORDER BY 1, 2
"""


async def test_a_fresh_postgresql_schema_equals_one_upgraded_script_by_script(empty_pg, pg_server):
    """Each script from the baseline on, applied one run at a time, ends where one run of them all does."""
    server, template = pg_server  # the template was migrated in one run
    fresh = await asyncpg.connect(pg.with_database(server, template))
    upgraded = await asyncpg.connect(empty_pg)
    try:
        for script in scripts(PG_SCHEMA_DIR, baseline=True):
            assert await migrate_postgres(upgraded, target=script.version) == [script.version]
        assert [tuple(r) for r in await upgraded.fetch(_CATALOG)] == [tuple(r) for r in await fresh.fetch(_CATALOG)]
        # Text compares byte-wise, as SQLite's: the store's ranges (ts < day || 'U') depend on it.
        collations = {r[0] for r in await upgraded.fetch(
            "SELECT collation_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND data_type = 'text' AND table_name <> 'plugin_attribution'")}
        assert collations == {"C"}
    finally:
        await fresh.close()
        await upgraded.close()


async def test_the_baseline_script_starts_the_postgresql_numbering_at_sqlite_s_version():
    found = scripts(PG_SCHEMA_DIR, baseline=True)
    assert found[0].version == 14 and found[-1].version == latest_version()


@asynccontextmanager
async def _replicas(url: str):
    """Two PostgresDatabase objects on one database (two replicas), both closed at the end."""
    one, two = PostgresDatabase(url, pool_size=2), PostgresDatabase(url, pool_size=2)
    try:
        await one.open()
        await two.open()
        yield one, two
    finally:
        await one.close()
        await two.close()


async def _within(seconds: float, check) -> float:
    """How long until ``await check()`` is true (fails past ``seconds``)."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < seconds, f"not seen within {seconds} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_a_token_revoked_on_one_replica_fails_on_the_other_within_a_second(pg_url):
    async with _replicas(pg_url) as (one, two):
        user = await users.add_user(one, "ann@example.com", "Ann", True)
        token, issued = await users.issue_token(one, user.id)
        assert (await users.authenticate(two, token))[1] == issued.id
        await two.settle()  # the first use's stamp (a commit: it empties the cache once)
        assert (await users.authenticate(two, token))[1] == issued.id
        assert await users.token_active(two, issued.id)
        hits = two.cache_hits
        assert (await users.authenticate(two, token))[1] == issued.id
        assert two.cache_hits > hits  # the second answer came from replica two's cache
        assert await users.revoke_token(one, token_id=issued.id) == 1

        async def refused() -> bool:
            return await users.authenticate(two, token) is None and not await users.token_active(two, issued.id)

        assert await _within(1.0, refused) < 1.0


async def test_new_numbers_written_by_one_replica_show_on_the_other_within_two_seconds(pg_url):
    async with _replicas(pg_url) as (one, two):
        user = await users.add_user(one, "ann@example.com", "Ann", True)
        now = utcnow()

        async def kept() -> bool:  # once two has heard of one's commit (its NOTIFY empties two's cache)
            first = await stats.home_stats(two, user.id, "24h", now)
            return await stats.home_stats(two, user.id, "24h", now) is first

        await _within(1.0, kept)
        before = await stats.home_stats(two, user.id, "24h", now)
        assert before.last_pull_at is None
        assert await stats.home_stats(two, user.id, "24h", now) is before  # cached
        await users.stamp_pull(one, user.id, now)

        async def moved() -> bool:
            return (await stats.home_stats(two, user.id, "24h", now)).last_pull_at is not None

        assert await _within(2.0, moved) < 2.0


async def test_a_replica_that_loses_its_listen_connection_listens_again_and_forgets_what_it_cached(pg_url):
    async with _replicas(pg_url) as (one, two):
        user = await users.add_user(one, "ann@example.com", "Ann", True)
        assert (await users.get_user(two, user.id)).last_pull_at is None  # now cached on two
        version = two.snapshot()
        # The server ends two's LISTEN connection (a restart, a network cut); one commits meanwhile.
        await one.fetchall("SELECT pg_terminate_backend(?)", (two._listener.get_server_pid(),))
        await users.stamp_pull(one, user.id)
        await _within(5.0, lambda: asyncio.sleep(0, two.snapshot() not in (None, version)))
        assert (await users.get_user(two, user.id)).last_pull_at is not None
        two._listening = False  # while no LISTEN connection is up, nothing is cached
        assert two.snapshot() is None


def test_a_named_test_server_that_does_not_answer_is_reported_not_silently_skipped(monkeypatch):
    monkeypatch.setenv("AGNES_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/postgres")
    with pytest.raises(pg.Unavailable, match="AGNES_TEST_DATABASE_URL"):
        pg.find_server()


def test_with_ci_true_a_missing_postgresql_fails_the_run_instead_of_skipping(monkeypatch):
    from tests.conftest import _pg_missing

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _pg_missing("nothing listens")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="SKIPPED"):
        _pg_missing("nothing listens")


def test_the_cli_manages_users_and_tokens_on_postgresql_as_on_sqlite(tmp_path, pg_url):
    from tests.test_cli import run

    pg_env = {"AGNES_DATABASE_URL": pg_url, "AGNES_DB_PATH": str(tmp_path / "never.db")}
    assert f"schema at version {latest_version()}" in run(tmp_path, "migrate", **pg_env).stdout
    run(tmp_path, "users", "add", "ann@example.com", "--name", "Ann", **pg_env)
    issued = run(tmp_path, "tokens", "issue", "ann@example.com", **pg_env).stdout
    assert "agnes_pat_" in issued
    listed = run(tmp_path, "users", "list", **pg_env).stdout
    assert "ann@example.com" in listed
    assert not (tmp_path / "never.db").exists()  # nothing went to SQLite
    refused = run(tmp_path, "backup", str(tmp_path / "b.db"), check=False, **pg_env)
    assert refused.returncode == 1 and "pg_dump" in refused.stderr


@pytest.mark.skipif(pg._bindir() is None, reason="Debian's postgresql package is not installed")
def test_without_a_server_the_run_starts_a_throwaway_cluster_and_removes_it_after(monkeypatch):
    monkeypatch.delenv("AGNES_TEST_DATABASE_URL", raising=False)
    monkeypatch.setattr(pg, "port_open", lambda host, port: False)  # as if nothing listened on 5432
    url, cluster = pg.find_server()
    try:
        assert cluster is not None and url == cluster.url and pg.answers(url) is None
    finally:
        cluster.stop()
    assert pg.answers(url) is not None and not os.path.exists(cluster.datadir)


def test_with_no_server_and_no_way_to_install_one_the_reason_is_given(monkeypatch):
    monkeypatch.delenv("AGNES_TEST_DATABASE_URL", raising=False)
    monkeypatch.setattr(pg, "port_open", lambda host, port: False)
    monkeypatch.setattr(pg, "_bindir", lambda: None)
    monkeypatch.setattr(pg.os, "geteuid", lambda: 1000)  # not root: no apt-get
    with pytest.raises(pg.Unavailable, match="needs root and apt-get"):
        pg.find_server()


async def test_two_replicas_serving_one_database_refuse_a_revoked_token_within_a_second(aiohttp_client, tmp_path,
                                                                                      pg_url):
    """Two apps (two replicas, one data directory) on one database: a token revoked through one is
    refused by the other, whose read cache had answered for it."""
    from service import keys
    from service.app import create_app
    from service.config import load_settings

    settings = load_settings(environ={}, database_url=pg_url, db_path=str(tmp_path / "unused.db"),
                             data_dir=str(tmp_path / "data"), secret_key="s", parse_workers=0)
    first, second = await aiohttp_client(create_app(settings)), await aiohttp_client(create_app(settings))
    user = await users.add_user(first.app[keys.DB], "ann@example.com", "Ann", True)
    token, _ = await users.issue_token(first.app[keys.DB], user.id)
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        assert (await second.get("/api/me", headers=headers)).status == 200
    await second.app[keys.DB].settle()
    assert (await second.get("/api/me", headers=headers)).status == 200
    assert await users.revoke_token(first.app[keys.DB], token=token) == 1

    async def refused() -> bool:
        return (await second.get("/api/me", headers=headers)).status == 401

    assert await _within(1.0, refused) < 1.0
    assert (await first.get("/readyz")).status == (await second.get("/readyz")).status == 200


async def test_both_backends_have_the_same_tables_columns_and_indexes(tmp_path, pg_server):
    """The store's SQL is shared, and a later copy between backends moves rows column by column: the
    PostgreSQL schema names the same tables, columns (in the same order) and indexes as SQLite's."""
    from service.db import Database
    from service.migrations import migrate

    lite = Database(str(tmp_path / "s.db"), readers=0)
    await lite.open()
    try:
        await migrate(lite.writer)
        conn = lite.writer
        names = [r[0] for r in await conn.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        sqlite_columns = {name: [r[1] for r in await conn.execute_fetchall(f"PRAGMA table_info({name})")]
                          for name in names}
        sqlite_indexes = {r[0] for r in await conn.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        await lite.close()
    server, template = pg_server
    pg_conn = await asyncpg.connect(pg.with_database(server, template))
    try:
        pg_columns: dict[str, list[str]] = {}
        for r in await pg_conn.fetch("SELECT table_name, column_name FROM information_schema.columns "
                                     "WHERE table_schema = 'public' AND table_name <> 'schema_version' "
                                     "ORDER BY table_name, ordinal_position"):
            pg_columns.setdefault(r[0], []).append(r[1])
        pg_indexes = {r[0] for r in await pg_conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)")}  # not those of keys and UNIQUE
    finally:
        await pg_conn.close()
    assert pg_columns == sqlite_columns
    assert pg_indexes == sqlite_indexes


# -- one-statement reads (postgres.Readers) -------------------------------------------------------

@asynccontextmanager
async def _opened(url: str, **kwargs):
    """A PostgresDatabase on ``url`` and an admin connection beside it, both closed at the end."""
    db = PostgresDatabase(url, **kwargs)
    await db.open()
    admin = await asyncpg.connect(url)
    try:
        yield db, admin
    finally:
        await admin.close()
        await db.close()


async def test_reads_use_at_most_their_connections_and_survive_failed_statements(pg_url):
    async with _opened(pg_url, readers=2) as (db, _):
        pids = await asyncio.gather(*[db.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.02)") for _ in range(8)])
        assert 1 <= len(set(pids)) <= 2  # eight reads at once queued for the two connections
        for _ in range(3):  # more failures than connections: none of them leaks one
            with pytest.raises(asyncpg.DivisionByZeroError):
                await db.fetchval("SELECT 1 / 0")
        assert await db.fetchval("SELECT 6 * 7") == 42
        assert set(await asyncio.gather(*[db.fetchval("SELECT pg_backend_pid()") for _ in range(4)])) <= set(pids)


async def test_a_cancelled_read_leaves_its_connection_and_the_next_reads_work(pg_url):
    async with _opened(pg_url, readers=1) as (db, _):
        first = await db.fetchval("SELECT pg_backend_pid()")
        slow = asyncio.ensure_future(db.fetchval("SELECT pg_backend_pid() FROM pg_sleep(5)"))
        waiting = asyncio.ensure_future(db.fetchval("SELECT 1"))  # queued behind it: cancelled while it waits
        await asyncio.sleep(0.2)
        slow.cancel()
        waiting.cancel()
        for task in (slow, waiting):
            with pytest.raises(asyncio.CancelledError):
                await task
        # The cancelled statement's connection is not reused (its state is unknown): a new one answers.
        assert await db.fetchval("SELECT pg_backend_pid()") != first
        assert await db.fetchval("SELECT 2") == 2


async def test_reads_reconnect_after_the_server_ends_their_connections(pg_url):
    async with _opened(pg_url, readers=2) as (db, admin):
        pids = set(await asyncio.gather(*[db.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.02)")
                                          for _ in range(4)]))
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(pids))
        await asyncio.sleep(0.2)  # the connections see their sockets close
        assert await db.fetchval("SELECT pg_backend_pid()") not in pids
        assert await db.fetchval("SELECT 3") == 3


async def test_a_read_that_ends_after_close_leaves_no_connection_behind(pg_url):
    async with _opened(pg_url, readers=2) as (db, admin):
        slow = asyncio.ensure_future(db.fetchval("SELECT 1 FROM pg_sleep(0.3)"))
        await asyncio.sleep(0.1)
        await db.close()
        assert await slow == 1

        async def only_admin_left() -> bool:  # idle: another test's cancelled pg_sleep may still run
            return await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND pid <> pg_backend_pid() AND state = 'idle'") == 0

        await _within(2.0, only_admin_left)


async def _temp_tables(db: PostgresDatabase) -> dict[str, tuple[int, int]]:
    """The TEMP tables of the pool's one connection: name -> (oid, live rows)."""
    async with db.connection() as conn:
        found = {}
        for r in await conn.fetch("SELECT c.oid, c.relname FROM pg_class c WHERE c.relpersistence = 't' "
                                  "AND c.relkind = 'r' AND c.relnamespace = pg_my_temp_schema()"):
            found[r["relname"]] = (r["oid"], await conn.fetchval(f'SELECT COUNT(*) FROM pg_temp."{r["relname"]}"'))
        return found


async def test_the_ingest_s_temporary_tables_are_cleared_by_each_write_and_dropped_after_enough_rows(pg_url):
    """Autovacuum never visits temporary tables: the space of the rows each write stages and deletes is
    never reused, so a connection's TEMP tables are dropped once they have held enough rows (the next
    write creates them again). Until then each write clears what the previous one left: the staging
    tables hold the last write's rows, never an accumulation."""
    user = None
    for limit, dropped in ((10**9, False), (1, True)):
        db = PostgresDatabase(pg_url, pool_size=1, temp_rows_before_discard=limit)  # one session for every write
        await db.open()
        try:
            user = user or await users.add_user(db, "ann@example.com", "Ann", True)
            seen = []
            for _ in range(3):  # the later passes forced: every file's rows staged and written again
                report = await bulk.ingest_paths(db, user.id, sample_files("alice"), workers=0, clock=lambda: NOW,
                                                 force=True)
                assert report.processed == len(sample_files("alice")) and report.failed == 0
                seen.append(await _temp_tables(db))
            assert set(seen[-1]) >= {"stage_messages", "stage_events", "ingest_touched", "touched_hours"}
            # the staging tables hold the last write's rows alone: at most one pass's, never three
            per_pass = await db.fetchval("SELECT COUNT(*) FROM activity_messages WHERE user_id = ?", (user.id,))
            assert all(0 < tables["stage_messages"][1] <= per_pass for tables in seen)
            assert all(rows == 0 for name, (_, rows) in seen[-1].items() if name.startswith("touched"))
            same = seen[0]["stage_messages"][0] == seen[1]["stage_messages"][0] == seen[2]["stage_messages"][0]
            assert same is not dropped
            for window in ("24h", "7d"):
                assert msgspec.to_builtins(await stats.home_stats(db, user.id, window, NOW)) \
                    == expected_stats("alice", window)
        finally:
            await db.close()


async def test_the_rollups_temporary_tables_start_from_empty_files_at_each_rebuild(pg_url):
    """The rollups fill two TEMP tables from usage_events (not staged, so not counted toward the
    connection's DISCARD TEMP): each rebuild truncates them, and rebuilding the same days again and
    again leaves them no larger (cleared by DELETE, they grew by a rebuild's rows each time)."""
    db = PostgresDatabase(pg_url, pool_size=1)  # one session for every transaction
    await db.open()
    try:
        user = await users.add_user(db, "ann@example.com", "Ann", True)
        report = await bulk.ingest_paths(db, user.id, sample_files("alice"), workers=0, clock=lambda: NOW)
        assert report.failed == 0
        async with db.transaction() as conn:  # and 5,000 more tool calls on one day: many pages of rows
            await conn.execute(
                "INSERT INTO usage_events (event_id, file_id, user_id, session_id, event_type, tool_name, source, "
                "is_error, ts) SELECT 'toolu_bulk_' || n, (SELECT MIN(id) FROM session_files), ?, 's-bulk', "
                "'tool_use', 'Bash', 'builtin', 0, '2026-11-20T10:00:00.000Z' FROM generate_series(1, 5000) AS n",
                (user.id,))
        seen = []
        for _ in range(3):
            async with db.transaction() as conn:  # every day with events to roll up again
                await conn.execute("INSERT INTO rollup_dirty_days (day) SELECT DISTINCT substr(ts, 1, 10) "
                                   "FROM usage_events ON CONFLICT DO NOTHING")
            assert await ingest_store.rebuild_rollups(db)  # alice's days: fewer than one rebuild's 31
            async with db.connection() as conn:
                seen.append((await conn.fetchval("SELECT pg_relation_size('pg_temp.rollup_events')"),
                             await conn.fetchval("SELECT COUNT(*) FROM pg_temp.rollup_events"),
                             await conn.fetchval("SELECT SUM(invocations) FROM admin_tool_days")))
        assert seen[0][0] > 0 and seen[0][1] > 0 and seen[0][2] > 0
        assert seen[0] == seen[1] == seen[2]
    finally:
        await db.close()


async def test_a_user_s_deletion_waits_for_a_write_of_their_rows(pg_url):
    """Schema 0018: the derived rows have no key of their user, so a deletion must not slip between a
    write's derivation and its commit. An ingest write holds the user's row as a key check did
    (lock_users); a rollup or retention holds WRITE_LOCK, which the deletion's trigger waits for."""
    from service.postgres import Connection
    from service.store.replicas import WRITE_LOCK, lock_all_users, lock_users

    script = (PG_SCHEMA_DIR / "0018_ingest_key_checks.sql").read_text()
    assert f"pg_advisory_xact_lock_shared({WRITE_LOCK[0]}, {WRITE_LOCK[1]})" in script
    db = PostgresDatabase(pg_url)
    await db.open()
    try:
        await migrate_database(db)
        writer = await asyncpg.connect(pg_url)
        deleter = await asyncpg.connect(pg_url)
        try:
            for lock, table in ((lock_users, "user_hours"), (lock_all_users, "admin_tool_days")):
                user = await users.add_user(db, f"gone-{table}@example.com")
                async with writer.transaction():
                    if lock is lock_users:
                        await lock(Connection(writer), "postgresql", {user.id})
                        await writer.execute("INSERT INTO user_hours (user_id, hour) VALUES ($1, '2026-11-20T10')",
                                             user.id)
                    else:
                        await lock(Connection(writer), "postgresql")
                        await writer.execute("INSERT INTO admin_tool_days (day, user_id, session_id, kind, name, "
                                             "source, invocations, errors) VALUES ('2026-11-20', $1, 's', 'tool', "
                                             "'Read', 'builtin', 1, 0)", user.id)
                    await deleter.execute("SET lock_timeout = 300")
                    with pytest.raises(asyncpg.LockNotAvailableError):
                        await deleter.execute("DELETE FROM users WHERE id = $1", user.id)
                await deleter.execute("SET lock_timeout = 0")
                assert await deleter.execute("DELETE FROM users WHERE id = $1", user.id) == "DELETE 1"
                assert await deleter.fetchval(f"SELECT COUNT(*) FROM {table} WHERE user_id = $1", user.id) == 0
        finally:
            await writer.close()
            await deleter.close()
    finally:
        await db.close()


async def test_insert_or_ignore_into_a_temp_key_table_adds_each_new_key_once(pg_url):
    """dialect.postgresql(): into the ingest's TEMP key tables, INSERT OR IGNORE is the distinct rows not
    there yet (no ON CONFLICT's speculative tuple per row); anywhere else, ON CONFLICT DO NOTHING."""
    from service.store.dialect import KEYED_TEMP, postgresql

    assert "ingest_touched" in KEYED_TEMP
    insert = postgresql("INSERT OR IGNORE INTO temp.ingest_touched (user_id, kind, key)\n"
                        "    SELECT 1, 'm', 'a' UNION ALL SELECT 1, 'm', 'a' UNION ALL SELECT 1, 's', 'a'\n"
                        "    UNION ALL SELECT 2, 'm', 'a';")
    assert "ON CONFLICT" not in insert and "NOT EXISTS" in insert
    assert postgresql("INSERT OR IGNORE INTO rollup_dirty_days (day) SELECT '2026-11-20'").endswith(
        "ON CONFLICT DO NOTHING")
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(postgresql("CREATE TEMP TABLE ingest_touched (user_id INTEGER NOT NULL, kind TEXT NOT NULL, "
                                      "key TEXT NOT NULL, PRIMARY KEY (user_id, kind, key))"))
        async with conn.transaction():
            await conn.execute("INSERT INTO pg_temp.ingest_touched VALUES (2, 'm', 'a')")
            await conn.execute(insert)
            await conn.execute(insert)
            rows = await conn.fetch("SELECT user_id, kind, key FROM pg_temp.ingest_touched ORDER BY 1, 2")
        assert [tuple(r) for r in rows] == [(1, "m", "a"), (1, "s", "a"), (2, "m", "a")]
    finally:
        await conn.close()
