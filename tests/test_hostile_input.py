"""Hostile input on every surface: each gets a clear 4xx (or a counted skipped line), stores nothing, leaks nothing."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import logging
import re
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from itsdangerous import URLSafeTimedSerializer
from yarl import URL

from service import keys
from service.app import create_app
from service.config import load_settings
from service.web.openapi import PATHS
from service.store import tables, users
from tests.conftest import NOW, make_caller

CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
SECRETS = ("TOP-SECRET-FILE", "OUTSIDE-SECRET", "SQLite format", "test-secret", "Traceback")


def leaks_nothing(text: str, tmp_path: Path | None = None) -> None:
    for secret in SECRETS:
        assert secret not in text, secret
    if tmp_path is not None:
        assert str(tmp_path) not in text


async def json_error(resp, status: int, codes: tuple[str, ...] | None = None) -> dict:
    assert resp.status == status, (resp.status, await resp.text())
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"detail", "code"} and body["detail"], body
    if codes is not None:
        assert body["code"] in codes, body
    leaks_nothing(await resp.text())
    return body


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


async def nothing_stored(client, settings) -> None:
    assert files_under(Path(settings.data_dir) / "sessions") == set()
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM session_files") == 0


def multipart(disposition: bytes, data: bytes, boundary: bytes = b"hostileboundary") -> tuple[bytes, str]:
    body = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; " + disposition + b"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")
    return body, f"multipart/form-data; boundary={boundary.decode()}"


def form(name: str, data: bytes) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field("file", io.BytesIO(data), filename=name, content_type="application/octet-stream")
    return fd


async def raw_http(port: int, request: bytes) -> tuple[int, bytes]:
    """Bytes on the wire, for what an HTTP client library refuses to send (bytes that are not UTF-8)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        body = await asyncio.wait_for(reader.readexactly(int(length.group(1))) if length else reader.read(), 10)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1]), body


LINE = {"type": "user", "uuid": "u-1", "sessionId": "hostile", "timestamp": "2026-11-21T11:00:00Z",
        "message": {"role": "user", "content": "hello"}}
TRANSCRIPT = json.dumps(LINE).encode() + b"\n"


# --- Upload names ------------------------------------------------------------------------------

HOSTILE_NAMES = [
    b'filename="../../etc/passwd.jsonl"', b'filename="..\\\\..\\\\boot.ini.jsonl"', b'filename="a/b.jsonl"',
    b'filename="%2e%2e%2fup.jsonl"', b'filename=".."', b'filename="."',
    b'filename=".jsonl"', b'filename=".hidden.jsonl"', b'filename="x.jsonl\x00.png"', b'filename="nul\x00"',
    'filename="\u202egpj.jsonl"'.encode(), 'filename="\uff58.jsonl"'.encode(), 'filename="x\u200b.jsonl"'.encode(),
    'filename="e\u0301.jsonl"'.encode(), b'filename="' + b"x" * 201 + b'"', b'filename="' + b"y" * 20000 + b'.jsonl"',
    b'filename="a;rm -rf ~.jsonl"', b"filename=\"x'; DROP TABLE session_files;--.jsonl\"",
    b'filename="<script>alert(1)</script>.jsonl"', b'filename="../x.jsonl.gz"', b'filename=".jsonl.gz"',
    b'filename=".gz"', b'filename=""', b"filename*=UTF-8''..%2F..%2Fetc%2Fpasswd",
    b"filename*=UTF-8''%E2%80%AEevil.jsonl", b'filename="\xff\xfe.jsonl"', b"",
]


# aiohttp warns about a Content-Disposition it cannot parse and then reads no name (so: 400); the suite
# turns warnings into errors, production only logs them.
@pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionHeader")
@pytest.mark.parametrize("disposition", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
async def test_hostile_upload_names_are_400_and_store_nothing(client, alice, settings, tmp_path, disposition):
    body, ctype = multipart(disposition, TRANSCRIPT)
    resp = await client.post("/api/upload/sessions", data=body, headers={**alice.headers, "Content-Type": ctype})
    await json_error(resp, 400, ("bad_file_name", "missing_file", "bad_multipart"))
    await nothing_stored(client, settings)
    assert files_under(tmp_path) <= {Path(settings.db_path), Path(settings.db_path + "-wal"),
                                     Path(settings.db_path + "-shm")}


@pytest.mark.parametrize("disposition, name", [
    (b"filename=\"ok.jsonl\"; filename*=UTF-8''..%2Fescape.jsonl", "ok.jsonl"),  # RFC 6266: either may win
    (b'filename="/abs.jsonl"', "abs.jsonl"),  # aiohttp drops the leading slash
])
async def test_names_a_parser_may_clean_up_still_land_in_the_callers_directory(client, alice, settings, disposition,
                                                                                name):
    body, ctype = multipart(disposition, TRANSCRIPT)
    resp = await client.post("/api/upload/sessions", data=body, headers={**alice.headers, "Content-Type": ctype})
    if resp.status == 200:
        assert (await resp.json())["filename"] == name
        own = Path(settings.data_dir) / "sessions" / str(alice.user.id)
        assert files_under(Path(settings.data_dir)) == {own / name}
    else:
        await json_error(resp, 400, ("bad_file_name",))
        await nothing_stored(client, settings)


# --- Table ids ---------------------------------------------------------------------------------

@pytest.fixture
async def secrets_on_disk(db, settings, tmp_path, alice):
    data = Path(settings.data_dir)
    (data / "tables").mkdir(parents=True)
    (data / "tables" / "orders.csv").write_bytes(b"id\n1\n")
    (data / "private.txt").write_bytes(b"TOP-SECRET-FILE\n")
    (tmp_path / "outside.txt").write_bytes(b"OUTSIDE-SECRET\n")
    await tables.register(db, "orders", "tables/orders.csv", rows=1)
    await tables.grant(db, "orders", alice.user.id)
    # An operator mistake: a registered path that leaves the data directory.
    await tables.register(db, "escape", "../outside.txt", rows=1, public=True)


HOSTILE_TABLE_IDS = [
    "..", "...", "%2e%2e", "%2E%2E%2Fprivate.txt", "..%2Fprivate.txt", "..%2F..%2Foutside.txt", "tables%2Forders.csv",
    "private.txt", "orders%00", "orders%00.csv", "%00", "orders'--", "'%20OR%20'1'='1", "orders%22%3B--",
    "orders;DROP%20TABLE%20data_tables", "x" * 129, "%EF%BD%8Frders", "orders%E2%80%8B",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "%252e%252e%252fprivate.txt", "escape", "%2Fetc%2Fpasswd", "orders%20",
    "ORDERS", "%",
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_hostile_table_ids_are_404_and_leak_nothing(client, alice, bob, secrets_on_disk, tmp_path, method):
    for table_id in HOSTILE_TABLE_IDS:
        for caller in (alice, bob):
            resp = await client.request(method, URL(f"/api/data/{table_id}/download", encoded=True),
                                        headers=caller.headers)
            assert resp.status in (400, 404), (table_id, resp.status)
            if method == "GET":
                await json_error(resp, resp.status)
            leaks_nothing(await resp.text(), tmp_path)
    # Another user's table looks exactly like a missing one: no existence oracle.
    theirs = await client.get("/api/data/orders/download", headers=bob.headers)
    missing = await client.get("/api/data/ordersx/download", headers=bob.headers)
    assert (await json_error(theirs, 404))["code"] == (await json_error(missing, 404))["code"] == "table_not_found"
    assert (await client.get("/api/data/orders/download", headers=alice.headers)).status == 200
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM data_tables") == 2


# --- Oversize bodies and gzip bombs ----------------------------------------------------------------

@pytest.fixture
async def small_cap(database_url, aiohttp_client, tmp_path):
    s = load_settings(environ={}, database_url=database_url,
                      db_path=str(tmp_path / "cap.db"), data_dir=str(tmp_path / "capdata"),
                      secret_key="s", parse_workers=0, max_upload_mb=1)
    client = await aiohttp_client(create_app(s))
    return client, s, await make_caller(client.app[keys.DB], "cap@example.com")


async def test_oversize_bodies_are_413_and_store_nothing(small_cap):
    client, settings, caller = small_cap
    resp = await client.post("/api/upload/sessions", data=form("big.jsonl", TRANSCRIPT * 20_000),
                             headers=caller.headers)
    await json_error(resp, 413, ("payload_too_large",))

    async def chunks(total: int):
        for _ in range(total // 65536):
            yield b" " * 65536

    big = b'{"content": "' + b"x" * 2_000_000 + b'"}'
    json_headers = {**caller.headers, "Content-Type": "application/json"}
    for path in ("/api/upload/local-md", "/api/me/onboarded"):
        await json_error(await client.post(path, data=io.BytesIO(big), headers=json_headers), 413,
                         ("payload_too_large",))
        # Chunked, so no Content-Length announces the size.
        await json_error(await client.post(path, data=chunks(3_000_000), headers=json_headers), 413)
    login = await client.post("/login", data=io.BytesIO(b"token=" + b"x" * 2_000_000), allow_redirects=False,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert login.status == 413
    # A declared Content-Length past the cap is refused before a byte of the body is read.
    status, body = await raw_http(client.server.port, (
        "POST /api/upload/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {caller.token}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 2000000000\r\n\r\n").encode())
    assert status == 413 and json.loads(body)["code"] == "payload_too_large"
    await nothing_stored(client, settings)
    assert await tables.local_md(client.app[keys.DB], caller.user.id) is None
    assert (await users.get_user(client.app[keys.DB], caller.user.id)).onboarded is True


async def flood(port: int, token: str, parts: list[bytes], *, chunked: bool) -> tuple[int, bytes, int]:
    """Send a multipart body part by part while reading the answer; returns the status, the body and
    how many parts had been sent when the answer came (a refusal must not wait for the rest)."""
    body_len = sum(map(len, parts)) + len(b"--f--\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_len}"
    writer.write((f"POST /api/upload/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: multipart/form-data; boundary=f\r\n{framing}\r\n\r\n").encode())
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    step = min(200, max(1, len(parts) // 20))
    try:
        for start in range(0, len(parts), step):
            if answer.done():
                break
            batch = b"".join(parts[start:start + step])
            writer.write(b"%x\r\n%s\r\n" % (len(batch), batch) if chunked else batch)
            try:
                await writer.drain()
            except ConnectionError:
                break
            sent = start + step
            await asyncio.sleep(0.005)  # the server's turn to read what arrived
        else:
            writer.write(b"7\r\n--f--\r\n\r\n0\r\n\r\n" if chunked else b"--f--\r\n")
        head = await asyncio.wait_for(answer, 30)
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
        body = await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        answer.cancel()
        writer.close()
    return int(head.split(b" ", 2)[1]), body, sent


async def test_a_flood_of_multipart_parts_is_refused_early_and_holds_no_one_up(client, settings, alice, small_cap):
    """Empty parts cost nothing against the 64 KB budget, and a chunked body had no total cap:
    100k empty parts kept the server busy 13 s while /healthz waited."""
    empty = b'--f\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'
    fat_headers = (b'--f\r\nContent-Disposition: form-data; name="x"\r\n'
                   + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"h" * 4000) for i in range(8)) + b"\r\n\r\n")
    blank = b"--f\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n" + b" " * 4_000 + b"\r\n"
    file_head = b'--f\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
    small_client, small_settings, small_caller = small_cap
    cases = [(client, alice, [empty] * 100_000, True, "parts"), (client, alice, [empty] * 100_000, False, "parts"),
             (client, alice, [fat_headers] * 15, True, "header"),
             # 1 MB cap: a chunked body past it (no Content-Length to refuse up front) in few parts.
             (small_client, small_caller, [blank] * 10 + [file_head] + [b" " * 60_000] * 60, True, "MB"),
             # Past the cap before the first boundary: a preamble aiohttp reads line by line.
             (small_client, small_caller, [b"x" * 62 + b"\r\n"] * 100_000, True, "MB")]
    for app_client, caller, parts, chunked, says in cases:
        health = asyncio.ensure_future(app_client.get("/healthz"))
        status, body, sent = await flood(app_client.server.port, caller.token, parts, chunked=chunked)
        assert status == 413, (says, status, body)
        error = json.loads(body)
        assert error["code"] == "payload_too_large" and says in error["detail"], error
        assert sent < len(parts) / 2, (says, sent)  # refused before the rest of the body was read
        assert (await asyncio.wait_for(health, 5)).status == 200
    await nothing_stored(client, settings)
    await nothing_stored(small_client, small_settings)


async def test_gzip_bombs_are_refused_quickly_and_store_nothing(small_cap):
    client, settings, caller = small_cap
    started = time.monotonic()
    bomb = gzip.compress(TRANSCRIPT * 600_000, 9)  # 80 MB of lines in ~200 KB
    assert len(bomb) < 1_000_000
    body = await json_error(await client.post("/api/upload/sessions", data=form("bomb.jsonl.gz", bomb),
                                              headers=caller.headers), 413, ("payload_too_large",))
    assert "decompressed" in body["detail"]
    # Gzip inside gzip: the outer layer is small, but the parser would inflate the inner one past every cap.
    nested = gzip.compress(gzip.compress(b"\n" * 200_000_000, 1), 9)
    assert len(nested) < 10_000
    await json_error(await client.post("/api/upload/sessions", data=form("nested.jsonl.gz", nested),
                                       headers=caller.headers), 400, ("nested_gzip",))
    for corrupt in (b"\x1f\x8b" + b"garbage" * 100, gzip.compress(TRANSCRIPT) + b"trailing garbage",
                    gzip.compress(TRANSCRIPT)[:-9]):
        await json_error(await client.post("/api/upload/sessions", data=form("bad.jsonl", corrupt),
                                           headers=caller.headers), 400, ("bad_gzip",))
    await client.app[keys.WORKER].drain()
    assert time.monotonic() - started < 20
    await nothing_stored(client, settings)


async def test_concatenated_gzip_members_are_all_kept(client, alice, settings):
    second = json.dumps({**LINE, "uuid": "u-2", "message": {"role": "user", "content": "again"}}).encode() + b"\n"
    resp = await client.post("/api/upload/sessions", data=form("two.jsonl.gz", gzip.compress(TRANSCRIPT) +
                                                                gzip.compress(second)), headers=alice.headers)
    assert resp.status == 200 and (await resp.json())["size"] == len(TRANSCRIPT + second)
    stored = Path(settings.data_dir) / "sessions" / str(alice.user.id) / "two.jsonl"
    assert stored.read_bytes() == TRANSCRIPT + second


# --- Invalid and deeply nested JSON --------------------------------------------------------------

BAD_JSON = [b"{", b"[", b"nul", b"\xff\xfe", b'{"source": "agnes_init",}', b"[" * 100_000 + b"]" * 100_000,
            b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b'{"content": "\xff"}', b'{"source": "\xff\xfe"}',
            b'{"content": 1e999}', b'{"content": "x", "nested": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'"text"',
            b"123", b"null", b'{"onboarded": "true"}', b'{"source": "agnes_init", "onboarded": true, "x": 1}',
            b'{"content": "\\ud800"}', b"\x00", b'{"content": ["' + b"a" * 1000 + b'"]}']


@pytest.mark.parametrize("path", ["/api/me/onboarded", "/api/upload/local-md"])
async def test_invalid_and_deeply_nested_json_is_400_and_changes_nothing(client, db, path):
    dana = await make_caller(db, "dana@example.com", onboarded=False)
    audit_before = await users.audit_rows(db, dana.user.id)
    for body in BAD_JSON:
        resp = await client.post(path, data=body, headers={**dana.headers, "Content-Type": "application/json"})
        await json_error(resp, 400, ("invalid_json", "invalid_body"))
    assert (await users.get_user(db, dana.user.id)).onboarded is False
    assert await users.audit_rows(db, dana.user.id) == audit_before
    assert await tables.local_md(db, dana.user.id) is None


# --- A single 100 MB line -------------------------------------------------------------------------

async def test_a_100_mb_line_is_one_counted_skipped_line(database_url, aiohttp_client, tmp_path):
    s = load_settings(environ={}, database_url=database_url,
                      db_path=str(tmp_path / "big.db"), data_dir=str(tmp_path / "bigdata"),
                      secret_key="s", parse_workers=0, max_upload_mb=150)
    client = await aiohttp_client(create_app(s))
    client.app[keys.CLOCK].fixed = NOW
    caller = await make_caller(client.app[keys.DB], "big@example.com")
    huge = b'{"type":"user","message":{"role":"user","content":"' + b"x" * 100_000_000 + b'"}}\n'
    second = json.dumps({**LINE, "uuid": "u-2"}).encode() + b"\n"
    data = TRANSCRIPT + huge + second
    resp = await client.post("/api/upload/sessions", data=form("huge.jsonl", data), headers=caller.headers)
    assert resp.status == 200 and (await resp.json())["size"] == len(data)
    del data, huge
    await client.app[keys.WORKER].drain()
    row = await client.app[keys.DB].fetchone("SELECT s.skipped_lines, s.prompts, s.user_messages, f.items, "
                                             "f.failure_count FROM session_summaries s JOIN session_files f "
                                             "ON f.id = s.file_id")
    assert tuple(row) == (1, 2, 2, 3, 0)
    stats = await (await client.get("/api/me/home-stats", headers=caller.headers)).json()
    assert (stats["sessions"], stats["prompts"]) == (1, 2)


async def test_malformed_lines_in_an_upload_are_counted_skipped_lines(client, alice):
    client.app[keys.CLOCK].fixed = NOW
    bad_lines = [b"{", b"\x00\x00", b'{"type": "user", "message": "\xff\xfe"}', b"[1, 2, 3]", b'"a string"',
                 b'{"type": "user", "message": null}', b"[" * 100_000 + b"]" * 100_000,
                 b'{"a": "\\u0041", "b": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"NaN", b"{" * 10 + b"\n"[:0]]
    second = json.dumps({**LINE, "uuid": "u-2"}).encode() + b"\n"
    data = TRANSCRIPT + b"\n".join(bad_lines) + b"\n" + second
    resp = await client.post("/api/upload/sessions", data=form("bad-lines.jsonl", data), headers=alice.headers)
    assert resp.status == 200
    await client.app[keys.WORKER].drain()
    row = await client.app[keys.DB].fetchone("SELECT skipped_lines, prompts FROM session_summaries")
    assert tuple(row) == (len(bad_lines), 2)
    assert (await (await client.get("/api/me/home-stats", headers=alice.headers)).json())["prompts"] == 2


# --- Wrong content types -----------------------------------------------------------------------

async def test_wrong_content_types_are_refused_and_store_nothing(client, db, alice, settings):
    for ctype, body in (("application/json", b'{"file": "x"}'), ("text/plain", TRANSCRIPT),
                        ("application/x-www-form-urlencoded", b"file=abc"), ("multipart/form-data", TRANSCRIPT),
                        ("multipart/form-data; boundary=zzz", b"--yyy\r\n\r\n--yyy--\r\n"),
                        ("multipart/mixed; boundary=b", b"--b\r\n\r\nx\r\n--b--\r\n"), ("image/png", b"\x89PNG")):
        resp = await client.post("/api/upload/sessions", data=body, headers={**alice.headers, "Content-Type": ctype})
        await json_error(resp, 400, ("bad_content_type", "bad_multipart", "missing_file"))
    for path, body in (("/api/me/onboarded", b'{"source": "self_unmark", "onboarded": false}'),
                       ("/api/upload/local-md", b'{"content": "text"}')):
        for ctype in ("text/plain", "application/xml", "text/html; charset=utf-8"):
            resp = await client.post(path, data=body, headers={**alice.headers, "Content-Type": ctype})
            await json_error(resp, 415, ("unsupported_media_type",))
    for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=b"):
        resp = await client.post("/api/upload/local-md", data=b"content=x",
                                 headers={**alice.headers, "Content-Type": ctype})
        await json_error(resp, 415)
    await nothing_stored(client, settings)
    assert (await users.get_user(db, alice.user.id)).onboarded is True
    assert await tables.local_md(db, alice.user.id) is None


async def test_a_form_with_an_overlong_part_header_is_400(client, db, alice):
    """aiohttp's form reader raises LineTooLong (not a ValueError) past 8 KB in a part header."""
    body = (b"--X\r\nContent-Disposition: form-data; name=\"source\"\r\nX-H: " + b"a" * 70_000
            + b"\r\n\r\nself_unmark\r\n--X--\r\n")
    ctype = {"Content-Type": "multipart/form-data; boundary=X"}
    await json_error(await client.post("/api/me/onboarded", data=body, headers={**alice.headers, **ctype}),
                     400, ("bad_form",))
    login = await client.post("/login", data=body, headers={**ctype, "Accept": "text/html"})  # no credential
    assert login.status == 400 and "Traceback" not in await login.text()
    assert (await users.get_user(db, alice.user.id)).onboarded is True


# --- Credentials --------------------------------------------------------------------------------

def authenticated_routes() -> list[tuple[str, str]]:
    found = []
    for path, ops in PATHS.items():
        for method, op in ops.items():
            if op.get("security") != []:
                found.append((method.upper(), path.replace("{table_id}", "orders").replace("{session_id}", "s-1")))
    return found


async def test_missing_malformed_and_revoked_tokens_are_401_everywhere(client, db, alice, bob):
    revoked = await make_caller(db, "gone@example.com")
    await users.revoke_token(db, user_id=revoked.user.id)
    bad = [None, "Bearer", "Bearer ", "Bearer agnes_pat_", "Bearer agnes_pat_" + "A" * 5000,
           "Bearer " + alice.token[:-1], "Bearer " + alice.token + "x", "Bearer " + alice.token.upper(),
           "Token " + alice.token, alice.token,
           "Basic " + base64.b64encode(b"alice:" + alice.token.encode()).decode(), "Bearer " + alice.token + " extra",
           "Bearer agnes_pat_' OR '1'='1", "Bearer agnes_pat_%", "Bearer " + revoked.token]
    routes = authenticated_routes()
    assert len(routes) == 24  # every documented operation that needs a credential
    for method, path in routes:
        for header in bad:
            headers = {} if header is None else {"Authorization": header}
            resp = await client.request(method, path, headers=headers, data=b"{}" if method == "POST" else None)
            assert resp.status == 401, (method, path, header, resp.status)
            if method != "HEAD":
                await json_error(resp, 401, ("unauthorized",))
                text = await resp.text()
                assert alice.token not in text and revoked.token not in text
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # Pages: a bad bearer is a 401, no credential at all a redirect to sign-in.
    assert (await client.get("/home", headers={"Authorization": "Bearer " + revoked.token})).status == 401
    assert (await client.get("/home", allow_redirects=False)).headers["Location"].startswith("/login")


async def test_credentials_with_bytes_that_are_not_utf8_are_401(database_url, aiohttp_client, tmp_path):
    s = load_settings(environ={}, database_url=database_url,
                      db_path=str(tmp_path / "raw.db"), data_dir=str(tmp_path / "rawdata"),
                      secret_key="s", parse_workers=0, proxy_header="X-Email", trusted_proxies=["127.0.0.1"])
    client = await aiohttp_client(create_app(s))
    caller = await make_caller(client.app[keys.DB], "raw@example.com", onboarded=False)
    port = client.server.port
    for header in (b"Authorization: Bearer agnes_pat_\xff\xfe", b"Authorization: Bearer \xc3\xa9",
                   b"Cookie: agnes_session=\xff\xfe.abc", b"X-Email: raw\xff@example.com"):
        status, body = await raw_http(port, b"GET /api/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header +
                                      b"\r\n\r\n")
        assert status == 401 and json.loads(body)["code"] == "unauthorized", (header, status, body[:200])
    # A Host that is not a host name is not echoed into the page (and does not break it).
    for host in (b"\xff\xfe", b'evil.example"><script>alert(1)</script>'):
        status, body = await raw_http(port, b"GET /home HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n"
                                      b"Authorization: Bearer " + caller.token.encode() + b"\r\n\r\n")
        assert status == 200 and b"<script>alert(1)" not in body and b"agnes init --server-url" in body
    status, body = await raw_http(port, b"POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
                                  b"application/x-www-form-urlencoded\r\nContent-Length: 8\r\n\r\ntoken=\xff\xfe")
    assert status == 400


# --- Cookies and cross-site requests ----------------------------------------------------------------

async def sign_in(client, token: str) -> str:
    resp = await client.post("/login", data={"token": token, "next": "/home"}, allow_redirects=False)
    assert resp.status == 303
    page = await (await client.get("/home")).text()
    return CSRF_RE.search(page).group(1)


def set_cookie(client, value: str) -> None:
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({"agnes_session": value})


async def test_tampered_cookies_are_refused(client, db, alice, bob):
    await sign_in(client, alice.token)
    good = client.session.cookie_jar.filter_cookies(client.make_url("/"))["agnes_session"].value
    payload, _, signature = good.rpartition(".")
    forged_bob = URLSafeTimedSerializer(b"guessed", salt="agnes-home.session").dumps({"u": bob.user.id, "n": "x"})
    unsalted = URLSafeTimedSerializer(b"test-secret").dumps({"u": bob.user.id, "t": None, "n": "x"})
    swapped = URLSafeTimedSerializer(b"test-secret", salt="agnes-home.session").loads(good)  # what it carries
    assert swapped["u"] == alice.user.id
    # Change a character inside the signature: the last base64 character carries unused bits.
    mid = len(good) - 8
    tampered = good[:mid] + ("A" if good[mid] != "A" else "B") + good[mid + 1:]
    for value in (tampered, payload + ".", "." + signature, good[:20],
                  forged_bob, unsalted, good + good, "", "null", '{"u": %d}' % bob.user.id):
        set_cookie(client, value)
        resp = await client.get("/api/me")
        assert resp.status == 401, value
        page = await client.get("/home", allow_redirects=False)
        assert page.status == 302 and page.headers["Location"].startswith("/login"), value
    # A good cookie does not help a wrong bearer token: the bearer header is the only credential then.
    set_cookie(client, good)
    assert (await client.get("/api/me")).status == 200
    assert (await client.get("/api/me", headers={"Authorization": "Bearer agnes_pat_nope"})).status == 401
    await users.revoke_token(db, user_id=alice.user.id)
    assert (await client.get("/api/me")).status == 401


async def test_cross_site_posts_are_refused_and_change_nothing(client, db, alice, settings):
    csrf = await sign_in(client, alice.token)
    unmark = {"source": "self_unmark", "onboarded": "false"}
    evil = {"Origin": "https://evil.example"}
    cases = [
        ("/api/me/onboarded", {**unmark, "csrf_token": csrf}, evil),                    # right token, other origin
        ("/api/me/onboarded", unmark, {}),                                               # no token
        ("/api/me/onboarded", {**unmark, "csrf_token": "0" * 64}, {}),                    # wrong token
        ("/api/me/onboarded", {**unmark, "csrf_token": "é"}, {}),                         # not even hex
        ("/logout", {"csrf_token": csrf}, evil),
    ]
    for path, data, headers in cases:
        resp = await client.post(path, data=data, headers=headers, allow_redirects=False)
        assert resp.status == 403, (path, data, headers)
    # A JSON body from another site needs the header token, which it cannot read.
    resp = await client.post("/api/me/onboarded", data=b'{"source": "self_unmark", "onboarded": false}',
                             headers={"Content-Type": "application/json", **evil})
    await json_error(resp, 403, ("origin_mismatch",))
    resp = await client.post("/api/me/onboarded", data=b'{"source": "self_unmark", "onboarded": false}',
                             headers={"Content-Type": "application/json"})
    await json_error(resp, 403, ("csrf_failed",))
    resp = await client.post("/api/upload/local-md", data=b'{"content": "pwned"}',
                             headers={"Content-Type": "text/plain", **evil})
    await json_error(resp, 403, ("origin_mismatch",))
    resp = await client.post("/api/upload/sessions", data=form("x.jsonl", TRANSCRIPT), headers=evil)
    await json_error(resp, 403, ("origin_mismatch",))
    resp = await client.post("/api/upload/local-md", data=b'{"content": "pwned"}',
                             headers={"Content-Type": "text/plain", "X-CSRF-Token": csrf})
    await json_error(resp, 415)
    assert (await users.get_user(db, alice.user.id)).onboarded is True
    assert await tables.local_md(db, alice.user.id) is None
    await nothing_stored(client, settings)
    assert (await client.get("/api/me")).status == 200  # still signed in: the cross-site logout did nothing
    # The same requests from the page itself go through.
    ok = await client.post("/api/me/onboarded", data={**unmark, "csrf_token": csrf}, allow_redirects=False)
    assert ok.status == 303 and (await users.get_user(db, alice.user.id)).onboarded is False


# --- Markup where pages render values -------------------------------------------------------------

MARKERS = ("<script>alert('cwd')", "<img src=x onerror", "<svg onload", "<script>alert(\"name\")",
           "<script>alert('sid')", "<b>prompt</b>", "<script>alert(1)")


async def test_markup_in_names_and_transcripts_is_never_rendered_raw(client, db, settings):
    client.app[keys.CLOCK].fixed = NOW
    mallory = await make_caller(db, "mallory@example.com", name='<script>alert("name")</script>')
    lines = [
        {"type": "user", "uuid": "m-1", "sessionId": "\"><script>alert('sid')</script>",
         "timestamp": "2026-11-21T11:00:00Z", "cwd": "/tmp/<script>alert('cwd')</script>",
         "message": {"role": "user", "content": "<b>prompt</b> <script>alert(1)</script>"}},
        {"type": "assistant", "uuid": "m-2", "sessionId": "\"><script>alert('sid')</script>",
         "timestamp": "2026-11-21T11:00:01Z",
         "message": {"id": "msg_<svg onload=alert(2)>", "model": "<img src=x onerror=alert('model')>",
                     "content": [{"type": "tool_use", "id": "t1", "name": "Skill",
                                  "input": {"skill": "<svg onload=alert('skill')>"}}],
                     "usage": {"input_tokens": 1, "output_tokens": 2}}},
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    resp = await client.post("/api/upload/sessions", data=form("m.jsonl", data), headers=mallory.headers)
    assert resp.status == 200
    await client.app[keys.WORKER].drain()
    assert (await (await client.get("/api/me/home-stats", headers=mallory.headers)).json())["prompts"] == 1
    pages = ["/home", "/home?window=7d", "/home?window=<script>alert(1)</script>",
             "/login?next=%22%3E%3Cscript%3Ealert(1)%3C/script%3E", "/%3Cscript%3Ealert(1)%3C/script%3E",
             "/api/welcome?server_url=%22%3E%3Cscript%3Ealert(1)%3C/script%3E"]
    for path in pages:
        resp = await client.get(path, headers={**mallory.headers, "Accept": "text/html"})
        text = await resp.text()
        for marker in MARKERS:
            assert marker not in text, (path, marker)
        if resp.content_type == "text/html":
            assert resp.status in (200, 404), path
    home = await (await client.get("/home", headers=mallory.headers)).text()
    assert "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;" in home
    # JSON carries the values verbatim, as JSON: never as a page.
    me = await client.get("/api/me", headers=mallory.headers)
    assert me.content_type == "application/json" and (await me.json())["name"] == '<script>alert("name")</script>'


# --- SQL metacharacters -----------------------------------------------------------------------------

async def test_sql_metacharacters_everywhere_are_just_data(client, db, settings):
    client.app[keys.CLOCK].fixed = NOW
    before = await db.fetchval("SELECT COUNT(*) FROM users")
    odd = await make_caller(db, "o'brien+%_@example.com", name="Robert'); DROP TABLE users;--")
    me = await (await client.get("/api/me", headers=odd.headers)).json()
    assert (me["email"], me["name"]) == ("o'brien+%_@example.com", "Robert'); DROP TABLE users;--")

    sql = "'); DELETE FROM users; --\" OR 1=1 /* % _ \\ */"
    resp = await client.post("/api/upload/local-md", json={"content": sql}, headers=odd.headers)
    assert resp.status == 200
    assert await tables.local_md(db, odd.user.id) == sql

    for window in ("24h' OR '1'='1", "%", "7d; DROP TABLE users", "_h"):
        body = await (await client.get("/api/me/home-stats", params={"window": window}, headers=odd.headers)).json()
        assert body["window"] == "24h"

    session = "s'; DROP TABLE session_summaries; --"
    lines = [{"type": "user", "uuid": "q'1\"--", "sessionId": session, "timestamp": "2026-11-21T11:00:00Z",
              "cwd": "/home/o'brien/%_\\\"proj", "message": {"role": "user", "content": "SELECT * FROM users;"}},
             {"type": "assistant", "uuid": "q'2", "sessionId": session, "timestamp": "2026-11-21T11:00:01Z",
              "message": {"id": "msg_' OR 1=1 --", "model": "m'); --", "content": [],
                          "usage": {"input_tokens": 3, "output_tokens": 4}}}]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    assert (await client.post("/api/upload/sessions", data=form("q.jsonl", data), headers=odd.headers)).status == 200
    await client.app[keys.WORKER].drain()
    stats = await (await client.get("/api/me/home-stats", headers=odd.headers)).json()
    assert (stats["sessions"], stats["prompts"], stats["tokens"]["total"], stats["projects"]) == (1, 1, 7, 1)
    assert await db.fetchval("SELECT session_id FROM session_summaries") == session

    # Watched-directory owners are matched with LIKE: its wildcards must match nothing but themselves.
    await make_caller(db, "alice@example.com")
    assert (await users.find_owner(db, "alice")).email == "alice@example.com"
    for name in ("a%", "_lice", "%", "alic_", "alice%", "o'brien+%_"):
        found = await users.find_owner(db, name)
        assert found is None or found.email == f"{name}@example.com", name

    assert await db.fetchval("SELECT COUNT(*) FROM users") == before + 2
    if db.dialect == "sqlite":
        with sqlite3.connect(settings.db_path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    else:
        names = {r[0] for r in await db.fetchall("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"users", "session_summaries", "session_files", "data_tables", "api_tokens"} <= names


# --- Absurd token counters --------------------------------------------------------------------------

async def test_absurd_token_counters_do_not_break_processing_or_stats(client, db, alice):
    client.app[keys.CLOCK].fixed = NOW

    def line(n: int, tokens: int) -> dict:
        return {"type": "assistant", "uuid": f"a{n}", "sessionId": "absurd", "timestamp": "2026-11-21T11:00:00Z",
                "message": {"id": f"msg_{n}", "model": "m", "content": [],
                            "usage": {"input_tokens": tokens, "output_tokens": 1}}}

    huge = 2**63 - 1
    data = b"".join(json.dumps(x).encode() + b"\n" for x in (line(1, huge), line(2, huge), line(3, 5), LINE))
    assert (await client.post("/api/upload/sessions", data=form("absurd.jsonl", data),
                              headers=alice.headers)).status == 200
    await client.app[keys.WORKER].drain()
    failures = await db.fetchval("SELECT failure_count FROM session_files")
    assert failures == 0, await db.fetchval("SELECT last_error FROM session_files")
    assert await db.fetchval("SELECT input_tokens FROM session_summaries") == huge
    resp = await client.get("/api/me/home-stats", headers=alice.headers)
    body = await resp.json()
    assert resp.status == 200 and body["prompts"] == 1 and body["tokens"]["output"] == 3
    assert body["tokens"]["input"] == body["tokens"]["total"] == huge
    assert (await client.get("/home", headers=alice.headers)).status == 200


async def test_a_request_aiohttp_cannot_parse_is_one_warning_line(client, caplog):
    """A header over aiohttp's 8190-byte limit is refused before any middleware (plain-text 400,
    README "Decisions"); the log gets one bounded WARNING naming the client, not an ERROR traceback."""
    from service.logs import MalformedRequestFilter

    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(noisy := MalformedRequestFilter())
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            status, _ = await raw_http(client.server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                       b"X-Big: " + b"a" * 9000 + b"\r\n\r\n")
    finally:
        server_log.removeFilter(noisy)
    assert status == 400
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.levelname for r in records] == ["WARNING"]
    message = records[0].getMessage()
    assert message.startswith("refused a malformed request from 127.0.0.1: LineTooLong: Got more than 8190 bytes")
    assert len(message) < 300 and records[0].exc_info is None


# --- Slow clients, padding, forged log lines ------------------------------------------------------

async def test_a_stalled_body_gets_408_and_leaves_nothing_behind(database_url, aiohttp_client, tmp_path):
    """aiohttp has no body timeout: without one, a client that stops mid-upload holds its
    connection and temporary file for good."""
    s = load_settings(environ={}, database_url=database_url,
                      db_path=str(tmp_path / "slow.db"), data_dir=str(tmp_path / "slowdata"),
                      secret_key="s", parse_workers=0, client_timeout=0.5)
    client = await aiohttp_client(create_app(s))
    caller = await make_caller(client.app[keys.DB], "slow@example.com")
    body, ctype = multipart(b'filename="slow.jsonl"', TRANSCRIPT * 100)
    cut = body[:len(body) // 2]
    for path, ctype_, payload in (("/api/upload/sessions", ctype, cut),
                                  ("/api/me/onboarded", "application/json", b'{"onboarded": ')):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {caller.token}\r\n"
                     f"Content-Type: {ctype_}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + payload)
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        answer = json.loads(await reader.read(int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))))
        writer.close()
        assert head.startswith(b"HTTP/1.1 408") and answer["code"] == "request_timeout", (path, head)
        assert 0.4 < time.monotonic() - started < 3
    assert not list((tmp_path / "slowdata").rglob(".upload-*"))
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM session_files") == 0


async def test_parts_besides_the_file_cannot_carry_bytes_past_the_cap(client, alice, tmp_path):
    boundary = "b0undary"

    def body(extra: bytes) -> bytes:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"pad\"\r\n\r\n".encode() + extra +
                f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.jsonl\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n".encode() + TRANSCRIPT +
                f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"after\"\r\n\r\n".encode() + extra +
                f"\r\n--{boundary}--\r\n".encode())

    async def chunked(payload: bytes):  # no Content-Length: the up-front check cannot see the size
        for i in range(0, len(payload), 1 << 20):
            yield payload[i:i + (1 << 20)]

    headers = {**alice.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    small = await client.post("/api/upload/sessions", data=chunked(body(b"x" * 100)), headers=headers)
    assert small.status == 200 and (await small.json())["filename"] == "p.jsonl"
    padded = await client.post("/api/upload/sessions", data=chunked(body(b"x" * (3 << 20))), headers=headers)
    assert padded.status == 413 and (await padded.json())["code"] == "payload_too_large"


async def test_a_bogus_form_charset_is_400_not_500(client):
    resp = await client.post("/login", data=b"token=x",
                             headers={"Content-Type": "application/x-www-form-urlencoded; charset=bogus"})
    assert resp.status == 400 and (await resp.json())["code"] == "bad_form"


async def test_another_site_cannot_sign_a_browser_in(client, alice):
    """Login CSRF: a cross-site form posting the attacker's token would sign the victim in as the attacker."""
    resp = await client.post("/login", data={"token": alice.token, "next": "/home"}, allow_redirects=False,
                             headers={"Origin": "http://evil.example"})
    assert resp.status == 403 and (await resp.json())["code"] == "origin_mismatch"
    assert "agnes_session" not in resp.cookies
    same = await client.post("/login", data={"token": alice.token}, allow_redirects=False,
                             headers={"Origin": f"http://{client.server.host}:{client.server.port}"})
    assert same.status == 303 and "agnes_session" in same.cookies


async def test_an_opaque_origin_cannot_sign_a_browser_in_or_out(client, alice):
    """Another site's page with `<meta name="referrer" content="no-referrer">` (or a sandboxed frame)
    posts with `Origin: null`; sign-in and sign-out have no CSRF token behind the Origin check."""
    null = {"Origin": "null"}
    resp = await client.post("/login", data={"token": alice.token, "next": "/home"}, allow_redirects=False,
                             headers=null)
    assert resp.status == 403 and (await resp.json())["code"] == "origin_mismatch"
    assert "agnes_session" not in resp.cookies
    assert (await client.get("/api/me")).status == 401
    same = await client.post("/login", data={"token": alice.token}, allow_redirects=False,
                             headers={"Origin": f"http://{client.server.host}:{client.server.port}"})
    assert same.status == 303 and (await client.get("/api/me")).status == 200
    out = await client.post("/logout", allow_redirects=False, headers=null)
    assert out.status == 403 and (await out.json())["code"] == "origin_mismatch"
    assert (await client.get("/api/me")).status == 200  # still signed in


def test_text_logs_write_line_breaks_as_escapes():
    from service.logs import TextFormatter

    record = logging.makeLogRecord({"msg": "GET %s 404", "args": ("/x\nrid=- uid=3 signed in\r\u2028",),
                                    "levelname": "INFO", "name": "service.access", "file": "a\nb"})
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert "/x\\x0arid=- uid=3 signed in\\x0d\\u2028 404" in line and "file=a\\x0ab" in line


async def test_every_response_carries_the_browser_security_headers(client, alice):
    for path, headers in (("/home", alice.headers), ("/api/me", alice.headers), ("/api/me", {}),
                          ("/login", {}), ("/home", {}), ("/healthz", {}), ("/nowhere", {})):
        resp = await client.get(path, headers=headers, allow_redirects=False)
        assert resp.headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], path
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert resp.headers["Referrer-Policy"] == "same-origin", path


async def test_a_download_survives_a_header_that_is_not_utf8(client, alice, secrets_on_disk):
    """Any header may carry such bytes (aiohttp keeps them as surrogate escapes); the download used
    to re-encode every header and drop the connection with nothing sent."""
    for extra in (b"X-Junk: \xff\xfe\r\n", b"Range: bytes=\xff-\r\n", b"Accept-Encoding: gz\xffip\r\n"):
        status, body = await raw_http(client.server.port, b"GET /api/data/orders/download HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\nAuthorization: Bearer " + alice.token.encode() +
                                      b"\r\n" + extra + b"\r\n")
        assert (status, body) == (200, b"id\n1\n"), extra


# --- Bodies aiohttp cannot read as sent -------------------------------------------------------------

async def test_a_body_whose_content_encoding_does_not_decode_is_400(client, db, alice, settings, caplog):
    """aiohttp inflates a Content-Encoding: gzip body as it arrives and raises RequestPayloadError at
    the handler's first read when it does not inflate; every route that reads a body answered 500,
    with a traceback in the log."""
    from service.logs import MalformedRequestFilter

    gzipped = {**alice.headers, "Content-Encoding": "gzip"}
    body, ctype = multipart(b'filename="enc.jsonl"', TRANSCRIPT)
    cases = [
        ("/api/me/onboarded", b'{"source": "self_unmark", "onboarded": false}',
         {**gzipped, "Content-Type": "application/json"}),
        ("/api/upload/local-md", b'{"content": "x"}', {**gzipped, "Content-Type": "application/json"}),
        ("/api/upload/sessions", body, {**gzipped, "Content-Type": ctype}),
        ("/api/me/onboarded", b"source=self_unmark&onboarded=false",
         {**gzipped, "Content-Type": "application/x-www-form-urlencoded"}),
        ("/login", f"token={alice.token}".encode(),
         {"Content-Encoding": "gzip", "Content-Type": "application/x-www-form-urlencoded"}),
    ]
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(noisy := MalformedRequestFilter())
    try:
        with caplog.at_level(logging.INFO):
            for path, data, headers in cases:
                resp = await client.post(path, data=data, headers=headers, allow_redirects=False)
                await json_error(resp, 400, ("bad_body",))
                assert "agnes_session" not in resp.cookies, path
                assert resp.headers["Connection"] == "close", path  # aiohttp drops it after the answer
            await asyncio.sleep(0.1)  # aiohttp drains (and logs) the body after the answer
    finally:
        server_log.removeFilter(noisy)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    refused = [r.getMessage() for r in caplog.records if r.name == "aiohttp.server"]
    assert refused and all(m.startswith("refused a malformed request") for m in refused), refused
    assert (await users.get_user(db, alice.user.id)).onboarded is True
    assert await tables.local_md(db, alice.user.id) is None
    await nothing_stored(client, settings)
    # The same bodies, really gzipped, are read as usual.
    resp = await client.post("/api/upload/local-md", data=gzip.compress(b'{"content": "x"}'),
                             headers={**gzipped, "Content-Type": "application/json"})
    assert resp.status == 200 and await tables.local_md(db, alice.user.id) == "x"


async def test_a_form_part_in_an_unknown_transfer_encoding_is_400(client, db, alice):
    """request.post() raises RuntimeError for a Content-Transfer-Encoding it does not know: a 500 on
    the public sign-in form, with a traceback in the log, for anyone who sends one."""
    boundary = "cteboundary"

    def body(name: str, value: str) -> bytes:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n"
                f"Content-Transfer-Encoding: x-bogus\r\n\r\n{value}\r\n--{boundary}--\r\n").encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    resp = await client.post("/login", data=body("token", alice.token), headers=headers, allow_redirects=False)
    await json_error(resp, 400, ("bad_form",))
    assert "agnes_session" not in resp.cookies
    resp = await client.post("/api/me/onboarded", data=body("onboarded", "false"),
                             headers={**headers, **alice.headers})
    await json_error(resp, 400, ("bad_form",))
    assert (await users.get_user(db, alice.user.id)).onboarded is True
