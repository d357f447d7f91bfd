"""`agnes-home copy-database --to postgresql://...` (issue 23, item 4): a SQLite install, filled through
the real pipeline, copied into an empty PostgreSQL database serves the same numbers; a database that
is not empty is refused."""

from __future__ import annotations

import json
import sqlite3

import pytest

from service import keys
from service.app import create_app
from service.config import load_settings
from service.db import Database
from service.migrations import migrate_database
from service.store import ingest as store
from service.store import sessions, tables, users
from tests import pg
from tests.conftest import NOW, SAMPLE_USERS, expected_stats, ingest_files, sample_files
from tests.test_cli import run

pytestmark = pytest.mark.postgresql


async def _fill(path: str, data_dir) -> dict[str, str]:
    """Users, tokens, a sign-in, a table and every sample transcript, as an install has them; each
    user's token."""
    db = Database(path)
    await db.open()
    try:
        await migrate_database(db)
        found = {}
        for name in (*SAMPLE_USERS, "ops"):
            user = await users.add_user(db, f"{name}@example.com", name.title(), True)
            found[name], meta = await users.issue_token(db, user.id, "laptop")
            await sessions.start(db, user.id, meta.id, 3600)
            if name != "ops":
                await ingest_files(db, user.id, sample_files(name))
        (data_dir / "t.csv").write_text("a\n1\n")
        await tables.register(db, "customers", "t.csv", rows=1)
        await tables.grant(db, "customers", 1)
        await store.set_attribution(db, "skill", "forecast", "curated", "plug-1")
        while await store.rebuild_rollups(db):
            pass
        return found
    finally:
        await db.close()


def _counts_sqlite(path: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite_%'")]
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}
    finally:
        conn.close()


async def _counts_pg(db) -> dict[str, int]:
    names = [r[0] for r in await db.fetchall(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' "
        "AND relname <> 'schema_version'")]
    return {name: await db.fetchval(f'SELECT COUNT(*) FROM "{name}"') for name in names}


async def _served(client, tokens: dict[str, str]) -> list:
    client.app[keys.CLOCK].fixed = NOW
    answers = []
    for name, token in sorted(tokens.items()):
        headers = {"Authorization": f"Bearer {token}"}
        for path in ("/api/me", "/api/me/home-stats?window=24h", "/api/me/home-stats?window=7d",
                     "/api/me/activity?range=30d", "/api/me/sessions", "/api/sync/manifest"):
            resp = await client.get(path, headers=headers)
            body = await resp.json()
            body.pop("server_time", None)  # the one field that is the clock's, not the data's
            answers.append((name, path, resp.status, body))
    resp = await client.get("/api/admin/usage?range=30d", headers={"Authorization": f"Bearer {tokens['ops']}"})
    answers.append(("ops", "admin", resp.status, await resp.json()))
    return answers


async def test_a_sqlite_install_copied_to_postgresql_serves_the_same_numbers(aiohttp_client, empty_pg, tmp_path):
    path = str(tmp_path / "cli.db")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tokens = await _fill(path, data_dir)
    before = _counts_sqlite(path)
    assert before["session_summaries"] and before["user_messages"] and before["usage_tool_daily"]

    done = run(tmp_path, "copy-database", "--to", empty_pg, "--json")
    reported = {r["table"]: (r["sqlite"], r["postgresql"]) for r in json.loads(done.stdout)}
    assert all(a == b for a, b in reported.values())

    common = dict(environ={}, data_dir=str(data_dir), secret_key="test-secret", parse_workers=0,
                  admin_emails=["ops@example.com"], scan_interval=3600)
    on_sqlite = await aiohttp_client(create_app(load_settings(db_path=path, **common)))
    on_pg = await aiohttp_client(create_app(load_settings(db_path=str(tmp_path / "unused.db"),
                                                          database_url=empty_pg, **common)))
    copied = await _counts_pg(on_pg.app[keys.DB])
    assert copied == before  # every table, every row
    served = await _served(on_pg, tokens)
    assert {status for _, _, status, _ in served} == {200}
    assert served == await _served(on_sqlite, tokens)
    assert [body for name, path, _, body in served if (name, path) == ("alice", "/api/me/home-stats?window=7d")] \
        == [expected_stats("alice", "7d")]
    # New rows continue after the copied ids.
    user = await users.add_user(on_pg.app[keys.DB], "new@example.com", "New", True)
    assert user.id == len(SAMPLE_USERS) + 2  # the samples' analysts and ops came first


async def test_copying_into_a_database_that_is_not_empty_is_refused_and_changes_nothing(empty_pg, tmp_path):
    path = str(tmp_path / "cli.db")
    (tmp_path / "data").mkdir()
    await _fill(path, tmp_path / "data")
    run(tmp_path, "copy-database", "--to", empty_pg)
    again = run(tmp_path, "copy-database", "--to", empty_pg, check=False)
    assert again.returncode == 1
    assert "the target database is not empty" in again.stderr and "fills an empty database only" in again.stderr
    bad = run(tmp_path, "copy-database", "--to", "sqlite:///x.db", check=False)
    assert bad.returncode == 1 and "--to must be a postgresql:// URL" in bad.stderr
