"""The /home API over real HTTP: GET /api/me/home-stats and POST /api/me/onboarded."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from service import keys
from service.store import users
from tests.conftest import SAMPLE_USERS, make_caller
from tests.test_ingest import EXPECTED, NOW, ingest_files, sample_files
from tests.test_parser import assistant, jsonl, usage, user
from tests.test_upload import settle, upload

ZERO = {"window": "24h", "last_pull_at": None, "sessions": 0, "prompts": 0, "projects": 0,
        "tokens": {"input": 0, "output": 0, "cache_read": 0, "cache_creation": 0, "total": 0}}
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def expected(user: str, window: str, last_pull_at: str | None = None) -> dict:
    return {**EXPECTED["users"][user][window], "last_pull_at": last_pull_at}


@pytest.fixture
async def people(client, db):
    client.app[keys.CLOCK].fixed = NOW
    found = {}
    for name in SAMPLE_USERS:
        found[name] = await make_caller(db, f"{name}@example.com", name=name.title())
        report = await ingest_files(db, found[name].user.id, sample_files(name))
        assert report.failed == 0, report.errors
    return found


async def get_stats(client, caller, query: str = "") -> dict:
    resp = await client.get(f"/api/me/home-stats{query}", headers=caller.headers)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    return await resp.json()


# --- GET /api/me/home-stats -------------------------------------------------------------------

@pytest.mark.parametrize("user", SAMPLE_USERS)
@pytest.mark.parametrize("window", ["24h", "7d"])
async def test_home_stats_match_the_samples(client, people, user, window):
    assert await get_stats(client, people[user], f"?window={window}") == expected(user, window)


@pytest.mark.parametrize("query", ["?window=30d", "", "?window=", "?window=7D", "?window=24h&window=7d"])
async def test_unknown_or_missing_window_is_clamped_to_24h(client, people, query):
    assert await get_stats(client, people["alice"], query) == expected("alice", "24h")


async def test_last_pull_at_is_iso_utc(client, db, people):
    await users.stamp_pull(db, people["bob"].user.id, NOW - timedelta(minutes=3))
    body = await get_stats(client, people["bob"], "?window=7d")
    assert body == expected("bob", "7d", "2026-11-21T11:57:00Z")


async def test_user_without_data_gets_zeros(client, db, people):
    dave = await make_caller(db, "dave@example.com")
    assert await get_stats(client, dave) == ZERO
    assert await get_stats(client, dave, "?window=7d") == {**ZERO, "window": "7d"}


def vanish_after_authentication(monkeypatch, db):
    """Delete the caller's users row right after its token is checked.

    This is the real race behind "whose row vanished": an operator removes the user
    while one of their requests is between authentication and the handler. Deleting
    the row before the request would only test the 401 path, since the token row
    cascades with it.
    """
    authenticate = users.authenticate

    async def authenticate_then_delete(db_, token):
        found = await authenticate(db_, token)
        if found is not None:
            await db.execute_write("DELETE FROM users WHERE id = ?", (found[0].id,))
        return found

    monkeypatch.setattr(users, "authenticate", authenticate_then_delete)


async def test_user_whose_row_vanished_gets_zeros_not_500(client, db, people, monkeypatch):
    alice = people["alice"]
    vanish_after_authentication(monkeypatch, db)
    resp = await client.get("/api/me/home-stats?window=7d", headers=alice.headers)
    assert resp.status == 200
    # The row went with its session files (ON DELETE CASCADE), so the activity is gone too.
    assert await resp.json() == {**ZERO, "window": "7d"}
    assert await users.get_user(db, alice.user.id) is None


async def test_home_stats_needs_a_credential(client):
    resp = await client.get("/api/me/home-stats")
    assert resp.status == 401
    assert (await resp.json())["code"] == "unauthorized"


NO_TIMESTAMPS = jsonl(
    user("u1", "what changed?", ts=None, sessionId="s-none", cwd="/w/p"),
    assistant("a1", "msg_n1", ts=None, usage=usage(3, 30), sessionId="s-none"),
)


async def test_a_file_without_timestamps_counts_at_the_moment_it_was_received(client, alice):
    """FORMAT.md "Windows": such a file is activity when received; the window's start is inclusive."""
    client.app[keys.CLOCK].fixed = NOW
    assert (await upload(client, alice, "s-none.jsonl", NO_TIMESTAMPS)).status == 200
    await settle(client)
    body = await get_stats(client, alice)
    assert (body["sessions"], body["prompts"], body["projects"], body["tokens"]["total"]) == (1, 1, 1, 33)
    client.app[keys.CLOCK].fixed = NOW + timedelta(hours=24)
    body = await get_stats(client, alice)
    assert (body["sessions"], body["prompts"], body["tokens"]["total"]) == (1, 1, 33)
    client.app[keys.CLOCK].fixed = NOW + timedelta(hours=24, microseconds=1)
    body = await get_stats(client, alice)
    assert (body["sessions"], body["prompts"], body["projects"], body["tokens"]["total"]) == (0, 0, 0, 0)
    body = await get_stats(client, alice, "?window=7d")
    assert (body["sessions"], body["prompts"], body["tokens"]["total"]) == (1, 1, 33)


# --- POST /api/me/onboarded -------------------------------------------------------------------

async def post_onboarded(client, caller, body: bytes | None, content_type: str = "application/json"):
    headers = {**caller.headers, "Content-Type": content_type} if body is not None else caller.headers
    return await client.post("/api/me/onboarded", data=body, headers=headers)


async def onboarding_audit(db, user_id: int) -> list[tuple[str, str]]:
    return [(r["action"], r["source"]) for r in await users.audit_rows(db, user_id)
            if r["action"] in ("onboarded", "offboarded")]


async def profile_onboarded(client, caller) -> bool:
    return (await (await client.get("/api/me/profile", headers=caller.headers)).json())["onboarded"]


async def test_onboarding_round_trip_with_audit(client, db):
    dana = await make_caller(db, "dana@example.com", onboarded=False)
    assert await profile_onboarded(client, dana) is False

    steps = [
        (b'{"source": "agnes_init", "onboarded": true}', True),
        (b'{"source": "self_unmark", "onboarded": false}', False),
        (b'{"source": "self_acknowledged", "onboarded": true}', True),
    ]
    for body, state in steps:
        resp = await post_onboarded(client, dana, body)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {"status": "ok", "onboarded": state}
        assert await profile_onboarded(client, dana) is state
    assert await onboarding_audit(db, dana.user.id) == [
        ("onboarded", "agnes_init"), ("offboarded", "self_unmark"), ("onboarded", "self_acknowledged")]


async def test_onboarding_is_idempotent(client, db):
    erin = await make_caller(db, "erin@example.com", onboarded=False)
    for _ in range(2):
        resp = await post_onboarded(client, erin, b'{"source": "self_unmark", "onboarded": false}')
        assert resp.status == 200 and await resp.json() == {"status": "ok", "onboarded": False}
        assert await profile_onboarded(client, erin) is False
    # Same state and answer every time; each call is still on the record with its source.
    assert await onboarding_audit(db, erin.user.id) == [("offboarded", "self_unmark")] * 2


@pytest.mark.parametrize("body", [None, b"", b"   \n", b"{}"])
async def test_empty_body_means_all_defaults(client, db, body):
    fay = await make_caller(db, "fay@example.com", onboarded=False)
    resp = await post_onboarded(client, fay, body)
    assert resp.status == 200 and await resp.json() == {"status": "ok", "onboarded": True}
    assert await onboarding_audit(db, fay.user.id) == [("onboarded", "agnes_init")]


@pytest.mark.parametrize("body, code, detail", [
    (b'{"onboarded": "yes"}', "invalid_body",
     "Invalid request body: Expected `bool`, got `str` - at `$.onboarded`"),
    (b'{"source": 1}', "invalid_body", "Invalid request body: Expected `str`, got `int` - at `$.source` "
     "(expected one of: agnes_init, self_acknowledged, self_unmark)"),
    (b'{"source": "agnes_push"}', "invalid_body",
     "Invalid request body: Invalid enum value 'agnes_push' - at `$.source` "
     "(expected one of: agnes_init, self_acknowledged, self_unmark)"),
    (b'{"onboarded": true, "reason": "x"}', "invalid_body",
     "Invalid request body: Object contains unknown field `reason`"),
    (b'["agnes_init"]', "invalid_body", "Invalid request body: Expected `object`, got `array`"),
    (b'{"source": "agnes_init"', "invalid_json", "Invalid JSON body: Input data was truncated"),
    (b"source=agnes_init", "invalid_json", "Invalid JSON body: malformed"),
])
async def test_invalid_bodies_are_400_naming_the_field(client, db, body, code, detail):
    gus = await make_caller(db, "gus@example.com", onboarded=False)
    resp = await post_onboarded(client, gus, body)
    assert resp.status == 400
    got = await resp.json()
    assert set(got) == {"detail", "code"} and got["code"] == code
    if detail.endswith("malformed"):
        assert got["detail"].startswith("Invalid JSON body: JSON is malformed")
    else:
        assert got["detail"] == detail
    assert await profile_onboarded(client, gus) is False
    assert await onboarding_audit(db, gus.user.id) == []


async def test_onboarding_for_a_vanished_user_is_404_json(client, db, monkeypatch):
    hal = await make_caller(db, "hal@example.com", onboarded=False)
    vanish_after_authentication(monkeypatch, db)
    resp = await post_onboarded(client, hal, b'{"source": "agnes_init"}')
    assert resp.status == 404
    assert await resp.json() == {"detail": "Your user account no longer exists.", "code": "user_not_found"}


async def test_onboarding_needs_a_credential(client):
    resp = await client.post("/api/me/onboarded", json={})
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"


async def test_page_form_post_redirects_to_home_and_needs_csrf(client, db):
    ivy = await make_caller(db, "ivy@example.com", onboarded=False)
    signed_in = await client.post("/login", data={"token": ivy.token}, allow_redirects=False)
    assert signed_in.status == 303
    page = await (await client.get("/home")).text()
    csrf = CSRF_RE.search(page).group(1)
    form = {"source": "self_acknowledged", "onboarded": "true"}

    refused = await client.post("/api/me/onboarded", data=form, allow_redirects=False)
    assert refused.status == 403 and (await refused.json())["code"] == "csrf_failed"
    assert await onboarding_audit(db, ivy.user.id) == []

    resp = await client.post("/api/me/onboarded", data={**form, "csrf_token": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/home"
    assert (await users.get_user(db, ivy.user.id)).onboarded is True

    resp = await client.post("/api/me/onboarded", data={"source": "self_unmark", "onboarded": "false",
                                                        "csrf_token": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await users.get_user(db, ivy.user.id)).onboarded is False
    assert await onboarding_audit(db, ivy.user.id) == [("onboarded", "self_acknowledged"),
                                                       ("offboarded", "self_unmark")]

    bad = await client.post("/api/me/onboarded", data={"source": "nope", "csrf_token": csrf},
                            allow_redirects=False)
    assert bad.status == 400 and "`$.source`" in (await bad.json())["detail"]
