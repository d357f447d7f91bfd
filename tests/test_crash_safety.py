"""SIGKILL at random moments of a bulk ingest by the real server: nothing is lost, half-written or corrupt.

Also the helpers the other real-server tests use (test_load.py, test_openapi.py): a transcript
corpus, users and tokens seeded straight into the database, and a server process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from service.db import Database
from service.migrations import migrate
from service.store import tables, users
from tests.conftest import make_corpus
from tests.test_cli import ROOT, cli_env, free_port, run
from tests.test_shutdown import half_written



def seed(home: Path, emails: list[str], *, onboarded: bool = True) -> dict[str, str]:
    """Users and one token each, written straight into home/cli.db (what `users add` + `tokens issue` do)."""
    async def go() -> dict[str, str]:
        db = Database(str(home / "cli.db"), readers=1)
        await db.open()
        try:
            await migrate(db.writer)
            found = {}
            for email in emails:
                user = await users.add_user(db, email, email.split("@")[0].title(), onboarded)
                found[email], _ = await users.issue_token(db, user.id)
            return found
        finally:
            await db.close()
    return asyncio.run(go())


def seed_table(home: Path, table_id: str, content: bytes, *, grant: list[str] = (), public: bool = False) -> None:
    path = home / "data" / "tables" / f"{table_id}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)

    async def go() -> None:
        db = Database(str(home / "cli.db"), readers=1)
        await db.open()
        try:
            await tables.register(db, table_id, f"tables/{table_id}.csv", rows=content.count(b"\n") - 1,
                                  public=public)
            for email in grant:
                await tables.grant(db, table_id, (await users.get_user_by_email(db, email)).id)
        finally:
            await db.close()
    asyncio.run(go())


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excluded), read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


class Server:
    """`agnes-home serve` as a process of its own group, logging to a file (a pipe would fill and block it)."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = home / f"serve-{self.port}.log"
        environ = cli_env(home, AGNES_PORT=str(self.port), AGNES_SECRET_KEY="test-secret", **env)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT, env=environ,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}: {self.tail()}"
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"server not ready: {self.tail()}"
            time.sleep(0.05)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        """SIGKILL the server process alone (its helpers must notice and go by themselves)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def reap_group(self) -> None:
        """Last resort for the test's own process group: nothing it started outlives it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def upload(base: str, token: str, name: str, data: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(base + "/api/upload/sessions", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def one_session(session_id: str) -> bytes:
    lines = [{"type": "user", "uuid": f"{session_id}-u", "sessionId": session_id, "timestamp": "2026-11-21T09:00:00Z",
              "cwd": "/home/bob/crash", "message": {"role": "user", "content": "still there?"}},
             {"type": "assistant", "uuid": f"{session_id}-a", "sessionId": session_id,
              "timestamp": "2026-11-21T09:00:02Z",
              "message": {"id": f"msg_{session_id}", "model": "m", "content": [{"type": "text", "text": "yes"}],
                          "usage": {"input_tokens": 4, "output_tokens": 9}}}]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def db_state(db: Path) -> dict:
    """Everything the numbers come from, per user email; checks integrity on the way."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        per_user = {}
        for user_id, email in conn.execute("SELECT id, email FROM users ORDER BY email").fetchall():
            q = lambda sql: conn.execute(sql, (user_id,)).fetchall()  # noqa: E731
            per_user[email] = {
                "summaries": q("SELECT COUNT(*), SUM(prompts), SUM(user_messages), SUM(assistant_messages), "
                               "SUM(tool_calls), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), "
                               "SUM(cache_creation_tokens), SUM(skipped_lines), COUNT(DISTINCT session_id) "
                               "FROM session_summaries WHERE user_id = ?"),
                "messages": q("SELECT COUNT(*), COUNT(DISTINCT message_key), SUM(output_tokens) "
                              "FROM activity_messages WHERE user_id = ?"),
                "prompts": q("SELECT COUNT(*), COUNT(DISTINCT prompt_key) FROM activity_prompts WHERE user_id = ?"),
                "events": q("SELECT event_type, COUNT(*) FROM usage_events WHERE user_id = ? GROUP BY 1 ORDER BY 1"),
            }
        return {"users": per_user,
                "tool_daily": conn.execute("SELECT * FROM usage_tool_daily ORDER BY 1, 2, 3").fetchall(),
                "plugin_daily": conn.execute("SELECT * FROM usage_plugin_daily ORDER BY 1, 2, 3").fetchall()}


def progress(db: Path) -> tuple[int, int, int]:
    """(watched files processed, uploads processed, rollup days still dirty)."""
    if not db.exists():
        return 0, 0, 0
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            watched = conn.execute("SELECT COUNT(*) FROM session_files WHERE origin = 'watch' "
                                   "AND processor_version > 0").fetchone()[0]
            uploads = conn.execute("SELECT COUNT(*) FROM session_files WHERE origin = 'upload' "
                                   "AND processor_version > 0").fetchone()[0]
            dirty = conn.execute("SELECT COUNT(*) FROM rollup_dirty_days").fetchone()[0]
        except sqlite3.OperationalError:  # killed before the schema existed
            return 0, 0, 0
    return watched, uploads, dirty


COPIES, PAD = 80, 30_000
KILLS_MID_INGEST, KILLS_AT_START = 10, 3


def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    started = time.monotonic()
    rng = random.Random(20261124)
    watched = tmp_path / "watched"
    files = make_corpus(watched / "alice", COPIES, PAD)
    tokens = seed(tmp_path, ["alice@example.com", "bob@example.com"])
    db = tmp_path / "cli.db"
    env = {"AGNES_SESSION_DIR": str(watched), "AGNES_SCAN_INTERVAL": "0.2", "AGNES_PARSE_WORKERS": "1",
           "AGNES_LOG_LEVEL": "WARNING"}

    # Ten kills at random points of the ingest (when the processed count passes a random target,
    # plus a random few ms), three more at random moments of start-up (imports, migrations, first
    # scan). Before each mid-ingest kill, bob uploads a session: answered 200, it must survive.
    targets = sorted(rng.sample(range(1, files * 3 // 4), KILLS_MID_INGEST))
    plan = [("mid", t) for t in targets]
    for _ in range(KILLS_AT_START):
        plan.insert(rng.randrange(len(plan) + 1), ("start", rng.uniform(0.05, 0.8)))
    accepted: list[str] = []
    kills = []
    for n, (mode, value) in enumerate(plan):
        server = Server(tmp_path, **env)
        try:
            if mode == "start":
                time.sleep(value)
            else:
                # Past the target, and at least a few files into this life: the parse process is up
                # and the worker is writing when the kill comes.
                goal = max(value, progress(db)[0] + rng.randint(1, 8))
                server.wait_ready()
                deadline = time.monotonic() + 30
                while progress(db)[0] < goal:
                    assert server.proc.poll() is None, server.tail()
                    assert time.monotonic() < deadline, f"stuck below {goal}: {progress(db)}"
                    time.sleep(0.005)
                name = f"crash-{n:02d}.jsonl"
                if upload(server.base, tokens["bob@example.com"], name, one_session(f"crash-{n:02d}")) == 200:
                    accepted.append(name)
                time.sleep(rng.uniform(0, 0.02))
            before = progress(db)[0]
            server.kill()
            kills.append((mode, before))
            # The parse process and the forkserver must not outlive the killed server.
            deadline = time.monotonic() + 5
            while group_members(server.proc.pid):
                assert time.monotonic() < deadline, f"left behind: {group_members(server.proc.pid)}"
                time.sleep(0.05)
        finally:
            server.reap_group()
        assert half_written(db) == [], f"after kill {n} ({mode})"
        db_state(db)  # integrity_check and foreign keys, after every kill

    mid = [done for mode, done in kills if mode == "mid"]
    assert len(kills) == KILLS_MID_INGEST + KILLS_AT_START and all(0 < done < files for done in mid), (kills, targets)
    assert len(accepted) == KILLS_MID_INGEST

    server = Server(tmp_path, **env)
    try:
        deadline = time.monotonic() + 60
        while progress(db) != (files, len(accepted), 0):
            assert time.monotonic() < deadline, f"final run stuck at {progress(db)} of {files}"
            assert server.proc.poll() is None, server.tail()
            time.sleep(0.1)
        assert server.stop() == 0, server.tail()
    finally:
        server.reap_group()
    after_crashes = db_state(db)

    # The same corpus and uploads, ingested once into a fresh database.
    clean = tmp_path / "clean"
    clean.mkdir()
    seed(clean, ["alice@example.com", "bob@example.com"])
    report = json.loads(run(clean, "ingest", str(watched / "alice"), "--user", "alice@example.com", "--json").stdout)
    assert report["processed"] == files and report["failed"] == 0
    bob_dir = tmp_path / "data" / "sessions" / "2"
    assert sorted(p.name for p in bob_dir.iterdir() if not p.name.startswith(".")) == accepted
    report = json.loads(run(clean, "ingest", str(bob_dir), "--user", "bob@example.com", "--json").stdout)
    assert report["processed"] == len(accepted)
    assert after_crashes == db_state(clean / "cli.db")
    alice = after_crashes["users"]["alice@example.com"]
    assert alice["summaries"][0][0] == files and alice["prompts"][0][1] == COPIES * 12
    assert after_crashes["users"]["bob@example.com"]["prompts"][0][1] == len(accepted)
    elapsed = time.monotonic() - started
    print(f"{len(kills)} SIGKILLs ({KILLS_MID_INGEST} mid-ingest at {mid}), {len(accepted)} uploads kept, "
          f"{elapsed:.1f}s")
    assert elapsed < 90
