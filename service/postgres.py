"""The PostgreSQL backend (asyncpg): the same API as db.Database, for several replicas on one database.

The store's SQL is written with SQLite's ``?`` and ``:name`` placeholders; they become ``$n`` here,
once per statement text. Where the SQL itself differs, the store holds a PostgreSQL twin beside the
SQLite original (``db.dialect`` picks it).

The read cache (BaseDatabase.cached_read) needs a version that moves with every commit of every
replica: each write transaction that changed rows sends ``NOTIFY agnes_changes`` (delivered by
PostgreSQL at commit, never for a rollback), and one LISTEN connection per process moves the local version when another
process's notification arrives. This process's own commits move it at once. Without a live LISTEN
connection nothing is cached (every read goes to the database) until it is back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import secrets
import time
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, AsyncIterator, Iterable, Sequence
from urllib.parse import urlsplit

import asyncpg

from .db import _WRITE_WAIT, BaseDatabase, DatabaseBusy

logger = logging.getLogger(__name__)

CHANNEL = "agnes_changes"
_WROTE = ("SELECT EXISTS (SELECT 1 FROM pg_stat_xact_user_tables WHERE schemaname = current_schema() "
          "AND n_tup_ins + n_tup_upd + n_tup_del > 0)")
# Without track_counts those counters stay at zero: then any transaction with a transaction id counts.
_WROTE_WITHOUT_COUNTS = "SELECT txid_current_if_assigned() IS NOT NULL"
POOL_SIZE = 5  # transactions (one at a time per process), jobs holding their advisory lock, migrations
READERS = 10  # connections for one-statement reads (Readers)
RECONNECT_EVERY_S = 0.5
# Every session: day arithmetic on the stored UTC text is UTC; no JIT compiling for the store's small reads;
# generic plans: asyncpg prepares each statement once per connection, and planning the status frame's
# read afresh for its parameters (PostgreSQL's default for a prepared statement's first runs, and
# whenever a custom plan looks cheaper) took 0.6 ms of a 0.1 ms read (BENCHMARKS.md "Replicas").
SESSION = {"timezone": "UTC", "jit": "off", "plan_cache_mode": "force_generic_plan"}
# A connection's TEMP tables keep their rows from one transaction to the next (service/store/dialect.py):
# each write clears what it staged with DELETE, which leaves the dead rows' pages behind, since nothing
# vacuums a temporary table. Once this many rows have been copied into a connection's TEMP tables (the
# ingest's staged rows; the TEMP tables derived from them hold about as many), its next transaction
# starts by dropping them all (DISCARD TEMP; the ingest creates them again as it needs them): a few MB
# of dead space at most per connection, ~150 MB of transcripts between drops. (The rollups' TEMP
# tables, not staged, are emptied by TRUNCATE.)
TEMP_ROWS_BEFORE_DISCARD = 25_000
# A plain INSERT of whole rows into a temporary table (the ingest's staging): sent with COPY.
_STAGE_INSERT = re.compile(r"^INSERT INTO pg_temp\.(\w+) VALUES \(\$1(?:, \$\d+)*\)$")
_ROWS = re.compile(r"^\s*(SELECT|WITH|VALUES)\b|\bRETURNING\b", re.IGNORECASE)
# A placeholder outside string literals, quoted names and comments: ?, or :name (not PostgreSQL's ::).
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|::|\?|(?<![:\w]):([A-Za-z_]\w*)",
                     re.DOTALL)


@lru_cache(maxsize=2048)
def translate(sql: str) -> tuple[str, tuple[str, ...] | None]:
    """SQLite placeholders to PostgreSQL's: the new text, and the parameter names in $n order
    (None for positional ``?``). Statement texts are constants, so each is translated once."""
    names: list[str] = []
    count = 0

    def swap(match: re.Match) -> str:
        nonlocal count
        token = match.group(0)
        if token == "?":
            count += 1
            return f"${count}"
        name = match.group(1)
        if name is None:
            return token
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    text = _TOKENS.sub(swap, sql)
    if count and names:
        raise ValueError("a statement mixes ? and :name placeholders")
    return text, (tuple(names) if names else None)


def _args(names: tuple[str, ...] | None, params: Sequence[Any] | dict) -> Sequence[Any]:
    if names is None:
        return tuple(params)
    return tuple(params[name] for name in names)  # type: ignore[index]


def _rowcount(status: str) -> int:
    """The row count of a command tag ("UPDATE 3", "INSERT 0 1"); -1 when it has none."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


class Cursor:
    """What the store reads of an aiosqlite cursor: rows fetched at once and the row count."""

    lastrowid = None  # the store uses RETURNING, which both backends understand

    def __init__(self, rows: list[asyncpg.Record], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> asyncpg.Record | None:
        return self._rows.pop(0) if self._rows else None

    async def fetchall(self) -> list[asyncpg.Record]:
        rows, self._rows = self._rows, []
        return rows

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Pending:
    """aiosqlite's execute() result: awaited, or used with ``async with``."""

    def __init__(self, run: Any) -> None:
        self._run = run

    def __await__(self):
        return self._run().__await__()

    async def __aenter__(self) -> Cursor:
        return await self._run()

    async def __aexit__(self, *exc: object) -> None:
        return None


class Connection:
    """The subset of aiosqlite.Connection the store uses, over one asyncpg connection in a transaction."""

    def __init__(self, conn: asyncpg.Connection, *, temp_made: bool = False) -> None:
        self.raw = conn
        self.temp_rows = 0  # rows copied into TEMP tables (Database.transaction: TEMP_ROWS_BEFORE_DISCARD)
        # The ingest's TEMP tables exist on this connection: set by the ingest once it made them, so that
        # each later write on the connection skips its 11 CREATE ... IF NOT EXISTS (~0.1 ms each).
        self.temp_made = temp_made
        # True: this transaction changed rows of the schema for sure (an ingest write); None: ask the server.
        self.wrote: bool | None = None

    def execute(self, sql: str, params: Sequence[Any] | dict = ()) -> _Pending:
        async def run() -> Cursor:
            text, names = translate(sql)
            args = _args(names, params)
            if _ROWS.search(text):
                rows = await self.raw.fetch(text, *args)
                return Cursor(rows, len(rows))
            return Cursor([], _rowcount(await self.raw.execute(text, *args)))
        return _Pending(run)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any] | dict]) -> None:
        text, names = translate(sql)
        batch = [_args(names, row) for row in rows]
        if not batch:
            return
        staged = _STAGE_INSERT.match(text)
        if staged:
            # Rows into a TEMP staging table (ingest): COPY, one message for them all, where executemany
            # binds and runs the INSERT once per row (~6 us of the server's CPU a row).
            await self.raw.copy_records_to_table(staged.group(1), records=batch, schema_name="pg_temp")
            self.temp_rows += len(batch)
        else:
            await self.raw.executemany(text, batch)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] | dict = ()) -> list[asyncpg.Record]:
        text, names = translate(sql)
        return await self.raw.fetch(text, *_args(names, params))


class Readers:
    """Connections for one-statement reads, each taken and given back without awaiting when one is idle.

    asyncpg's pool costs ~50-80 us of the service's CPU per acquire and release (a proxy object, a
    shielded task for the release, the reset): as much again as the read itself, and the reads of an
    uncached request are the most frequent statements (BENCHMARKS.md "Replicas"). A read here holds no
    session state and no transaction, so a connection needs no reset between reads. One that may be
    broken (a lost socket, a cancelled read, a server that restarted) is never reused: it is closed and
    a new one is opened when a read finds none idle, at most ``size`` open at once.
    """

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._size = size
        self._idle: list[asyncpg.Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False

    async def fetch(self, text: str, args: Sequence[Any]) -> list[asyncpg.Record]:
        conn = self._idle.pop() if self._idle and not self._idle[-1].is_closed() else await self._take()
        try:
            rows = await conn.fetch(text, *args)
        except asyncpg.PostgresError:
            # The statement failed on the server (it is the caller's error to handle); the connection
            # stays usable unless the server ended it.
            if conn.is_closed():
                self._drop(conn)
            else:
                self._give(conn)
            raise
        except BaseException:
            self._drop(conn)
            raise
        self._give(conn)
        return rows

    async def _take(self) -> asyncpg.Connection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._drop(conn)
            if self._open < self._size:
                self._open += 1
                try:
                    return await asyncpg.connect(self._url, server_settings=SESSION)
                except BaseException:
                    self._open -= 1
                    self._wake(None)
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.cancelled() or not waiter.done():  # still in line: leave it
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                elif waiter.result() is not None:
                    self._give(waiter.result())  # handed over as this task was cancelled: to the next
                else:
                    self._wake(None)  # the room to open one, to the next
                raise
            if conn is not None:
                return conn
            # None: a connection was dropped, so there is room to open one.

    def _wake(self, conn: asyncpg.Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _give(self, conn: asyncpg.Connection) -> None:
        if self._closed:  # a read that ended after close(): its connection goes too
            self._drop(conn)
        elif not self._wake(conn):
            self._idle.append(conn)

    def _drop(self, conn: asyncpg.Connection) -> None:
        conn.terminate()
        self._open -= 1
        self._wake(None)

    def reopen(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            try:
                await conn.close(timeout=5)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()


class PostgresDatabase(BaseDatabase):
    """PostgreSQL through an asyncpg pool. Writes of this process are serialised (as on SQLite: the
    ingest's set-based statements never wait on each other); other replicas' writes meet them in
    PostgreSQL's row locks."""

    dialect = "postgresql"

    def __init__(self, url: str, *, cache: bool = True, pool_size: int = POOL_SIZE, readers: int = READERS,
                 temp_rows_before_discard: int = TEMP_ROWS_BEFORE_DISCARD) -> None:
        super().__init__(cache=cache)
        self.url = url
        parts = urlsplit(url)
        self.path = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # for messages: no password
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._readers = Readers(url, readers)
        self._write_lock = asyncio.Lock()
        self._listener: asyncpg.Connection | None = None
        self._listening = False
        self._reconnect: asyncio.Task | None = None
        self._closing = False
        self._me = secrets.token_hex(8)  # this process's notifications carry it: its own commits bump at once
        self._version = 0
        self._wrote_sql = _WROTE_WITHOUT_COUNTS
        # Server pids of pooled connections handed out whole (connection(), writing()): their callers may
        # leave session state (an advisory lock, a setting), so they get asyncpg's reset on release.
        self._handed_out: set[int] = set()
        # Server pid of a pooled connection -> (its settings object, which a new connection with a reused
        # pid does not share; rows copied into its TEMP tables since they were made; the ingest's made).
        self._temp: dict[int, tuple[Any, int, bool]] = {}
        self._temp_rows_before_discard = temp_rows_before_discard

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    async def open(self) -> None:
        self._closing = False
        self._readers.reopen()
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self._pool_size,
                                               server_settings=SESSION, reset=self._reset)
        counts = await self._pool.fetchval("SELECT current_setting('track_counts')::bool")
        self._wrote_sql = _WROTE if counts else _WROTE_WITHOUT_COUNTS
        if self._use_cache:
            await self._listen()

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.url)
        await conn.add_listener(CHANNEL, self._notified)
        conn.add_termination_listener(self._lost)
        self._listener = conn
        self._listening = True
        self._bump()  # anything committed while nobody listened

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload != self._me:
            self._bump()

    def _lost(self, conn: Any) -> None:
        self._listening = False
        self._bump()
        if not self._closing and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        wait = RECONNECT_EVERY_S
        while not self._closing:
            try:
                await self._listen()
                logger.info("listening for other replicas' commits again")
                return
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Once loudly, then quietly (the database may be down for a while): reads are not cached.
                log = logger.warning if wait == RECONNECT_EVERY_S else logger.debug
                log("cannot listen for other replicas' commits (reads are not cached meanwhile): %s", exc)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)

    def _bump(self) -> None:
        self._version += 1
        self._cache.clear()
        self._cache_version = self._version

    def snapshot(self) -> int | None:
        """The local version (moved by every commit anywhere, as soon as it is notified); None while no
        LISTEN connection is up or the cache is off: then nothing is cached."""
        if not self._use_cache or not self._listening:
            return None
        return self._version

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None
        if self._listener is not None:
            self._listener.remove_termination_listener(self._lost)
            await self._listener.close()
            self._listener = None
            self._listening = False
        await self._readers.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _reset(self, conn: asyncpg.Connection) -> None:
        """The pool's reset on release (asyncpg has already rolled back any open transaction).

        asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
        every release: a second round trip for each one-statement read, which leaves no session state
        behind, nor does transaction() (its settings are SET LOCAL). Only connections handed out whole
        get it."""
        pid = conn.get_server_pid()
        if pid in self._handed_out:
            self._handed_out.discard(pid)
            query = conn.get_reset_query()
            if query:
                await conn.execute(query)

    async def fetchall(self, sql: str, params: Sequence[Any] | dict = ()) -> list[asyncpg.Record]:
        if self._pool is None:  # closed, or never opened: as every other call
            raise RuntimeError("database is not open")
        text, names = translate(sql)
        return await self._readers.fetch(text, _args(names, params))

    @asynccontextmanager
    async def _whole(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            self._handed_out.add(conn.get_server_pid())
            yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for work outside the store (migrations, readiness, advisory locks)."""
        async with self._whole() as conn:
            yield conn

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection, with this process's writes held off; the caller manages its own transaction."""
        async with self._write_lock, self._whole() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """One write transaction: committed whole (and notified to every replica), or rolled back whole.

        Inside bounded_writes() (a request), a row lock held by another replica is waited for only
        until the bound, counted from the call; then DatabaseBusy, as SQLite's locked database.
        """
        wait = _WRITE_WAIT.get()
        asked = time.monotonic()
        async with self._write_lock, self.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            pid, ident = conn.get_server_pid(), conn.get_settings()
            known = self._temp.get(pid)
            _, temp_rows, made = known if known is not None and known[0] is ident else (ident, 0, False)
            try:
                if wait is not None:
                    left_ms = max(1, int((asked + wait - time.monotonic()) * 1000))
                    await conn.execute(f"SET LOCAL lock_timeout = {left_ms}")
                if temp_rows >= self._temp_rows_before_discard:
                    await conn.execute("DISCARD TEMP")  # in this transaction: a rollback keeps them
                    temp_rows, made = 0, False
                wrapped = Connection(conn, temp_made=made)
                yield wrapped
                # A transaction that changed no row of the schema (a worker's tick with nothing to do, or
                # one that only staged rows in its temporary tables) keeps every replica's cache, as it
                # keeps SQLite's data_version. PostgreSQL counts this transaction's rows per table.
                wrote = wrapped.wrote or await conn.fetchval(self._wrote_sql)
                if wrote:
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self._me)
            except asyncpg.LockNotAvailableError:
                await tx.rollback()
                raise DatabaseBusy("a row is locked by another process") from None
            except BaseException:
                await tx.rollback()
                raise
            else:
                await tx.commit()
                if len(self._temp) > 4 * self._pool_size:  # pids of connections long gone
                    self._temp.clear()
                self._temp[pid] = (ident, temp_rows + wrapped.temp_rows, wrapped.temp_made)
                if wrote:
                    self._bump()

    async def run_steps(self, conn: Connection, steps: Sequence[tuple]) -> None:
        """The steps in order; each run of statements without parameters goes as one script, in one
        round trip (PostgreSQL's simple query protocol runs them in order, in this transaction; each ends
        on a line of its own, so a trailing comment cannot swallow the separator).

        An ingest write is ~45-70 statements, most of them set-based statements without parameters: one
        await and round trip each cost ~0.1-0.2 ms of the service's and the server's CPU apiece.
        """
        script: list[str] = []
        for sql, params, *many in steps:
            if not params and not (many and many[0]):
                script.append(sql)
                continue
            if script:
                await conn.raw.execute("\n;\n".join(script))
                script = []
            if many and many[0]:
                await conn.executemany(sql, params)
            else:
                await conn.execute(sql, params)
        if script:
            await conn.raw.execute("\n;\n".join(script))

    async def schema_version(self) -> int:
        from .migrations import pg_current_version  # noqa: PLC0415 - migrations imports this module

        async with self.pool.acquire() as conn:
            return await pg_current_version(conn)
