"""Identity over real HTTP: bearer tokens, sign-in cookies, proxy header, CSRF, errors, request ids."""

from __future__ import annotations

import re

from itsdangerous import URLSafeTimedSerializer
from yarl import URL

from service import keys
from service.app import create_app
from service.config import load_settings
from service.store import users
from tests.conftest import make_caller

CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


async def test_me_with_bearer_returns_profile(client, alice):
    for path in ("/api/me", "/api/me/profile"):
        resp = await client.get(path, headers=alice.headers)
        assert resp.status == 200
        assert await resp.json() == {"id": alice.user.id, "email": "alice@example.com", "name": "Alice",
                                     "onboarded": True, "last_pull_at": None,
                                     "client": None, "last_pull": None}


async def test_missing_wrong_and_revoked_tokens_get_401_json(client, db, alice):
    cases = [{}, {"Authorization": "Bearer agnes_pat_wrong"}, {"Authorization": "Basic abc"},
             {"Authorization": "Bearer "}, {"Authorization": alice.token}]
    for headers in cases:
        resp = await client.get("/api/me", headers=headers)
        assert resp.status == 401, headers
        body = await resp.json()
        assert body["code"] == "unauthorized" and "Bearer" in body["detail"]
        assert set(body) == {"detail", "code"}
    assert await users.revoke_token(db, user_id=alice.user.id) == 1
    resp = await client.get("/api/me", headers=alice.headers)
    assert resp.status == 401


async def test_tokens_are_stored_only_as_hashes(db, alice):
    assert alice.token.startswith("agnes_pat_") and len(alice.token) > 40
    rows = await db.fetchall("SELECT token_hash, prefix FROM api_tokens")
    assert len(rows) == 1
    assert alice.token not in (rows[0]["token_hash"], rows[0]["prefix"])
    assert rows[0]["token_hash"] == users.hash_token(alice.token)
    assert alice.token.startswith(rows[0]["prefix"])


async def test_last_used_at_is_recorded(client, db, alice):
    assert (await users.list_tokens(db, alice.user.id))[0].last_used_at is None
    await client.get("/api/me", headers=alice.headers)
    await db.settle()
    assert (await users.list_tokens(db, alice.user.id))[0].last_used_at is not None


async def test_each_token_sees_only_its_own_user(client, alice, bob):
    assert (await (await client.get("/api/me", headers=bob.headers)).json())["email"] == "bob@example.com"
    assert (await (await client.get("/api/me", headers=alice.headers)).json())["email"] == "alice@example.com"


async def test_unknown_api_route_and_wrong_method_are_json(client, alice):
    resp = await client.get("/api/nope", headers=alice.headers)
    assert resp.status == 404
    assert (await resp.json())["code"] == "not_found"
    resp = await client.post("/api/me", headers=alice.headers)
    assert resp.status == 405
    assert (await resp.json())["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


async def test_request_id_on_every_response(client, alice):
    ok = await client.get("/api/me", headers=alice.headers)
    denied = await client.get("/api/me")
    redirect = await client.get("/home", allow_redirects=False)
    ids = {r.headers["X-Request-Id"] for r in (ok, denied, redirect)}
    assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    echoed = await client.get("/healthz", headers={"X-Request-Id": "client-chosen-id-1"})
    assert echoed.headers["X-Request-Id"] == "client-chosen-id-1"
    hostile = await client.get("/healthz", headers={"X-Request-Id": "<script>alert(1)</script>"})
    assert hostile.headers["X-Request-Id"] != "<script>alert(1)</script>"


async def test_page_without_credentials_redirects_to_sign_in(client):
    resp = await client.get("/home?window=7d", allow_redirects=False)
    assert resp.status == 302
    location = URL(resp.headers["Location"])
    assert location.path == "/login" and location.query["next"] == "/home?window=7d"


async def test_page_with_bad_bearer_is_401_not_redirect(client):
    resp = await client.get("/home", headers={"Authorization": "Bearer agnes_pat_nope"}, allow_redirects=False)
    assert resp.status == 401


async def test_page_with_bearer_renders(client, alice):
    resp = await client.get("/home", headers=alice.headers)
    assert resp.status == 200
    assert "alice@example.com" in await resp.text()


async def sign_in(client, token: str, next_path: str = "/home"):
    return await client.post("/login", data={"token": token, "next": next_path}, allow_redirects=False)


async def test_sign_in_sets_signed_httponly_samesite_cookie(client, alice):
    resp = await sign_in(client, alice.token)
    assert resp.status == 303
    assert resp.headers["Location"] == "/home"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("agnes_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert alice.token not in cookie
    page = await client.get("/home")
    assert page.status == 200
    assert "alice@example.com" in await page.text()
    assert (await (await client.get("/api/me")).json())["email"] == "alice@example.com"


async def test_sign_in_with_wrong_token_is_refused(client):
    resp = await sign_in(client, "agnes_pat_wrong")
    assert resp.status == 401
    assert "not valid" in await resp.text()
    assert "agnes_session" not in resp.cookies


async def test_sign_in_never_redirects_off_site(client, alice):
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "/\t/evil.example",
                   "/\n/evil.example", "/ /evil.example", "/\x7f/evil.example"):
        resp = await sign_in(client, alice.token, target)
        assert resp.headers["Location"] == "/home", target


async def test_tampered_cookie_is_rejected(client, alice):
    await sign_in(client, alice.token)
    good = client.session.cookie_jar.filter_cookies(client.make_url("/"))["agnes_session"].value
    client.session.cookie_jar.clear()
    forged = URLSafeTimedSerializer(b"other-secret", salt="agnes-home.session").dumps({"u": alice.user.id, "n": "x"})
    mid = len(good) - 8  # inside the signature (its last base64 character carries unused bits)
    tampered = good[:mid] + ("A" if good[mid] != "A" else "B") + good[mid + 1:]
    for value in (tampered, forged):
        client.session.cookie_jar.update_cookies({"agnes_session": value})
        assert (await client.get("/api/me")).status == 401


async def test_cookie_dies_with_its_token(client, db, alice):
    await sign_in(client, alice.token)
    assert (await client.get("/api/me")).status == 200
    await users.revoke_token(db, user_id=alice.user.id)
    assert (await client.get("/api/me")).status == 401


async def test_sign_out_always_works_from_this_site_only(client, db, alice):
    """A stale page (its CSRF token replaced by a sign-in elsewhere, or its token revoked) can still
    sign out; it only clears this browser's cookie. Another site cannot post it."""
    await sign_in(client, alice.token)
    token = CSRF_RE.search(await (await client.get("/home")).text()).group(1)
    cross = await client.post("/logout", data={"csrf_token": token}, headers={"Origin": "https://evil.example"},
                              allow_redirects=False)
    assert cross.status == 403 and (await client.get("/api/me")).status == 200
    stale = await client.post("/logout", data={"csrf_token": "0" * 64}, allow_redirects=False)
    assert stale.status == 303 and stale.headers["Location"] == "/login"
    assert (await client.get("/api/me")).status == 401
    # A session whose token was revoked meanwhile: the page's button still signs out.
    await sign_in(client, alice.token)
    await users.revoke_token(db, token_id=(await users.list_tokens(db, alice.user.id))[0].id)
    dead = await client.post("/logout", data={"csrf_token": token}, headers={"Accept": "text/html"},
                             allow_redirects=False)
    assert dead.status == 303 and dead.headers["Location"] == "/login"
    assert "agnes_session=;" in dead.headers.get("Set-Cookie", "").replace('""', "")


async def test_page_forms_on_a_stale_page_answer_with_pages(client, alice):
    """The onboarding buttons post a form to the API: a browser gets sign-in or an error page, not JSON."""
    form = {"source": "self_unmark", "onboarded": "false"}
    html = {"Accept": "text/html,application/xhtml+xml"}
    signed_out = await client.post("/api/me/onboarded", data=form, headers=html, allow_redirects=False)
    assert signed_out.status == 303 and signed_out.headers["Location"] == "/login?next=/home"
    await sign_in(client, alice.token)
    stale = await client.post("/api/me/onboarded", data={**form, "csrf_token": "0" * 64}, headers=html)
    assert stale.status == 403 and stale.content_type == "text/html" and "CSRF" in await stale.text()
    api = await client.post("/api/me/onboarded", data={**form, "csrf_token": "0" * 64})  # not a browser: JSON
    assert api.status == 403 and (await api.json())["code"] == "csrf_failed"


async def test_same_origin_posts_behind_a_proxy_that_rewrites_host(aiohttp_client, settings):
    """nginx passes Host as the upstream address by default: the browser's Origin is the public one."""
    behind = load_settings(environ={}, db_path=settings.db_path, database_url=settings.database_url,
                           data_dir=settings.data_dir, secret_key="s",
                           public_url="https://agnes.corp.example", trusted_proxies=["127.0.0.0/8"])
    client = await aiohttp_client(create_app(behind))
    caller = await make_caller(client.app[keys.DB], "alice@example.com")

    async def sign_out(origin: str, **headers: str) -> tuple[int, str | None]:
        await sign_in(client, caller.token)
        token = CSRF_RE.search(await (await client.get("/home")).text()).group(1)
        resp = await client.post("/logout", data={"csrf_token": token}, allow_redirects=False,
                                 headers={"Origin": origin, **headers})
        return resp.status, (await resp.json())["code"] if resp.status == 403 else None

    assert await sign_out("https://agnes.corp.example") == (303, None)  # AGNES_PUBLIC_URL's origin
    assert await sign_out("https://alt.corp.example", **{"X-Forwarded-Host": "alt.corp.example"}) == (303, None)
    assert await sign_out("https://evil.example") == (403, "origin_mismatch")
    # X-Forwarded-Host counts only from a trusted proxy.
    untrusted = load_settings(environ={}, db_path=settings.db_path, database_url=settings.database_url,
                              data_dir=settings.data_dir, secret_key="s",
                              trusted_proxies=["10.9.9.9"])
    client = await aiohttp_client(create_app(untrusted))
    assert await sign_out("https://evil.example", **{"X-Forwarded-Host": "evil.example"}) == (403, "origin_mismatch")


async def test_bearer_posts_need_no_csrf(client, alice):
    resp = await client.post("/logout", headers=alice.headers, allow_redirects=False)
    assert resp.status == 303


async def test_proxy_header_only_from_trusted_addresses(aiohttp_client, settings, tmp_path):
    trusted = load_settings(environ={}, db_path=settings.db_path, database_url=settings.database_url,
                            data_dir=settings.data_dir, secret_key="s",
                            proxy_header="X-Forwarded-Email", trusted_proxies=["127.0.0.0/8"])
    client = await aiohttp_client(create_app(trusted))
    await make_caller(client.app[keys.DB], "proxied@example.com")
    resp = await client.get("/api/me", headers={"X-Forwarded-Email": "proxied@example.com"})
    assert resp.status == 200 and (await resp.json())["email"] == "proxied@example.com"
    unknown = await client.get("/api/me", headers={"X-Forwarded-Email": "nobody@example.com"})
    assert unknown.status == 401
    # Two copies: one is the client's own, passed on by a proxy that appends; neither is trusted.
    twice = await client.get("/api/me", headers=[("X-Forwarded-Email", "proxied@example.com"),
                                                 ("X-Forwarded-Email", "proxied@example.com")])
    assert twice.status == 401

    untrusted = load_settings(environ={}, db_path=settings.db_path, database_url=settings.database_url,
                              data_dir=settings.data_dir, secret_key="s",
                              proxy_header="X-Forwarded-Email", trusted_proxies=["10.9.9.9"])
    client2 = await aiohttp_client(create_app(untrusted))
    resp = await client2.get("/api/me", headers={"X-Forwarded-Email": "proxied@example.com"})
    assert resp.status == 401


async def test_server_error_has_no_traceback(client, alice, monkeypatch):
    from service.web import api

    def boom(_user):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api, "profile_of", boom)
    resp = await client.get("/api/me", headers=alice.headers)
    assert resp.status == 500
    body = await resp.json()
    assert body["code"] == "internal_error"
    assert "secret internals" not in body["detail"] and "Traceback" not in await resp.text()


async def test_requests_never_wait_for_the_database_writer(client, db, alice):
    """Authentication only reads; its last-used stamp is written later, so a busy writer
    (a long ingest transaction, another process's lock) never holds a request up."""
    import asyncio

    await db.execute_write("UPDATE api_tokens SET last_used_at = NULL")
    async with db.writing():
        resp = await asyncio.wait_for(client.get("/api/me", headers=alice.headers), timeout=2)
        assert resp.status == 200
        manifest = await asyncio.wait_for(client.get("/api/sync/manifest", headers=alice.headers), timeout=3)
        assert manifest.status == 200 and (await manifest.json())["tables"] == {}
    await db.settle()
    assert (await users.list_tokens(db, alice.user.id))[0].last_used_at is not None


async def test_responses_behind_a_credential_are_never_cached(client, alice):
    for path in ("/home", "/api/me", "/api/me/home-stats", "/api/sync/manifest"):
        resp = await client.get(path, headers=alice.headers)
        assert resp.status == 200 and resp.headers["Cache-Control"] == "private, no-store", path
    public = await client.get("/healthz")
    assert public.status == 200 and "Cache-Control" not in public.headers


async def test_errors_behind_a_credential_are_never_cached_either(client, alice):
    """An error after sign-in can name the caller's own things (a table id, a file name)."""
    json_as_text = {**alice.headers, "Content-Type": "text/plain"}
    cases = [("GET", "/api/data/nope/download", b"", alice.headers, 404),
             ("POST", "/api/me/onboarded", b"{", alice.headers, 400),
             ("POST", "/api/me/onboarded", b"{}", json_as_text, 415),
             ("GET", "/api/admin/quarantine", b"", alice.headers, 403)]
    for method, path, body, headers, status in cases:
        resp = await client.request(method, path, data=body, headers=headers)
        assert resp.status == status and resp.headers["Cache-Control"] == "private, no-store", path
    anonymous = await client.get("/api/me")
    assert anonymous.status == 401 and "Cache-Control" not in anonymous.headers


async def test_a_cookie_upload_sends_the_csrf_token_as_a_header(client, alice):
    import aiohttp

    await sign_in(client, alice.token)
    token = CSRF_RE.search(await (await client.get("/home")).text()).group(1)
    transcript = b'{"type":"user","uuid":"u1","message":{"role":"user","content":"Hi."}}\n'

    def form(with_field: bool) -> aiohttp.FormData:
        fd = aiohttp.FormData()
        if with_field:
            fd.add_field("csrf_token", token)
        fd.add_field("file", transcript, filename="c.jsonl", content_type="application/octet-stream")
        return fd

    # As a multipart field it would have to be read out of the body the upload streams: a clear 403.
    refused = await client.post("/api/upload/sessions", data=form(True))
    assert refused.status == 403
    body = await refused.json()
    assert body["code"] == "csrf_failed" and "X-CSRF-Token" in body["detail"]
    ok = await client.post("/api/upload/sessions", data=form(False), headers={"X-CSRF-Token": token})
    assert ok.status == 200 and (await ok.json())["size"] == len(transcript)


async def test_a_stored_secret_key_left_empty_is_replaced_not_signed_with(database_url, aiohttp_client, tmp_path):
    """A start that died (or ran out of disk) between creating data_dir/secret_key and writing it
    left an empty file, and every later start signed cookies with the empty key: anyone could
    sign in as anyone."""
    data_dir = tmp_path / "keyless"
    data_dir.mkdir()
    (data_dir / "secret_key").write_bytes(b"")
    s = load_settings(environ={}, database_url=database_url,
                      db_path=str(tmp_path / "keyless.db"), data_dir=str(data_dir), parse_workers=0)
    assert s.secret_key == ""
    client = await aiohttp_client(create_app(s))
    stored = (data_dir / "secret_key").read_bytes()
    assert re.fullmatch(rb"[0-9a-f]{64}", stored) and client.app[keys.SECRET] == stored
    assert not list(data_dir.glob(".secret_key-*"))
    caller = await make_caller(client.app[keys.DB], "alice@example.com")
    forged = URLSafeTimedSerializer(b"", salt="agnes-home.session").dumps({"u": caller.user.id, "t": None, "n": "x"})
    client.session.cookie_jar.update_cookies({"agnes_session": forged})
    assert (await client.get("/api/me")).status == 401
    client.session.cookie_jar.clear()
    assert (await sign_in(client, caller.token)).status == 303
    assert (await (await client.get("/api/me")).json())["email"] == "alice@example.com"
    # The key is kept: the next start signs with the same one.
    assert create_app(s)[keys.SECRET] == stored


async def _copied_cookie(client, caller) -> str:
    resp = await sign_in(client, caller.token)
    assert resp.status == 303
    client.session.cookie_jar.clear()  # the copy travels alone, in a Cookie header
    return resp.cookies["agnes_session"].value


async def _with_cookie(client, value: str):
    """A request carrying a copy of a cookie (another browser), apart from the client's own jar."""
    return await client.get("/api/me", headers={"Cookie": f"agnes_session={value}"})


async def test_signing_out_ends_the_sign_in_so_a_copied_cookie_stops_working(client, alice):
    copied = await _copied_cookie(client, alice)
    assert (await _with_cookie(client, copied)).status == 200
    client.session.cookie_jar.update_cookies({"agnes_session": copied})
    resp = await client.post("/logout", allow_redirects=False)
    assert resp.status == 303
    after = await _with_cookie(client, copied)
    assert after.status == 401 and (await after.json())["code"] == "unauthorized"
    page = await client.get("/home", headers={"Cookie": f"agnes_session={copied}"}, allow_redirects=False)
    assert page.status in (302, 303) and page.headers["Location"].startswith("/login")
    # Another sign-in of the same analyst (another browser) is untouched.
    other = await _copied_cookie(client, alice)
    assert (await _with_cookie(client, other)).status == 200


async def test_revoking_the_token_or_the_users_sessions_ends_sign_ins_at_once(client, db, alice, bob, tmp_path):
    import asyncio
    import subprocess
    import sys

    first = await _copied_cookie(client, alice)
    await users.revoke_token(db, token_id=(await users.list_tokens(db, alice.user.id))[0].id)
    assert (await _with_cookie(client, first)).status == 401
    assert await db.fetchval("SELECT COUNT(*) FROM browser_sessions WHERE user_id = ? AND ended_at IS NULL",
                             (alice.user.id,)) == 0

    # The operator's command, run as a real process against the same database.
    token, _ = await users.issue_token(db, alice.user.id)
    second, third = [await _copied_cookie(client, type(alice)(alice.user, token)) for _ in range(2)]
    bobs = await _copied_cookie(client, bob)
    settings = client.app[keys.SETTINGS]
    env = {"PATH": "/usr/bin:/bin", "AGNES_DB_PATH": settings.db_path, "AGNES_DATABASE_URL": settings.database_url,
           "AGNES_DATA_DIR": settings.data_dir}
    await db.settle()
    # In a thread: the server's loop keeps running (and finishing its own writes) meanwhile.
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "service.cli", "sessions", "revoke", "--email", "alice@example.com"],
        env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ended 2 browser sign-in(s)" in done.stdout
    for cookie in (second, third):
        assert (await _with_cookie(client, cookie)).status == 401
    assert (await _with_cookie(client, bobs)).status == 200  # only alice's
    assert (await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})).status == 200  # tokens live on


async def test_ended_and_expired_sign_ins_are_pruned_and_live_ones_kept(client, db, alice):
    from datetime import timedelta

    from service.store import sessions
    from service.timeutil import utcnow

    ended = await _copied_cookie(client, alice)
    client.session.cookie_jar.update_cookies({"agnes_session": ended})
    assert (await client.post("/logout", allow_redirects=False)).status == 303
    live = await _copied_cookie(client, alice)
    assert await db.fetchval("SELECT COUNT(*) FROM browser_sessions") == 2
    assert await sessions.prune(db, utcnow()) == 0  # ended just now: kept a day
    assert await sessions.prune(db, utcnow() + timedelta(days=2)) == 1
    assert (await _with_cookie(client, live)).status == 200
    max_age = client.app[keys.SETTINGS].session_max_age
    assert await sessions.prune(db, utcnow() + timedelta(seconds=max_age + 60)) == 1  # expired
    assert await db.fetchval("SELECT COUNT(*) FROM browser_sessions") == 0
