"""Transcript parser: the samples' expected numbers, and each rule of FORMAT.md on small inputs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

from service.ingest import parser
from service.ingest.hashing import content_hash
from service.ingest.parser import parse_file, parse_stream
from service.records import EventRow, MessageRow, ParseResult, PromptRow, Summary
from service.timeutil import to_store
from tests.conftest import EXPECTED, SAMPLES

UTC = timezone.utc
RECEIVED = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SESSION = "s-1"


SONNET = "claude-sonnet-4-5-20250929"


def jsonl(*objs: object) -> bytes:
    """One JSON text per line, each with its newline."""
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def parse_bytes(
    data: bytes, *, file_key: str = "u/f.jsonl", fallback: str = "fallback"
) -> ParseResult:
    return parse_stream(
        io.BytesIO(data), file_key=file_key, fallback_session_id=fallback, received_at=RECEIVED
    )


def _line(kind: str, message: dict, uuid: str | None, ts: str | None, extra: dict) -> dict:
    """A transcript line of one type; uuid and timestamp left out when None."""
    line: dict = {"type": kind, "sessionId": SESSION, "message": message}
    if uuid is not None:
        line["uuid"] = uuid
    if ts is not None:
        line["timestamp"] = ts
    line.update(extra)
    return line


def user(uuid: str | None, content: object, ts: str | None = "2026-11-21T10:00:00.000Z", **extra):
    return _line("user", {"role": "user", "content": content}, uuid, ts, extra)


def assistant(
    uuid: str | None,
    msg_id: str | None,
    *,
    ts: str | None = "2026-11-21T10:00:01.000Z",
    usage: dict | None = None,
    content: list | None = None,
    model: str = SONNET,
    **extra,
):
    message: dict = {"model": model, "role": "assistant", "content": content or []}
    if msg_id is not None:
        message["id"] = msg_id
    if usage is not None:
        message["usage"] = usage
    return _line("assistant", message, uuid, ts, extra)


def usage(i: object, o: object, cr: object = 0, cc: object = 0) -> dict:
    return {
        "input_tokens": i,
        "output_tokens": o,
        "cache_read_input_tokens": cr,
        "cache_creation_input_tokens": cc,
    }


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def tool_use(tool_id: str | None, name: str, inp: object = None) -> dict:
    block: dict = {"type": "tool_use", "name": name, "input": {} if inp is None else inp}
    if tool_id is not None:
        block["id"] = tool_id
    return block


# --- The samples: every field of every expected summary.


def _expected_summary(raw: dict) -> dict:
    out = dict(raw)
    for field in ("started_at", "ended_at"):
        out[field] = datetime.fromisoformat(raw[field]) if raw[field] else None
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED["files"]))
def test_sample_summary_matches_expected(name: str) -> None:
    result = parse_file(SAMPLES / name, file_key=name, received_at=RECEIVED)
    got = msgspec.structs.asdict(result.summary)
    expected = _expected_summary(EXPECTED["files"][name])
    assert set(got) == set(expected)  # no counter left unchecked
    assert got == expected
    for field in ("started_at", "ended_at"):
        if got[field] is not None:
            assert got[field].tzinfo is not None and got[field].utcoffset() == timedelta(0)
    assert result.content_hash == content_hash((SAMPLES / name).read_bytes())
    assert result.bytes_read == (SAMPLES / name).stat().st_size


def test_sample_rows_of_the_tool_session() -> None:
    name = "alice/8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e.jsonl"
    result = parse_file(SAMPLES / name, file_key=name, received_at=RECEIVED)
    sid = "8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e"
    assert result.lines == 18
    assert result.messages[0] == MessageRow(
        "msg_02ToolA", sid, "2026-11-20T06:00:23.000000Z", 30, 120, 9000, 4000, SONNET, None, 0, 0
    )
    assert [m.key for m in result.messages] == [f"msg_02Tool{c}" for c in "ABCDEFG"]
    assert result.prompts == [
        PromptRow("8d1e4b2a-0001-4000-8000-000000000001", sid, "2026-11-20T06:00:20.000000Z")
    ]
    got = [
        (e.event_type, e.tool_name, e.skill_name, e.subagent_type, e.is_error, e.ts)
        for e in result.events
    ]
    assert got == [
        ("tool_use", "Bash", None, None, True, "2026-11-20T06:00:23.400000Z"),
        ("tool_use", "Read", None, None, False, "2026-11-20T06:00:27.900000Z"),
        ("tool_use", "Skill", "data-quality-check", None, False, "2026-11-20T06:00:32.400000Z"),
        ("subagent", "Task", None, "schema-differ", False, "2026-11-20T06:00:37.300000Z"),
        ("mcp_call", "mcp__keboola__query_data", None, None, False, "2026-11-20T06:00:41.800000Z"),
        ("tool_use", "Bash", None, None, True, "2026-11-20T06:00:42.200000Z"),
        ("subagent", "Agent", None, None, False, "2026-11-20T06:00:46.700000Z"),
    ]


def test_sample_slash_commands_and_prompts() -> None:
    name = "alice/c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl"
    result = parse_file(SAMPLES / name, file_key=name, received_at=RECEIVED)
    slash = [
        (e.command_name, e.tool_name, e.ts) for e in result.events if e.event_type == "slash_command"
    ]
    assert slash == [
        ("clear", None, "2026-11-21T10:00:02.000000Z"),
        ("agnes:explore", None, "2026-11-21T10:00:29.900000Z"),
    ]
    assert [p.key for p in result.prompts] == [
        "c7b6a5d4-0004-4000-8000-000000000004",
        "c7b6a5d4-0012-4000-8000-000000000012",
        "att-1",
        "c7b6a5d4-0013-4000-8000-000000000013",
        "c7b6a5d4-0014-4000-8000-000000000014",
    ]


def test_sample_line_without_timestamp_and_message_without_id() -> None:
    name = "alice/5e4d3c2b-1a09-4f8e-b7d6-c5b4a3928170.jsonl"
    result = parse_file(SAMPLES / name, file_key=name, received_at=RECEIVED)
    # Line 7 has no timestamp: it takes line 6's. The synthetic line 8 counts nowhere.
    assert result.prompts[-1].key == "5e4d3c2b-0007-4000-8000-000000000007"
    assert result.prompts[-1].ts == "2026-11-21T11:00:23.000000Z"
    assert [m.key for m in result.messages] == [
        "msg_05GapA",
        "msg_05GapB",
        "msg_05GapC",
        "uuid:5e4d3c2b-0009-4000-8000-000000000009",
    ]


# --- Streaming duplicates.


def test_streamed_message_counts_once_with_largest_values() -> None:
    data = jsonl(
        user("u1", "Go."),
        assistant("a1", "msg_X", ts="2026-11-21T10:00:01.000Z", usage=usage(10, 5, 100, 7)),
        assistant("a2", "msg_X", ts="2026-11-21T10:00:02.000Z", usage=usage(10, 40, 90, 7)),
        assistant("a3", "msg_X", ts="2026-11-21T10:00:03.000Z", usage=usage(9, 25, 100, 8)),
        assistant("a4", "msg_Y", ts="2026-11-21T10:00:04.000Z", usage=usage(1, 2, 3, 4)),
    )
    result = parse_bytes(data)
    assert result.messages == [
        MessageRow("msg_X", SESSION, "2026-11-21T10:00:01.000000Z", 10, 40, 100, 8, SONNET, None, 0, 0),
        MessageRow("msg_Y", SESSION, "2026-11-21T10:00:04.000000Z", 1, 2, 3, 4, SONNET, None, 0, 0),
    ]
    s = result.summary
    assert (s.assistant_messages, s.input_tokens, s.output_tokens) == (2, 11, 42)
    assert (s.cache_read_tokens, s.cache_creation_tokens) == (103, 12)


def test_message_keys_without_id() -> None:
    data = jsonl(
        assistant("a1", None, usage=usage(1, 1)),
        assistant(None, None, usage=usage(2, 2)),
        assistant(None, "", usage=usage(3, 3)),
    )
    result = parse_bytes(data, file_key="bob/x.jsonl")
    assert [(m.key, m.input) for m in result.messages] == [
        ("uuid:a1", 1),
        ("line:bob/x.jsonl:2", 2),
        ("line:bob/x.jsonl:3", 3),
    ]


def test_cache_creation_breakdown_is_not_added() -> None:
    u = usage(1, 2, 3, 50) | {"cache_creation": {"ephemeral_5m_input_tokens": 50}}
    result = parse_bytes(jsonl(assistant("a1", "m1", usage=u)))
    assert result.summary.cache_creation_tokens == 50


def test_wrong_typed_usage_counts_zero_but_keeps_the_line() -> None:
    """Not a non-negative integer: 0. An integer past int64 (SQLite's limit) saturates there, so
    a larger counter never counts less than a smaller one."""
    bad = {
        "input_tokens": "12",
        "output_tokens": True,
        "cache_read_input_tokens": -5,
        "cache_creation_input_tokens": None,
    }
    huge = json.dumps(assistant("a2", "m2", usage=usage(1.5, 2**63 - 1, "HUGE", 2**63)))
    huge = huge.replace('"HUGE"', "1e400")  # valid JSON that Python's json does not write
    data = jsonl(
        assistant("a1", "m1", usage=bad),
    ) + huge.encode() + b"\n" + jsonl(
        assistant("a3", "m3", usage="not an object"),
    )
    result = parse_bytes(data)
    assert result.summary.skipped_lines == 0
    assert [(m.input, m.output, m.cache_read, m.cache_creation) for m in result.messages] == [
        (0, 0, 0, 0),
        (0, 2**63 - 1, 0, 2**63 - 1),
        (0, 0, 0, 0),
    ]


def test_synthetic_lines_count_nowhere() -> None:
    data = jsonl(
        user("u1", "Hi.", ts="2026-11-21T10:00:00.000Z"),
        assistant("a1", "msg_S", ts="2026-11-21T11:00:00.000Z", model="<synthetic>", usage=usage(5, 5)),
        user("u2", "Again.", ts=None),
    )
    result = parse_bytes(data)
    s = result.summary
    assert (s.assistant_messages, s.input_tokens, s.primary_model) == (0, 0, None)
    assert s.ended_at == datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert (s.active_seconds, s.wall_seconds, result.lines) == (0, 0, 3)
    # But it is a line that has a timestamp: the nearest earlier one for a line without (FORMAT.md).
    assert result.prompts[1].ts == "2026-11-21T11:00:00.000000Z"


def test_a_synthetic_timestamp_is_the_earliest_for_lines_before_any_other() -> None:
    data = jsonl(
        user("u1", "Before any timestamp.", ts=None),
        assistant("a1", "msg_S", ts="2026-11-21T09:00:00.000Z", model="<synthetic>", usage=usage(5, 5)),
        user("u2", "Later.", ts="2026-11-21T10:00:00.000Z"),
    )
    result = parse_bytes(data)
    assert [p.ts for p in result.prompts] == ["2026-11-21T09:00:00.000000Z", "2026-11-21T10:00:00.000000Z"]
    assert result.summary.started_at == datetime(2026, 11, 21, 10, 0, tzinfo=UTC)  # still not activity


def test_primary_model_tie_goes_to_first_seen() -> None:
    data = jsonl(
        assistant("a1", "m1", model="model-b"),
        assistant("a2", "m2", model="model-a"),
        assistant("a3", "m3", model="model-a"),
        assistant("a4", "m4", model="model-b"),
    )
    assert parse_bytes(data).summary.primary_model == "model-b"
    data += jsonl(assistant("a5", "m5", model="model-a"))
    assert parse_bytes(data).summary.primary_model == "model-a"

    # The order the file names models in, not the order messages first appear: m6's first line
    # names none, and model-b is named (by m7) before m6's second line names model-a.
    data = jsonl(
        {**assistant("b1", "m6"), "message": {"id": "m6", "role": "assistant", "content": []}},
        assistant("b2", "m7", model="model-b"),
        assistant("b3", "m6", model="model-a"),
    )
    assert parse_bytes(data).summary.primary_model == "model-b"


def test_each_line_belongs_to_its_own_session() -> None:
    """A resumed session's file starts with the copied lines of the session it resumed, under
    that session's id: their activity stays that session's, and each session has its project."""
    data = jsonl(
        {"type": "summary", "summary": "Resumed", "cwd": "/before"},  # before any sessionId: the file's
        user("o1", "old question", ts="2026-11-18T10:00:00.000Z", sessionId="OLD", cwd="/old"),
        assistant("o2", "msg_old", ts="2026-11-18T10:00:05.000Z", sessionId="OLD", usage=usage(1, 10),
                  content=[tool_use("toolu_old", "Read")]),
        user("n1", "new question", ts="2026-11-21T10:00:00.000Z", sessionId="NEW"),
        assistant("n2", "msg_new", ts="2026-11-21T10:00:05.000Z", sessionId="NEW", cwd="/new",
                  usage=usage(2, 20), content=[tool_use("toolu_new", "Bash")]),
        {k: v for k, v in user("n3", "no sessionId: the nearest earlier line's",
                                ts="2026-11-21T10:01:00.000Z").items() if k != "sessionId"},
    )
    result = parse_bytes(data, fallback="NEW")
    assert result.summary.session_id == "OLD"  # the file's first sessionId
    assert result.summary.project == "/before"
    assert [(m.key, m.session_id) for m in result.messages] == [("msg_old", "OLD"), ("msg_new", "NEW")]
    assert [(p.key, p.session_id) for p in result.prompts] == [("o1", "OLD"), ("n1", "NEW"), ("n3", "NEW")]
    assert [(e.tool_name, e.session_id) for e in result.events] == [("Read", "OLD"), ("Bash", "NEW")]
    assert [(r.session_id, r.project) for r in result.sessions] == [("OLD", "/before"), ("NEW", "/new")]
    # A file without any sessionId is one session, named after the file.
    plain = parse_bytes(jsonl({"type": "user", "message": {"role": "user", "content": "hi"}, "uuid": "x"}))
    assert [(r.session_id, r.project) for r in plain.sessions] == [("fallback", None)]
    assert [p.session_id for p in plain.prompts] == ["fallback"]


def test_repeated_command_tags_and_id_less_tool_uses_count_each() -> None:
    tag = "<command-name>/review</command-name>"
    data = jsonl(
        user("u1", f"{tag} then again {tag}"),
        user("u2", [text("<command-name>/plug:cmd</command-name>"), text("<command-name>/plug:cmd</command-name>")]),
        assistant("a1", "m1", content=[tool_use(None, "Read"), tool_use(None, "Read")]),
    )
    result = parse_bytes(data)
    assert (result.summary.slash_commands, result.summary.tool_calls) == (4, 2)
    # The same lines written twice (one uuid each) are the same events: nothing counts twice.
    again = parse_bytes(data + data)
    assert (again.summary.slash_commands, again.summary.tool_calls) == (4, 2)
    assert sorted(e.event_id for e in again.events) == sorted(e.event_id for e in result.events)


def test_a_subagent_file_without_session_ids_is_its_parent_session(tmp_path) -> None:
    line = {"type": "user", "message": {"role": "user", "content": "hi"}, "uuid": "x",
            "timestamp": "2026-11-21T10:00:00.000Z"}
    path = tmp_path / "S-parent" / "subagents" / "agent-abc.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(jsonl(line))
    assert parse_file(path, file_key="k", received_at=RECEIVED).summary.session_id == "S-parent"
    plain = tmp_path / "S-own.jsonl"
    plain.write_bytes(jsonl(line))
    assert parse_file(plain, file_key="k", received_at=RECEIVED).summary.session_id == "S-own"


def test_a_byte_order_mark_does_not_cost_the_first_line() -> None:
    data = jsonl(user("u1", "first"), user("u2", "second"))
    result = parse_bytes(b"\xef\xbb\xbf" + data)
    assert (result.summary.prompts, result.summary.skipped_lines) == (2, 0)
    # Only at the start of the file: anywhere else it is part of a line, which is then not JSON.
    result = parse_bytes(data + b"\xef\xbb\xbf" + jsonl(user("u3", "third")))
    assert (result.summary.prompts, result.summary.skipped_lines) == (2, 1)


# --- Growth: a file read while it is being written.


def test_cut_file_counts_partial_last_line_then_full_file_matches() -> None:
    name = "alice/8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e.jsonl"
    data = (SAMPLES / name).read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]  # offset after each newline
    assert len(ends) == 18
    for k in (3, 9, 17):
        whole = parse_bytes(data[: ends[k - 1]])
        assert (whole.lines, whole.summary.skipped_lines) == (k, 0)
        mid = parse_bytes(data[: ends[k - 1] + 40])  # 40 bytes into line k+1
        assert (mid.lines, mid.summary.skipped_lines) == (k + 1, 1)
        assert mid.summary.user_messages == whole.summary.user_messages
        assert mid.messages == whole.messages
        # A complete last line without its newline is parsed.
        unterminated = parse_bytes(data[: ends[k] - 1])
        assert (unterminated.lines, unterminated.summary.skipped_lines) == (k + 1, 0)
    cut = parse_bytes(data[: ends[11] + 100])
    assert cut.summary.assistant_messages == 5
    assert cut.summary.tool_calls == 3  # Bash, Read, Skill: the line with the second Bash is cut
    full = parse_bytes(data, file_key=name, fallback="8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e")
    assert msgspec.structs.asdict(full.summary) == _expected_summary(EXPECTED["files"][name])
    assert full == parse_file(SAMPLES / name, file_key=name, received_at=RECEIVED)


def test_half_written_sample_line_is_skipped() -> None:
    name = "bob/9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d.jsonl"
    data = (SAMPLES / name).read_bytes()
    assert not data.endswith(b"\n")
    completed = data[: data.rindex(b"\n") + 1] + jsonl(
        assistant("x", "msg_06Trunc", ts="2026-11-21T02:00:50.000Z", usage=usage(1, 2))
    )
    before = parse_bytes(data)
    after = parse_bytes(completed)
    assert (before.summary.skipped_lines, after.summary.skipped_lines) == (6, 5)
    assert (before.summary.assistant_messages, after.summary.assistant_messages) == (2, 3)
    assert after.summary.input_tokens == before.summary.input_tokens + 1


# --- Reading: gzip, chunk boundaries, bad bytes, long lines.


def test_gzip_gives_the_same_result_as_plain(tmp_path: Path) -> None:
    name = "alice/c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl"
    raw = (SAMPLES / name).read_bytes()
    packed = gzip.compress(raw)
    plain = parse_file(SAMPLES / name, file_key=name, received_at=RECEIVED)
    stem = "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d"
    for file_name in (f"{stem}.jsonl.gz", f"{stem}.jsonl"):
        path = tmp_path / file_name
        path.write_bytes(packed)
        result = parse_file(path, file_key=name, received_at=RECEIVED)
        assert result.summary == plain.summary
        assert (result.messages, result.prompts, result.events) == (
            plain.messages,
            plain.prompts,
            plain.events,
        )
        assert result.bytes_read == len(raw)
        assert result.content_hash == content_hash(packed) != plain.content_hash


def test_gzip_members_small_chunks_and_truncation(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    name = "alice/8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e.jsonl"
    raw = (SAMPLES / name).read_bytes()
    plain = parse_bytes(raw)
    half = raw.index(b"\n", len(raw) // 2) + 1
    members = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    monkeypatch.setattr(parser, "READ_CHUNK", 7)
    assert parse_bytes(members).summary == plain.summary
    # Trailing garbage stops decompression without losing what came before; the hash covers it.
    garbage = gzip.compress(raw) + b"not gzip at all"
    with caplog.at_level("WARNING", logger=parser.__name__):
        result = parse_bytes(garbage, file_key="damaged.jsonl.gz")
    assert result.summary == plain.summary
    # The warning names the file and how much of it was read.
    [warning] = [r for r in caplog.records if r.name == parser.__name__]
    assert warning.getMessage().startswith(f"gzip content of damaged.jsonl.gz unreadable after {len(raw)} bytes")
    assert warning.file == "damaged.jsonl.gz"
    assert result.content_hash == content_hash(garbage)
    # Output larger than one piece from the last input bytes (a long run) is not lost.
    tail = jsonl(user("run", "a" * 50_000))
    assert len(gzip.compress(raw + tail)) < len(gzip.compress(raw)) + 400  # 50 kB from a few bytes
    assert parse_bytes(gzip.compress(raw + tail)).summary == parse_bytes(raw + tail).summary
    assert parse_bytes(raw + tail).summary.prompts == plain.summary.prompts + 1
    # Cut anywhere near the end, small pieces give what one big piece gives.
    packed = gzip.compress(raw + tail + jsonl(user("after", "Done.")))
    for cut in range(len(packed) - 60, len(packed) + 1):
        small = parse_bytes(packed[:cut])
        monkeypatch.setattr(parser, "READ_CHUNK", 1 << 20)
        assert small == parse_bytes(packed[:cut]), cut
        monkeypatch.setattr(parser, "READ_CHUNK", 7)
    # A gzip file still being written: the cut line is skipped, the rest counted.
    packed = gzip.compress(raw)
    cut = parse_bytes(packed[: len(packed) - 30])
    assert cut.summary.skipped_lines == 1
    assert 0 < cut.summary.assistant_messages <= 7


def test_tiny_read_chunks_give_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in EXPECTED["files"]:
        data = (SAMPLES / name).read_bytes()
        reference = parse_bytes(data, file_key=name)
        for size in (1, 2, 5, 64):
            monkeypatch.setattr(parser, "READ_CHUNK", size)
            assert parse_bytes(data, file_key=name) == reference, (name, size)
        monkeypatch.undo()


def test_non_utf8_bytes_make_a_line_bad_only_where_they_are_read() -> None:
    # FORMAT.md revision 2: a bad byte in a prompt's text or a text block skips the line; one in
    # tool output, thinking, tool input or an unknown field is ignored, and the line counts.
    good = jsonl(user("u1", "Café ☕ résumé"))
    unknown_field = b'{"type":"user","uuid":"u2","message":{"role":"user","content":"ok"},"x":"caf\xe9"}\n'
    surrogate = b'{"type":"user","uuid":"u3","message":{"role":"user","content":"\xed\xa0\x80"}}\n'
    tool_output = (b'{"type":"user","uuid":"u5","message":{"role":"user","content":[{"type":"tool_result",'
                   b'"tool_use_id":"t1","is_error":true,"content":"r\xe9sultat"}]}}\n')
    thinking = (b'{"type":"assistant","uuid":"a1","message":{"id":"msg_T","model":"m","content":[{"type":'
                b'"thinking","thinking":"\xff"},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":'
                b'"cat caf\xe9"}}],"usage":{"input_tokens":3,"output_tokens":4}}}\n')
    text_block = (b'{"type":"assistant","uuid":"a2","message":{"id":"msg_U","model":"m","content":[{"type":'
                  b'"text","text":"caf\xe9"}],"usage":{"input_tokens":5,"output_tokens":6}}}\n')
    data = good + unknown_field + surrogate + thinking + tool_output + text_block + jsonl(user("u4", "Après ça."))
    result = parse_bytes(data)
    assert (result.lines, result.summary.skipped_lines) == (7, 2)
    assert [p.key for p in result.prompts] == ["u1", "u2", "u4"]
    assert result.summary.user_messages == 4
    assert [m.key for m in result.messages] == ["msg_T"]
    assert (result.summary.tool_calls, result.summary.tool_errors) == (1, 1)


def test_lone_surrogate_escape_is_valid_json() -> None:
    # Node writes "\ud83d" when it cuts a string between the halves of a pair.
    line = b'{"type":"user","uuid":"u1","message":{"role":"user","content":"cut \\ud83d"},"x":"\\udc00"}\n'
    nan = b'{"type":"user","uuid":"u2","message":{"role":"user","content":"\\ud83d"},"x":NaN}\n'
    result = parse_bytes(line + nan)
    assert (result.lines, result.summary.skipped_lines) == (2, 1)
    assert [p.key for p in result.prompts] == ["u1"]


def test_overlong_line_is_skipped_and_later_lines_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parser, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(parser, "READ_CHUNK", 64)
    long_line = user("u2", "x" * 5000)
    just_fits = user("u4", "y" * (1000 - len(json.dumps(user("u4", "")))))
    assert len(json.dumps(just_fits)) == 1000
    data = jsonl(user("u1", "First."), long_line, user("u3", "Third."), just_fits, user(None, "5th"))
    keys = ["u1", "u3", "u4", "line:u/f.jsonl:5"]  # the skipped line still has its number
    result = parse_bytes(data)
    assert (result.lines, result.summary.skipped_lines) == (5, 1)
    assert [p.key for p in result.prompts] == keys
    # An overlong last line without its newline, and one inside a single big chunk.
    result = parse_bytes(data + json.dumps(long_line).encode())
    assert (result.lines, result.summary.skipped_lines) == (6, 2)
    monkeypatch.setattr(parser, "READ_CHUNK", 1 << 20)
    result = parse_bytes(data)
    assert (result.lines, result.summary.skipped_lines) == (5, 1)
    assert [p.key for p in result.prompts] == keys


def test_overlong_line_is_never_held_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parser, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(parser, "READ_CHUNK", 100)
    held: list[int] = []
    real_region = parser._FileState._region

    def spy(self, buf, start, end, lineno):  # type: ignore[no-untyped-def]
        held.append(len(buf))
        return real_region(self, buf, start, end, lineno)

    monkeypatch.setattr(parser._FileState, "_region", spy)
    result = parse_bytes(jsonl(user("u1", "z" * 100_000), user("u2", "After.")))
    assert (result.lines, result.summary.skipped_lines, result.summary.prompts) == (2, 1, 1)
    assert max(held) <= 1000 + 100


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "abc.jsonl.gz"
    path.write_bytes(b"")
    result = parse_file(path, file_key="u/abc.jsonl.gz", received_at=RECEIVED)
    assert result.summary == Summary(
        session_id="abc", started_at=None, ended_at=None, active_seconds=0, wall_seconds=0,
        user_messages=0, assistant_messages=0, tool_calls=0, tool_errors=0, skill_invocations=0,
        subagent_dispatches=0, mcp_calls=0, slash_commands=0, distinct_tools=0,
        distinct_skills=0, primary_model=None, prompts=0, project=None, skipped_lines=0,
        input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_creation_tokens=0,
    )
    assert (result.messages, result.prompts, result.events) == ([], [], [])
    assert (result.lines, result.bytes_read) == (0, 0)
    assert result.content_hash == content_hash(b"")


def test_metadata_only_and_blank_lines() -> None:
    data = b"\n   \n" + jsonl(
        {"type": "summary", "summary": "Nothing", "leafUuid": "y"},
        {"type": "file-history-snapshot", "messageId": "z", "snapshot": {}},
        {"type": "progress", "data": {"whatever": [1, 2]}},
    ) + b"\t\r\n"
    result = parse_bytes(data, fallback="meta-only")
    assert (result.lines, result.summary.skipped_lines) == (3, 0)
    assert result.summary.session_id == "meta-only"
    assert result.summary.started_at is None
    assert (result.messages, result.prompts, result.events) == ([], [], [])


def test_lines_that_are_skipped_and_lines_that_degrade() -> None:
    data = b"".join(
        [
            b"{not json\n",
            b"[1, 2]\n",
            b"null\n",
            b'{"type":"user","uuid":"s1","message":null}\n',
            b'{"type":"user","uuid":"s2","message":["a"]}\n',
            b'{"type":"user","uuid":"s3","message":{"content":"x"}} trailing\n',
            # Wrong-typed fields degrade to absent; the lines still count.
            b'{"type":"user","uuid":"d1","isMeta":"yes","timestamp":5,"message":{"content":"Real."}}\n',
            b'{"type":"user","uuid":"d2","message":{"content":[7,{"type":"text","text":"Also."}]}}\n',
            b'{"type":"user","uuid":"d3","message":{"content":{"text":"odd"}}}\n',
            b'{"type":"assistant","uuid":"d4","message":{"id":"m1","content":'
            b'[{"type":"tool_use","id":"t1","name":"Bash","input":"ls"}]}}\r\n',
            b'{"type":7,"uuid":"d5"}\n',
        ]
    )
    result = parse_bytes(data)
    s = result.summary
    assert (result.lines, s.skipped_lines) == (11, 6)
    assert s.user_messages == 3
    assert [p.key for p in result.prompts] == ["d1", "d2"]
    assert (s.assistant_messages, s.tool_calls, s.distinct_tools) == (1, 1, 1)


# --- Timestamps.


def test_timestamp_inheritance_and_received_at() -> None:
    data = jsonl(
        user("u1", "No time yet.", ts=None),
        user("u2", "Bad time.", ts="yesterday-ish"),
        user("u3", "Has one.", ts="2026-11-21T10:00:05.000Z"),
        user("u4", "Inherits.", ts=None),
        user("u5", "Earlier.", ts="2026-11-21T09:59:59.250Z"),
        user("u6", "Inherits the previous line's, not the latest.", ts=None),
    )
    result = parse_bytes(data)
    assert [(p.key, p.ts) for p in result.prompts] == [
        ("u1", "2026-11-21T09:59:59.250000Z"),  # none before it: the earliest in the file
        ("u2", "2026-11-21T09:59:59.250000Z"),
        ("u3", "2026-11-21T10:00:05.000000Z"),
        ("u4", "2026-11-21T10:00:05.000000Z"),
        ("u5", "2026-11-21T09:59:59.250000Z"),
        ("u6", "2026-11-21T09:59:59.250000Z"),
    ]
    s = result.summary
    assert (s.started_at, s.ended_at) == (
        datetime(2026, 11, 21, 9, 59, 59, 250000, tzinfo=UTC),
        datetime(2026, 11, 21, 10, 0, 5, tzinfo=UTC),
    )
    assert (s.active_seconds, s.wall_seconds) == (5, 5)

    none = parse_bytes(jsonl(user("u1", "Timeless.", ts=None), assistant("a1", "m1", ts=None)))
    assert none.prompts[0].ts == none.messages[0].ts == to_store(RECEIVED)
    assert (none.summary.started_at, none.summary.active_seconds) == (None, 0)


def test_timestamp_forms_are_normalised_to_utc() -> None:
    forms = {
        "u1": "2026-11-21T10:00:00.123Z",
        "u2": "2026-11-21T12:00:01+02:00",
        "u3": "2026-11-21T10:00:02",  # naive: UTC
        "u4": "2026-11-21 10:00:03.5+00:00",
        "u5": "2026-11-21T10:00:04.123456Z",
    }
    result = parse_bytes(jsonl(*(user(k, "Hi.", ts=v) for k, v in forms.items())))
    assert [p.ts for p in result.prompts] == [
        "2026-11-21T10:00:00.123000Z",
        "2026-11-21T10:00:01.000000Z",
        "2026-11-21T10:00:02.000000Z",
        "2026-11-21T10:00:03.500000Z",
        "2026-11-21T10:00:04.123456Z",
    ]
    for p, text in zip(result.prompts, forms.values()):
        dt = datetime.fromisoformat(text)
        assert p.ts == to_store(dt if dt.tzinfo else dt.replace(tzinfo=UTC))
    assert result.summary.ended_at == datetime(2026, 11, 21, 10, 0, 4, 123456, tzinfo=UTC)


def test_activity_blocks_split_on_gaps_over_600_seconds() -> None:
    base = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    offsets = [0, 600, 1200.5, 1801, 1900, 5000, 5000.9]  # gaps: 600, 600.5, 600.5, 99, 3100, 0.9
    stamps = [(base + timedelta(seconds=o)).isoformat() for o in offsets]
    lines = [user(f"u{i}", "Go.", ts=t) for i, t in enumerate(stamps)]
    ordered = parse_bytes(jsonl(*lines)).summary
    # Blocks: [0, 600] = 600, [1200.5], [1801, 1900] = 99, [5000, 5000.9] = 0.9 -> 699.9
    assert (ordered.active_seconds, ordered.wall_seconds) == (699, 5000)
    shuffled = [lines[i] for i in (5, 1, 6, 3, 0, 2, 4)]
    assert parse_bytes(jsonl(*shuffled)).summary.active_seconds == 699
    # A line at 900 bridges [0, 600] and [1200.5]: 1200.5 + 99 + 0.9.
    bridge = user("b", "Go.", ts=(base + timedelta(seconds=900)).isoformat())
    bridged = parse_bytes(jsonl(*shuffled, bridge))
    assert bridged.summary.active_seconds == 1300


# --- Prompts.

MARKERS = [
    "<command-name>/clear</command-name>",
    "<command-message>x</command-message>",
    "<command-args></command-args>",
    "<local-command-stdout>done</local-command-stdout>",
    "<local-command-stderr>oops</local-command-stderr>",
    "<local-command-caveat>Caveat</local-command-caveat>",
    "<system-reminder>Plan mode.</system-reminder>",
    "<task-notification>done</task-notification>",
    "[Request interrupted by user for tool use]",
    "Caveat: The messages below were generated by the user while running local commands.",
]


@pytest.mark.parametrize("text", MARKERS)
def test_harness_marker_is_not_a_prompt(text: str) -> None:
    data = jsonl(
        user("u1", text),
        user("u2", "  \n" + text),
        user("u3", [{"type": "text", "text": text}]),
    )
    result = parse_bytes(data)
    assert result.summary.prompts == 0
    assert result.summary.user_messages == 3


def test_prompt_rules() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
    data = jsonl(
        user("p1", "A real question."),
        user("n1", "Injected context.", isMeta=True),
        user("n2", "Summary of the chat.", isCompactSummary=True),
        user("n3", "Subagent's task.", isSidechain=True),
        user("n4", [{"type": "tool_result", "tool_use_id": "t", "content": "out"}, text("and words")]),
        user("n5", "  \n\t "),
        user("n6", [{"type": "text", "text": "   "}]),
        user("n7", [image]),
        user("p2", [image, {"type": "text", "text": "Like this chart."}]),
        user("p3", [text("<system-reminder>x</system-reminder>"), text("Use EU.")]),
        {"type": "attachment", "uuid": "p4", "timestamp": "2026-11-21T10:00:09.000Z",
         "attachment": {"type": "queued_command", "prompt": "also by region"}},
        {"type": "attachment", "uuid": "n8", "attachment": {"type": "file", "path": "x"}},
        user("p1", "The same uuid again (a second upload) counts once."),
        user(None, "No uuid."),
        {"type": "user", "message": {"role": "user", "content": "No uuid either."}},
        user("n9", "Sidechain is strict.", isSidechain=False, isMeta=False),
    )
    result = parse_bytes(data, file_key="alice/x.jsonl")
    assert [p.key for p in result.prompts] == [
        "p1", "p2", "p3", "p4", "line:alice/x.jsonl:14", "line:alice/x.jsonl:15", "n9",
    ]
    assert result.summary.prompts == 7
    assert result.summary.user_messages == 14


# --- Tools, errors, slash commands, event ids.


def test_tool_events_errors_and_dedup() -> None:
    data = jsonl(
        assistant("a1", "m1", content=[tool_use("t1", "Bash", {"command": "ls"})]),
        assistant("a2", "m1", content=[tool_use("t2", "Skill", {"name": "by-name"})]),
        assistant("a3", "m2", content=[tool_use("t3", "Skill", {"skill": "by-skill", "name": "ignored"})]),
        assistant("a4", "m3", content=[tool_use("t4", "Agent", {"subagent_type": "explorer"})]),
        assistant("a5", "m4", content=[tool_use("t5", "mcp__db__query", {"sql": "select 1"})]),
        assistant("a6", "m4", content=[tool_use("t1", "Bash", {"command": "ls"})]),  # repeated id
        assistant("a7", "m5", content=[tool_use("t6", "Skill", {"skill": "by-skill"})]),
        user("r1", [{"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": "x"}]),
        user("r2", [{"type": "tool_result", "tool_use_id": "t5", "is_error": False, "content": "1"}]),
        user("r3", [{"type": "tool_result", "tool_use_id": "t2", "is_error": "true", "content": "?"}]),
        {"type": "tool_use_result", "tool_use_id": "t4", "is_error": True},
        user("r4", [{"type": "tool_result", "tool_use_id": "elsewhere", "is_error": True}]),
    )
    result = parse_bytes(data)
    got = [(e.event_type, e.tool_name, e.skill_name, e.subagent_type, e.is_error) for e in result.events]
    assert got == [
        ("tool_use", "Bash", None, None, True),
        ("tool_use", "Skill", "by-name", None, False),
        ("tool_use", "Skill", "by-skill", None, False),
        ("subagent", "Agent", None, "explorer", True),
        ("mcp_call", "mcp__db__query", None, None, False),
        ("tool_use", "Skill", "by-skill", None, False),
    ]
    s = result.summary
    assert (s.tool_calls, s.skill_invocations, s.distinct_skills) == (4, 3, 2)
    assert (s.subagent_dispatches, s.mcp_calls, s.tool_errors, s.distinct_tools) == (1, 1, 2, 4)


def test_slash_commands() -> None:
    data = jsonl(
        user("c1", "<command-name>/clear</command-name>\n<command-message>clear</command-message>"),
        user("c2", [text("<command-message>x</command-message>\n<command-name>/agnes:explore</command-name>")]),
        user("c3", "text <command-name>/model-set_2</command-name> and <command-name>/review</command-name>"),
        user("c4", "The user ran <command-name>/clear</command-name>.", isCompactSummary=True),
        user("c5", "<command-name>/compact</command-name>", isMeta=True),
        user("c6", "<command-name>/9lives</command-name> <command-name>clear</command-name> /plain"),
        assistant("a1", "m1", content=[text("<command-name>/assistant</command-name>")]),
    )
    result = parse_bytes(data)
    got = [(e.event_type, e.command_name, e.tool_name, e.is_error) for e in result.events]
    assert got == [
        ("slash_command", "clear", None, False),
        ("slash_command", "agnes:explore", None, False),
        ("slash_command", "model-set_2", None, False),
        ("slash_command", "review", None, False),
        ("slash_command", "clear", None, False),  # c6: the slash is optional (1.0.x); "9lives" is no NAME
    ]
    assert result.summary.slash_commands == 5
    assert result.summary.prompts == 1  # c3: text before the tag is typed by the person


def test_event_ids_are_stable_and_independent_of_file_key() -> None:
    name = "alice/8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e.jsonl"
    data = (SAMPLES / name).read_bytes()
    first = parse_bytes(data, file_key=name)
    again = parse_bytes(data, file_key=name)
    renamed = parse_bytes(data, file_key="alice/renamed-copy.jsonl", fallback="other")
    ids = [e.event_id for e in first.events]
    assert ids == [e.event_id for e in again.events] == [e.event_id for e in renamed.events]
    assert len(set(ids)) == 7
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    expected_first = hashlib.blake2b(
        "\x1f".join(
            ["8d1e4b2a-0c3f-4a5b-8e9d-7f6a5b4c3d2e", "8d1e4b2a-0003-4000-8000-000000000003",
             "toolu_01Bash", "tool_use", "Bash", ""]
        ).encode(),
        digest_size=16,
    ).hexdigest()
    assert ids[0] == expected_first
    # The sample copied under another name gives the same ids.
    copy = parse_file(SAMPLES / "alice/churn-review-copy.jsonl", file_key="x", received_at=RECEIVED)
    orig_path = SAMPLES / "alice/3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl"
    orig = parse_file(orig_path, file_key="y", received_at=RECEIVED)
    assert copy.messages == orig.messages and copy.prompts == orig.prompts


def test_session_id_comes_from_lines_else_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "agent-zz.jsonl"
    path.write_bytes(jsonl({"type": "summary"}, user("u1", "Hi.", sessionId="parent-1")))
    result = parse_file(path, file_key="u/agent-zz.jsonl", received_at=RECEIVED)
    assert result.summary.session_id == "parent-1"
    path.write_bytes(jsonl({"type": "summary"}))
    result = parse_file(path, file_key="u/agent-zz.jsonl", received_at=RECEIVED)
    assert result.summary.session_id == "agent-zz"


def test_project_is_the_first_cwd() -> None:
    data = jsonl(
        {"type": "summary"},
        user("u1", "Hi.", cwd="/home/a/first"),
        user("u2", "Hi.", cwd="/home/a/second"),
    )
    assert parse_bytes(data).summary.project == "/home/a/first"


def test_result_pickles() -> None:
    name = "alice/c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl"
    result = parse_file(SAMPLES / name, file_key=name, received_at=RECEIVED)
    assert pickle.loads(pickle.dumps(result)) == result
    assert isinstance(result.events[0], EventRow)


def test_runs_of_empty_lines_keep_line_numbers_and_cost_nothing():
    """Empty lines are skipped in bulk; the lines after them keep their numbers (1-based)."""
    data = (b"\n" * 3 + jsonl(user(None, "first")) + b"\n" * 100_000 + jsonl(user(None, "second"))
            + b"\n\n" + jsonl(user("u9", "third")))
    result = parse_bytes(data, file_key="k")
    assert [p.key for p in result.prompts] == ["line:k:4", "line:k:100005", "u9"]
    assert (result.lines, result.summary.skipped_lines, result.summary.prompts) == (3, 0, 3)
