"""The watched directory: owners by id or email local part, change detection, unknown owners."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta

import pytest

from service import keys
from service.app import create_app
from service.config import load_settings
from tests.conftest import EXPECTED, NOW, SAMPLES, make_caller


@pytest.fixture
async def watched(database_url, aiohttp_client, tmp_path):
    root = tmp_path / "watched"
    root.mkdir()
    settings = load_settings(environ={}, database_url=database_url,
                             db_path=str(tmp_path / "w.db"), data_dir=str(tmp_path / "data"),
                             secret_key="s", parse_workers=0, session_dir=str(root), scan_interval=3600)
    client = await aiohttp_client(create_app(settings))
    client.app[keys.CLOCK].fixed = NOW
    # The worker's start-up tick scans the (empty) directory; let it end first, or it could race a
    # test's own files and ticks (seen under load: a scan registering a file the test ingests itself).
    await client.app[keys.WORKER].ticked.wait()
    return client, root


async def stats(client, caller, window):
    resp = await client.get(f"/api/me/home-stats?window={window}", headers=caller.headers)
    return await resp.json()


async def tick(client):
    worker = client.app[keys.WORKER]
    await worker.tick()
    await worker.drain()
    return worker


async def test_owner_by_local_part_and_by_id_with_nested_dirs(watched):
    client, root = watched
    db = client.app[keys.DB]
    alice = await make_caller(db, "alice@example.com")
    bob = await make_caller(db, "bob@example.com")
    # alice by email local part, with subagent files nested as newer clients write them
    nested = root / "alice" / "-home-alice-work" / "8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e" / "subagents"
    nested.mkdir(parents=True)
    for path in (SAMPLES / "alice").glob("*.jsonl"):
        target = nested / path.name if path.name.startswith("agent-") else root / "alice" / path.name
        shutil.copy(path, target)
    shutil.copytree(SAMPLES / "bob", root / str(bob.user.id))  # bob by numeric user id
    carol = await make_caller(db, "carol@example.com")
    shutil.copytree(SAMPLES / "carol", root / "carol" / "-home-carol-work")
    await tick(client)
    for name, caller in (("alice", alice), ("bob", bob), ("carol", carol)):
        for window in ("24h", "7d"):
            assert await stats(client, caller, window) == {**EXPECTED["users"][name][window], "last_pull_at": None}


async def test_unknown_owner_is_reported_not_dropped_silently(watched, caplog):
    client, root = watched
    (root / "mallory").mkdir()
    shutil.copy(SAMPLES / "bob" / "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d.jsonl", root / "mallory" / "x.jsonl")
    worker = await tick(client)
    assert worker.unknown_owners == {"mallory"}
    assert "mallory" in caplog.text
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM session_files") == 0
    # Once the user exists, the next scan picks the files up.
    caller = await make_caller(client.app[keys.DB], "mallory@example.com")
    await tick(client)
    assert worker.unknown_owners == set()
    assert (await stats(client, caller, "24h"))["prompts"] == 2


async def test_only_changed_files_are_reprocessed(watched):
    client, root = watched
    db = client.app[keys.DB]
    caller = await make_caller(db, "carol@example.com")
    (root / "carol").mkdir()
    src = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    path = root / "carol" / "s.jsonl"
    cut = src.index(b"\n", len(src) // 2) + 40
    path.write_bytes(src[:cut])
    await tick(client)
    first = await db.fetchone("SELECT extracted_at, content_hash FROM session_summaries s JOIN session_files f "
                              "ON f.id = s.file_id")
    partial = (await stats(client, caller, "24h"))["prompts"]

    await tick(client)  # nothing changed: not even queued
    assert client.app[keys.WORKER].depth == 0
    assert tuple(await db.fetchone("SELECT extracted_at, content_hash FROM session_summaries s JOIN session_files f "
                                   "ON f.id = s.file_id")) == tuple(first)

    os.utime(path, ns=(10**18, 10**18))  # touched, same content: hash says unchanged, nothing rewritten
    await tick(client)
    assert (await db.fetchone("SELECT extracted_at FROM session_summaries"))[0] == first[0]
    assert (await db.fetchone("SELECT mtime_ns FROM session_files"))[0] == 10**18

    path.write_bytes(src)  # grown: reprocessed
    await tick(client)
    assert (await stats(client, caller, "24h"))["prompts"] == 5 > partial


async def test_files_already_known_under_another_origin_are_not_reprocessed_by_scans(watched):
    """A bulk `agnes-home ingest` of the watched directory must not make every scan redo those files."""
    from service.ingest import bulk

    from service.timeutil import utcnow

    client, root = watched
    client.app[keys.CLOCK].fixed = None  # real clock: a re-registration would move received_at
    db = client.app[keys.DB]
    caller = await make_caller(db, "dora@example.com")
    (root / "dora").mkdir()
    shutil.copy(SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl", root / "dora" / "a.jsonl")
    await bulk.ingest_paths(db, caller.user.id, bulk.expand([str(root / "dora")]), workers=0, clock=utcnow)
    before = tuple(await db.fetchone("SELECT id, origin, received_at, processed_at FROM session_files"))
    await tick(client)
    await tick(client)
    assert tuple(await db.fetchone("SELECT id, origin, received_at, processed_at FROM session_files")) == before
    assert await db.fetchval("SELECT COUNT(*) FROM session_files") == 1


# SQLite's in-memory queue: the file is dropped and the worker goes on. On PostgreSQL a file whose outcome
# could not be stored stays claimed until its lease ends and is retried then (tests/test_replicas*.py).
@pytest.mark.sqlite_only
async def test_worker_keeps_going_when_even_recording_a_failure_fails(watched, monkeypatch, tmp_path):
    from service.store import ingest as store

    client, root = watched
    db = client.app[keys.DB]
    caller = await make_caller(db, "erin@example.com")
    worker = client.app[keys.WORKER]

    async def locked(*args, **kwargs):
        raise RuntimeError("database is locked")

    missing = await store.register_file(db, caller.user.id, str(tmp_path / "gone.jsonl"), "upload", NOW)
    monkeypatch.setattr(store, "record_failure", locked)
    worker.enqueue(missing)
    await worker.drain()
    assert worker.health() == "ok"
    monkeypatch.undo()
    good = tmp_path / "good.jsonl"
    shutil.copy(SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl", good)
    worker.enqueue(await store.register_file(db, caller.user.id, str(good), "upload", NOW))
    await worker.drain()
    assert (await stats(client, caller, "24h"))["prompts"] == 2


def test_priorities_are_head_starts_so_uploads_cannot_starve_other_work(monkeypatch):
    """An upload goes before a watched file queued at the same moment, but not before one that
    has waited longer than the watched kind's delay."""
    from service.ingest import worker as worker_module
    from service.ingest.worker import REPROCESS, UPLOAD, WATCH, IngestWorker

    clock = [1000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    w = IngestWorker.__new__(IngestWorker)  # only the queue is exercised here
    w.queue = worker_module.FairQueue()
    w._pending, w._again = {}, set()
    w.enqueue(1, WATCH, user_id=7)
    w.enqueue(2, UPLOAD, user_id=7)   # same moment: the upload first
    clock[0] += 6
    w.enqueue(3, UPLOAD, user_id=7)   # the watched file has waited 6 s > 5 s: it beats this upload
    w.enqueue(4, REPROCESS)
    order = [w.queue.get_nowait()[0] for _ in range(4)]
    assert order == [2, 4, 1, 3]      # reprocessing is one more user: its turn comes second


def test_one_analysts_push_of_many_files_does_not_hold_up_anothers_upload(monkeypatch):
    """Fair turns between users: bob queues six files; ana's one upload, queued while bob's first is
    being processed, goes next, not after all of bob's. A user idle for a while starts at the current
    turn, not with credit saved up."""
    from service.ingest import worker as worker_module
    from service.ingest.worker import UPLOAD, WATCH, FairQueue

    clock = [1000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    q = FairQueue()
    for file_id in range(1, 7):
        q.put(file_id, UPLOAD, 2, clock[0])
    assert q.get_nowait() == (1, UPLOAD, 2)
    clock[0] += 30
    q.put(100, UPLOAD, 1, clock[0])
    q.put(101, WATCH, 3, clock[0] + 5)
    assert [q.get_nowait()[0] for _ in range(3)] == [100, 101, 2]  # both idle users start at this turn
    for _ in range(3):
        q.get_nowait()
    assert q.qsize() == 1 and q.get_nowait()[0] == 6
    q.put(102, UPLOAD, 1, clock[0])   # ana again, after bob's turns: no backlog of turns owed to anyone
    q.put(103, UPLOAD, 2, clock[0] + 1)
    q.put(104, UPLOAD, 1, clock[0] + 2)
    assert [q.get_nowait()[0] for _ in range(3)] == [102, 103, 104]
    with pytest.raises(worker_module.asyncio.QueueEmpty):
        q.get_nowait()


async def test_a_relative_session_dir_still_recognises_known_files(database_url, aiohttp_client, tmp_path, monkeypatch):
    """AGNES_SESSION_DIR=sessions (relative): unchanged files are not re-registered on every scan."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sessions" / "fay").mkdir(parents=True)
    shutil.copy(SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl", tmp_path / "sessions" / "fay" / "a.jsonl")
    settings = load_settings(environ={}, database_url=database_url,
                             db_path=str(tmp_path / "r.db"), data_dir=str(tmp_path / "data"),
                             secret_key="s", parse_workers=0, session_dir="sessions", scan_interval=3600)
    client = await aiohttp_client(create_app(settings))  # real clock: a re-registration would move received_at
    db = client.app[keys.DB]
    await make_caller(db, "fay@example.com")
    await tick(client)
    first = tuple(await db.fetchone("SELECT id, received_at, processed_at FROM session_files"))
    assert first[2] is not None
    worker = await tick(client)
    assert worker.depth == 0
    assert tuple(await db.fetchone("SELECT id, received_at, processed_at FROM session_files")) == first


async def test_symlinks_and_special_files_are_never_read(watched, tmp_path, caplog):
    """The watched directory is writable by others: nothing in it may lead the parser elsewhere."""
    import asyncio

    client, root = watched
    db = client.app[keys.DB]
    gina = await make_caller(db, "gina@example.com")
    (root / "gina").mkdir()
    own = root / "gina" / "mine.jsonl"
    shutil.copy(SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl", own)
    await asyncio.wait_for(tick(client), 30)
    before = await stats(client, gina, "7d")
    assert before["prompts"] == 5

    # Someone else's transcript outside the directory, reached by a symlinked owner directory...
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(SAMPLES / "bob" / "6f5e4d3c-2b1a-4098-8f7e-6d5c4b3a2918.jsonl", outside / "theirs.jsonl")
    hank = await make_caller(db, "hank@example.com")
    (root / "hank").symlink_to(outside, target_is_directory=True)
    # ... and by a symlink put in place of a file already registered.
    own.unlink()
    own.symlink_to(outside / "theirs.jsonl")
    await asyncio.wait_for(tick(client), 30)
    assert await db.fetchval("SELECT COUNT(*) FROM session_files WHERE path LIKE ?", (f"%{os.sep}hank{os.sep}%",)) == 0
    assert "not scanning" in caplog.text and "hank" in caplog.text  # said, not silently dropped
    assert (await stats(client, hank, "7d"))["sessions"] == 0
    worker = client.app[keys.WORKER]
    await client.app[keys.DB].execute_write("UPDATE session_files SET processor_version = 0")  # force a re-read
    await asyncio.wait_for(tick(client), 30)
    failure = await db.fetchval("SELECT last_error FROM session_files WHERE path = ?", (str(own),))
    assert failure and "symbolic link" in failure  # refused, not followed
    assert await stats(client, gina, "7d") == before  # still her own numbers

    # A parent directory swapped for a symlink is refused too (O_NOFOLLOW guards the last part only).
    own.unlink()
    (root / "gina" / "deep").mkdir()
    nested = root / "gina" / "deep" / "n.jsonl"
    shutil.copy(SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl", nested)
    await asyncio.wait_for(tick(client), 30)
    assert await db.fetchval("SELECT processor_version FROM session_files WHERE path = ?", (str(nested),)) > 0
    shutil.rmtree(root / "gina" / "deep")
    (outside / "n.jsonl").write_bytes((outside / "theirs.jsonl").read_bytes())
    (root / "gina" / "deep").symlink_to(outside, target_is_directory=True)
    await client.app[keys.DB].execute_write("UPDATE session_files SET processor_version = 0 WHERE path = ?",
                                            (str(nested),))
    await asyncio.wait_for(tick(client), 30)
    failure = await db.fetchval("SELECT last_error FROM session_files WHERE path = ?", (str(nested),))
    assert failure and "symbolic link" in failure
    own.write_bytes(b"")  # the FIFO below takes this registered file's place

    # A FIFO where a transcript was: refused at once instead of blocking the parser for everyone.
    own.unlink()
    os.mkfifo(own)
    await client.app[keys.DB].execute_write("UPDATE session_files SET processor_version = 0, failure_count = 0, "
                                            "next_attempt_at = NULL")
    await asyncio.wait_for(tick(client), 30)
    failure = await db.fetchval("SELECT last_error FROM session_files WHERE path = ?", (str(own),))
    assert "not a regular file" in failure
    assert worker.depth == 0


async def test_a_folder_keeps_its_owner_and_one_bad_name_stops_nothing(watched, caplog):
    """The owner is resolved once and stored: a second user with the same local part, added later,
    does not orphan the folder. A file name that is not UTF-8 is skipped, and said once."""
    client, root = watched
    db = client.app[keys.DB]
    ana = await make_caller(db, "ana@example.com")
    sample = SAMPLES / "bob" / "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d.jsonl"
    (root / "ana").mkdir()
    shutil.copy(sample, root / "ana" / "first.jsonl")
    await tick(client)
    await make_caller(db, "ana@other.org")  # "ana" now names two users
    fd = os.open(os.fsencode(root / "ana") + b"/bad\xff.jsonl", os.O_WRONLY | os.O_CREAT)
    os.write(fd, sample.read_bytes())
    os.close(fd)
    shutil.copy(SAMPLES / "bob" / "0d9e8f7a-6b5c-4d3e-9f2a-1b0c9d8e7f6a.jsonl", root / "ana" / "second.jsonl")
    for _ in range(2):
        await tick(client)
    owners = {os.path.basename(r[0]): r[1] for r in await db.fetchall("SELECT path, user_id FROM session_files")}
    assert owners == {"first.jsonl": ana.user.id, "second.jsonl": ana.user.id}
    assert sum("is not UTF-8" in r.getMessage() for r in caplog.records) == 1


async def test_a_numeric_folder_that_is_also_a_local_part_is_ambiguous(watched, caplog):
    client, root = watched
    db = client.app[keys.DB]
    first = await make_caller(db, "first@example.com")
    numeric = await make_caller(db, f"{first.user.id + 2}@example.com")  # local part = the next user's id
    third = await make_caller(db, "third@example.com")
    assert third.user.id == first.user.id + 2
    for owner, name in ((str(third.user.id), "x.jsonl"), (str(first.user.id), "y.jsonl")):
        (root / owner).mkdir()
        shutil.copy(SAMPLES / "bob" / "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d.jsonl", root / owner / name)
    await tick(client)
    owners = {os.path.basename(r[0]): r[1] for r in await db.fetchall("SELECT path, user_id FROM session_files")}
    assert owners == {"y.jsonl": first.user.id}  # "3" is user 3 and 3@example.com's local part: neither
    assert numeric.user.id not in owners.values()
    assert any("matches no user, or several" in r.getMessage() for r in caplog.records)


async def test_a_quarantined_file_is_retried_when_it_changes(database_url, aiohttp_client, tmp_path):
    """Quarantine holds a file while it stays as it failed; new content is a new chance, as a new
    upload is, so a session that goes on growing is not left uncounted until an operator acts."""
    import asyncio

    from service.store import ingest as store

    root = tmp_path / "watched"
    (root / "ida").mkdir(parents=True)
    settings = load_settings(environ={}, database_url=database_url,
                             db_path=str(tmp_path / "w.db"), data_dir=str(tmp_path / "data"),
                             secret_key="s", parse_workers=0, session_dir=str(root), scan_interval=3600,
                             max_failures=1)
    client = await aiohttp_client(create_app(settings))
    client.app[keys.CLOCK].fixed = NOW
    db = client.app[keys.DB]
    ida = await make_caller(db, "ida@example.com")
    src = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    cut = src.index(b"\n", len(src) // 2) + 1
    path = root / "ida" / "s.jsonl"
    path.write_bytes(src[:cut])
    await asyncio.wait_for(tick(client), 30)
    partial = (await stats(client, ida, "24h"))["prompts"]
    assert 0 < partial < 5

    # A FIFO takes the file's place: refused, and with max_failures=1 quarantined at once.
    path.unlink()
    os.mkfifo(path)
    await db.execute_write("UPDATE session_files SET processor_version = 0")  # force a re-read
    await asyncio.wait_for(tick(client), 30)
    [held] = await store.quarantined(db)
    assert "not a regular file" in held["last_error"]
    fifo = os.stat(path, follow_symlinks=False)
    assert tuple(await db.fetchone("SELECT failed_size, failed_mtime_ns FROM session_files")) == (
        fifo.st_size, fifo.st_mtime_ns)

    # The whole transcript arrives as a regular file: retried and counted, quarantine cleared.
    path.unlink()
    path.write_bytes(src)
    worker = await asyncio.wait_for(tick(client), 30)
    assert await store.quarantined(db) == []
    assert (await stats(client, ida, "24h"))["prompts"] == 5
    assert await db.fetchval("SELECT failure_count FROM session_files") == 0

    # Quarantined while the file is as it is now (a failure that is not the content's): scans
    # leave it alone until it changes.
    file_id = held["id"]
    st = path.stat()
    assert await store.record_failure(db, file_id, "OSError: I/O error", NOW, max_failures=1,
                                      backoff=timedelta(seconds=30), stat=(st.st_size, st.st_mtime_ns))
    await asyncio.wait_for(tick(client), 30)
    assert [q["id"] for q in await store.quarantined(db)] == [file_id]
    assert worker.depth == 0
    os.utime(path, ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))
    await asyncio.wait_for(tick(client), 30)
    assert await store.quarantined(db) == []
    assert (await stats(client, ida, "24h"))["prompts"] == 5


_FLIPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
a, b, stop_at = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2]), time.monotonic() + float(sys.argv[3])
print("flipping", flush=True)
while time.monotonic() < stop_at:
    if libc.syscall(316, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:  # renameat2 on x86_64
        sys.exit("renameat2: errno %d" % ctypes.get_errno())
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="renameat2's syscall number is x86_64's")
async def test_a_folder_flipped_with_a_symlink_twin_never_reads_another_users_file(watched, tmp_path):
    """A watched folder swapped for a symlink to another analyst's uploads between check and open
    (renameat2 RENAME_EXCHANGE in a loop, in another process) must never count their file for the owner."""
    import asyncio
    import subprocess
    import sys
    import time

    client, root = watched
    db = client.app[keys.DB]
    gina = await make_caller(db, "gina@example.com")
    bob = await make_caller(db, "bob@example.com")
    bob_sample = SAMPLES / "bob" / "6f5e4d3c-2b1a-4098-8f7e-6d5c4b3a2918.jsonl"
    body = bob_sample.read_bytes()
    resp = await client.post("/api/upload/sessions", headers=bob.headers,
                             data=_multipart(body, "x.jsonl"))
    assert resp.status == 200, await resp.text()
    await client.app[keys.WORKER].drain()
    bob_dir = tmp_path / "data" / "sessions" / str(bob.user.id)
    assert (bob_dir / "x.jsonl").read_bytes() == body
    bob_sessions = {r[0] for r in await db.fetchall(
        "SELECT session_id FROM session_summaries WHERE user_id = ?", (bob.user.id,))}
    assert bob_sessions
    # A name only bob's folder has: the scan must never list it as gina's either.
    resp = await client.post("/api/upload/sessions", headers=bob.headers, data=_multipart(body, "only-bob.jsonl"))
    assert resp.status == 200

    # gina's own file, of another size, so each flip makes a scan see a change and re-queue it.
    proj = root / "gina" / "proj"
    proj.mkdir(parents=True)
    (proj / "x.jsonl").write_bytes((SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes())
    (root / "gina" / "proj-twin").symlink_to(bob_dir, target_is_directory=True)
    await asyncio.wait_for(tick(client), 30)
    assert (await stats(client, gina, "7d"))["prompts"] == 5

    async def leaked() -> set[str]:
        rows = await db.fetchall("SELECT session_id FROM session_summaries WHERE user_id = ?", (gina.user.id,))
        return {r[0] for r in rows} & bob_sessions

    flipper = subprocess.Popen([sys.executable, "-c", _FLIPPER, str(proj), str(root / "gina" / "proj-twin"), "10"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    worker = client.app[keys.WORKER]
    try:
        assert flipper.stdout.readline() == b"flipping\n"
        ticks = 0
        end = time.monotonic() + 10
        while time.monotonic() < end and flipper.poll() is None:
            # Force a re-read each round as well: the scan alone queues only what looks changed.
            await db.execute_write("UPDATE session_files SET processor_version = 0, failure_count = 0, "
                                   "next_attempt_at = NULL, quarantined_at = NULL WHERE user_id = ?",
                                   (gina.user.id,))
            await asyncio.wait_for(tick(client), 30)
            ticks += 1
            assert await leaked() == set(), f"another user's session counted for the owner after {ticks} scans"
            assert not await db.fetchval("SELECT COUNT(*) FROM session_files WHERE user_id = ? AND path LIKE ?",
                                         (gina.user.id, "%only-bob.jsonl")), f"listed bob's folder after {ticks} scans"
            # Not even the other file's size or mtime is recorded for the owner's file.
            assert not await db.fetchval(
                "SELECT COUNT(*) FROM session_files WHERE user_id = ? AND (size = ? OR failed_size = ?)",
                (gina.user.id, len(body), len(body))), f"stored bob's file's stat after {ticks} scans"
    finally:
        flipper.kill()
        _, err = flipper.communicate()
    assert b"renameat2" not in err, err
    assert ticks > 10
    assert await leaked() == set()
    assert worker.depth == 0


def _multipart(body: bytes, name: str):
    from aiohttp import FormData

    form = FormData()
    form.add_field("file", body, filename=name, content_type="application/octet-stream")
    return form
