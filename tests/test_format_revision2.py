"""FORMAT.md revision 2 on a real database: resumed sessions, queued prompts, local commands,
subagent messages inside progress lines, what each message keeps for cost, and an upgrade."""

from __future__ import annotations

import json
import shutil

import msgspec
import pytest

from service import ingest, keys
from service.app import create_app
from service.db import connect
from service.migrations import migrate
from service.store import ingest as store
from service.store import stats
from service.store import users
from tests.conftest import EXPECTED, NOW, SAMPLES, expected_stats, ingest_files, make_caller
from tests.test_parser import assistant, jsonl, parse_bytes, text, usage, user

CAROL = SAMPLES / "carol"
ORIGINAL = "7e2f5a03-4f6d-4081-b293-ad4e5f607182"  # 2.5 days old
RESUMED = "8f306b14-5a7e-4192-83a4-be5f60718293"  # its copies, then a prompt 3 hours ago
COPIES_ONLY = "f0e1d2c3-b4a5-4697-8877-665544332211"  # a resume opened and closed again


def carol_file(session: str) -> str:
    return str(CAROL / f"{session}.jsonl")


def tokens(i: int, o: int, cr: int, cc: int) -> dict:
    return {"input": i, "output": o, "cache_read": cr, "cache_creation": cc, "total": i + o + cr + cc}


async def window_numbers(db, user_id: int, window: str) -> dict:
    return msgspec.to_builtins(await stats.home_stats(db, user_id, window, NOW))


async def owners(db, user_id: int) -> dict[str, str]:
    rows = await db.fetchall("SELECT prompt_key AS k, session_id FROM user_prompts WHERE user_id = ? UNION ALL "
                             "SELECT message_key, session_id FROM user_messages WHERE user_id = ?", (user_id, user_id))
    return {r[0]: r[1] for r in rows}


# Hand-checked from the files: the original's two prompts and two messages, and the resume's own
# prompt and message (msg_12ElastC: 11 input, 210 output, 13,500 cache read, 900 cache write).
PAIR_7D = {"window": "7d", "last_pull_at": None, "sessions": 2, "prompts": 3,
           "tokens": tokens(23 + 11, 440 + 210, 23300 + 13500, 2500 + 900), "projects": 1}
PAIR_24H = {"window": "24h", "last_pull_at": None, "sessions": 1, "prompts": 1,
            "tokens": tokens(11, 210, 13500, 900), "projects": 1}


@pytest.mark.parametrize("order", [(ORIGINAL, RESUMED, COPIES_ONLY), (COPIES_ONLY, RESUMED, ORIGINAL),
                                   (RESUMED, ORIGINAL, COPIES_ONLY)])
async def test_a_resumed_pair_gives_the_same_numbers_in_any_upload_order(db, order):
    carol = await make_caller(db, "carol@example.com")
    for session in order:  # one file per transaction, as uploads arrive
        report = await ingest_files(db, carol.user.id, [carol_file(session)])
        assert report.failed == 0, report.errors
    assert await window_numbers(db, carol.user.id, "7d") == PAIR_7D
    assert await window_numbers(db, carol.user.id, "24h") == PAIR_24H
    # The copies stay with the original (latest line earliest; it ties with the copies-only resume
    # and has the smaller id); the resume keeps only its own prompt and message.
    found = await owners(db, carol.user.id)
    assert found["7e2f5a03-0001-4000-8000-000000000001"] == ORIGINAL
    assert found["msg_12ElastB"] == ORIGINAL
    assert found["8f306b14-0001-4000-8000-000000000001"] == RESUMED
    assert found["msg_12ElastC"] == RESUMED
    sessions = await db.fetchall("SELECT session_id FROM user_sessions WHERE user_id = ? ORDER BY 1", (carol.user.id,))
    assert [r[0] for r in sessions] == [ORIGINAL, RESUMED]


async def test_uploading_only_the_resumed_file_counts_its_copies_once(db, tmp_path):
    carol = await make_caller(db, "carol@example.com")
    await ingest_files(db, carol.user.id, [carol_file(RESUMED)])
    assert await window_numbers(db, carol.user.id, "7d") == {**PAIR_7D, "sessions": 1}
    assert await window_numbers(db, carol.user.id, "24h") == PAIR_24H
    # And the same file again under another name changes nothing.
    renamed = tmp_path / "renamed.jsonl"
    shutil.copy(carol_file(RESUMED), renamed)
    await ingest_files(db, carol.user.id, [str(renamed)])
    assert await window_numbers(db, carol.user.id, "7d") == {**PAIR_7D, "sessions": 1}


def _prompt(uuid: str, session: str, ts: str, content: str) -> dict:
    return {"type": "user", "uuid": uuid, "sessionId": session, "timestamp": ts,
            "message": {"role": "user", "content": content}}


async def test_a_session_growing_in_another_file_hands_its_copies_to_the_session_now_older(db, tmp_path):
    """Ownership depends on every file of a session: a third file that makes S end later than T moves
    a key that only the first two files hold."""
    alice = await make_caller(db, "alice@example.com")
    first = tmp_path / "a.jsonl"
    first.write_bytes(jsonl(_prompt("p1", "S", "2026-11-21T08:00:00Z", "Start here.")))
    second = tmp_path / "b.jsonl"
    second.write_bytes(jsonl(_prompt("p1", "T", "2026-11-21T08:00:00Z", "Start here."),
                             _prompt("p2", "T", "2026-11-21T09:00:00Z", "Go on.")))
    await ingest_files(db, alice.user.id, [str(first)])
    await ingest_files(db, alice.user.id, [str(second)])
    assert (await owners(db, alice.user.id))["p1"] == "S"
    third = tmp_path / "c.jsonl"
    third.write_bytes(jsonl(_prompt("p3", "S", "2026-11-21T10:00:00Z", "Later, in S.")))
    await ingest_files(db, alice.user.id, [str(third)])
    assert await owners(db, alice.user.id) == {"p1": "T", "p2": "T", "p3": "S"}
    assert (await window_numbers(db, alice.user.id, "24h"))["prompts"] == 3


# --- Queued prompts (queue-operation enqueue, queued_command attachments).


def enqueue(text_: str, ts: str) -> dict:
    return {"type": "queue-operation", "operation": "enqueue", "timestamp": ts, "sessionId": "s-1", "content": text_}


def queued(uuid: str, text_: str, ts: str) -> dict:
    return {"type": "attachment", "uuid": uuid, "sessionId": "s-1", "timestamp": ts,
            "attachment": {"type": "queued_command", "prompt": text_}}


def test_an_enqueue_alone_is_a_prompt_keyed_without_its_text() -> None:
    result = parse_bytes(jsonl(enqueue("  also split by channel ", "2026-11-21T10:00:05.000Z"),
                               {"type": "queue-operation", "operation": "remove", "timestamp": "2026-11-21T10:00:09Z",
                                "sessionId": "s-1"}))
    assert result.summary.prompts == 1
    (prompt,) = result.prompts
    assert prompt.key.startswith("enqueue:2026-11-21T10:00:05.000Z:")
    assert "split" not in prompt.key and prompt.ts == "2026-11-21T10:00:05.000000Z"
    # The same text queued at the same moment in another file is the same prompt.
    again = parse_bytes(jsonl(enqueue("also split by channel", "2026-11-21T10:00:05.000Z")), file_key="u/other.jsonl")
    assert again.prompts[0].key == prompt.key


def test_an_enqueue_written_again_later_is_one_prompt() -> None:
    result = parse_bytes(jsonl(
        enqueue("use weekly seasonality", "2026-11-21T10:00:05.000Z"),
        queued("q1", "use weekly seasonality", "2026-11-21T10:00:05.000Z"),  # 2.1.2xx: the attachment
        enqueue("rerun it", "2026-11-21T10:01:00.000Z"),
        {"type": "queue-operation", "operation": "dequeue", "timestamp": "2026-11-21T10:01:01Z", "sessionId": "s-1"},
        user("u1", [text("rerun it\n")], ts="2026-11-21T10:01:02.000Z"),  # SDK: the user line
    ))
    assert [p.key for p in result.prompts] == ["q1", "u1"]


def test_queued_commands_and_harness_text_are_no_prompts() -> None:
    result = parse_bytes(jsonl(
        enqueue("/compact", "2026-11-21T10:00:05.000Z"),
        enqueue("<task-notification>\n<status>completed</status>\n</task-notification>", "2026-11-21T10:00:06.000Z"),
        enqueue("   ", "2026-11-21T10:00:07.000Z"),
        {"type": "queue-operation", "operation": "enqueue", "timestamp": "2026-11-21T10:00:08Z", "content": ["x"]},
    ))
    assert (result.summary.prompts, result.summary.skipped_lines) == (0, 0)


def test_an_enqueue_before_a_different_user_line_still_counts() -> None:
    result = parse_bytes(jsonl(
        user("u0", "Same words", ts="2026-11-21T09:59:00.000Z"),  # earlier: does not cancel it
        enqueue("Same words", "2026-11-21T10:00:05.000Z"),
        user("u1", "Other words", ts="2026-11-21T10:00:06.000Z"),
    ))
    assert result.summary.prompts == 3


# --- Slash commands of local_command lines and without the slash.


def test_local_commands_and_slashless_tags_are_slash_commands() -> None:
    result = parse_bytes(jsonl(
        {"type": "system", "subtype": "local_command", "uuid": "c1", "sessionId": "s-1",
         "timestamp": "2026-11-21T10:00:00Z",
         "content": "<command-name>/model</command-name>\n<command-message>model</command-message>"},
        {"type": "system", "subtype": "local_command", "uuid": "c2", "sessionId": "s-1",
         "content": "<local-command-stdout>Set model to Sonnet</local-command-stdout>"},
        {"type": "system", "subtype": "informational", "uuid": "c3", "content": "<command-name>/no</command-name>"},
        user("c4", [text("<command-message>init is analyzing</command-message>\n<command-name>init</command-name>")]),
    ))
    assert [e.command_name for e in result.events] == ["model", "init"]
    assert result.summary.slash_commands == 2
    assert result.summary.prompts == 0


# --- Subagent messages inside progress lines.


def progress(inner: dict, ts: str = "2026-11-21T10:00:02.000Z", kind: str = "agent_progress") -> dict:
    return {"type": "progress", "sessionId": "s-1", "timestamp": ts, "uuid": f"p-{inner.get('uuid')}",
            "data": {"type": kind, "message": inner, "agentId": "a1"}}


def test_progress_lines_count_subagent_messages_once_and_their_user_lines_nowhere() -> None:
    sub_a = assistant("s1", "msg_Sub", ts="2026-11-21T10:00:01.500Z", usage=usage(3, 10, 100, 20),
                      content=[{"type": "tool_use", "id": "toolu_B", "name": "Bash", "input": {}}],
                      model="claude-haiku-4-5-20251001")
    sub_a2 = assistant("s2", "msg_Sub", ts="2026-11-21T10:00:01.600Z", usage=usage(3, 40, 100, 20),
                       model="claude-haiku-4-5-20251001")
    sub_user = user("s3", [{"type": "tool_result", "tool_use_id": "toolu_B", "is_error": True, "content": "x"}])
    sub_prompt = user("s4", "Compute LTV by cohort.")
    data = jsonl(
        user("u1", "Delegate it.", ts="2026-11-21T10:00:00.000Z"),
        progress(sub_prompt), progress(sub_a), progress(sub_a2), progress(sub_user),
        progress({"type": "assistant", "message": "not an object"}),
        progress(sub_a, kind="hook_progress"),  # only agent_progress carries subagent lines
        {"type": "progress", "sessionId": "s-1", "data": "text"},
        {"type": "progress", "sessionId": "s-1", "data": {"type": "agent_progress", "message": [1]}},
    )
    result = parse_bytes(data)
    s = result.summary
    assert (s.prompts, s.user_messages, s.assistant_messages, s.skipped_lines) == (1, 1, 1, 0)
    assert (s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_creation_tokens) == (3, 40, 100, 20)
    (message,) = result.messages
    assert (message.key, message.ts, message.model) == ("msg_Sub", "2026-11-21T10:00:01.500000Z",
                                                        "claude-haiku-4-5-20251001")
    assert [(e.tool_name, e.is_error) for e in result.events] == [("Bash", True)]


async def test_progress_messages_and_the_subagent_file_count_once_together(db, tmp_path):
    carol = await make_caller(db, "carol@example.com")
    main = CAROL / "4b9e2f70-1c3a-4d5e-8f60-7a1b2c3d4e5f.jsonl"
    # The subagent's own file, as newer clients write it: the same message ids (and lines) as the
    # progress lines carry, under the parent's session id.
    sub_lines = []
    for line in main.read_text().splitlines():
        obj = json.loads(line)
        if obj.get("type") == "progress" and obj["data"].get("type") == "agent_progress":
            inner = obj["data"]["message"]
            sub_lines.append({**inner, "sessionId": obj["sessionId"], "isSidechain": True})
    subagents = tmp_path / "4b9e2f70-1c3a-4d5e-8f60-7a1b2c3d4e5f" / "subagents"
    subagents.mkdir(parents=True)
    (subagents / "agent-a5c1d2e.jsonl").write_bytes(jsonl(*sub_lines))
    await ingest_files(db, carol.user.id, [str(main), str(subagents / "agent-a5c1d2e.jsonl")])
    expected = EXPECTED["files"]["carol/4b9e2f70-1c3a-4d5e-8f60-7a1b2c3d4e5f.jsonl"]
    day = await window_numbers(db, carol.user.id, "24h")
    assert (day["sessions"], day["prompts"]) == (1, 3)
    assert day["tokens"] == tokens(expected["input_tokens"], expected["output_tokens"], expected["cache_read_tokens"],
                                   expected["cache_creation_tokens"])


async def test_each_message_keeps_its_model_speed_and_cache_split(db, tmp_path):
    carol = await make_caller(db, "carol@example.com")
    fast = tmp_path / "fast.jsonl"
    split = {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 400}
    fast.write_bytes(jsonl(
        assistant("f1", "msg_F", usage={**usage(1, 2, 0, 500), "speed": "fast", "cache_creation": split}),
        assistant("f2", "msg_F", usage={**usage(1, 9, 0, 500), "speed": "standard",
                                        "cache_creation": {"ephemeral_5m_input_tokens": 150}}),
    ))
    await ingest_files(db, carol.user.id, [str(CAROL / "4b9e2f70-1c3a-4d5e-8f60-7a1b2c3d4e5f.jsonl"), str(fast)])
    rows = await db.fetchall("SELECT message_key, model, speed, cache_creation_tokens, cache_5m_tokens, cache_1h_tokens "
                             "FROM user_messages WHERE user_id = ? ORDER BY message_key", (carol.user.id,))
    assert [tuple(r) for r in rows] == [
        ("msg_09MainA", "claude-opus-4-5-20251101", None, 4000, 1000, 3000),
        ("msg_09MainB", "claude-opus-4-5-20251101", None, 600, 600, 0),
        ("msg_09MainC", "claude-sonnet-4-5-20250929", None, 17000, 17000, 0),
        ("msg_09SubA", "claude-haiku-4-5-20251001", None, 2398, 0, 2398),
        ("msg_09SubB", "claude-haiku-4-5-20251001", None, 300, 0, 300),
        # the largest value per field among its lines; "fast" on any line makes it a fast-mode message
        ("msg_F", "claude-sonnet-4-5-20250929", "fast", 500, 150, 400),
    ]
    # No transcript text anywhere in the database: the queued prompt is a hash.
    keys_ = await db.fetchall("SELECT prompt_key FROM user_prompts WHERE user_id = ?", (carol.user.id,))
    assert not any("acquisition" in r[0] for r in keys_)


# --- A database from before revision 2, upgraded in place and redone in the background.


@pytest.mark.sqlite_only  # an upgrade from SQLite's schema 0009
async def test_an_upgraded_database_reprocessed_in_the_background_ends_with_carols_numbers(aiohttp_client, settings,
                                                                                          tmp_path):
    stored = tmp_path / "data" / "sessions" / "1"
    stored.mkdir(parents=True)
    for path in CAROL.glob("*.jsonl"):
        shutil.copy(path, stored / path.name)
    conn = await connect(settings.db_path)
    await migrate(conn, target=9)
    rows = [(i, str(p), len(p.read_bytes())) for i, p in enumerate(sorted(stored.glob("*.jsonl")), start=1)]
    await conn.execute("INSERT INTO users (id, email, name, onboarded, created_at) "
                       "VALUES (1, 'carol@example.com', 'Carol', 1, '2026-11-01T00:00:00.000000Z')")
    await conn.executemany(
        "INSERT INTO session_files (id, user_id, path, origin, received_at, size, processor_version, processed_at) "
        "VALUES (?, 1, ?, 'upload', '2026-11-21T09:00:00.000000Z', ?, 4, '2026-11-21T09:00:00.000000Z')", rows)
    # What version 4 left: the copies-only resume's shared prompt under the smallest session id.
    await conn.execute("INSERT INTO activity_prompts (file_id, prompt_key, user_id, session_id, ts) VALUES "
                       "(1, '7e2f5a03-0001-4000-8000-000000000001', 1, '7e2f5a03-4f6d-4081-b293-ad4e5f607182', "
                       "'2026-11-19T00:00:20.000000Z')")
    await conn.commit()
    await conn.close()

    client = await aiohttp_client(create_app(settings))
    app_db = client.app[keys.DB]
    client.app[keys.CLOCK].fixed = NOW
    token, _ = await users.issue_token(app_db, 1)
    worker = client.app[keys.WORKER]
    for _ in range(10):
        if not await store.stale_files(app_db, ingest.USAGE_PROCESSOR_VERSION, 100):
            break
        await worker.tick()
        await worker.drain()
    assert await store.stale_files(app_db, ingest.USAGE_PROCESSOR_VERSION, 100) == []
    for window in ("24h", "7d"):
        resp = await client.get(f"/api/me/home-stats?window={window}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
        assert await resp.json() == expected_stats("carol", window)
    for row in await store.summaries_for_user(app_db, 1):
        name = "carol/" + row["path"].rsplit("/", 1)[1]
        assert row["prompts"] == EXPECTED["files"][name]["prompts"], name
        assert row["slash_commands"] == EXPECTED["files"][name]["slash_commands"], name
