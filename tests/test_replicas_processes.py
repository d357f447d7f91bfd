"""compose.yaml and real replicas (issue 23, items 5 and 6): the file is checked against the README and
the Dockerfile, and the replicas' exact commands run here as `agnes-home serve` processes on one
PostgreSQL database and one data directory (no Docker engine needed). Select with ``-m replicas``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from service.postgres import PostgresDatabase
from service.store import users
from tests import pg
from tests.conftest import ingest_files, make_corpus, sample_files
from tests.test_cli import free_port
from tests.test_dockerfile import exec_form, one

pytestmark = [pytest.mark.replicas, pytest.mark.postgresql]

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
README = (ROOT / "README.md").read_text()


def replica_services() -> dict[str, dict]:
    return {name: spec for name, spec in COMPOSE["services"].items() if "build" in spec}


def test_compose_runs_postgresql_and_two_replicas_sharing_one_data_volume():
    services = COMPOSE["services"]
    assert services["postgres"]["image"].split(":")[0] == "postgres"  # the official image
    replicas = replica_services()
    assert len(replicas) == 2
    first, second = replicas.values()
    assert first["environment"] == second["environment"] and first["volumes"] == second["volumes"]
    env = first["environment"]
    assert env["AGNES_DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["AGNES_DATABASE_URL"]
    [volume] = first["volumes"]
    name, mount = volume.split(":")[:2]
    assert name in COMPOSE["volumes"] and env["AGNES_DATA_DIR"].startswith(mount)
    assert first["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert {s["ports"][0] for s in replicas.values()} == {"8081:8080", "8082:8080"}
    # The README tells the same story: its section names the file, every variable it sets, and the commands.
    section = README.split("### Several replicas on PostgreSQL", 1)[1].split("\n### ", 1)[0]
    assert "compose.yaml" in section and "docker compose up" in section and "copy-database" in section
    for key in env:
        assert f"`{key}`" in README, f"{key} is set in compose.yaml but not documented in the README"
    for shared in ("AGNES_DATABASE_URL", "AGNES_DATA_DIR", "AGNES_SECRET_KEY", "AGNES_PARSE_WORKERS", "/readyz"):
        assert shared in section


def _expand(value: str, given: dict[str, str]) -> str:
    """Compose's ${NAME} and ${NAME:?message} from ``given``."""
    return re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", lambda m: given[m.group(1)], value)


def replica_command(name: str, url: str, data_dir: Path, port: int, **extra: str) -> tuple[list[str], dict]:
    """The compose service's command (the image's ENTRYPOINT + its command) and environment (the
    image's ENV, then the service's), with the database, the shared volume and the port moved here."""
    spec = replica_services()[name]
    command = exec_form(one("ENTRYPOINT")) + spec["command"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGNES_")}
    for assignment in shlex.split(one("ENV")):
        key, _, value = assignment.partition("=")
        if key.startswith("AGNES_"):
            env[key] = value
    env.update({k: _expand(str(v), {"POSTGRES_PASSWORD": "pw", "AGNES_SECRET_KEY": "replica-secret"})
                for k, v in spec["environment"].items()})
    assert env["AGNES_DATABASE_URL"].startswith("postgresql://agnes:pw@postgres:5432/")
    mount = spec["volumes"][0].split(":")[1]
    env.update(AGNES_DATABASE_URL=url, AGNES_HOST="127.0.0.1", AGNES_PORT=str(port),
               AGNES_DATA_DIR=str(data_dir / os.path.relpath(env["AGNES_DATA_DIR"], mount)),
               AGNES_DB_PATH=str(data_dir / "unused.db"), TMPDIR=str(data_dir.parent), **extra)
    return [str(Path(sys.executable).parent / command[0]), *command[1:]], env


class Replica:
    """One `agnes-home serve` process, as compose would start it."""

    def __init__(self, name: str, url: str, data_dir: Path, log: Path, **extra: str) -> None:
        self.port = free_port()
        self.command, self.env = replica_command(name, url, data_dir, self.port, **extra)
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Replica:
        with open(self.log, "a") as fh:
            self.proc = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=fh, stderr=fh)
        return self

    def get(self, path: str, token: str | None = None, timeout: float = 5) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def upload(self, token: str, name: str, data: bytes) -> int:
        boundary = "agnesboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/upload/sessions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0  # refused or reset: not accepted

    def ready(self, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.get("/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not ready within {within} s: {self.log.read_text()[-3000:]}"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


async def _people(url: str, *emails: str) -> dict[str, tuple[int, str]]:
    db = PostgresDatabase(url, pool_size=1)
    await db.open()
    try:
        found = {}
        for email in emails:
            user = await users.add_user(db, email, email.split("@")[0].title(), True)
            found[email.split("@")[0]] = (user.id, (await users.issue_token(db, user.id))[0])
        return found
    finally:
        await db.close()


async def _pg(url: str, sql: str):
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


def test_the_compose_replicas_serve_one_database_and_see_each_other_s_uploads(pg_url, tmp_path):
    people = asyncio.run(_people(pg_url, "bob@example.com"))
    _, token = people["bob"]
    data_dir = tmp_path / "volume"
    one_, two = (Replica(name, pg_url, data_dir, tmp_path / f"{name}.log").start() for name in replica_services())
    try:
        one_.ready()
        two.ready()
        empty = two.get("/api/me/sessions", token)
        for path in sample_files("bob"):
            assert one_.upload(token, Path(path).name, Path(path).read_bytes()) == 200
        deadline = time.monotonic() + 20
        while two.get("/api/me/sessions", token) == empty:
            assert time.monotonic() < deadline, "the upload to one replica never showed on the other"
            time.sleep(0.2)
        # A token revoked by the operator's command fails on every replica within a second.
        assert one_.get("/api/me", token)[0] == two.get("/api/me", token)[0] == 200  # cached on both now
        env = dict(one_.env, AGNES_LOG_LEVEL="WARNING")
        subprocess.run([one_.command[0], "tokens", "revoke", "--email", "bob@example.com"], env=env, check=True,
                       capture_output=True, timeout=30)
        revoked = time.monotonic()
        while one_.get("/api/me", token)[0] != 401 or two.get("/api/me", token)[0] != 401:
            assert time.monotonic() - revoked < 1.0, "a revoked token still worked after a second"
            time.sleep(0.02)
    finally:
        codes = [one_.stop(), two.stop()]
    assert codes == [0, 0]


# -- a replica killed mid-ingest, the database restarted under load (a throwaway cluster) -----------

AUDIT = """
CREATE TABLE test_audit (file_id BIGINT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION test_audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO test_audit (file_id) VALUES (NEW.file_id); RETURN NEW; END $$;
CREATE TRIGGER test_audit AFTER INSERT OR UPDATE ON session_summaries FOR EACH ROW EXECUTE FUNCTION test_audit_write();
"""


@pytest.fixture
def cluster():
    """A PostgreSQL cluster of this test's own (it is restarted: never the machine's shared server)."""
    try:
        started = pg.start_cluster()
    except pg.Unavailable as exc:
        pytest.skip(f"no throwaway PostgreSQL cluster: {exc}")
    try:
        yield started
    finally:
        started.stop()


def _restart(cluster: pg.Cluster) -> None:
    # With a log file: the server must not inherit a pipe of ours (the run would wait for it to close).
    log = os.path.join(os.path.dirname(cluster.datadir), "log")
    subprocess.run([*cluster.as_user, f"{cluster.bindir}/pg_ctl", "-D", cluster.datadir, "-m", "fast", "-w",
                    "-t", "30", "-l", log, "restart"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


# The samples are of late November 2026: the activity views' longer ranges hold them whatever today is.
VIEWS = ("/api/me/activity?range=90d", "/api/me/sessions", "/api/me/home-stats?window=7d")


@pytest.mark.timeout(180)
def test_replicas_share_a_filling_watched_directory_survive_a_kill_and_a_database_restart(cluster, tmp_path):
    url = pg.with_database(cluster.url, "postgres")
    from service.migrations import migrate_postgres

    async def setup() -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await migrate_postgres(conn)
            await conn.execute(AUDIT)
        finally:
            await conn.close()

    asyncio.run(setup())
    people = asyncio.run(_people(url, "alice@example.com", "bob@example.com"))
    source = tmp_path / "corpus"
    watched_total = make_corpus(source / "alice", copies=6, pad=1_000_000)
    uploads = make_corpus(source / "bob", copies=4, pad=1_000_000)
    watched = tmp_path / "watched" / "alice"
    watched.mkdir(parents=True)
    data_dir = tmp_path / "volume"
    extra = dict(AGNES_SESSION_DIR=str(tmp_path / "watched"), AGNES_SCAN_INTERVAL="0.5", AGNES_CLAIM_LEASE="3",
                 AGNES_LOG_FORMAT="json")
    names = list(replica_services())
    one_, two = (Replica(name, url, data_dir, tmp_path / f"{name}.log", **extra).start() for name in names)
    accepted: list[Path] = []
    token = people["bob"][1]
    try:
        one_.ready()
        two.ready()
        pending_watch = sorted((source / "alice").iterdir())
        pending_uploads = sorted((source / "bob").iterdir())

        def feed(count: int, target: Replica) -> None:
            for _ in range(count):
                if pending_watch:
                    src = pending_watch.pop()
                    (watched / src.name).write_bytes(src.read_bytes())
                if pending_uploads:
                    src = pending_uploads[-1]
                    if target.upload(token, src.name, src.read_bytes()) == 200:
                        accepted.append(pending_uploads.pop())

        feed(4, one_)
        feed(4, two)
        # Kill one replica while it has a file in hand (its claims carry its process id).
        asyncio.run(_wait_for(url, f"SELECT COUNT(*) FROM ingest_queue WHERE claimed_by LIKE '%:{one_.proc.pid}:%'",
                              1, 20, every=0.005))
        one_.kill()
        killed_holding = asyncio.run(_pg(url, "SELECT file_id FROM ingest_queue WHERE claimed_by LIKE "
                                              f"'%:{one_.proc.pid}:%'"))
        feed(4, two)
        _restart(cluster)  # the database goes away under load and comes back
        feed(4, two)
        one_.start()
        one_.ready()
        two.ready()  # recovered without a restart of its own
        while pending_watch or pending_uploads:
            feed(2, one_)
            feed(2, two)
        total = watched_total + len(accepted)
        assert len(accepted) == uploads
        asyncio.run(_wait_for(url, "SELECT COUNT(*) FROM session_files WHERE processed_at IS NOT NULL "
                                   "AND content_hash IS NOT NULL", total, 90))
        asyncio.run(_wait_for(url, "SELECT -COUNT(*) FROM ingest_queue", 0, 30))
        written = asyncio.run(_pg(url, "SELECT file_id, COUNT(*) AS n FROM test_audit GROUP BY file_id"))
        assert len(written) == total and {r["n"] for r in written} == {1}  # no file processed twice
        assert killed_holding  # the kill came mid-file: that file was finished by a replica after
        served = {name: {path: two.get(path, people[name][1]) for path in VIEWS} for name in ("alice", "bob")}
    finally:
        one_.kill()
        two.kill()
    reference = asyncio.run(_reference(tmp_path, {"alice": sorted((source / "alice").iterdir()), "bob": accepted}))
    assert served == reference
    assert all(status == 200 for views in served.values() for status, _ in views.values())
    assert served["bob"]["/api/me/sessions"][1]["sessions"] and served["alice"]["/api/me/sessions"][1]["sessions"]


async def _wait_for(url: str, sql: str, at_least: int, within: float, every: float = 0.1) -> None:
    import asyncpg

    deadline = time.monotonic() + within
    while True:
        try:
            conn = await asyncpg.connect(url)
            try:
                if await conn.fetchval(sql) >= at_least:
                    return
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass
        assert time.monotonic() < deadline, f"{sql} did not reach {at_least} within {within} s"
        await asyncio.sleep(every)


async def _reference(tmp_path: Path, files: dict[str, list[Path]]) -> dict:
    """home-stats of one clean single ingest of the same files (SQLite, in-process, as of now)."""
    from aiohttp.test_utils import TestClient, TestServer

    from service.app import create_app
    from service.config import load_settings
    from service import keys

    settings = load_settings(environ={}, db_path=str(tmp_path / "ref.db"), data_dir=str(tmp_path / "ref"),
                             secret_key="s", parse_workers=0, scan_interval=3600)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        db = client.app[keys.DB]
        found = {}
        for name, paths in files.items():
            user = await users.add_user(db, f"{name}@example.com", name.title(), True)
            token, _ = await users.issue_token(db, user.id)
            await ingest_files(db, user.id, [str(p) for p in paths])
            found[name] = {}
            for path in VIEWS:
                resp = await client.get(path, headers={"Authorization": f"Bearer {token}"})
                found[name][path] = (resp.status, await resp.json())
        return found
    finally:
        await client.close()

