"""A PostgreSQL server for the suite's PostgreSQL half, found or started once per test run.

In order: the server named by AGNES_TEST_DATABASE_URL; one listening on 127.0.0.1:5432; a throwaway
cluster started from Debian's ``postgresql`` packages (installed with apt-get when root and missing;
initdb refuses to run as root, so the cluster runs as the ``postgres`` user); else none, and the
PostgreSQL half is skipped with a loud warning, or fails the run when CI=true.

Tests share one database made from a migrated template, emptied before each test (TRUNCATE ... RESTART
IDENTITY: tens of milliseconds, where creating and dropping a database per test cost about a second).
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import asyncpg

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = f"agnes_t_{os.getpid()}_"  # databases of this run; shared servers hold others' too


class Unavailable(Exception):
    """No PostgreSQL for the tests; the message says why."""


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _answers(url: str, timeout: float = 3.0) -> None:
    conn = await asyncpg.connect(url, timeout=timeout)
    await conn.close()


def answers(url: str) -> str | None:
    """None when a server takes connections at url, else why not."""
    try:
        asyncio.run(_answers(url))
        return None
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Cluster:
    """A throwaway cluster this run started (stopped and deleted at the end)."""

    bindir: str
    datadir: str
    port: int
    as_user: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run([*self.as_user, f"{self.bindir}/pg_ctl", "-D", self.datadir, "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(os.path.dirname(self.datadir), ignore_errors=True)


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster() -> Cluster:
    """initdb and start a cluster in a temporary directory on a free port (Raises Unavailable)."""
    bindir = _bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
                       capture_output=True, env=env, check=False)
        bindir = _bindir()
    if bindir is None:
        raise Unavailable("no PostgreSQL server found and Debian's postgresql package is not installed "
                          "(installing it needs root and apt-get)")
    as_user: list[str] = []
    top = tempfile.mkdtemp(prefix="agnes-pg-")
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as postgres
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(top, "postgres")
    datadir = os.path.join(top, "data")
    port = _free_port()
    init = subprocess.run([*as_user, f"{bindir}/initdb", "-D", datadir, "-U", "postgres", "-A", "trust",
                           "--no-sync", "-E", "UTF8", "--locale", "C"], capture_output=True, text=True)
    if init.returncode:
        shutil.rmtree(top, ignore_errors=True)
        raise Unavailable(f"initdb failed: {init.stderr.strip()[-300:]}")
    cluster = Cluster(bindir, datadir, port, as_user)
    start = subprocess.run([*as_user, f"{bindir}/pg_ctl", "start", "-D", datadir, "-w", "-t", "30", "-l",
                            os.path.join(top, "log"), "-o",
                            f"-p {port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off "
                            "-c synchronous_commit=off -c full_page_writes=off"],
                           capture_output=True, text=True)
    if start.returncode:
        cluster.stop()
        raise Unavailable(f"pg_ctl start failed: {start.stderr.strip()[-300:]}")
    return cluster


def find_server() -> tuple[str, Cluster | None]:
    """The URL of a server's maintenance database, and the cluster when this run started one.

    Raises Unavailable, saying why, when there is none."""
    named = os.environ.get("AGNES_TEST_DATABASE_URL")
    if named:
        why = answers(named)
        if why is not None:
            raise Unavailable(f"AGNES_TEST_DATABASE_URL={named} does not answer ({why})")
        return named, None
    if port_open("127.0.0.1", 5432) and answers(LOCAL_URL) is None:
        return LOCAL_URL, None
    cluster = start_cluster()
    deadline = time.monotonic() + 10
    while (why := answers(cluster.url)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if why is not None:
        cluster.stop()
        raise Unavailable(f"the throwaway cluster does not answer ({why})")
    return cluster.url, cluster


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def create_database(server: str, name: str, template: str | None = None) -> str:
    """CREATE DATABASE (from a template, if named); returns its URL."""
    source = f" TEMPLATE {template}" if template else " TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
    asyncio.run(_admin(server, f"CREATE DATABASE {name}{source}"))
    return with_database(server, name)


def drop_database(server: str, name: str) -> None:
    assert name.startswith(PREFIX), name  # never anyone else's
    asyncio.run(_admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def migrated_template(server: str) -> str:
    """A database at the latest schema, for CREATE DATABASE ... TEMPLATE; returns its name."""
    from service.migrations import migrate_postgres

    name = PREFIX + "template"
    url = create_database(server, name)

    async def migrate() -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate_postgres(conn)
        finally:
            await conn.close()

    asyncio.run(migrate())
    return name


async def _reset(url: str) -> bool:
    from service.migrations import latest_version

    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT version FROM schema_version") != latest_version("postgresql"):
            return False  # a test moved the version (readiness): start from the template again
        await conn.execute("SET lock_timeout = '5s'")  # a connection a test left open must not hang the run
        tables = [r[0] for r in await conn.fetch(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_version'")]
        await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        return True
    finally:
        await conn.close()


def reset_database(url: str) -> bool:
    """Empty every table (the schema stays); False when that failed (then make a new database)."""
    try:
        return asyncio.run(_reset(url))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tests/pg.py: cannot empty {url} ({exc}); using a new database", flush=True)
        return False
