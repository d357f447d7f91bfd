"""Three users, every route: no one gets another user's stats, files, tables or profile."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import aiohttp
import pytest

from service import keys
from service.web.openapi import PATHS
from service.store import tables, users
from tests.conftest import NOW, SAMPLES, expected_stats, make_caller

CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
NAMES = ("alice", "bob", "carol")


def carol_transcript() -> bytes:
    """Carol's own session: markers found nowhere else."""
    lines = [
        {"type": "user", "uuid": "carol-u1", "sessionId": "carol-secret-session", "timestamp": "2026-11-21T10:00:00Z",
         "cwd": "/home/carol/secret-carol-project", "message": {"role": "user", "content": "carol's question"}},
        {"type": "assistant", "uuid": "carol-a1", "sessionId": "carol-secret-session",
         "timestamp": "2026-11-21T10:00:05Z",
         "message": {"id": "msg_carol_1", "model": "carol-model", "content": [{"type": "text", "text": "ok"}],
                     "usage": {"input_tokens": 7001, "output_tokens": 7002}}},
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def form(name: str, data: bytes) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field("file", io.BytesIO(data), filename=name, content_type="application/octet-stream")
    return fd


@pytest.fixture
async def world(client, db, settings):
    """Three users with their own uploads, tables, local CLAUDE.md and state; returns (callers, markers, stats)."""
    client.app[keys.CLOCK].fixed = NOW
    callers = {n: await make_caller(db, f"{n}@example.com", name=f"{n.title()} Q{n.upper()}") for n in NAMES}
    table_dir = Path(settings.data_dir) / "tables"
    table_dir.mkdir(parents=True)
    for n in NAMES:
        (table_dir / f"{n}.csv").write_bytes(f"id,owner\n1,{n.upper()}-TABLE-CONTENT\n".encode())
        await tables.register(db, f"{n}_only", f"tables/{n}.csv", rows=1)
        await tables.grant(db, f"{n}_only", callers[n].user.id)
    (table_dir / "everyone.csv").write_bytes(b"id\n1\n")
    await tables.register(db, "everyone", "tables/everyone.csv", rows=1, public=True)

    uploads = {
        "alice": [(p.name, p.read_bytes()) for p in sorted((SAMPLES / "alice").glob("*.jsonl"))],
        "bob": [(p.name, p.read_bytes()) for p in sorted((SAMPLES / "bob").glob("*.jsonl"))],
        "carol": [("carol.jsonl", carol_transcript())],
    }
    # The same file name as alice's, other content; and a session identical to one of alice's.
    uploads["carol"].append(("3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl", carol_transcript()))
    uploads["bob"].append(("copied.jsonl", (SAMPLES / "alice" / "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl")
                           .read_bytes()))
    stats: dict[str, dict] = {}
    for n in NAMES:  # one user at a time, each user's numbers recorded right after their own uploads
        for name, data in uploads[n]:
            resp = await client.post("/api/upload/sessions", data=form(name, data), headers=callers[n].headers)
            assert resp.status == 200, await resp.text()
        await client.app[keys.WORKER].drain()
        resp = await client.post("/api/upload/local-md", json={"content": f"{n.upper()}-LOCAL-MD"},
                                 headers=callers[n].headers)
        assert resp.status == 200
        stats[n] = {w: await (await client.get(f"/api/me/home-stats?window={w}", headers=callers[n].headers)).json()
                    for w in ("24h", "7d")}
    # State changes by one user: alice pulls (stamps her last pull), carol offboards herself.
    assert (await client.get("/api/sync/manifest", headers=callers["alice"].headers)).status == 200
    resp = await client.post("/api/me/onboarded", json={"source": "self_unmark", "onboarded": False},
                             headers=callers["carol"].headers)
    assert resp.status == 200
    markers = {n: [f"{n}@example.com", f"{n.title()} Q{n.upper()}", f"{n.upper()}-TABLE-CONTENT", f"{n}_only",
                   f"{n.upper()}-LOCAL-MD", f"/home/{n}/"] for n in NAMES}
    markers["carol"] += ["carol-secret-session", "msg_carol_1", "carol-model", "7001"]
    return callers, markers, stats


def routes() -> list[tuple[str, str]]:
    """Every authenticated GET/HEAD of the API, each table's download, and the pages."""
    found = []
    for path, ops in PATHS.items():
        for method, op in ops.items():
            if method in ("get", "head") and op.get("security") != [] and "{table_id}" not in path:
                found.append((method.upper(), path))
    for table_id in ("alice_only", "bob_only", "carol_only", "everyone"):
        found += [("GET", f"/api/data/{table_id}/download"), ("HEAD", f"/api/data/{table_id}/download")]
    found += [("GET", "/home"), ("GET", "/home?window=7d"), ("GET", "/api/me/home-stats?window=7d"),
              ("GET", "/api/welcome?server_url=https://agnes.example")]
    return found


async def fetch_all(client, headers: dict[str, str]) -> dict[tuple[str, str], tuple[int, str]]:
    seen = {}
    for method, path in routes():
        resp = await client.request(method, path, headers=headers, allow_redirects=False)
        body = await resp.read()
        seen[(method, path)] = (resp.status, body.decode("utf-8", "replace") + "\n" + "\n".join(
            f"{k}: {v}" for k, v in resp.headers.items()))
        if method == "GET" and path.startswith("/api/data/"):
            ranged = await client.get(path, headers={**headers, "Range": "bytes=0-200"})
            seen[("RANGE", path)] = (ranged.status, (await ranged.read()).decode("utf-8", "replace"))
    return seen


def body(seen: dict, path: str):
    status, text = seen[("GET", path)]
    assert status == 200, (path, status)
    return json.loads(text.split("\n", 1)[0])


def check(name: str, seen: dict, markers: dict, stats: dict, own_id: int) -> None:
    for (method, path), (status, text) in seen.items():
        for other in NAMES:
            if other == name:
                continue
            for marker in markers[other]:
                if marker in path:
                    continue  # the caller's own words echoed back ("No table 'bob_only' is available to you.")
                assert marker not in text, f"{name} saw {other}'s {marker!r} on {method} {path}"
        if path.startswith("/api/data/"):
            mine = path.split("/")[3] in (f"{name}_only", "everyone")
            assert status == ((200 if method != "RANGE" else 206) if mine else 404), (name, method, path, status)
    # Their own data, exactly. Before this user's own manifest call (fetched after /api/me) only
    # alice had pulled; the manifest stamps the caller, so last pulls are left out of the numbers.
    profile = body(seen, "/api/me")
    assert (profile["id"], profile["email"]) == (own_id, f"{name}@example.com")
    assert (profile["last_pull_at"] is not None) == (name == "alice")
    for window, path in (("24h", "/api/me/home-stats"), ("7d", "/api/me/home-stats?window=7d")):
        assert {**body(seen, path), "last_pull_at": None} == {**stats[name][window], "last_pull_at": None}
    manifest = body(seen, "/api/sync/manifest")
    assert sorted(manifest["tables"]) == sorted([f"{name}_only", "everyone"])
    catalog = body(seen, "/api/catalog/tables")
    assert sorted(t["id"] for t in catalog["tables"]) == sorted([f"{name}_only", "everyone"])
    status, page = seen[("GET", "/home")]
    assert status == 200 and f"{name}@example.com" in page
    status, data = seen[("RANGE", f"/api/data/{name}_only/download")]
    assert f"{name.upper()}-TABLE-CONTENT" in data


async def test_no_route_shows_another_users_data_by_token(client, db, world):
    callers, markers, stats = world
    # Alice's numbers are exactly those of her samples: nobody else's uploads (bob's copy of one of
    # her sessions, carol's file under one of her file names) moved them.
    assert stats["alice"] == {w: expected_stats("alice", w) for w in ("24h", "7d")}
    for name in NAMES:
        check(name, await fetch_all(client, callers[name].headers), markers, stats, callers[name].user.id)


async def test_no_route_shows_another_users_data_by_cookie(client, db, world):
    callers, markers, stats = world
    for name in NAMES:
        client.session.cookie_jar.clear()
        resp = await client.post("/login", data={"token": callers[name].token}, allow_redirects=False)
        assert resp.status == 303
        seen = await fetch_all(client, {})
        for (method, path), (status, text) in seen.items():
            for other in NAMES:
                if other != name:
                    for marker in markers[other]:
                        assert marker in path or marker not in text, \
                            f"{name} (cookie) saw {other}'s {marker!r} on {method} {path}"
        assert body(seen, "/api/me")["email"] == f"{name}@example.com"
        # A bearer token beats the cookie: bob's token with alice's cookie is bob, and only bob.
        other = NAMES[(NAMES.index(name) + 1) % 3]
        me = await (await client.get("/api/me", headers=callers[other].headers)).json()
        assert me["email"] == f"{other}@example.com"


async def test_one_users_writes_change_no_one_elses_state(client, db, settings, world):
    callers, markers, stats = world
    alice, bob, carol = (callers[n] for n in NAMES)
    # Alice's pull stamped her, and only her; carol's offboarding is hers alone.
    assert (await users.get_user(db, alice.user.id)).last_pull_at is not None
    assert (await users.get_user(db, bob.user.id)).last_pull_at is None
    assert [(await users.get_user(db, c.user.id)).onboarded for c in (alice, bob, carol)] == [True, True, False]
    for n in NAMES:
        assert await tables.local_md(db, callers[n].user.id) == f"{n.upper()}-LOCAL-MD"
    # Same file name, two users: two files, each in its owner's directory, each with its owner's bytes.
    name = "3f2a9c1e-5b7d-4e8a-9c0f-1a2b3c4d5e6f.jsonl"
    sessions = Path(settings.data_dir) / "sessions"
    assert (sessions / str(alice.user.id) / name).read_bytes() == (SAMPLES / "alice" / name).read_bytes()
    assert (sessions / str(carol.user.id) / name).read_bytes() == carol_transcript()
    owners = await db.fetchall("SELECT user_id, path FROM session_files")
    for row in owners:
        assert Path(row["path"]).parent == sessions / str(row["user_id"])
    # Summaries belong to the uploader, and a user's numbers come from their own rows only.
    rows = await db.fetchall("SELECT s.user_id, f.user_id AS owner FROM session_summaries s "
                             "JOIN session_files f ON f.id = s.file_id")
    assert rows and all(r["user_id"] == r["owner"] for r in rows)
    # Bob re-uploads his copy of alice's session: alice's numbers do not move.
    before = await (await client.get("/api/me/home-stats?window=7d", headers=alice.headers)).json()
    resp = await client.post("/api/upload/sessions", data=form("copied.jsonl", (SAMPLES / "alice" / name).read_bytes()
                                                               + b"\n"), headers=bob.headers)
    assert resp.status == 200
    await client.app[keys.WORKER].drain()
    assert await (await client.get("/api/me/home-stats?window=7d", headers=alice.headers)).json() == before
    carol_now = await (await client.get("/api/me/home-stats?window=7d", headers=carol.headers)).json()
    assert carol_now == stats["carol"]["7d"]
