"""Shared fixtures: a fresh settings object, app and client per test, on a real database.

``settings`` (and so ``client``, ``db``, ``alice``...) runs each test twice: on a SQLite file and on
its own PostgreSQL database (tests/pg.py finds or starts the server). A test that is about SQLite
itself (its file, WAL, locks, data_version) says so with ``@pytest.mark.sqlite_only``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from pathlib import Path

import msgspec
import pytest

from service import keys
from service.app import create_app
from service.config import load_settings
from service.ingest import bulk
from service.store import users
from service.timeutil import from_store

from tests import pg

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SAMPLES = SHARED / "samples"
EXPECTED = json.loads((SAMPLES / "expected.json").read_text())
NOW = from_store(EXPECTED["now"])  # the moment expected.json's windows are computed at
SAMPLE_USERS = tuple(sorted(EXPECTED["users"]))  # alice, bob and carol (FORMAT.md revision 2)


def sample_files(user: str) -> list[str]:
    return sorted(str(p) for p in (SAMPLES / user).glob("*.jsonl"))


def expected_stats(user: str, window: str) -> dict:
    return {**EXPECTED["users"][user][window], "last_pull_at": None}


_ID_PREFIX = re.compile(rb"\b([0-9a-f]{8})-")


def make_corpus(owner_dir: Path, copies: int, pad: int) -> int:
    """`copies` distinct variants of alice's samples (new session, line and message ids); returns the file count."""
    owner_dir.mkdir(parents=True)
    sources = sorted((SAMPLES / "alice").glob("*.jsonl"))
    for i in range(copies):
        for src in sources:
            data = _ID_PREFIX.sub(lambda m: b"%08x-" % (int(m.group(1), 16) ^ (i + 1)), src.read_bytes())
            data = data.replace(b'"msg_', b'"msg_k%d_' % i).replace(b'"att-1"', b'"att-k%d"' % i)
            # Tool output padding: parse time, so that kills find the worker busy.
            data += b'{"type":"progress","data":"' + b"p" * pad + b'"}\n'
            (owner_dir / f"{i:04d}-{src.name}").write_bytes(data)
    return copies * len(sources)


async def ingest_files(db, user_id: int, paths: list[str]) -> bulk.Report:
    """Ingest files for one user through the real pipeline (parse in a thread), as of NOW."""
    return await bulk.ingest_paths(db, user_id, paths, workers=0, clock=lambda: NOW)


class Caller(msgspec.Struct):
    user: users.User
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


BACKENDS = ("sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql))


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: about SQLite itself; not run on PostgreSQL")
    config.addinivalue_line("markers", "postgresql: the PostgreSQL half of a test (needs a server: tests/pg.py)")
    config.addinivalue_line("markers", "replicas: real `agnes-home serve` replicas on one PostgreSQL (-m replicas)")


def pytest_collection_modifyitems(config, items):
    """A sqlite_only test has no PostgreSQL half."""
    keep, drop = [], []
    for item in items:
        backend = getattr(item, "callspec", None) and item.callspec.params.get("backend")
        (drop if backend == "postgresql" and item.get_closest_marker("sqlite_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


_PG_STATE: dict = {}


def _pg_missing(why: str) -> None:
    message = f"PostgreSQL unavailable, the PostgreSQL half of the suite is SKIPPED: {why}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    _PG_STATE["skipped"] = message
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter):
    """The skipped PostgreSQL half, once and loudly at the end (output during tests is captured)."""
    if message := _PG_STATE.get("skipped"):
        terminalreporter.write_sep("!", f"WARNING: {message}", red=True, bold=True)


@pytest.fixture(scope="session")
def pg_server():
    """(server URL, migrated template's name) for this run, or the test is skipped (CI=true: fails)."""
    try:
        url, cluster = pg.find_server()
    except pg.Unavailable as exc:
        _PG_STATE["why"] = str(exc)
        url, cluster = None, None
    if url is None:
        yield None
        return
    template = pg.migrated_template(url)
    try:
        yield url, template
    finally:
        for name in _PG_STATE.pop("made", []):
            pg.drop_database(url, name)
        _PG_STATE.pop("shared", None)
        pg.drop_database(url, template)
        if cluster is not None:
            cluster.stop()


@pytest.fixture
def empty_pg(pg_server):
    """A new, empty PostgreSQL database (no schema) on the suite's server: its URL."""
    if pg_server is None:
        pytest.skip("no PostgreSQL")
    server, _ = pg_server
    name = f"{pg.PREFIX}empty_{time.monotonic_ns()}"
    url = pg.create_database(server, name)
    yield url
    pg.drop_database(server, name)


_DB_NUMBER = itertools.count(1)


@pytest.fixture
def pg_url(pg_server):
    """A PostgreSQL database at the latest schema with no rows, for one test."""
    if pg_server is None:
        _pg_missing(_PG_STATE.get("why", "no server"))
    server, template = pg_server
    url = _PG_STATE.get("shared")
    if url is None or not pg.reset_database(url):
        url = _PG_STATE["shared"] = pg.create_database(server, f"{pg.PREFIX}{next(_DB_NUMBER)}", template)
        _PG_STATE.setdefault("made", []).append(url.rsplit("/", 1)[1])
    return url


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(request, backend) -> str:
    """'' on SQLite; the test's own PostgreSQL database otherwise."""
    return request.getfixturevalue("pg_url") if backend == "postgresql" else ""


@pytest.fixture
def settings(tmp_path, database_url):
    return load_settings(environ={}, db_path=str(tmp_path / "agnes.db"), data_dir=str(tmp_path / "data"),
                         secret_key="test-secret", parse_workers=0, admin_emails=["ops@example.com"],
                         database_url=database_url)


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def db(client):
    return client.app[keys.DB]


async def make_caller(db, email: str, onboarded: bool = True, name: str = "") -> Caller:
    user = await users.add_user(db, email, name or email.split("@")[0].title(), onboarded)
    token, _ = await users.issue_token(db, user.id)
    return Caller(user, token)


@pytest.fixture
async def alice(db) -> Caller:
    return await make_caller(db, "alice@example.com", name="Alice")


@pytest.fixture
async def bob(db) -> Caller:
    return await make_caller(db, "bob@example.com", name="Bob")
