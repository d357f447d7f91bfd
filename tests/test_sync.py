"""The sync manifest and data downloads over real HTTP."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from service import keys
from service.web import sync
from service.store import tables, users
from tests.conftest import NOW, make_caller


@pytest.fixture
def data_dir(settings, tmp_path):
    path = Path(settings.data_dir) / "tables"
    path.mkdir(parents=True)
    return path


@pytest.fixture
async def registered(db, data_dir, alice, bob):
    (data_dir / "orders.csv").write_bytes(b"id,total\n1,10\n2,20\n3,30\n")
    (data_dir / "secret.csv").write_bytes(b"id\n1\n")
    (data_dir / "remote.csv").write_bytes(b"x\n")
    await tables.register(db, "orders", "tables/orders.csv", rows=3, public=True)
    await tables.register(db, "secret", "tables/secret.csv", rows=1, source_type="keboola")
    await tables.register(db, "remote_only", "tables/remote.csv", rows=None, query_mode="remote", public=True)
    await tables.grant(db, "secret", alice.user.id)


async def test_manifest_lists_only_readable_tables_in_spec_shape(client, alice, bob, registered, data_dir):
    body = await (await client.get("/api/sync/manifest", headers=alice.headers)).json()
    assert set(body) == {"tables", "assets", "server_time"}
    assert body["assets"] == {}
    assert sorted(body["tables"]) == ["orders", "remote_only", "secret"]
    orders = body["tables"]["orders"]
    content = (data_dir / "orders.csv").read_bytes()
    assert orders == {"hash": hashlib.md5(content).hexdigest(), "updated": orders["updated"],
                      "size_bytes": len(content), "rows": 3, "query_mode": "local", "source_type": ""}
    assert orders["updated"].endswith("Z")
    assert body["tables"]["secret"]["source_type"] == "keboola"
    assert body["tables"]["remote_only"]["query_mode"] == "remote"
    bob_body = await (await client.get("/api/sync/manifest", headers=bob.headers)).json()
    assert sorted(bob_body["tables"]) == ["orders", "remote_only"]


async def test_hashes_are_cached_by_size_and_mtime(client, alice, registered, data_dir, monkeypatch):
    calls = []
    real = sync.md5_file
    monkeypatch.setattr(sync, "md5_file", lambda path: calls.append(path.name) or real(path))
    await client.get("/api/sync/manifest", headers=alice.headers)
    assert sorted(calls) == ["orders.csv", "remote.csv", "secret.csv"]
    await client.app[keys.DB].settle()  # the hashes are cached by a background write
    calls.clear()
    await client.get("/api/sync/manifest", headers=alice.headers)
    assert calls == []
    (data_dir / "orders.csv").write_bytes(b"id,total\n1,10\n")
    body = await (await client.get("/api/sync/manifest", headers=alice.headers)).json()
    assert calls == ["orders.csv"]
    assert body["tables"]["orders"]["hash"] == hashlib.md5(b"id,total\n1,10\n").hexdigest()


async def test_manifest_stamps_last_pull_at(client, db, alice):
    assert (await users.get_user(db, alice.user.id)).last_pull_at is None
    resp = await client.get("/api/sync/manifest", headers=alice.headers)
    assert resp.status == 200
    stats = await (await client.get("/api/me/home-stats", headers=alice.headers)).json()
    from service.timeutil import from_store, utcnow

    assert abs((utcnow() - from_store(stats["last_pull_at"])).total_seconds()) < 1
    profile = await (await client.get("/api/me/profile", headers=alice.headers)).json()
    assert profile["last_pull_at"] == stats["last_pull_at"]


async def test_the_stamp_is_the_services_now(client, db, alice):
    client.app[keys.CLOCK].fixed = NOW
    assert (await client.get("/api/sync/manifest", headers=alice.headers)).status == 200
    await db.settle()
    stats = await (await client.get("/api/me/home-stats", headers=alice.headers)).json()
    assert stats["last_pull_at"] == "2026-11-21T12:00:00Z"


async def test_a_head_of_the_manifest_is_not_a_pull(client, db, alice, registered):
    """`curl -I` fetches nothing, and a browser's cookie is not `agnes pull` (another site could make
    the browser fetch the URL): Last sync must not move. The HEAD's headers are still the GET's."""
    from tests.test_web_auth import sign_in

    await sign_in(client, alice.token)
    by_cookie = await client.get("/api/sync/manifest")
    assert by_cookie.status == 200 and "orders" in (await by_cookie.json())["tables"]
    client.session.cookie_jar.clear()
    head = await client.head("/api/sync/manifest", headers=alice.headers)
    assert head.status == 200 and head.headers["Content-Type"] == "application/json"
    await db.settle()
    assert (await users.get_user(db, alice.user.id)).last_pull_at is None
    get = await client.get("/api/sync/manifest", headers=alice.headers)
    assert int(head.headers["Content-Length"]) == len(await get.read())
    assert (await users.get_user(db, alice.user.id)).last_pull_at is not None


async def test_manifest_is_served_when_the_stamp_fails(client, alice, registered, monkeypatch, caplog):
    async def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(client.app[keys.DB], "execute_write", locked)  # every write fails, as when locked
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/api/sync/manifest", headers=alice.headers)
    assert resp.status == 200
    assert "orders" in (await resp.json())["tables"]
    assert "could not stamp last_pull_at" in caplog.text and "database is locked" in caplog.text
    stats = await (await client.get("/api/me/home-stats", headers=alice.headers)).json()
    assert stats["last_pull_at"] is None


async def test_missing_table_file_is_left_out(client, alice, registered, data_dir):
    (data_dir / "secret.csv").unlink()
    body = await (await client.get("/api/sync/manifest", headers=alice.headers)).json()
    assert sorted(body["tables"]) == ["orders", "remote_only"]


async def test_a_table_file_turned_into_a_directory_is_left_out(client, alice, registered, data_dir, caplog):
    """An operator's broken table must not fail every analyst's pull (it was a 500 for everyone)."""
    (data_dir / "secret.csv").unlink()
    (data_dir / "secret.csv").mkdir()
    with caplog.at_level(logging.WARNING):
        resp = await client.get("/api/sync/manifest", headers=alice.headers)
    assert resp.status == 200
    assert sorted((await resp.json())["tables"]) == ["orders", "remote_only"]
    assert "missing or not a regular file" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
async def test_an_unreadable_table_file_is_left_out(client, alice, registered, data_dir, caplog):
    (data_dir / "orders.csv").chmod(0)
    with caplog.at_level(logging.WARNING):
        resp = await client.get("/api/sync/manifest", headers=alice.headers)
    assert resp.status == 200 and "orders" not in (await resp.json())["tables"]
    assert "cannot be read" in caplog.text


async def test_head_and_get_download(client, alice, registered, data_dir):
    content = (data_dir / "orders.csv").read_bytes()
    head = await client.head("/api/data/orders/download", headers=alice.headers)
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(content))
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["ETag"]
    get = await client.get("/api/data/orders/download", headers={**alice.headers, "Accept-Encoding": "gzip"})
    assert get.status == 200 and await get.read() == content
    assert "Content-Encoding" not in get.headers
    assert get.headers["ETag"] == head.headers["ETag"]
    assert get.headers["X-Request-Id"]


async def test_range_requests(client, alice, registered, data_dir):
    content = (data_dir / "orders.csv").read_bytes()
    first = await client.get("/api/data/orders/download", headers={**alice.headers, "Range": "bytes=0-0"})
    assert first.status == 206
    assert first.headers["Content-Range"] == f"bytes 0-0/{len(content)}"
    assert await first.read() == content[:1]
    middle = await client.get("/api/data/orders/download", headers={**alice.headers, "Range": "bytes=5-12"})
    assert middle.status == 206 and await middle.read() == content[5:13]
    tail = await client.get("/api/data/orders/download", headers={**alice.headers, "Range": "bytes=-4"})
    assert tail.status == 206 and await tail.read() == content[-4:]
    for bad in ("bytes=999-1000", f"bytes={len(content)}-", "bytes=-0"):
        beyond = await client.get("/api/data/orders/download", headers={**alice.headers, "Range": bad})
        assert beyond.status == 416, bad
        assert beyond.headers["Content-Range"] == f"bytes */{len(content)}"
        assert (await beyond.json())["code"] == "range_not_satisfiable"  # the JSON error shape, not an empty body
    # RFC 7233: an unknown unit, several ranges or an invalid range is ignored: the whole file.
    for ignored in ("items=0-1", "bytes=5-2", "bytes=0-1,3-4", "bytes=x-y"):
        whole = await client.get("/api/data/orders/download", headers={**alice.headers, "Range": ignored})
        assert whole.status == 200 and await whole.read() == content, ignored
        assert "Content-Range" not in whole.headers
    last = await client.get("/api/data/orders/download", headers={**alice.headers, "Range": f"bytes={len(content) - 1}-"})
    assert last.status == 206 and await last.read() == content[-1:]
    # An If-Range older than the file: the range is ignored and the whole file sent (aiohttp's rule).
    stale = await client.get("/api/data/orders/download", headers={
        **alice.headers, "Range": "bytes=999-1000", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert stale.status == 200 and await stale.read() == content


async def test_if_range_with_an_entity_tag(client, alice, registered, data_dir):
    """A resumed download (curl -C, a browser) must not splice two versions of the file."""
    path = data_dir / "orders.csv"
    url = "/api/data/orders/download"
    etag = (await client.head(url, headers=alice.headers)).headers["ETag"]
    same = await client.get(url, headers={**alice.headers, "Range": "bytes=3-", "If-Range": etag})
    assert same.status == 206 and await same.read() == path.read_bytes()[3:]
    path.write_bytes(b"replaced,with\nnew,content\n")
    for validator in (etag, f"W/{etag}", '"anything"', "not a date"):
        changed = await client.get(url, headers={**alice.headers, "Range": "bytes=3-", "If-Range": validator})
        assert changed.status == 200, validator
        assert await changed.read() == path.read_bytes()
        assert "Content-Range" not in changed.headers
    # A stale validator with a range past the end: the range is ignored, so not a 416 either.
    beyond = await client.get(url, headers={**alice.headers, "Range": "bytes=999-", "If-Range": etag})
    assert beyond.status == 200
    # A current copy is 304 before any Range is looked at (RFC 9110 13.2.2), even an unsatisfiable one.
    current = (await client.head(url, headers=alice.headers)).headers["ETag"]
    cached = await client.get(url, headers={**alice.headers, "Range": "bytes=999-", "If-None-Match": current})
    assert cached.status == 304


async def test_failed_preconditions_answer_412_in_the_json_shape(client, alice, registered, data_dir):
    url = "/api/data/orders/download"
    etag = (await client.head(url, headers=alice.headers)).headers["ETag"]
    no_match, modified = "The file no longer matches If-Match.", "The file was modified after If-Unmodified-Since."
    for headers, detail in (({"If-Match": '"nope"'}, no_match), ({"If-Match": f"W/{etag}"}, no_match),
                            ({"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, modified)):
        resp = await client.get(url, headers={**alice.headers, **headers})
        assert resp.status == 412, headers
        assert await resp.json() == {"detail": detail, "code": "precondition_failed"}
    for headers in ({"If-Match": etag}, {"If-Match": f'"x", {etag}'}, {"If-Match": "*"},
                    {"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}):
        resp = await client.get(url, headers={**alice.headers, **headers})
        assert resp.status == 200 and await resp.read() == (data_dir / "orders.csv").read_bytes(), headers


@pytest.mark.parametrize(("name", "header"), [
    ("orders.csv", "attachment; filename=\"orders.csv\"; filename*=UTF-8''orders.csv"),
    ('donn€es "q".csv', "attachment; filename=\"donn_es _q_.csv\"; filename*=UTF-8''donn%E2%82%ACes%20%22q%22.csv"),
    ("nl\nx.csv", "attachment; filename=\"nl_x.csv\"; filename*=UTF-8''nl%0Ax.csv"),
])
async def test_any_file_name_makes_a_valid_content_disposition(client, db, alice, data_dir, name, header):
    (data_dir / name).write_bytes(b"a\n")
    await tables.register(db, "t", f"tables/{name}", rows=1, public=True)
    resp = await client.get("/api/data/t/download", headers=alice.headers)
    assert resp.status == 200 and await resp.read() == b"a\n"
    assert resp.headers["Content-Disposition"] == header


async def test_precompressed_sibling_is_never_served(client, alice, registered, data_dir):
    import gzip

    (data_dir / "orders.csv.gz").write_bytes(gzip.compress(b"something else entirely"))
    resp = await client.get("/api/data/orders/download", headers={**alice.headers, "Accept-Encoding": "gzip, br"})
    assert resp.status == 200
    assert "Content-Encoding" not in resp.headers
    assert await resp.read() == (data_dir / "orders.csv").read_bytes()


async def test_same_404_for_missing_and_forbidden_tables(client, bob, registered):
    missing = await client.get("/api/data/nope/download", headers=bob.headers)
    forbidden = await client.get("/api/data/secret/download", headers=bob.headers)
    assert missing.status == forbidden.status == 404
    assert (await missing.json())["code"] == (await forbidden.json())["code"] == "table_not_found"
    head = await client.head("/api/data/secret/download", headers=bob.headers)
    assert head.status == 404


@pytest.mark.parametrize("table_id", ["..", ".hidden", "a%2F..%2F..%2Fetc", "%2e%2e", "x" * 129, "a b", "a;b"])
async def test_hostile_table_ids_are_404(client, alice, registered, table_id):
    resp = await client.get(f"/api/data/{table_id}/download", headers=alice.headers)
    assert resp.status == 404


async def test_stored_path_cannot_escape_the_data_directory(client, db, alice, settings, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    await db.execute_write("INSERT INTO data_tables (id, path, public, created_at) VALUES ('evil', ?, 1, 'x')",
                           ("../outside.txt",))
    assert (await client.get("/api/data/evil/download", headers=alice.headers)).status == 404
    body = await (await client.get("/api/sync/manifest", headers=alice.headers)).json()
    assert "evil" not in body["tables"]


async def test_catalog_lists_the_callers_tables(client, alice, bob, registered):
    body = await (await client.get("/api/catalog/tables", headers=bob.headers)).json()
    assert [t["id"] for t in body["tables"]] == ["orders", "remote_only"]
    assert (await client.get("/api/catalog/tables")).status == 401


async def test_memory_bundle_default_and_configured(database_url, client, alice, aiohttp_client, tmp_path, settings):
    assert await (await client.get("/api/memory/bundle", headers=alice.headers)).json() == {
        "mandatory": [], "approved": []}
    from service.app import create_app
    from service.config import load_settings

    rules = tmp_path / "memory.yaml"
    rules.write_text("mandatory:\n  - {id: m1, title: Use EU data, content: Only EU rows., domain: sales}\n"
                     "approved: []\n")
    configured = load_settings(environ={}, database_url=database_url,
                               db_path=str(tmp_path / "m.db"), data_dir=str(tmp_path / "md"),
                               secret_key="s", parse_workers=0, memory_file=str(rules))
    other = await aiohttp_client(create_app(configured))
    caller = await make_caller(other.app[keys.DB], "m@example.com")
    assert await (await other.get("/api/memory/bundle", headers=caller.headers)).json() == {
        "mandatory": [{"id": "m1", "title": "Use EU data", "content": "Only EU rows.", "domain": "sales"}],
        "approved": []}  # no "category": null, the key is optional (SPEC.md)


def test_invalid_memory_file_stops_start_up_naming_the_key(tmp_path):
    from service.app import create_app
    from service.config import ConfigError, load_settings

    rules = tmp_path / "memory.yaml"
    rules.write_text("mandatory:\n  - {id: 1}\n")
    settings = load_settings(environ={}, db_path=str(tmp_path / "x.db"), data_dir=str(tmp_path / "d"),
                             secret_key="s", memory_file=str(rules))
    with pytest.raises(ConfigError, match=r"instance.memory_file .*\$.mandatory\[0\]"):
        create_app(settings)


async def test_a_table_row_pointing_at_private_files_serves_nothing(client, db, alice, bob, settings):
    """Defence in depth behind the CLI's refusal: a transcript or the cookie key is never a download."""
    root = Path(settings.data_dir)
    (root / "sessions" / str(bob.user.id)).mkdir(parents=True)
    (root / "sessions" / str(bob.user.id) / "s.jsonl").write_text('{"type":"user"}\n')
    for table_id, relative in (("t1", f"sessions/{bob.user.id}/s.jsonl"), ("t2", "secret_key")):
        await tables.register(db, table_id, relative, rows=1, public=True)
        resp = await client.get(f"/api/data/{table_id}/download", headers=alice.headers)
        assert resp.status == 404 and (await resp.json())["code"] == "table_not_found", relative
    manifest = await (await client.get("/api/sync/manifest", headers=alice.headers)).json()
    assert "t1" not in manifest["tables"] and "t2" not in manifest["tables"]
