"""Our own tokens out of stored transcripts: the streaming redactor, the upload sink, /metrics and
`agnes-home redact-stored` (a real process)."""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import sqlite3

import aiohttp

from service import keys
from service.redact import MARKER, MAX_HELD, MIN_CHARS, PREFIX, TokenRedactor, redact_bytes
from service.store import users
from tests.conftest import SAMPLES
from tests.test_cli import run
from tests.test_metrics import samples_of

REFERENCE = re.compile(re.escape(PREFIX) + rb"[A-Za-z0-9_-]{%d,}" % MIN_CHARS)
SAMPLE = SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl"


def streamed(data: bytes, cuts: list[int]) -> tuple[bytes, int]:
    redactor = TokenRedactor()
    out, start = bytearray(), 0
    for cut in [*cuts, len(data)]:
        out += redactor.feed(data[start:cut])
        start = cut
    out += redactor.close()
    return bytes(out), redactor.count


def test_the_prefix_is_the_one_tokens_are_issued_with():
    assert PREFIX.decode() == users.TOKEN_PREFIX


def test_every_chunking_gives_the_whole_stream_answer():
    # Tokens, near misses (too short, a partial prefix at the very end, a prefix inside a token)
    # and prose, cut at every kind of place: the answer is the greedy regular expression's.
    rng = random.Random(20)
    pieces = [b"agnes_pat_" + b"Ab9_-" * 9, b"agnes_pat_short", b"agnes_pa", b"the agnes_pat_ prefix",
              b"agnes_pat_agnes_pat_12345678", b'"text":"', b"\n", b"x" * 40, b"agnes_", b"_pat_abcdefgh",
              b"\xc3\xa9", b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.c2lnbmF0dXJl"]
    for _ in range(400):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        expected, n = REFERENCE.subn(MARKER, data)
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, rng.randint(0, 12))))
        assert streamed(data, cuts) == (expected, n), (data, cuts)
        assert streamed(data, list(range(len(data)))) == (expected, n)  # a byte at a time


def test_a_run_longer_than_what_is_held_is_one_token_and_memory_stays_bounded():
    data = b"before agnes_pat_" + b"a" * (MAX_HELD * 5) + b" after"
    redactor = TokenRedactor()
    out = bytearray()
    for i in range(0, len(data), 100):
        out += redactor.feed(data[i:i + 100])
        assert len(redactor._held) <= MAX_HELD + len(PREFIX) + 100
    out += redactor.close()
    assert bytes(out) == b"before " + MARKER + b" after" and redactor.count == 1


def test_redaction_is_idempotent_and_keeps_a_grown_files_prefix():
    token = b"agnes_pat_" + b"Q" * 43
    first = b'{"type":"user","message":{"content":"agnes init --token ' + token + b'"}}\n'
    grown = first + b'{"type":"assistant"}\n'
    once, n = redact_bytes(first)
    assert n == 1 and token not in once and redact_bytes(once) == (once, 0)
    assert redact_bytes(grown)[0].startswith(once)


def upload(name: str, data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(data), filename=name, content_type="application/octet-stream")
    return form


async def test_uploads_are_stored_without_our_tokens_and_counted_in_metrics(client, alice, settings):
    from pathlib import Path

    token = alice.token.encode()
    line = b'{"type":"user","message":{"role":"user","content":"run agnes init --token ' + token + b' please"}}\n'
    plain = SAMPLE.read_bytes() + line
    resp = await client.post("/api/upload/sessions", data=upload("a.jsonl", plain), headers=alice.headers)
    assert resp.status == 200 and await resp.json() == {"status": "ok", "filename": "a.jsonl", "size": len(plain)}
    # gzip (what agnes 0.84.8 sends), with two tokens on one line.
    two = SAMPLE.read_bytes() + line.replace(b" please", b" and " + token)
    resp = await client.post("/api/upload/sessions", data=upload("b.jsonl.gz", gzip.compress(two)),
                             headers=alice.headers)
    assert resp.status == 200
    folder = Path(settings.data_dir) / "sessions" / str(alice.user.id)
    stored_a, stored_b = (folder / "a.jsonl").read_bytes(), (folder / "b.jsonl").read_bytes()
    assert token not in stored_a and token not in stored_b
    assert stored_a == SAMPLE.read_bytes() + line.replace(token, MARKER)
    assert stored_b.count(MARKER) == 2
    m = samples_of(await (await client.get("/metrics")).text())
    assert m[("agnes_redacted_tokens_total", ())] == 3
    # The transcripts are still processed: the marker is text like any other.
    await client.app[keys.WORKER].drain()
    m = samples_of(await (await client.get("/metrics")).text())
    assert m[("agnes_ingest_files_total", (("outcome", "processed"),))] == 2


async def test_the_local_claude_md_is_kept_without_our_tokens(client, alice, db):
    from service.store import tables

    content = "# Setup\nagnes init --token " + alice.token + "\nthe agnes_pat_ prefix names our tokens\n"
    resp = await client.post("/api/upload/local-md", json={"content": content}, headers=alice.headers)
    assert resp.status == 200 and (await resp.json())["size"] == len(content.encode())
    assert await tables.local_md(db, alice.user.id) == \
        "# Setup\nagnes init --token [REDACTED-AGNES-TOKEN]\nthe agnes_pat_ prefix names our tokens\n"
    m = samples_of(await (await client.get("/metrics")).text())
    assert m[("agnes_redacted_tokens_total", ())] == 1


def test_redact_stored_rewrites_old_uploads_only(tmp_path):
    token = "agnes_pat_" + "z" * 43
    run(tmp_path, "migrate")
    old = tmp_path / "data" / "sessions" / "1" / "old.jsonl"
    clean = tmp_path / "data" / "sessions" / "1" / "clean.jsonl"
    watched = tmp_path / "watched" / "ana" / "w.jsonl"
    for path in (old, clean, watched):
        path.parent.mkdir(parents=True, exist_ok=True)
    old.write_text('{"content":"' + token + '"}\n{"content":"' + token + 'x"}\n')
    clean.write_bytes(SAMPLE.read_bytes())
    watched.write_text('{"content":"' + token + '"}\n')
    before_clean = clean.stat().st_mtime_ns
    run(tmp_path, "users", "add", "ana@example.com")
    run(tmp_path, "users", "add", "ben@example.com")
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        conn.executemany("INSERT INTO user_local_md (user_id, content, updated_at) VALUES (?, ?, '2026-01-01')",
                         [(1, f"token: {token}\n"), (2, "the agnes_pat_ prefix\n")])
    out = json.loads(run(tmp_path, "redact-stored", "--json", AGNES_SESSION_DIR=str(tmp_path / "watched")).stdout)
    assert out == {"files": 2, "changed": [str(old)], "tokens": 2, "skipped": [], "local_md_tokens": 1}
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        assert conn.execute("SELECT content FROM user_local_md ORDER BY user_id").fetchall() == \
            [("token: [REDACTED-AGNES-TOKEN]\n",), ("the agnes_pat_ prefix\n",)]
    assert old.read_text() == '{"content":"[REDACTED-AGNES-TOKEN]"}\n{"content":"[REDACTED-AGNES-TOKEN]"}\n'
    assert clean.stat().st_mtime_ns == before_clean and token in watched.read_text()
    assert sorted(p.name for p in old.parent.iterdir()) == ["clean.jsonl", "old.jsonl"]  # no temporary left
    again = run(tmp_path, "redact-stored")
    assert "replaced 0 token(s) in 0 file(s)" in again.stdout
