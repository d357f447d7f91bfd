"""The Database's read paths: small reads inline on the loop, slow or blocked ones on a reader thread."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from service.db import INLINE_READ_BUDGET_S, Database

# A read that takes far longer than the inline budget: a recursive count to two million.
SLOW_SQL = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000) "
            "SELECT COUNT(*), SUM(i) FROM n")


@pytest.fixture
async def database(tmp_path):
    db = Database(str(tmp_path / "d.db"))
    await db.open()
    await db.execute_write("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    yield db
    await db.close()


async def test_a_small_read_runs_inline_and_sees_the_last_commit(database):
    await database.executemany_write("INSERT INTO t (k, v) VALUES (?, ?)", [(1, "a"), (2, "b")])
    before = (database.inline_reads, database.thread_reads)
    rows = await database.fetchall("SELECT k, v FROM t ORDER BY k")
    assert [tuple(r) for r in rows] == [(1, "a"), (2, "b")]
    assert (database.inline_reads, database.thread_reads) == (before[0] + 1, before[1])
    await database.execute_write("UPDATE t SET v = 'z' WHERE k = 2")
    assert await database.fetchval("SELECT v FROM t WHERE k = 2") == "z"


async def test_a_slow_read_is_interrupted_on_the_loop_and_redone_on_a_thread(database):
    loop = asyncio.get_running_loop()
    before = database.thread_reads
    started = loop.time()
    # While the slow read runs on a thread, the loop keeps ticking: count its wake-ups.
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    row = await database.fetchone(SLOW_SQL)
    elapsed = loop.time() - started
    task.cancel()
    assert tuple(row) == (2_000_000, 2_000_000 * 2_000_001 // 2)
    assert database.thread_reads == before + 1
    assert elapsed > 20 * INLINE_READ_BUDGET_S  # it really was slow, so the loop was not held for it
    assert ticks >= 2


async def test_the_inline_connection_refuses_writes(database):
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
        await database.fetchall("INSERT INTO t (k, v) VALUES (3, 'c') RETURNING k")
    assert await database.fetchval("SELECT COUNT(*) FROM t") == 0


async def test_an_sql_error_is_raised_not_retried(database):
    before = database.thread_reads
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await database.fetchall("SELECT * FROM missing")
    assert database.thread_reads == before


async def test_a_write_cancelled_while_beginning_leaves_no_transaction_behind(database):
    started = asyncio.Event()

    async def write() -> None:
        async with database.transaction() as conn:
            started.set()
            await conn.execute("INSERT INTO t (k, v) VALUES (1, 'never')")

    task = asyncio.create_task(write())
    await asyncio.sleep(0)  # the task now waits for BEGIN IMMEDIATE (worker.stop() cancels there)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not started.is_set()
    await asyncio.sleep(0.05)
    assert not database.writer.in_transaction
    await database.execute_write("INSERT INTO t (k, v) VALUES (2, 'later')")
    assert [tuple(r) for r in await database.fetchall("SELECT k, v FROM t")] == [(2, "later")]


async def test_concurrent_reads_of_one_key_share_one_read_and_a_hung_up_caller_does_not_stop_it(db):
    calls = 0

    async def read():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"answer": calls}

    first = asyncio.ensure_future(db.cached_read(("k",), read))
    await asyncio.sleep(0)
    first.cancel()  # the client that started the read hangs up
    answers = await asyncio.gather(*(db.cached_read(("k",), read) for _ in range(10)))
    assert calls == 1 and answers == [{"answer": 1}] * 10
    assert await db.cached_read(("k",), read) == {"answer": 1}  # kept afterwards, while nothing changed
    await db.execute_write("INSERT INTO rollup_dirty_days (day) VALUES ('2026-01-01')")  # a change: read again
    assert await db.cached_read(("k",), read) == {"answer": 2}
