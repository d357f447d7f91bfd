"""Parser robustness as properties: mutated sample lines never break it, and a file cut anywhere then
completed gives exactly the complete file's numbers (in the parser, and through the real pipeline)."""

from __future__ import annotations

import copy
import gzip
import io
import json
import random
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from service.db import Database
from service.ingest import bulk, parser
from service.ingest.parser import parse_stream
from service.records import ParseResult
from service.migrations import migrate
from service.store import stats, users
from service.timeutil import from_store, to_store
from tests.conftest import NOW, SAMPLES

# Hypothesis keeps its example database and caches under the temp dir, not in the work tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "agnes-hypothesis")

UTC = timezone.utc
RECEIVED = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
INT64_MAX = 2**63 - 1
# Seeded and bounded: the same examples every run (a failure reproduces), a few seconds in all.
PROPERTY = settings(max_examples=250, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SAMPLE_FILES = sorted(SAMPLES.glob("*/*.jsonl"))
SAMPLE_LINES = [line for path in SAMPLE_FILES for line in path.read_bytes().splitlines() if line.strip()]


def _objects() -> list[dict]:
    found = []
    for line in SAMPLE_LINES:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


SAMPLE_OBJECTS = _objects()
COUNTERS = ("active_seconds", "wall_seconds", "user_messages", "assistant_messages", "tool_calls", "tool_errors",
            "skill_invocations", "subagent_dispatches", "mcp_calls", "slash_commands", "distinct_tools",
            "distinct_skills", "prompts", "skipped_lines", "input_tokens", "output_tokens", "cache_read_tokens",
            "cache_creation_tokens")
TOKEN_FIELDS = (("input", "input_tokens"), ("output", "output_tokens"), ("cache_read", "cache_read_tokens"),
                ("cache_creation", "cache_creation_tokens"))


def parse(data: bytes, fallback: str = "fallback") -> ParseResult:
    return parse_stream(io.BytesIO(data), file_key="u/f.jsonl", fallback_session_id=fallback, received_at=RECEIVED)


def check_invariants(result: ParseResult) -> None:
    """What must hold for any input: no negative, overflowing or self-contradicting counter."""
    s = result.summary
    for name in COUNTERS:
        value = getattr(s, name)
        assert type(value) is int and 0 <= value <= INT64_MAX, (name, value)
    assert isinstance(s.session_id, str) and s.session_id
    assert 0 <= s.skipped_lines <= result.lines
    counted = result.lines - s.skipped_lines  # lines that were decoded at all
    assert s.user_messages <= counted
    assert s.prompts == len(result.prompts) <= counted
    assert s.assistant_messages == len(result.messages) <= counted
    assert len({m.key for m in result.messages}) == len(result.messages)
    assert len({p.key for p in result.prompts}) == len(result.prompts)
    assert len({e.event_id for e in result.events}) == len(result.events)
    for row_field, summary_field in TOKEN_FIELDS:
        values = [getattr(m, row_field) for m in result.messages]
        assert all(type(v) is int and 0 <= v <= INT64_MAX for v in values)
        assert getattr(s, summary_field) == min(sum(values), INT64_MAX)
    tools = [e for e in result.events if e.event_type != "slash_command"]
    assert s.tool_calls + s.subagent_dispatches + s.mcp_calls == len(tools)
    assert s.slash_commands == len(result.events) - len(tools)
    assert s.skill_invocations <= s.tool_calls and s.distinct_skills <= s.skill_invocations
    assert s.tool_errors <= len(tools) and s.distinct_tools <= len(tools)
    assert (s.started_at is None) == (s.ended_at is None)
    if s.started_at is not None:
        assert s.started_at <= s.ended_at
        assert s.active_seconds <= s.wall_seconds == int((s.ended_at - s.started_at).total_seconds())
    else:
        assert s.active_seconds == s.wall_seconds == 0
    for row in (*result.messages, *result.prompts, *result.events):
        # Storage format: fixed width, so text order is time order.
        assert len(row.ts) == 27 and row.ts.endswith("Z") and from_store(row.ts) is not None, row.ts


# --- Mutations -----------------------------------------------------------------------------------

JSON_LEAVES = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
               | st.sampled_from(["", "<synthetic>", "tool_use", "tool_result", "text", "user", "assistant",
                                  "attachment", "queued_command", "Skill", "Task", "mcp__x__y",
                                  "<command-name>/foo</command-name>", "2026-11-21T10:00:00Z",
                                  "0999-01-01T00:00:00Z", "9999-12-31T23:59:59.999999+14:00", "not a date"]))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=8)
NASTY_BYTES = st.sampled_from([b"\x00", b"\xff", b"\xff\xfe", b"\xed\xa0\x80", b"\xc3", b"\n", b"\r", b'"', b"\\",
                               b"\\u", b"\\ud83d", b"{", b"}", b"[", b"]", b",", b":", b"NaN", b"Infinity",
                               b"1e999", b"-0", b"null", b"\xef\xbb\xbf"])


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, (*prefix, i))


def _set(obj, path, value, delete=False):
    *parents, last = path
    for key in parents:
        obj = obj[key]
    if delete:
        del obj[last]
    else:
        obj[last] = value


@st.composite
def mutated_line(draw) -> bytes:
    obj = copy.deepcopy(draw(st.sampled_from(SAMPLE_OBJECTS)))
    kind = draw(st.sampled_from(["keep", "replace", "replace", "delete", "usage", "bytes", "bytes", "retype",
                                 "deep"]))
    if kind in ("replace", "delete"):
        path = draw(st.sampled_from([p for p in _paths(obj) if p]))
        _set(obj, path, draw(JSON_VALUES), delete=kind == "delete")
    elif kind == "usage":
        message = obj.get("message")
        if not isinstance(message, dict):
            message = obj["message"] = {"id": "msg_mutant", "role": "assistant"}
        usage = message.get("usage")
        if not isinstance(usage, dict):
            usage = message["usage"] = {}
        key = draw(st.sampled_from(["input_tokens", "output_tokens", "cache_read_input_tokens",
                                    "cache_creation_input_tokens"]))
        usage[key] = draw(st.sampled_from([-1, -(2**63), 2**63 - 1, 2**63, 2**64, 10**30, 1.5, 1e308, "12",
                                           True, None, [], {}]))
    elif kind == "retype":
        obj = draw(JSON_VALUES)  # a line that is JSON but maybe not an object
    line = json.dumps(obj).encode()
    if kind == "deep" and line.endswith(b"}"):
        # A field nested deeper than any decoder follows (a \u escape sends it to the tolerant path too).
        depth = draw(st.sampled_from([100, 3000, 100_000]))
        escape = draw(st.sampled_from([b"", b'"\\u00e9", ']))
        line = line[:-1] + b', "deep": [' + escape + b"[" * depth + b"]" * depth + b"]}"
    if kind == "bytes":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(line)))
            op = draw(st.sampled_from(["insert", "flip", "cut", "truncate"]))
            if op == "insert":
                line = line[:at] + draw(NASTY_BYTES | st.binary(min_size=1, max_size=6)) + line[at:]
            elif op == "flip" and at < len(line):
                line = line[:at] + bytes([line[at] ^ draw(st.integers(1, 255))]) + line[at + 1:]
            elif op == "cut":
                line = line[:at] + line[at + draw(st.integers(1, 20)):]
            else:
                line = line[:at]
    return line


@st.composite
def mutated_file(draw) -> bytes:
    lines = draw(st.lists(mutated_line(), min_size=1, max_size=24))
    sep = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\n\n  \n"]))
    data = sep.join(lines)
    if draw(st.booleans()):
        data += b"\n"
    if draw(st.integers(0, 9)) == 0:
        data = gzip.compress(data, 1)
    return data


@PROPERTY
@given(mutated_file())
def test_mutated_sample_lines_never_break_the_parser(data):
    result = parse(data)
    check_invariants(result)
    assert result.bytes_read == (len(gzip.decompress(data)) if data[:2] == b"\x1f\x8b" else len(data))
    # Deterministic, and blind to where the reads cut the bytes (7-byte reads move every line across a
    # chunk boundary).
    assert parse(data) == result
    with mock.patch.object(parser, "READ_CHUNK", 7):
        assert parse(data) == result


@PROPERTY
@given(mutated_file(), st.integers(8, 200))
def test_overlong_lines_are_skipped_and_only_ever_lower_the_counts(data, max_line):
    full = parse(data)
    with mock.patch.object(parser, "MAX_LINE_BYTES", max_line):
        capped = parse(data)
    check_invariants(capped)
    for name in COUNTERS:
        if name not in ("skipped_lines", "active_seconds", "wall_seconds"):
            assert getattr(capped.summary, name) <= getattr(full.summary, name), name


@PROPERTY
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_break_the_parser(data):
    check_invariants(parse(data))


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(st.datetimes(timezones=st.just(UTC)), st.datetimes(timezones=st.just(UTC)))
def test_stored_timestamps_are_fixed_width_and_sort_as_time(a, b):
    sa, sb = to_store(a), to_store(b)
    assert len(sa) == len(sb) == 27
    assert (sa < sb) == (a < b) and from_store(sa) == a


def test_a_prompt_from_year_999_is_not_in_todays_window():
    line = {"type": "user", "uuid": "u1", "sessionId": "s", "timestamp": "0999-01-01T00:00:00Z",
            "message": {"role": "user", "content": "hello"}}
    result = parse(json.dumps(line).encode() + b"\n")
    assert [p.ts for p in result.prompts] == ["0999-01-01T00:00:00.000000Z"]
    assert result.prompts[0].ts < to_store(NOW)


# --- Cut at every byte offset, then complete ------------------------------------------------------


class SplitReader(io.RawIOBase):
    """Delivers the first `cut` bytes, then the rest: a writer caught mid-file by a read."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.pieces = [data[:cut], data[cut:]]

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while self.pieces and not self.pieces[0]:
            self.pieces.pop(0)
        if not self.pieces:
            return 0
        piece = self.pieces[0]
        n = min(len(buf), len(piece))
        buf[:n] = piece[:n]
        self.pieces[0] = piece[n:]
        return n


# Two clean samples and one with six malformed lines by design.
CUT_SAMPLES = [SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl",
               SAMPLES / "bob" / "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40516.jsonl",
               SAMPLES / "bob" / "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d.jsonl"]


def test_cut_at_every_byte_offset_then_completed_gives_the_complete_numbers():
    for path in CUT_SAMPLES:
        data = path.read_bytes()
        assert 2000 < len(data) < 4000
        full = parse(data, path.stem)
        assert full.summary.prompts > 0
        bad = full.summary.skipped_lines
        keys = {m.key: m for m in full.messages}
        prompt_keys = {p.key for p in full.prompts}
        for cut in range(len(data) + 1):
            # Completed: the same bytes, arriving in two reads split at the cut.
            whole = parse_stream(SplitReader(data, cut), file_key="u/f.jsonl", fallback_session_id=path.stem,
                                 received_at=RECEIVED)
            assert whole == full, cut
            # The cut file alone: at most the one cut line is skipped, and nothing counts that the
            # complete file does not count at least as much.
            part = parse(data[:cut], path.stem)
            check_invariants(part)
            assert part.summary.skipped_lines <= bad + 1, cut
            if bad == 0 and (cut == 0 or data[cut - 1:cut] == b"\n"):
                assert part.summary.skipped_lines == 0, cut
            assert {p.key for p in part.prompts} <= prompt_keys, cut
            for m in part.messages:
                assert m.key in keys, cut
                assert all(getattr(m, f) <= getattr(keys[m.key], f) for f, _ in TOKEN_FIELDS), cut


def _home(result: stats.HomeStats) -> dict:
    return msgspec.to_builtins(result)


async def _single_ingest(tmp: Path, path: Path) -> tuple[dict, list]:
    db = Database(str(tmp / "single.db"), readers=1)
    await db.open()
    try:
        await migrate(db.writer)
        user = await users.add_user(db, "single@example.com")
        report = await bulk.ingest_paths(db, user.id, [str(path)], workers=0, clock=lambda: NOW)
        assert report.processed == 1
        return ({w: _home(await stats.home_stats(db, user.id, w, NOW)) for w in ("24h", "7d")},
                await _rows(db))
    finally:
        await db.close()


async def _rows(db: Database) -> list:
    summary = await db.fetchall("SELECT session_id, started_at, ended_at, active_seconds, prompts, user_messages, "
                                "assistant_messages, tool_calls, tool_errors, skipped_lines, input_tokens, "
                                "output_tokens, cache_read_tokens, cache_creation_tokens, project, primary_model "
                                "FROM session_summaries")
    messages = await db.fetchall("SELECT message_key, ts, input_tokens, output_tokens, cache_read_tokens, "
                                 "cache_creation_tokens FROM activity_messages ORDER BY message_key")
    prompts = await db.fetchall("SELECT prompt_key, ts FROM activity_prompts ORDER BY prompt_key")
    events = await db.fetchall("SELECT event_id, event_type, ts, is_error FROM usage_events ORDER BY event_id")
    return [[tuple(r) for r in rows] for rows in (summary, messages, prompts, events)]


async def test_a_growing_file_ingested_at_many_cuts_ends_with_the_single_ingest_numbers(tmp_path):
    rng = random.Random(7)
    for name in ("alice/c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl",
                 "alice/8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e.jsonl"):
        source = SAMPLES / name
        data = source.read_bytes()
        work = tmp_path / source.stem
        work.mkdir()
        expected_home, expected_rows = await _single_ingest(work, source)

        # A few dozen cuts: every line end, plus seeded mid-line offsets, in growing order.
        ends = [i + 1 for i, b in enumerate(data) if b == 10]
        cuts = sorted({c for c in ends[:: max(1, len(ends) // 12)] + rng.sample(range(1, len(data)), 24)
                       if c < len(data)})
        db = Database(str(work / "growing.db"), readers=1)
        await db.open()
        try:
            await migrate(db.writer)
            user = await users.add_user(db, "grow@example.com")
            target = work / source.name
            previous = {"prompts": 0, "tokens": 0}
            for cut in [*cuts, len(data)]:
                target.write_bytes(data[:cut])
                report = await bulk.ingest_paths(db, user.id, [str(target)], workers=0, clock=lambda: NOW)
                assert report.failed == 0 and report.processed == 1, cut
                now = _home(await stats.home_stats(db, user.id, "7d", NOW))
                # A growing file only ever adds: its numbers never go down on the way.
                assert now["prompts"] >= previous["prompts"] and now["tokens"]["total"] >= previous["tokens"], cut
                previous = {"prompts": now["prompts"], "tokens": now["tokens"]["total"]}
            assert {w: _home(await stats.home_stats(db, user.id, w, NOW)) for w in ("24h", "7d")} == expected_home
            assert await _rows(db) == expected_rows
            assert await db.fetchval("SELECT COUNT(*) FROM session_files") == 1
        finally:
            await db.close()
