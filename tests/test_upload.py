"""POST /api/upload/sessions over real HTTP: the client's exact request, limits, gzip, processing."""

from __future__ import annotations

import asyncio
import io
import gzip
import os
from pathlib import Path

import aiohttp
import pytest

from service import keys
from service.config import load_settings
from service.app import create_app
from tests.conftest import EXPECTED, NOW, SAMPLES, make_caller


def form(name: str, data: bytes, field: str = "file") -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field(field, io.BytesIO(data), filename=name, content_type="application/octet-stream")
    return fd


async def upload(client, caller, name: str, data: bytes, **kw):
    return await client.post("/api/upload/sessions", data=form(name, data, **kw), headers=caller.headers)


async def settle(client):
    await client.app[keys.WORKER].drain()


@pytest.fixture
def pinned(client):
    client.app[keys.CLOCK].fixed = NOW
    return client


async def stats(client, caller, window="24h"):
    resp = await client.get(f"/api/me/home-stats?window={window}", headers=caller.headers)
    assert resp.status == 200
    return await resp.json()


async def test_upload_answers_exactly_200_and_is_processed(pinned, alice, settings):
    client = pinned
    for path in sorted((SAMPLES / "alice").glob("*.jsonl")):
        resp = await upload(client, alice, path.name, path.read_bytes())
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "filename": path.name, "size": path.stat().st_size}
    stored = os.path.join(settings.data_dir, "sessions", str(alice.user.id), "agent-a1b2c3.jsonl")
    assert Path(stored).read_bytes() == (SAMPLES / "alice" / "agent-a1b2c3.jsonl").read_bytes()
    await settle(client)
    for window in ("24h", "7d"):
        assert await stats(client, alice, window) == {**EXPECTED["users"]["alice"][window], "last_pull_at": None}


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b.jsonl", "..", ".", ".hidden.jsonl", "x" * 201,
                                  "sp ace.jsonl", "naïve.jsonl", "nul\x00.jsonl", "semi;colon.jsonl", ""])
async def test_bad_file_names_are_400_and_store_nothing(client, alice, settings, name):
    # Built by hand: aiohttp's client refuses to send some of these names at all.
    boundary = "agnesboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f'Content-Type: application/octet-stream\r\n\r\n{{"type":"user"}}\n\r\n--{boundary}--\r\n').encode()
    resp = await client.post("/api/upload/sessions", data=body, headers={
        **alice.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] in ("bad_file_name", "missing_file", "bad_multipart")
    assert not any(os.scandir(settings.data_dir + "/sessions")) if os.path.isdir(settings.data_dir + "/sessions") \
        else True
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM session_files") == 0


async def test_missing_part_and_wrong_content_type_are_400(client, alice):
    resp = await upload(client, alice, "a.jsonl", b"{}\n", field="upload")
    assert resp.status == 400 and (await resp.json())["code"] == "missing_file"
    resp = await client.post("/api/upload/sessions", data=b"{}", headers={**alice.headers,
                                                                          "Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["code"] == "bad_content_type"


@pytest.fixture
async def small_cap_client(database_url, aiohttp_client, tmp_path):
    settings = load_settings(environ={}, database_url=database_url,
                             db_path=str(tmp_path / "cap.db"), data_dir=str(tmp_path / "capdata"),
                             secret_key="s", parse_workers=0, max_upload_mb=1)
    return await aiohttp_client(create_app(settings))


async def test_oversize_upload_is_413_and_leaves_nothing(small_cap_client, tmp_path):
    client = small_cap_client
    caller = await make_caller(client.app[keys.DB], "big@example.com")
    line = b'{"type":"user","message":{"role":"user","content":"' + b"x" * 1000 + b'"}}\n'
    resp = await upload(client, caller, "big.jsonl", line * 1200)
    assert resp.status == 413 and (await resp.json())["code"] == "payload_too_large"
    bomb = gzip.compress(line * 3000)  # ~3 MB inflated from a few KB
    assert len(bomb) < 100_000
    resp = await upload(client, caller, "bomb.jsonl.gz", bomb)
    assert resp.status == 413 and "decompressed" in (await resp.json())["detail"]
    sessions = tmp_path / "capdata" / "sessions"
    assert not sessions.exists() or not any(p.is_file() for p in sessions.rglob("*"))
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM session_files") == 0


async def test_gzip_upload_is_stored_decompressed(pinned, alice, settings):
    raw = (SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl").read_bytes()
    resp = await upload(pinned, alice, "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl.gz", gzip.compress(raw))
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "filename": "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl",
                                 "size": len(raw)}
    await settle(pinned)
    assert (await stats(pinned, alice))["prompts"] == 2
    bad = await upload(pinned, alice, "cut.jsonl.gz", gzip.compress(raw)[:-20])
    assert bad.status == 400 and (await bad.json())["code"] == "bad_gzip"


async def test_regrown_upload_replaces_the_file(pinned, alice, settings):
    raw = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    name = "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl"
    cut = raw.index(b"\n", len(raw) // 2) + 30  # mid-line
    assert (await upload(pinned, alice, name, raw[:cut])).status == 200
    await settle(pinned)
    partial = await stats(pinned, alice)
    assert (await upload(pinned, alice, name, raw)).status == 200
    await settle(pinned)
    full = await stats(pinned, alice)
    assert partial["prompts"] < full["prompts"] == 5
    assert await pinned.app[keys.DB].fetchval("SELECT COUNT(*) FROM session_files") == 1
    stored = os.path.join(settings.data_dir, "sessions", str(alice.user.id), name)
    assert Path(stored).read_bytes() == raw
    assert not [n for n in os.listdir(os.path.dirname(stored)) if n.endswith(".tmp")]


async def test_ten_concurrent_uploads_all_land(pinned, alice):
    raw = (SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl").read_bytes()
    bodies = []
    for i in range(10):
        text = raw.decode().replace("3f2a9c1e-", f"{i:08x}-").replace("msg_01Chat", f"msg_{i:02d}Chat")
        bodies.append((f"session-{i}.jsonl", text.encode()))
    responses = await asyncio.gather(*(upload(pinned, alice, n, b) for n, b in bodies))
    assert [r.status for r in responses] == [200] * 10
    await settle(pinned)
    result = await stats(pinned, alice)
    assert (result["sessions"], result["prompts"]) == (10, 20)
    assert result["tokens"]["input"] == 21 * 10


async def test_uploads_are_per_user(pinned, alice, bob):
    raw = (SAMPLES / "bob" / "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d.jsonl").read_bytes()
    assert (await upload(pinned, bob, "s.jsonl", raw)).status == 200
    await settle(pinned)
    assert (await stats(pinned, bob))["prompts"] == 2
    assert (await stats(pinned, alice))["prompts"] == 0


async def test_upload_requires_a_token(client):
    resp = await client.post("/api/upload/sessions", data=form("a.jsonl", b"{}\n"))
    assert resp.status == 401


async def test_stale_temporary_uploads_are_removed_at_start(aiohttp_client, settings):
    """A process killed mid-upload leaves a .upload-*.tmp behind; the next start removes it."""
    from service.app import create_app

    folder = Path(settings.data_dir) / "sessions" / "7"
    folder.mkdir(parents=True)
    (folder / ".upload-0123456789abcdef.tmp").write_bytes(b"half an upload")
    (folder / "kept.jsonl").write_bytes(b"{}\n")
    await aiohttp_client(create_app(settings))
    assert sorted(p.name for p in folder.iterdir()) == ["kept.jsonl"]


CLOSE = b"\r\n--B0undary--\r\n"  # the closing delimiter of the hand-made bodies


def multipart(name: str, data: bytes) -> tuple[bytes, bytes, dict[str, str]]:
    """A hand-made multipart body's head, the file bytes and the headers, for bodies aiohttp's client
    would not send (the caller adds CLOSE, or leaves it out)."""
    head = (b'--B0undary\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode()
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n')
    return head, data, {"Content-Type": "multipart/form-data; boundary=B0undary"}


async def test_gzip_is_recognised_when_the_body_arrives_a_byte_at_a_time(pinned, alice, settings):
    raw = (SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl").read_bytes()
    head, data, headers = multipart("drip.jsonl", gzip.compress(raw))

    async def drip():
        yield head + data[:1]  # the first byte of the gzip magic alone
        await asyncio.sleep(0.2)
        yield data[1:] + CLOSE

    resp = await pinned.post("/api/upload/sessions", data=drip(), headers={**alice.headers, **headers})
    assert resp.status == 200 and (await resp.json())["size"] == len(raw)
    stored = Path(settings.data_dir) / "sessions" / str(alice.user.id) / "drip.jsonl"
    assert stored.read_bytes() == raw  # stored decompressed, as a gzip sent at once is


async def test_a_body_cut_before_its_closing_boundary_replaces_nothing(pinned, alice, settings):
    raw = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    assert (await upload(pinned, alice, "s.jsonl", raw)).status == 200
    head, data, headers = multipart("s.jsonl", raw[: len(raw) // 2])  # no CLOSE
    resp = await pinned.post("/api/upload/sessions", data=head + data, headers={**alice.headers, **headers})
    assert resp.status == 400 and (await resp.json())["code"] == "bad_multipart"
    stored = Path(settings.data_dir) / "sessions" / str(alice.user.id) / "s.jsonl"
    assert stored.read_bytes() == raw
    assert not [n for n in os.listdir(stored.parent) if n.endswith(".tmp")]
    one = b"x"  # a body shorter than the gzip magic is plain text
    head, data, headers = multipart("one.jsonl", one)
    resp = await pinned.post("/api/upload/sessions", data=head + data + CLOSE,
                             headers={**alice.headers, **headers})
    assert resp.status == 200 and (await resp.json())["size"] == 1


async def test_an_upload_the_client_abandons_is_a_499_and_leaves_nothing(pinned, alice, settings):
    raw = (SAMPLES / "alice" / "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl").read_bytes()
    head, data, headers = multipart("gone.jsonl", raw)
    body = head + data + CLOSE
    reader, writer = await asyncio.open_connection(pinned.server.host, pinned.server.port)
    writer.write((f"POST /api/upload/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
                  f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                 + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()  # gone mid-body
    metrics = pinned.app[keys.METRICS]
    for _ in range(50):
        if ("POST", "/api/upload/sessions", 499) in metrics.request_counts():
            break
        await asyncio.sleep(0.05)
    assert [k for k in metrics.request_counts() if k[1] == "/api/upload/sessions"] == [
        ("POST", "/api/upload/sessions", 499)]  # the client's doing, not a 500
    user_dir = Path(settings.data_dir) / "sessions" / str(alice.user.id)
    assert not user_dir.exists() or not list(user_dir.iterdir())
    assert await pinned.app[keys.DB].fetchval("SELECT COUNT(*) FROM session_files") == 0


async def test_an_upload_answered_before_a_stop_is_processed_at_the_next_start(pinned, aiohttp_client, alice, settings):
    """The client never resends a file it got a 200 for. What a stop (or a database restored from an
    older backup) can leave: a re-upload's new content in place but not processed, and a file put in
    place by an upload killed before it was registered. The next start processes both."""
    name = "c7b6a5d4-e3f2-4a1b-9c8d-0e1f2a3b4c5d.jsonl"
    raw = (SAMPLES / "alice" / name).read_bytes()
    assert (await upload(pinned, alice, name, raw[:raw.index(b"\n", len(raw) // 2) + 1])).status == 200
    await settle(pinned)
    assert (await stats(pinned, alice))["prompts"] < 5
    await pinned.close()  # the service stops
    folder = Path(settings.data_dir) / "sessions" / str(alice.user.id)
    for path in sorted((SAMPLES / "alice").glob("*.jsonl")):
        (folder / path.name).write_bytes(path.read_bytes())  # as upload_session leaves them

    app = create_app(settings)
    app[keys.CLOCK].fixed = NOW
    client = await aiohttp_client(app)
    await app[keys.WORKER].ticked.wait()
    await settle(client)
    for window in ("24h", "7d"):
        assert await stats(client, alice, window) == {**EXPECTED["users"]["alice"][window], "last_pull_at": None}
    assert await app[keys.DB].fetchval("SELECT COUNT(*) FROM session_files") == len(list(folder.iterdir()))


async def test_a_transcript_past_50_mb_is_stored_under_the_default_cap(client, alice, settings):
    # A long session's transcript passes 50 MB; the client gives a transcript up for good on a 413,
    # so the default cap is 512 MB (streamed to disk: memory stays bounded). Sent gzipped, as 0.84.8 does.
    assert settings.max_upload_mb == 512
    line = b'{"type":"progress","data":"' + b"p" * 1000 + b'"}\n'
    data = line * (51 * 1024 * 1024 // len(line) + 1)
    resp = await upload(client, alice, "long.jsonl.gz", gzip.compress(data, compresslevel=1))
    assert resp.status == 200 and await resp.json() == {"status": "ok", "filename": "long.jsonl", "size": len(data)}
    assert (Path(settings.data_dir) / "sessions" / str(alice.user.id) / "long.jsonl").stat().st_size == len(data)
