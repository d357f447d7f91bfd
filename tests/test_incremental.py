"""Incremental passes (issue 24) on a real database: after any sequence of passes over growing files,
every stored row and number equals one full pass over the final files."""

from __future__ import annotations

import gzip
import random
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from service.db import Database
from service.ingest import jobs
from service.ingest.processor import Processor
from service.migrations import migrate
from service.store import ingest as store
from service.store import users
from tests.conftest import NOW, SAMPLES

# Everything ingest writes, with what differs between two equal databases (times of writing) left out.
TABLES = {
    "session_files": "SELECT id, user_id, path, size, content_hash, processor_version, items FROM session_files",
    "session_summaries": "SELECT * FROM session_summaries",
    "activity_messages": "SELECT * FROM activity_messages",
    "activity_prompts": "SELECT * FROM activity_prompts",
    "usage_events": "SELECT * FROM usage_events",
    "file_sessions": "SELECT * FROM file_sessions",
    "user_messages": "SELECT * FROM user_messages",
    "user_prompts": "SELECT * FROM user_prompts",
    "user_sessions": "SELECT * FROM user_sessions",
    "user_hours": "SELECT * FROM user_hours",
    "admin_session_days": "SELECT * FROM admin_session_days",
    "admin_model_days": "SELECT * FROM admin_model_days",
    "rollup_dirty_days": "SELECT * FROM rollup_dirty_days",
}
IGNORED = {"extracted_at"}


async def open_db(path: Path) -> Database:
    db = Database(str(path))
    await db.open()
    await migrate(db.writer)
    return db


async def dump(db: Database) -> dict[str, list]:
    out = {}
    for table, sql in TABLES.items():
        rows = await db.fetchall(sql)
        out[table] = sorted(tuple(v for k, v in dict(r).items() if k not in IGNORED) for r in rows)
    return out


class Pipeline:
    """One user's files through the real processor (parse in a thread), as of NOW."""

    def __init__(self, db: Database, user_id: int, retention: timedelta | None = None) -> None:
        self.db = db
        self.user_id = user_id
        self.processor = Processor(db, workers=0, clock=lambda: NOW, retention=retention)
        self.ids: dict[str, int] = {}

    async def process(self, path: Path, origin: str = "watch") -> str:
        if str(path) not in self.ids:
            self.ids[str(path)] = await store.register_file(self.db, self.user_id, str(path), origin, NOW)
        outcome = await self.processor.process(self.ids[str(path)])
        assert outcome.status in ("processed", "unchanged"), outcome
        return outcome.status


async def fresh_pipeline(path: Path) -> Pipeline:
    db = await open_db(path)
    user = await users.add_user(db, "analyst@example.com", "Analyst", True)
    return Pipeline(db, user.id)


@pytest.fixture
def passes(monkeypatch):
    """Counts the incremental passes that happened (parse_grown answering with a result)."""
    seen = {"incremental": 0, "full": 0}
    grown = jobs.parse_grown

    def counting(*args, **kwargs):
        result = grown(*args, **kwargs)
        seen["incremental" if result is not None else "full"] += 1
        return result

    monkeypatch.setattr(jobs, "parse_grown", counting)
    return seen


def sample_sets() -> list[list[Path]]:
    """Each user's sample files (resumed sessions, subagents, queued prompts span files)."""
    return [sorted((SAMPLES / user).glob("*.jsonl")) for user in ("alice", "bob", "carol")]


async def grow_and_compare(tmp_path: Path, sources: list[Path], rng: random.Random, steps: int,
                           step: float = 1 / 3) -> dict:
    """Grow every file in random byte steps (inside lines and multi-byte characters), one pass
    after each step, then compare the database with one pass over the final files."""
    data = {src.name: src.read_bytes() for src in sources}
    grow_dir, once_dir = tmp_path / "grow", tmp_path / "once"
    grow_dir.mkdir()
    once_dir.mkdir()
    growing = await fresh_pipeline(tmp_path / "grow.db")
    written = {name: 0 for name in data}
    # Files are registered in the same order in both databases, so their ids (in row keys) agree.
    for name in sorted(data):
        (grow_dir / name).write_bytes(b"")
    for _ in range(steps):
        name = rng.choice(sorted(data))
        end = min(len(data[name]), written[name] + rng.randint(1, max(2, int(len(data[name]) * step))))
        with open(grow_dir / name, "ab") as fh:
            fh.write(data[name][written[name]:end])
        written[name] = end
        for other in sorted(data):
            await growing.process(grow_dir / other)
    for name in sorted(data):
        with open(grow_dir / name, "ab") as fh:
            fh.write(data[name][written[name]:])
        await growing.process(grow_dir / name)
    once = await fresh_pipeline(tmp_path / "once.db")
    for name in sorted(data):
        (once_dir / name).write_bytes(data[name])
        await once.process(once_dir / name)
    got, want = await dump(growing.db), await dump(once.db)
    await growing.db.close()
    await once.db.close()
    for table in TABLES:
        got_rows = [tuple(str(v).replace(str(grow_dir), "DIR") for v in r) for r in got[table]]
        want_rows = [tuple(str(v).replace(str(once_dir), "DIR") for v in r) for r in want[table]]
        assert got_rows == want_rows, table
    return got


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("user", range(3), ids=["alice", "bob", "carol"])
async def test_files_grown_at_random_cuts_end_with_the_rows_of_one_full_pass(tmp_path, passes, seed, user):
    rng = random.Random(seed * 10 + user)
    await grow_and_compare(tmp_path, sample_sets()[user], rng, steps=12)
    assert passes["incremental"] > 0


async def test_a_large_file_grown_in_many_small_steps_is_processed_incrementally(tmp_path, passes):
    source = tmp_path / "src" / "big-session.jsonl"
    source.parent.mkdir()
    # Every sample line of alice's main session, under ids made distinct per copy, ~40 copies.
    raw = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    source.write_bytes(b"".join(raw.replace(b'"msg_', b'"msg_%d_' % i).replace(b'"uuid":"', b'"uuid":"%d-' % i)
                                .replace(b'"toolu_', b'"toolu_%d_' % i) for i in range(40)))
    await grow_and_compare(tmp_path, [source], random.Random(7), steps=25, step=1 / 40)
    assert passes["incremental"] >= 20


async def test_a_grown_gzip_file_takes_a_full_pass_with_the_same_numbers(tmp_path, passes):
    raw = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    half = raw.index(b"\n", len(raw) // 2) + 1
    grow = await fresh_pipeline(tmp_path / "grow.db")
    path = tmp_path / "s.jsonl.gz"
    path.write_bytes(gzip.compress(raw[:half]))
    await grow.process(path)
    assert await store.get_carry(grow.db, grow.ids[str(path)]) is None  # zlib's state cannot be kept
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    await grow.process(path)
    assert passes == {"incremental": 0, "full": 0}
    once = await fresh_pipeline(tmp_path / "once.db")
    other = tmp_path / "o" / "s.jsonl.gz"
    other.parent.mkdir()
    other.write_bytes(path.read_bytes())
    await once.process(other)
    got, want = await dump(grow.db), await dump(once.db)
    for table in ("session_summaries", "activity_messages", "activity_prompts", "usage_events", "user_hours"):
        assert got[table] == want[table], table
    await grow.db.close()
    await once.db.close()


async def test_a_gzip_file_cut_inside_its_members_ends_with_the_rows_of_one_full_pass(tmp_path, passes):
    raw = b"".join(p.read_bytes() for p in sorted((SAMPLES / "carol").glob("*.jsonl"))[:3])
    half = raw.index(b"\n", len(raw) // 2) + 1
    source = tmp_path / "src" / "session.jsonl.gz"
    source.parent.mkdir()
    source.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))  # two members
    await grow_and_compare(tmp_path, [source], random.Random(3), steps=10, step=1 / 8)
    assert passes["incremental"] == 0  # no state is kept for gzip: every pass is full


async def test_a_changed_prefix_takes_a_full_pass(tmp_path, passes):
    raw = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    half = raw.index(b"\n", len(raw) // 2) + 1
    pipeline = await fresh_pipeline(tmp_path / "a.db")
    path = tmp_path / "s.jsonl"
    path.write_bytes(raw[:half])
    await pipeline.process(path)
    # The first line's cwd edited in place (same length), then the file grows.
    edited = raw.replace(b"/work/churn-model", b"/work/churn-MODEL", 1)
    assert edited != raw and edited.index(b"churn-MODEL") < half
    path.write_bytes(edited)
    await pipeline.process(path)
    assert passes == {"incremental": 0, "full": 1}
    summary = (await store.summaries_for_user(pipeline.db, pipeline.user_id))[0]
    assert (summary["prompts"], summary["project"]) == (5, "/home/alice/work/churn-MODEL")
    await pipeline.db.close()


async def test_the_state_survives_a_restart_and_the_next_pass_is_incremental(tmp_path, passes):
    raw = (SAMPLES / "carol" / "f0e1d2c3-b4a5-4697-8877-665544332211.jsonl").read_bytes()
    cuts = [len(raw) // 3, 2 * len(raw) // 3]
    path = tmp_path / "s.jsonl"
    path.write_bytes(raw[:cuts[0]])
    pipeline = await fresh_pipeline(tmp_path / "a.db")
    await pipeline.process(path)
    file_id = pipeline.ids[str(path)]
    await pipeline.db.close()
    for cut in (*cuts[1:], len(raw)):
        db = await open_db(tmp_path / "a.db")  # a new process: the state comes from the database
        again = Pipeline(db, pipeline.user_id)
        again.ids[str(path)] = file_id
        path.write_bytes(raw[:cut])
        await again.process(path)
        await db.close()
    assert passes["incremental"] == 2
    once = await fresh_pipeline(tmp_path / "once.db")
    other = tmp_path / "o" / "s.jsonl"
    other.parent.mkdir()
    other.write_bytes(raw)
    await once.process(other)
    db = await open_db(tmp_path / "a.db")
    got, want = await dump(db), await dump(once.db)
    for table in TABLES:
        if table != "session_files":
            assert got[table] == want[table], table
    await db.close()
    await once.db.close()


async def test_a_processor_version_bump_or_a_forced_pass_is_full(tmp_path, passes, monkeypatch):
    raw = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    path = tmp_path / "s.jsonl"
    path.write_bytes(raw[:len(raw) // 2])
    pipeline = await fresh_pipeline(tmp_path / "a.db")
    await pipeline.process(path)
    file_id = pipeline.ids[str(path)]
    path.write_bytes(raw[:3 * len(raw) // 4])
    assert (await pipeline.processor.process(file_id, force=True)).status == "processed"
    from service import ingest

    monkeypatch.setattr(ingest, "USAGE_PROCESSOR_VERSION", ingest.USAGE_PROCESSOR_VERSION + 1)
    path.write_bytes(raw)
    await pipeline.process(path)
    assert passes == {"incremental": 0, "full": 0}
    await pipeline.db.close()


async def test_rows_before_the_retention_cutoff_stay_out_after_incremental_passes(tmp_path, passes):
    raw = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    stamps = sorted({line.split(b'"timestamp":"')[1][:24] for line in raw.splitlines() if b'"timestamp":"' in line})
    cutoff = datetime.fromisoformat(stamps[len(stamps) // 2].decode().replace("Z", "+00:00"))
    results = []
    for name in ("grow", "once"):
        db = await open_db(tmp_path / f"{name}.db")
        user = await users.add_user(db, "analyst@example.com", "Analyst", True)
        pipeline = Pipeline(db, user.id, retention=NOW - cutoff)
        path = tmp_path / name / "s.jsonl"
        path.parent.mkdir()
        for cut in ((len(raw) // 3, 2 * len(raw) // 3, len(raw)) if name == "grow" else (len(raw),)):
            path.write_bytes(raw[:cut])
            await pipeline.process(path)
        results.append(await dump(db))
        await db.close()
    for table in ("activity_messages", "activity_prompts", "usage_events", "user_messages", "user_hours"):
        assert results[0][table] == results[1][table], table
    assert passes["incremental"] == 2


def _apply(rows: dict, result) -> None:
    """What the store does with a parse result, on dicts: a full one replaces, an incremental one merges."""
    if not result.incremental:
        rows.clear()
        rows.update(m={}, p={}, e={})
    rows["m"].update((m.key, m) for m in result.messages)
    rows["p"].update((p.key, p) for p in result.prompts)
    for key in result.deleted_prompts:
        rows["p"].pop(key, None)
    rows["e"].update((e.event_id, e) for e in result.events)
    for event_id in result.flipped_events:
        if event_id in rows["e"]:
            rows["e"][event_id] = msgspec.structs.replace(rows["e"][event_id], is_error=True)
    rows["summary"], rows["sessions"], rows["hash"] = result.summary, result.sessions, result.content_hash


@pytest.mark.parametrize("small", [False, True], ids=["1MiB-blocks", "tiny-blocks-and-reads"])
def test_parser_passes_at_random_byte_cuts_equal_one_parse_of_the_whole(tmp_path, monkeypatch, small):
    """Cuts anywhere: inside lines, inside multi-byte characters, at block and read boundaries."""
    from service.ingest import hashing, parser

    if small:
        monkeypatch.setattr(hashing, "BLOCK", 64)
        monkeypatch.setattr(parser, "READ_CHUNK", 37)
    rng = random.Random(24)
    incremental = 0
    for source in sorted(SAMPLES.glob("*/*.jsonl")):
        data = source.read_bytes()
        if len(data) < 3:
            continue
        for _ in range(6):
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 25))))
            path = tmp_path / source.name
            path.write_bytes(b"")
            rows: dict = {}
            carry = None
            for start, end in zip([0, *cuts], [*cuts, len(data)]):
                with open(path, "ab") as fh:
                    fh.write(data[start:end])
                result = carry and parser.parse_grown(path, file_key="7", received_at=NOW, carry=carry)
                incremental += bool(result)
                result = result or parser.parse_file(path, file_key="7", received_at=NOW)
                carry = result.carry
                _apply(rows, result)
            once: dict = {}
            _apply(once, parser.parse_file(path, file_key="7", received_at=NOW))
            assert rows == once, source.name
    assert incremental > 100


async def test_a_re_sent_grown_upload_takes_an_incremental_pass(client, alice, passes):
    from service import keys
    from tests.conftest import EXPECTED
    from tests.test_upload import settle, stats, upload

    client.app[keys.CLOCK].fixed = NOW
    for path in sorted((SAMPLES / "alice").glob("*.jsonl")):
        raw = path.read_bytes()
        for cut in (len(raw) // 2, len(raw)):  # the second upload re-sends the first one's bytes, and more
            assert (await upload(client, alice, path.name, raw[:cut])).status == 200
            await settle(client)
    assert passes["incremental"] >= 5
    for window in ("24h", "7d"):
        assert await stats(client, alice, window) == {**EXPECTED["users"]["alice"][window], "last_pull_at": None}


async def test_an_incremental_pass_reports_the_bytes_and_lines_it_read_itself(tmp_path, passes):
    """The ingest report and /metrics count what each pass read: after a grown file's pass, its new
    part only (the stored file's line count stays whole)."""
    raw = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    half = raw.index(b"\n", len(raw) // 2) + 1
    path = tmp_path / "session.jsonl"
    path.write_bytes(raw[:half])
    pipeline = await fresh_pipeline(tmp_path / "agnes.db")
    file_id = await store.register_file(pipeline.db, pipeline.user_id, str(path), "watch", NOW)
    first = await pipeline.processor.process(file_id)
    assert (first.bytes, first.lines) == (half, raw[:half].count(b"\n"))
    with open(path, "ab") as fh:
        fh.write(raw[half:])
    grown = await pipeline.processor.process(file_id)
    assert passes["incremental"] == 1
    assert (grown.status, grown.bytes, grown.lines) == ("processed", len(raw) - half, raw[half:].count(b"\n"))
    assert await pipeline.db.fetchval("SELECT items FROM session_files WHERE id = ?", (file_id,)) == raw.count(b"\n")
    await pipeline.db.close()
