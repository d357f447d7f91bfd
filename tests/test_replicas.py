"""Replicas on one PostgreSQL database share the work (issue 23, item 3): files are claimed from a shared
queue with a lease, the periodic jobs run on one replica at a time, and /readyz reports this replica's
worker. Two databases and workers in one process stand in for two replicas here; tests/test_replicas_processes.py
runs real `agnes-home serve` processes."""

from __future__ import annotations

import asyncio

import pytest

from service import keys
from service.app import create_app
from service.config import load_settings
from service.db import Database
from service.ingest.worker import REPROCESS, UPLOAD, IngestWorker
from service.migrations import migrate_database
from service.postgres import PostgresDatabase
from service.store import replicas, stats, users
from tests.conftest import NOW, ingest_files, make_corpus, sample_files
from tests.test_upload import form

pytestmark = pytest.mark.postgresql


async def _open(url: str) -> PostgresDatabase:
    db = PostgresDatabase(url, pool_size=4)
    await db.open()
    return db


async def _file(db, user_id: int, path: str) -> int:
    from service.store import ingest as store

    return await store.register_file(db, user_id, path, "upload", NOW)


async def test_a_claimed_file_is_nobody_else_s_until_its_lease_runs_out(pg_url):
    one, two = await _open(pg_url), await _open(pg_url)
    try:
        user = await users.add_user(one, "ann@example.com", "Ann", True)
        file_id = await _file(one, user.id, "/nowhere/a.jsonl")
        await replicas.put(one, file_id, user.id, UPLOAD, 0.0, True)
        assert (await replicas.claim(one, "one", 0.6)).file_id == file_id
        assert await replicas.claim(two, "two", 0.6) is None  # held: skipped, not waited for
        await asyncio.sleep(0.3)
        assert await replicas.renew(one, "one", 0.6) == 1  # a living replica keeps it
        await asyncio.sleep(0.4)
        assert await replicas.claim(two, "two", 0.6) is None
        await asyncio.sleep(0.8)  # one stops renewing (killed): the file goes to two after the lease
        assert (await replicas.claim(two, "two", 30)).file_id == file_id
        await replicas.finish(one, file_id, "one")  # one's late finish does not end two's claim
        assert await replicas.waiting(one) == 1
        await replicas.finish(two, file_id, "two")
        assert await replicas.waiting(one) == 0
    finally:
        await one.close()
        await two.close()


async def test_a_file_queued_again_while_claimed_is_processed_once_more_afterwards(pg_url):
    db = await _open(pg_url)
    try:
        user = await users.add_user(db, "ann@example.com", "Ann", True)
        file_id = await _file(db, user.id, "/nowhere/a.jsonl")
        await replicas.put(db, file_id, user.id, UPLOAD, 0.0, True)
        await replicas.put(db, file_id, user.id, UPLOAD, 0.0, True)  # still waiting: one row
        assert await replicas.waiting(db) == 1
        await replicas.claim(db, "r", 30)
        await replicas.put(db, file_id, None, REPROCESS, 30.0, False)  # catch-up work the claim covers
        await replicas.finish(db, file_id, "r")
        assert await replicas.waiting(db) == 0
        await replicas.put(db, file_id, user.id, UPLOAD, 0.0, True)
        await replicas.claim(db, "r", 30)
        await replicas.put(db, file_id, user.id, UPLOAD, 0.0, True)  # a re-upload while processed
        await replicas.finish(db, file_id, "r")
        assert await replicas.waiting(db) == 1
        assert (await replicas.claim(db, "r", 30)).file_id == file_id
    finally:
        await db.close()


async def test_each_user_s_first_file_goes_before_anyone_s_second(pg_url):
    db = await _open(pg_url)
    try:
        ann = await users.add_user(db, "ann@example.com", "Ann", True)
        bob = await users.add_user(db, "bob@example.com", "Bob", True)
        ann_files = [await _file(db, ann.id, f"/nowhere/a{i}.jsonl") for i in range(3)]
        for file_id in ann_files:
            await replicas.put(db, file_id, ann.id, UPLOAD, 0.0, True)
        bob_file = await _file(db, bob.id, "/nowhere/b.jsonl")
        await replicas.put(db, bob_file, bob.id, UPLOAD, 0.0, True)
        order = [(await replicas.claim(db, "r", 30)).file_id for _ in range(4)]
        assert order == [ann_files[0], bob_file, *ann_files[1:]]
    finally:
        await db.close()


async def test_a_periodic_job_runs_on_one_replica_at_a_time(pg_url):
    one, two = await _open(pg_url), await _open(pg_url)
    try:
        async with replicas.only_one(one, "scan") as mine:
            assert mine
            async with replicas.only_one(two, "scan") as theirs, replicas.only_one(two, "rollups") as other_job:
                assert not theirs and other_job
        async with replicas.only_one(two, "scan") as theirs:
            assert theirs
        # A replica that dies holding a job's lock (its connection ends) leaves it to the others.
        async with one.connection() as conn:
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", replicas.LOCK_SPACE,
                                       replicas.JOBS["prune"])
            async with replicas.only_one(two, "prune") as theirs:
                assert not theirs
            await conn.execute("SELECT pg_advisory_unlock_all()")
    finally:
        await one.close()
        await two.close()


def _settings(tmp_path, url: str, **overrides):
    return load_settings(environ={}, db_path=str(tmp_path / "agnes.db"), data_dir=str(tmp_path / "data"),
                         secret_key="test-secret", parse_workers=0, database_url=url, **overrides)


async def test_two_replicas_share_the_watched_directory_and_count_each_file_once(pg_url, tmp_path):
    files = make_corpus(tmp_path / "watched" / "alice", copies=8, pad=20_000)
    settings = _settings(tmp_path, pg_url, session_dir=str(tmp_path / "watched"), scan_interval=0.2)
    one, two = await _open(pg_url), await _open(pg_url)
    outcomes: dict[str, list] = {"one": [], "two": []}
    workers = [IngestWorker(db, settings, lambda: NOW, on_outcome=outcomes[name].append)
               for name, db in (("one", one), ("two", two))]
    try:
        alice = await users.add_user(one, "alice@example.com", "Alice", True)
        for worker in workers:
            worker.start()
        await asyncio.wait_for(_scanned_and_drained(one, files), 60)
        processed = {name: [o.file_id for o in found if o.status == "processed"] for name, found in outcomes.items()}
        every = processed["one"] + processed["two"]
        assert len(every) == len(set(every)) == files  # each file once, by one replica
        assert processed["one"] and processed["two"]  # shared, not one replica doing it all
        # The numbers are those of one clean ingest of the same files (SQLite, the reference).
        reference = Database(str(tmp_path / "ref.db"))
        await reference.open()
        try:
            await migrate_database(reference)
            ref_alice = await users.add_user(reference, "alice@example.com", "Alice", True)
            paths = sorted(str(p) for p in (tmp_path / "watched" / "alice").iterdir())
            await ingest_files(reference, ref_alice.id, paths)
            for window in ("24h", "7d", "30d"):
                assert await stats.home_stats(one, alice.id, window, NOW) == \
                    await stats.home_stats(reference, ref_alice.id, window, NOW)
        finally:
            await reference.close()
    finally:
        for worker in workers:
            await worker.stop()
        await one.close()
        await two.close()


async def _scanned_and_drained(db: PostgresDatabase, files: int) -> None:
    while await db.fetchval("SELECT COUNT(*) FROM session_files WHERE processed_at IS NOT NULL") < files \
            or await replicas.waiting(db):
        await asyncio.sleep(0.05)


async def test_readyz_fails_when_this_replica_cannot_renew_its_claims(aiohttp_client, pg_url, tmp_path):
    client = await aiohttp_client(create_app(_settings(tmp_path, pg_url, claim_lease=3.0)))
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["checks"]["worker"] == "ok"
    worker = client.app[keys.WORKER]
    worker.shared.last_renewed -= 10  # as after 10 s of failed renewals
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["failed"] == ["worker"]
    assert body["checks"]["worker"].startswith("claims not renewed for")


async def test_an_upload_answered_200_is_in_the_shared_queue_or_processed_already(aiohttp_client, pg_url, tmp_path):
    client = await aiohttp_client(create_app(_settings(tmp_path, pg_url)))
    db = client.app[keys.DB]
    worker = client.app[keys.WORKER]
    await worker.stop()  # nobody consumes: the file must wait in the database, not in this process
    user = await users.add_user(db, "ann@example.com", "Ann", True)
    token, _ = await users.issue_token(db, user.id)
    with open(sample_files("alice")[0], "rb") as fh:
        body = fh.read()
    resp = await client.post("/api/upload/sessions", data=form("a.jsonl", body),
                             headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    assert await replicas.waiting(db) == 1
    row = await db.fetchone("SELECT f.user_id, q.claimed_by FROM ingest_queue q JOIN session_files f ON f.id = q.file_id")
    assert (row[0], row[1]) == (user.id, None)



async def test_every_replica_s_backlog_shows_in_this_replica_s_metrics(aiohttp_client, pg_url, tmp_path):
    client = await aiohttp_client(create_app(_settings(tmp_path, pg_url)))
    db = client.app[keys.DB]
    worker = client.app[keys.WORKER]
    await worker.stop()
    user = await users.add_user(db, "ann@example.com", "Ann", True)
    for name in ("a", "b"):
        await replicas.put(db, await _file(db, user.id, f"/nowhere/{name}.jsonl"), user.id, UPLOAD, 0.0, True)
    await worker._quarantine_step(NOW)  # a tick's refresh
    assert worker.depth == 2 and worker.lag() >= 0
    body = await (await client.get("/metrics")).text()
    assert "agnes_ingest_queue_depth 2.0" in body


async def test_a_shutdown_stops_the_worker_even_when_a_step_s_clean_up_fails_while_cancelled(
        aiohttp_client, pg_url, tmp_path):
    """A rollback on a connection the cancellation closed raises its own error: the tick must not log it
    and go on (the shutdown would wait for it forever)."""
    client = await aiohttp_client(create_app(_settings(tmp_path, pg_url)))
    worker = client.app[keys.WORKER]
    entered = asyncio.Event()

    async def rollup_step(now) -> None:
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cannot call Transaction.rollback(): the underlying connection is closed") from None

    worker._rollup_step = rollup_step
    worker._tasks.append(asyncio.create_task(worker._tick_loop()))
    await asyncio.wait_for(entered.wait(), 10)
    await asyncio.wait_for(worker.stop(), 10)
