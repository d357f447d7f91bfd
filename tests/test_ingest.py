"""The ingest pipeline on a real database: samples' numbers, dedup across files, growth, atomicity."""

from __future__ import annotations

import os
import shutil
from datetime import datetime

import pytest

from service import ingest, keys
from service.ingest import bulk
from service.ingest.processor import Processor
from service.store import ingest as store
from service.store import stats
from service.timeutil import from_store
from tests.conftest import (EXPECTED, NOW, SAMPLE_USERS, SAMPLES, expected_stats, ingest_files, make_caller,
                            sample_files)


async def stats_of(db, user_id: int, window: str) -> dict:
    import msgspec

    return msgspec.to_builtins(await stats.home_stats(db, user_id, window, NOW))


@pytest.fixture
async def people(db):
    return {name: await make_caller(db, f"{name}@example.com") for name in SAMPLE_USERS}


@pytest.fixture
async def ingested(db, people):
    for name, caller in people.items():
        report = await ingest_files(db, caller.user.id, sample_files(name))
        assert report.failed == 0, report.errors
    return people


def normalise_summary(row: dict) -> dict:
    out = dict(row)
    for key in ("started_at", "ended_at"):
        out[key] = from_store(out[key])
    return out


async def test_every_sample_summary_matches_expected_field_by_field(db, ingested):
    seen = set()
    for name, caller in ingested.items():
        for row in await store.summaries_for_user(db, caller.user.id):
            key = f"{name}/{os.path.basename(row['path'])}"
            expected = EXPECTED["files"][key]
            got = normalise_summary(row)
            for field, value in expected.items():
                want = from_store(value) if field in ("started_at", "ended_at") else value
                assert got[field] == want, f"{key}: {field}"
            assert got["processor_version"] == ingest.USAGE_PROCESSOR_VERSION
            seen.add(key)
    assert seen == set(EXPECTED["files"])


@pytest.mark.parametrize("user", SAMPLE_USERS)
@pytest.mark.parametrize("window", ["24h", "7d"])
async def test_windowed_stats_match_expected(db, ingested, user, window):
    assert await stats_of(db, ingested[user].user.id, window) == expected_stats(user, window)


async def test_stats_for_user_without_data_or_row_are_zeros(db, people):
    zero = {"window": "24h", "last_pull_at": None, "sessions": 0, "prompts": 0, "projects": 0,
            "tokens": {"input": 0, "output": 0, "cache_read": 0, "cache_creation": 0, "total": 0}}
    assert await stats_of(db, people["alice"].user.id, "24h") == zero
    assert await stats_of(db, 999_999, "bogus") == zero


async def test_reingesting_renamed_and_split_copies_changes_nothing(db, ingested, tmp_path):
    alice = ingested["alice"].user.id
    before = {w: await stats_of(db, alice, w) for w in ("24h", "7d")}
    copies = tmp_path / "copies"
    copies.mkdir()
    for src in sample_files("alice"):
        shutil.copy(src, copies / ("renamed-" + os.path.basename(src)))
    # The subagent file again, alone, under yet another name.
    shutil.copy(SAMPLES / "alice" / "agent-a1b2c3.jsonl", copies / "agent-again.jsonl")
    report = await ingest_files(db, alice, bulk.expand([str(copies)]))
    assert report.processed == 7
    report = await ingest_files(db, alice, sample_files("alice"))  # and the originals once more
    assert report.failed == 0
    assert {w: await stats_of(db, alice, w) for w in ("24h", "7d")} == before


async def test_growing_file_ends_with_the_numbers_of_one_ingest(db, people, tmp_path):
    source = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    alice = people["alice"].user.id
    target = tmp_path / "growing.jsonl"
    cuts = [len(source) // 5, len(source) // 2 + 7, source.index(b"\n", len(source) // 2) + 1, len(source) - 3]
    for cut in cuts:
        target.write_bytes(source[:cut])
        await ingest_files(db, alice, [str(target)])
    partial = (await store.summaries_for_user(db, alice))[0]
    assert partial["skipped_lines"] == 1  # the half-written last line, for now
    target.write_bytes(source)
    await ingest_files(db, alice, [str(target)])
    grown = {w: await stats_of(db, alice, w) for w in ("24h", "7d")}
    summary = normalise_summary((await store.summaries_for_user(db, alice))[0])

    other = await make_caller(db, "fresh@example.com")
    once = tmp_path / "once" / "growing.jsonl"
    once.parent.mkdir()
    once.write_bytes(source)
    await ingest_files(db, other.user.id, [str(once)])
    assert grown == {w: await stats_of(db, other.user.id, w) for w in ("24h", "7d")}
    fresh = normalise_summary((await store.summaries_for_user(db, other.user.id))[0])
    for field in ("prompts", "input_tokens", "output_tokens", "skipped_lines", "slash_commands", "user_messages"):
        assert summary[field] == fresh[field], field
    assert summary["skipped_lines"] == 0 and summary["prompts"] == 5


async def test_error_mid_transaction_leaves_previous_state(db, ingested, monkeypatch, tmp_path):
    alice = ingested["alice"].user.id
    before_stats = await stats_of(db, alice, "7d")
    before_rows = await store.summaries_for_user(db, alice)
    file_id = (await db.fetchone("SELECT id FROM session_files WHERE path LIKE '%8d1e4b2a%'"))[0]
    events_before = await db.fetchval("SELECT COUNT(*) FROM usage_events WHERE file_id = ?", (file_id,))
    assert events_before == 7

    # Fail inside the transaction after the old rows are deleted and the new activity inserted:
    # all of it must roll back.
    statements = store._SQL[db.dialect]
    steps = list(statements["_WRITE_STATEMENTS"])
    at = next(i for i, s in enumerate(steps) if "INTO usage_events (event_id" in s)
    assert any(s.startswith("INSERT INTO activity_messages") for s in steps[:at])
    monkeypatch.setitem(statements, "_WRITE_STATEMENTS", (*steps[:at], "SELECT disk_on_fire()", *steps[at:]))
    processor = Processor(db, workers=0, clock=lambda: NOW)
    outcome = await processor.process(file_id, force=True)
    assert outcome.status == "failed" and "disk_on_fire" in outcome.error
    assert await stats_of(db, alice, "7d") == before_stats
    assert await store.summaries_for_user(db, alice) == before_rows
    assert await db.fetchval("SELECT COUNT(*) FROM usage_events WHERE file_id = ?", (file_id,)) == events_before
    state = await store.get_file(db, file_id)
    assert state.failure_count == 1 and "disk_on_fire" in state.last_error


async def test_bad_file_does_not_affect_others(db, people, tmp_path):
    bob = people["bob"].user.id
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe garbage \x00\n{not json}\n" * 100)
    gone = tmp_path / "gone.jsonl"
    gone.write_text("{}\n")
    paths = sample_files("bob") + [str(bad), str(gone)]
    gone_id = (await store.register_files(db, bob, [str(gone)], "cli", NOW))[0]
    gone.unlink()
    processor = Processor(db, workers=0, clock=lambda: NOW)
    assert (await processor.process(gone_id)).status == "failed"
    report = await ingest_files(db, bob, [p for p in paths if p != str(gone)])
    assert report.failed == 0
    assert await stats_of(db, bob, "7d") == expected_stats("bob", "7d")
    bad_row = [r for r in await store.summaries_for_user(db, bob) if r["path"].endswith("bad.jsonl")][0]
    assert bad_row["skipped_lines"] == 200 and bad_row["prompts"] == 0


async def test_failures_back_off_then_quarantine(db, people, tmp_path):
    ghost = tmp_path / "ghost.jsonl"
    file_id = (await store.register_files(db, people["bob"].user.id, [str(ghost)], "cli", NOW))[0]
    processor = Processor(db, workers=0, clock=lambda: NOW, max_failures=3)
    statuses = [(await processor.process(file_id)).status for _ in range(3)]
    assert statuses == ["failed", "failed", "quarantined"]
    listed = await store.quarantined(db)
    assert [(q["id"], q["failure_count"]) for q in listed] == [(file_id, 3)]
    assert "FileNotFoundError" in listed[0]["last_error"]
    assert await store.due_retries(db, datetime(2100, 1, 1, tzinfo=NOW.tzinfo), 10) == []
    ghost.write_text("")
    assert await store.release_quarantine(db, file_id) == [file_id]
    assert (await processor.process(file_id)).status == "processed"
    assert await store.quarantined(db) == []


async def test_retry_is_scheduled_with_growing_backoff(db, people, tmp_path):
    file_id = (await store.register_files(db, people["bob"].user.id, [str(tmp_path / "nope.jsonl")], "cli", NOW))[0]
    processor = Processor(db, workers=0, clock=lambda: NOW, max_failures=10)
    delays = []
    for _ in range(3):
        await processor.process(file_id)
        due = (await db.fetchone("SELECT next_attempt_at FROM session_files WHERE id = ?", (file_id,)))[0]
        delays.append((from_store(due) - NOW).total_seconds())
    assert delays == [30, 60, 120]
    assert await store.due_retries(db, NOW, 10) == []


async def test_version_bump_makes_the_worker_refill_old_rows(client, db, people, monkeypatch):
    alice = people["alice"].user.id
    await ingest_files(db, alice, sample_files("alice"))
    await db.execute_write("UPDATE session_summaries SET input_tokens = 0, prompts = 0")
    monkeypatch.setattr(ingest, "USAGE_PROCESSOR_VERSION", ingest.USAGE_PROCESSOR_VERSION + 1)
    worker = client.app[keys.WORKER]
    client.app[keys.CLOCK].fixed = NOW
    await worker.tick()
    await worker.drain()
    rows = await store.summaries_for_user(db, alice)
    assert {r["processor_version"] for r in rows} == {ingest.USAGE_PROCESSOR_VERSION}
    by_name = {os.path.basename(r["path"]): r for r in rows}
    assert by_name["3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl"]["input_tokens"] == 21
    assert by_name["c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl"]["prompts"] == 5


async def test_reprocess_goes_oldest_first_in_bounded_batches(db, people):
    await ingest_files(db, people["alice"].user.id, sample_files("alice"))
    await db.execute_write("UPDATE session_files SET processor_version = 1")
    batch = await store.stale_files(db, ingest.USAGE_PROCESSOR_VERSION, 4)
    assert len(batch) == 4
    order = await db.fetchall("SELECT id FROM session_files ORDER BY processed_at, id LIMIT 4")
    assert batch == [r[0] for r in order]


async def test_unchanged_content_is_not_rewritten(db, people, tmp_path):
    path = tmp_path / "touched.jsonl"
    shutil.copy(SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl", path)
    alice = people["alice"].user.id
    first = await ingest_files(db, alice, [str(path)])
    assert first.processed == 1
    extracted = (await db.fetchone("SELECT extracted_at FROM session_summaries"))[0]
    os.utime(path, ns=(1, 1))
    second = await ingest_files(db, alice, [str(path)])
    assert (second.processed, second.unchanged) == (0, 1)
    assert (await db.fetchone("SELECT extracted_at FROM session_summaries"))[0] == extracted
    assert (await db.fetchone("SELECT mtime_ns FROM session_files"))[0] == 1


async def test_events_are_attributed_curated_over_flea_over_builtin(db, people):
    await db.executemany_write("INSERT INTO skill_attribution (name, source, ref_id) VALUES (?, ?, ?)",
                               [("data-quality-check", "flea", "flea-dq"), ("data-quality-check", "curated", "cur-dq")])
    await db.executemany_write("INSERT INTO agent_attribution (name, source, ref_id) VALUES (?, ?, ?)",
                               [("schema-differ", "flea", "flea-sd")])
    await db.executemany_write("INSERT INTO command_attribution (name, source, ref_id) VALUES (?, ?, ?)",
                               [("agnes:explore", "curated", "cur-explore")])
    await ingest_files(db, people["alice"].user.id, sample_files("alice"))
    rows = await db.fetchall("SELECT event_type, tool_name, skill_name, subagent_type, command_name, source, ref_id "
                             "FROM usage_events WHERE source != 'builtin' ORDER BY ref_id")
    assert [tuple(r) for r in rows] == [
        ("tool_use", "Skill", "data-quality-check", None, None, "curated", "cur-dq"),
        ("slash_command", None, None, None, "agnes:explore", "curated", "cur-explore"),
        ("subagent", "Task", None, "schema-differ", None, "flea", "flea-sd"),
    ]
    total = await db.fetchval("SELECT COUNT(*) FROM usage_events")
    # 8d1e: 7 tool uses; agent file: 1; c7b6: 1 tool use + 2 slash commands; the copy adds nothing.
    assert total == 11


async def test_rollups_count_distinct_users_and_sessions(db, people):
    await ingest_files(db, people["alice"].user.id, sample_files("alice"))
    await ingest_files(db, people["bob"].user.id, sample_files("bob"))
    await store.rebuild_rollups(db)
    rows = await db.fetchall("SELECT day, tool, source, invocations, errors, distinct_users, distinct_sessions "
                             "FROM usage_tool_daily ORDER BY day, tool")
    table = {(r["day"], r["tool"]): tuple(r)[2:] for r in rows}
    assert table[("2026-11-20", "Bash")] == ("builtin", 2, 2, 1, 1)
    assert table[("2026-11-20", "Grep")] == ("builtin", 1, 0, 1, 1)
    assert table[("2026-11-19", "Task")] == ("builtin", 1, 0, 1, 1)
    assert table[("2026-11-21", "/clear")] == ("builtin", 1, 0, 1, 1)
    assert await db.fetchval("SELECT COUNT(*) FROM rollup_dirty_days") == 0


async def test_rollups_rebuild_the_latest_dirty_days_first_and_the_same_in_any_slices(db, people):
    await db.executemany_write("INSERT INTO skill_attribution (name, source, ref_id) VALUES (?, ?, ?)",
                               [("data-quality-check", "curated", "cur-dq")])
    await db.executemany_write("INSERT INTO command_attribution (name, source, ref_id) VALUES (?, ?, ?)",
                               [("agnes:explore", "curated", "cur-explore")])
    await ingest_files(db, people["alice"].user.id, sample_files("alice"))
    await ingest_files(db, people["bob"].user.id, sample_files("bob"))
    dirty = [r[0] for r in await db.fetchall("SELECT day FROM rollup_dirty_days ORDER BY day DESC")]
    assert len(dirty) >= 3
    done = []
    while days := await store.rebuild_rollups(db, limit=2):
        assert days == dirty[len(done):len(done) + 2]  # the latest first, at most `limit` a call
        done += days
    assert done == dirty

    async def tables():
        return ([tuple(r) for r in await db.fetchall("SELECT * FROM usage_tool_daily ORDER BY 1, 2, 3")],
                [tuple(r) for r in await db.fetchall("SELECT * FROM usage_plugin_daily ORDER BY 1, 2, 3")])

    sliced = await tables()
    assert len(sliced[0]) >= 5
    assert sliced[1] == [("2026-11-20", "curated", "cur-dq", 1, 1, 1), ("2026-11-21", "curated", "cur-explore", 1, 1, 1)]
    await db.executemany_write("INSERT INTO rollup_dirty_days (day) VALUES (?)", [(d,) for d in dirty])
    await db.execute_write("UPDATE usage_tool_daily SET invocations = 999")  # stale numbers are replaced
    await db.execute_write("UPDATE usage_plugin_daily SET invocations = 999")
    assert await store.rebuild_rollups(db, limit=100) == dirty
    assert await tables() == sliced


async def test_a_tool_use_without_a_name_does_not_stop_anyone_s_rollups(db, people, tmp_path, client):
    """A hostile or truncated transcript must not break the rollups of every other user."""
    nameless = tmp_path / "nameless.jsonl"
    nameless.write_text(
        '{"type":"assistant","sessionId":"s-nameless","uuid":"u1","timestamp":"2026-11-20T09:00:00Z",'
        '"message":{"id":"m1","model":"claude","content":[{"type":"tool_use","id":"t-nameless","input":{}}],'
        '"usage":{"input_tokens":1,"output_tokens":1}}}\n')
    await ingest_files(db, people["bob"].user.id, [str(nameless)])
    await ingest_files(db, people["alice"].user.id, sample_files("alice"))
    assert await store.rebuild_rollups(db, limit=100)
    rows = {r["tool"]: tuple(r)[1:] for r in await db.fetchall(
        "SELECT tool, invocations, distinct_users FROM usage_tool_daily WHERE day = '2026-11-20'")}
    assert rows["(unnamed)"] == (1, 1) and rows["Bash"] == (2, 1)
    assert await db.fetchval("SELECT COUNT(*) FROM rollup_dirty_days") == 0


async def test_a_failing_tick_step_does_not_skip_the_others(client, db, people, monkeypatch, caplog):
    worker = client.app[keys.WORKER]
    client.app[keys.CLOCK].fixed = NOW
    await ingest_files(db, people["alice"].user.id, sample_files("alice"))
    await db.execute_write("UPDATE session_files SET quarantined_at = ? WHERE id = (SELECT MIN(id) FROM session_files)",
                           ("2026-11-21T00:00:00.000000Z",))

    async def broken(_db, limit=31):
        raise RuntimeError("rollup store unavailable")

    monkeypatch.setattr(store, "rebuild_rollups", broken)  # fault injection: the step before the count
    await worker.tick()
    assert worker.quarantined_count == 1  # counted although the rollup step failed
    assert "ingest tick step rollup_step failed" in caplog.text
    assert worker.ticked.is_set()


async def test_lone_surrogates_in_ids_lose_nothing(db, people, tmp_path):
    """Valid JSON (Node cuts strings between the halves of a pair) that SQLite cannot store as it is:
    the file is counted whole, the ids keep the escape as text, and distinct ids stay distinct."""
    def assistant(uuid: str, msg_id: str, tool: str, tokens: int) -> str:
        return ('{"type":"assistant","sessionId":"s-sur","uuid":"%s","timestamp":"2026-11-21T10:00:00Z",'
                '"message":{"id":"%s","model":"claude-\\udc00","content":[{"type":"tool_use","id":"%s",'
                '"name":"Bash\\ud800","input":{}}],"usage":{"input_tokens":%d,"output_tokens":0}}}\n'
                % (uuid, msg_id, tool, tokens))
    path = tmp_path / "sur.jsonl"
    path.write_text('{"type":"user","sessionId":"s-sur","uuid":"p1","timestamp":"2026-11-21T09:59:00Z",'
                    '"message":{"role":"user","content":"Count this."}}\n'
                    + assistant("a1", "msg_\\ud800", "t\\ud800", 5) + assistant("a2", "msg_\\ud801", "t2", 7))
    report = await ingest_files(db, people["alice"].user.id, [str(path)])
    assert (report.processed, report.failed, report.lines, report.skipped_lines) == (1, 0, 3, 0)
    keys = [r[0] for r in await db.fetchall("SELECT message_key FROM user_messages ORDER BY message_key")]
    assert keys == ["msg_\\ud800", "msg_\\ud801"]
    assert await db.fetchval("SELECT SUM(input_tokens) FROM user_messages") == 12
    assert await db.fetchval("SELECT tool_name FROM usage_events WHERE event_id IS NOT NULL LIMIT 1") == "Bash\\ud800"
    assert await db.fetchval("SELECT COUNT(*) FROM user_prompts") == 1


@pytest.mark.sqlite_only  # the in-memory queue; PostgreSQL's shared one: tests/test_replicas.py
async def test_a_tick_does_not_queue_a_second_parse_of_a_file_already_pending(client, db, people, tmp_path):
    """An upload waits below the current version until processed: the tick's reprocess query finds it."""
    worker = client.app[keys.WORKER]
    client.app[keys.CLOCK].fixed = NOW
    await worker.stop()  # no consumers: the file stays pending while the tick runs
    path = sample_files("alice")[0]
    [file_id] = await store.register_files(db, people["alice"].user.id, [path], "upload", NOW)
    worker.enqueue(file_id)
    assert file_id in await store.stale_files(db, ingest.USAGE_PROCESSOR_VERSION, 10)
    await worker.tick()
    assert worker.depth == 1 and not worker._again  # queued once, no second run scheduled
    worker.enqueue(file_id)  # a real change while pending (a re-upload) still gets its own run
    assert worker._again == {file_id}


async def test_the_operator_s_ingest_follows_symlinks(db, people, tmp_path):
    """Only the watched directory (writable by others) refuses symlinks; `agnes-home ingest` paths are the operator's."""
    link = tmp_path / "linked.jsonl"
    link.symlink_to(SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl")
    report = await ingest_files(db, people["alice"].user.id, [str(link)])
    assert (report.processed, report.failed) == (1, 0)
    assert await db.fetchval("SELECT COUNT(*) FROM user_prompts") == 2


def test_bulk_ingest_follows_symlinked_folders_once(tmp_path):
    """The operator's own paths: links are followed, each file is found once under its real path,
    a link loop ends, and a dangling link is no transcript."""
    real = tmp_path / "real"
    real.mkdir()
    for name in ("a.jsonl", "b.jsonl.gz", "notes.txt"):
        (real / name).write_bytes(b"{}\n")
    top = tmp_path / "top"
    (top / "deeper").mkdir(parents=True)
    (top / "linked").symlink_to(real)
    (top / "deeper" / "again").symlink_to(real)  # the same folder reached twice
    (top / "deeper" / "loop").symlink_to(top)
    (top / "file.jsonl").symlink_to(real / "a.jsonl")
    (top / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    assert bulk.expand([str(top)]) == [os.path.realpath(real / "a.jsonl"), os.path.realpath(real / "b.jsonl.gz")]


async def test_prune_drops_old_activity_only(db, people):
    bob = people["bob"].user.id
    await ingest_files(db, bob, sample_files("bob"))
    counts = await store.prune(db, from_store("2026-11-01T00:00:00Z"))
    assert counts["activity_prompts"] == 1 and counts["activity_messages"] == 1
    assert await stats_of(db, bob, "7d") == expected_stats("bob", "7d")
    assert await db.fetchval("SELECT COUNT(*) FROM session_summaries WHERE user_id = ?", (bob,)) == 5


async def test_parsing_in_a_worker_process_gives_the_same_numbers(db, people):
    alice = people["alice"].user.id
    report = await bulk.ingest_paths(db, alice, sample_files("alice"), workers=2, clock=lambda: NOW)
    assert report.processed == 6 and report.failed == 0
    assert await stats_of(db, alice, "24h") == expected_stats("alice", "24h")


async def test_the_service_starts_its_parse_processes_before_it_serves(aiohttp_client, tmp_path):
    """Started at the first upload, the pool launched the forkserver under its lock, on the event
    loop: every request in flight waited 0.1-0.3 s for its imports. Now both processes run, and
    parse, before the app answers anything."""
    from service.app import create_app
    from service.config import load_settings

    settings = load_settings(environ={}, db_path=str(tmp_path / "a.db"), data_dir=str(tmp_path / "data"),
                             secret_key="s", parse_workers=2)
    client = await aiohttp_client(create_app(settings))
    processor = client.app[keys.WORKER].processor
    live = [p for p in processor._executor._processes.values() if p.is_alive()]
    assert len(live) == 2
    alice = await make_caller(client.app[keys.DB], "alice@example.com")
    ids = await store.register_files(client.app[keys.DB], alice.user.id, sample_files("alice"), "cli", NOW)
    assert [(await processor.process(file_id)).status for file_id in ids] == ["processed"] * 6
    assert await stats_of(client.app[keys.DB], alice.user.id, "24h") == expected_stats("alice", "24h")
    assert {p.pid for p in processor._executor._processes.values()} == {p.pid for p in live}


def test_the_command_line_forks_its_parse_processes_only_while_it_has_one_thread():
    """`agnes-home ingest` forks its parse processes before its event loop and database threads
    exist (no forkserver, no resource tracker); with another thread running it declines, and
    the processor falls back to the forkserver. Forked processes parse like the parent."""
    import subprocess
    import sys

    code = f"""
import os, sys, threading
from datetime import datetime, timezone
import multiprocessing.resource_tracker as rt
from service.ingest.jobs import parse_job
from service.ingest.parser import parse_file
from service.ingest.processor import fork_parse_pool
path, now = {sample_files("alice")[0]!r}, datetime(2026, 1, 1, tzinfo=timezone.utc)
pool = fork_parse_pool(2)
forked = pool.submit(parse_job, path, "k", now, True).result()
assert forked == parse_file(path, file_key="k", received_at=now)
assert {{p.pid for p in pool._processes.values()}} and rt._resource_tracker._pid is None
pool.shutdown()
stop = threading.Event()
threading.Thread(target=stop.wait).start()
assert fork_parse_pool(2) is None and fork_parse_pool(0) is None
stop.set()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.stdout.strip() == "ok", proc.stderr


async def test_two_users_uploading_the_same_session_keep_their_own_events(db, people, tmp_path):
    """Event ids are stable per session, so two analysts with one transcript share ids: each keeps theirs."""
    path = [p for p in sample_files("alice") if "8d1e4b2a" in p]
    await ingest_files(db, people["alice"].user.id, path)
    copy = tmp_path / "bob-copy.jsonl"
    shutil.copy(path[0], copy)
    await ingest_files(db, people["bob"].user.id, [str(copy)])
    with pytest.raises(store.FileOwnedElsewhere):  # the same path cannot change owner
        await ingest_files(db, people["bob"].user.id, path)
    fresh = tmp_path / "bob-new.jsonl"
    shutil.copy(path[0], fresh)
    with pytest.raises(store.FileOwnedElsewhere, match="8d1e4b2a"):  # ... nor registers the rest of the batch
        await ingest_files(db, people["bob"].user.id, [str(fresh), *path])
    assert await db.fetchval("SELECT COUNT(*) FROM session_files WHERE path = ?", (str(fresh),)) == 0
    counts = await db.fetchall("SELECT user_id, COUNT(*) FROM usage_events GROUP BY user_id ORDER BY user_id")
    assert [tuple(r) for r in counts] == [(people["alice"].user.id, 7), (people["bob"].user.id, 7)]
    await store.rebuild_rollups(db)
    bash = await db.fetchone("SELECT invocations, distinct_users FROM usage_tool_daily "
                             "WHERE day = '2026-11-20' AND tool = 'Bash'")
    assert tuple(bash) == (4, 2)


async def test_rewriting_a_copy_keeps_the_events_the_original_still_holds(db, people, tmp_path):
    alice = people["alice"].user.id
    original = tmp_path / "a.jsonl"
    copy = tmp_path / "b.jsonl"
    source = SAMPLES / "alice" / "8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e.jsonl"
    shutil.copy(source, original)
    shutil.copy(source, copy)
    await ingest_files(db, alice, [str(original), str(copy)])
    await store.rebuild_rollups(db)
    bash = "SELECT invocations, errors FROM usage_tool_daily WHERE day = '2026-11-20' AND tool = 'Bash'"
    assert tuple(await db.fetchone(bash)) == (2, 2)  # the copy counts once
    shutil.copy(SAMPLES / "bob" / "6f5e4d3c-2b1a-4098-8f7e-6d5c4b3a2918.jsonl", copy)  # b.jsonl becomes another session
    await ingest_files(db, alice, [str(copy)])
    await store.rebuild_rollups(db)
    assert tuple(await db.fetchone(bash)) == (2, 2)  # a.jsonl still holds its events


async def _user_tables(db) -> list[str]:
    """Every table of the schema with a user_id column."""
    if db.dialect == "sqlite":
        tables = [r[0] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [t for t in tables if any(c[1] == "user_id" for c in await db.fetchall(f"PRAGMA table_info({t})"))]
    return sorted(r[0] for r in await db.fetchall(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'user_id'"))


async def test_deleting_a_user_takes_every_row_of_theirs_and_nothing_else(db, ingested):
    """An operator's `DELETE FROM users`: SQLite cascades by its keys; PostgreSQL's derived rows have
    no key of their user (schema 0018) and go by the trigger that replaced the cascade."""
    while await store.rebuild_rollups(db):
        pass
    alice, bob = ingested["alice"].user.id, ingested["bob"].user.id
    tables = await _user_tables(db)
    for table in ("user_messages", "user_prompts", "user_sessions", "user_hours", "admin_session_days",
                  "admin_model_days", "admin_tool_days", "usage_events", "session_files", "api_tokens"):
        assert table in tables
        assert await db.fetchval(f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", (alice,)), table

    async def counts(user_id: int) -> dict[str, int]:
        return {t: await db.fetchval(f"SELECT COUNT(*) FROM {t} WHERE user_id = ?", (user_id,)) for t in tables}

    bobs = await counts(bob)
    await db.execute_write("DELETE FROM users WHERE id = ?", (alice,))
    assert await counts(alice) == dict.fromkeys(tables, 0)
    assert await counts(bob) == bobs
    assert await db.fetchval("SELECT COUNT(*) FROM activity_messages WHERE user_id = ?", (alice,)) == 0


async def test_a_file_deleted_before_its_write_leaves_no_rows(db, people):
    """On PostgreSQL the per-file rows have no key of their file (schema 0018): the write locks its
    files' rows first and leaves out one that is gone, as the key checks refused it."""
    alice = people["alice"].user.id
    path = sample_files("alice")[0]
    file_id = (await store.register_files(db, alice, [path], "cli", NOW))[0]
    processor = Processor(db, workers=0, clock=lambda: NOW)
    parsed = await processor.prepare(file_id)
    assert isinstance(parsed, store.Parsed) and parsed.result.messages
    await db.execute_write("DELETE FROM session_files WHERE id = ?", (file_id,))
    outcomes = await processor.commit([parsed])
    assert outcomes[0].status in ("failed", "quarantined", "gone")
    for table in ("activity_messages", "activity_prompts", "usage_events", "session_summaries", "file_sessions"):
        assert await db.fetchval(f"SELECT COUNT(*) FROM {table} WHERE file_id = ?", (file_id,)) == 0, table
    for table in ("user_messages", "user_prompts", "user_sessions", "user_hours"):
        assert await db.fetchval(f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", (alice,)) == 0, table
