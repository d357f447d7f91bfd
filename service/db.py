"""The one place that owns database connections: SQLite here (one writer, a few concurrent readers),
PostgreSQL in ``service/postgres.py``, behind the same API; ``open_database`` picks one at start-up.

Handlers and the ingest worker never touch a connection; they call the store
functions in ``service/store/``, which use these classes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sqlite3
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence

import aiosqlite

if TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
# A read runs on the event loop's own connection for at most this long; one that would take
# longer (or finds the database locked) is interrupted and redone on a reader thread.
INLINE_READ_BUDGET_S = 0.001
_PROGRESS_EVERY = 1000  # SQLite VM steps between budget checks (~10-20 us of work)
_RETRY_ON_THREAD = frozenset({sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
# How long a request's write may wait for a write lock held by another process (agnes-home in a
# shell, a backup); None (the worker, the CLI): the connection's busy timeout.
_WRITE_WAIT: contextvars.ContextVar[float | None] = contextvars.ContextVar("write_wait", default=None)
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
# Cached answers kept at most (a token's user, a status frame: one per active analyst and window).
CACHE_MAX_ENTRIES = 10_000


# One statement of run_steps(): (sql, params), or (sql, rows, True) for executemany.
Step = tuple


def _run_steps(conn: sqlite3.Connection, steps: Sequence[Step]) -> None:
    """run_steps on the connection's own thread (see Database.run_steps)."""
    for sql, params, *many in steps:
        if many and many[0]:
            conn.executemany(sql, params)
        else:
            conn.execute(sql, params)


class DatabaseBusy(Exception):
    """Another process held the write lock for longer than this write may wait."""


def is_busy(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" (another connection holds the lock)."""
    return isinstance(exc, DatabaseBusy) or (
        isinstance(exc, sqlite3.OperationalError)
        and getattr(exc, "sqlite_errorcode", 0) & 0xFF in _BUSY_CODES)


@contextmanager
def bounded_writes(seconds: float) -> Iterator[None]:
    """Writes started inside wait at most ``seconds`` (from when each is asked for) for a lock held
    by another process, then raise DatabaseBusy. Waiting for this process's own writer (the ingest
    worker's transactions) is not bounded: only another process's lock can end in DatabaseBusy."""
    token = _WRITE_WAIT.set(seconds)
    try:
        yield
    finally:
        _WRITE_WAIT.reset(token)


async def prepare(conn: aiosqlite.Connection) -> None:
    """Every connection gets the same pragmas and row factory.

    temp_store = MEMORY: temporary tables (ingest stages one batch of files in them) and the sort
    B-trees of GROUP BY live in memory; in temporary files they were ~10k of the ~22k write
    syscalls of a 200 MB bulk ingest. The migration runner switches it off for schema scripts,
    whose backfills may sort a whole table.
    """
    conn.row_factory = sqlite3.Row
    # executescript runs each pragma to completion, so no statement is left holding a lock.
    await conn.executescript(
        f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; "
        "PRAGMA temp_store = MEMORY;")


async def connect(path: str) -> aiosqlite.Connection:
    """Open one prepared connection in autocommit mode (transactions are explicit)."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await prepare(conn)  # the first statement: where "file is not a database" shows
    except BaseException:
        await conn.close()  # its thread would keep the process alive
        raise
    return conn


class BaseDatabase:
    """What both backends share: the read cache under a version from snapshot(), background writes,
    and the small read and write helpers built on fetchall() and transaction()."""

    dialect = ""  # "sqlite" or "postgresql": the store picks its SQL twin by it

    def __init__(self, *, cache: bool = True) -> None:
        self._use_cache = cache
        self._background: set[asyncio.Task] = set()
        self._cache: dict[Any, Any] = {}
        self._cache_version: int | None = None
        self.cache_hits = 0
        self._flights: dict[Any, asyncio.Task] = {}
        self.inline_reads = 0  # SQLite's read paths (/metrics); PostgreSQL's reads go to its pool
        self.thread_reads = 0

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def snapshot(self) -> int | None:
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Sequence[Any] | dict = ()) -> list[Any]:
        raise NotImplementedError

    def transaction(self) -> Any:
        raise NotImplementedError

    async def schema_version(self) -> int:
        """The schema version the database is at (a round trip: /readyz asks it)."""
        raise NotImplementedError

    def cached(self, version: int | None, key: Any) -> Any:
        """What cache() kept for key under this version, or None."""
        if version is None or version != self._cache_version:
            return None
        value = self._cache.get(key)
        if value is not None:
            self.cache_hits += 1
        return value

    async def cached_read(self, key: Any, read: Callable[[], Awaitable[Any]]) -> Any:
        """``read()``'s answer, kept under ``key`` while the database is unchanged (snapshot()).

        Requests that ask for the same key while it is being read wait for that one read instead of
        each starting their own: after a commit empties the cache, thirty-two requests for a heavy
        answer cost one read, not thirty-two. The read runs as its own task, so a client that hangs
        up does not cancel it for the others. With the cache off, every call reads.
        """
        version = self.snapshot()
        kept = self.cached(version, key)
        if kept is not None:
            return kept
        if version is None:
            return await read()
        flight = (version, key)
        task = self._flights.get(flight)
        if task is None:
            task = self._flights[flight] = asyncio.ensure_future(read())

            def landed(done: asyncio.Task) -> None:
                self._flights.pop(flight, None)
                if not done.cancelled() and done.exception() is None:
                    self.cache(version, key, done.result())
            task.add_done_callback(landed)
        return await asyncio.shield(task)

    def cache(self, version: int | None, key: Any, value: Any) -> None:
        """Keep an answer read under ``version`` (from snapshot(), taken before the read)."""
        if version is None or version != self._cache_version:
            return  # the database moved while the answer was read: it may be stale already
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[key] = value

    def write_later(self, sql: str, params: Sequence[Any] | dict = (), *, what: str = "background write"
                    ) -> asyncio.Task:
        """A best-effort write that the caller need not wait for (stamps, caches).

        It queues behind other writes without holding up the caller; a failure is logged as
        "could not <what>". The caller may wait on the returned task (with a timeout);
        close() waits for what is still pending.
        """
        async def run() -> None:
            _WRITE_WAIT.set(None)  # not the request's: nobody waits for it, so no hurry to give up
            try:
                await self.execute_write(sql, params)
            except Exception:  # noqa: BLE001 - bookkeeping must never fail a request
                logger.exception("could not %s", what)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def settle(self) -> None:
        """Wait for the background writes queued so far (tests, shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def fetchone(self, sql: str, params: Sequence[Any] | dict = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Sequence[Any] | dict = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def execute_write(self, sql: str, params: Sequence[Any] | dict = ()) -> int:
        """Run one write statement in its own transaction; returns the row count."""
        async with self.transaction() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    async def executemany_write(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    async def run_steps(self, conn: Any, steps: Sequence[Step]) -> None:
        """Statements in order on a connection of transaction(): (sql, params) runs once,
        (sql, rows, True) once per row. Here one await each; SQLite runs them in one hop."""
        for sql, params, *many in steps:
            if many and many[0]:
                await conn.executemany(sql, params)
            else:
                await conn.execute(sql, params)


class Database(BaseDatabase):
    """SQLite in WAL mode: all writes go through one writer connection, reads use a pool.

    Small reads (an indexed lookup, the status frame's range sums: tens of microseconds) run
    inline on a read-only connection owned by the event loop's thread, because handing them to
    a thread costs more than the read itself (two thread switches and a GIL hand-off each way).
    A progress handler bounds each inline read to INLINE_READ_BUDGET_S and the connection never
    waits for a lock, so a slow or blocked read costs the loop about that budget before it is
    redone on a reader thread. The budget is wall-clock and checked with the GIL: with a
    CPU-bound Python thread in the same process (AGNES_PARSE_WORKERS=0 parses in a thread),
    each GIL hand-off inside a read can take the interpreter's switch interval (5 ms), so reads
    stretch past it there; the default parses in processes.
    """

    dialect = "sqlite"

    def __init__(self, path: str, readers: int = 3, *, cache: bool = True) -> None:
        super().__init__(cache=cache)
        self.path = path
        self._reader_count = readers
        self._writer: aiosqlite.Connection | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._write_lock = asyncio.Lock()
        self._inline: sqlite3.Connection | None = None
        self._deadline = 0.0
        self._snapshot_held = False

    async def open(self) -> None:
        # data_version counts per connection: a reopened database's numbers start over.
        self._cache.clear()
        self._cache_version = None
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await connect(self.path)
        await self._writer.executescript("PRAGMA journal_mode = WAL;")
        for _ in range(self._reader_count):
            conn = await connect(self.path)
            self._all_readers.append(conn)
            self._readers.put_nowait(conn)
        if self.path != ":memory:":
            self._inline = self._open_inline()

    def _open_inline(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() may run from wherever the loop is torn down;
        # the connection is used by the loop's thread alone.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.executescript("PRAGMA busy_timeout = 0; PRAGMA query_only = 1;")
        conn.set_progress_handler(self._over_budget, _PROGRESS_EVERY)
        return conn

    def _over_budget(self) -> bool:
        return time.perf_counter() > self._deadline

    def _read_inline(self, sql: str, params: Sequence[Any] | dict) -> list[sqlite3.Row] | None:
        """The rows, or None when the read ran over budget or met a lock (redo it on a thread)."""
        assert self._inline is not None
        self._deadline = time.perf_counter() + INLINE_READ_BUDGET_S
        try:
            rows = self._inline.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _RETRY_ON_THREAD:  # primary code of an extended one
                raise
            return None
        self.inline_reads += 1
        return rows

    def snapshot(self) -> int | None:
        """The database's version now, under which answers may be cached; None: cache nothing.

        SQLite's ``PRAGMA data_version`` moves with every commit by another connection, this
        process's writer or another process (``agnes-home tokens revoke``), and costs no B-tree
        read. An answer cached under a version is therefore exactly what the same read would
        return while the version holds: a revoked token, a pull stamp or an ingested file empties
        the cache at the next request, with no delay. Answers that also depend on the time (the
        status frame's windows) carry their own expiry.
        """
        if self._snapshot_held:
            return self._cache_version
        conn = self._inline
        if conn is None or not self._use_cache:
            return None
        self._deadline = time.perf_counter() + INLINE_READ_BUDGET_S
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.OperationalError:  # a lock while the WAL is recovered: read afresh
            return None
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        # One read serves what runs before the loop's next callback (a request's authentication
        # and its handler, when nothing waits): everything those callbacks wait for (a commit
        # finishing on the writer's thread) happened before they were queued, so before this read.
        asyncio.get_running_loop().call_soon(self._release_snapshot)
        self._snapshot_held = True
        return version

    def _release_snapshot(self) -> None:
        self._snapshot_held = False

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        for conn in self._all_readers:
            await conn.close()
        self._all_readers.clear()
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("database is not open")
        return self._writer

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        """A reader connection for one or more statements (wrap them in BEGIN for one snapshot)."""
        conn = await self._readers.get()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                await conn.rollback()
            self._readers.put_nowait(conn)

    async def fetchall(self, sql: str, params: Sequence[Any] | dict = ()) -> list[sqlite3.Row]:
        if self._inline is not None:
            rows = self._read_inline(sql, params)
            if rows is not None:
                return rows
        self.thread_reads += 1
        # execute_fetchall is one hop to the connection's thread (execute, fetch and close
        # would be three), which is most of a small read's cost.
        conn = self._readers.get_nowait() if not self._readers.empty() else await self._readers.get()
        try:
            return list(await conn.execute_fetchall(sql, params))
        finally:
            self._readers.put_nowait(conn)

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection, held exclusively; the caller manages its own transaction."""
        async with self._write_lock:
            yield self.writer

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction on the writer: committed whole, or rolled back whole.

        Inside bounded_writes() (a request), BEGIN waits for another process's lock only until the
        bound, counted from the call: writes queued behind a blocked one share its wait rather
        than each waiting the full busy timeout in turn.
        """
        wait = _WRITE_WAIT.get()
        asked = time.monotonic()
        async with self._write_lock:
            conn = self.writer
            try:
                # Inside the try: a task cancelled while waiting for BEGIN has still queued it on
                # the connection's thread, and must roll it back (a no-op when nothing began), or
                # every later write would fail inside a transaction nobody ends.
                if wait is None:
                    await conn.execute("BEGIN IMMEDIATE")
                else:
                    await self._begin_within(conn, asked + wait)
                yield conn
            except BaseException:
                await conn.rollback()
                raise
            else:
                await conn.commit()

    @staticmethod
    async def _begin_within(conn: aiosqlite.Connection, deadline: float) -> None:
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        await conn.execute(f"PRAGMA busy_timeout = {left_ms}")
        try:
            await conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise DatabaseBusy("the database is locked by another process") from None
            raise
        finally:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    async def run_steps(self, conn: aiosqlite.Connection, steps: Sequence[Step]) -> None:
        """All the steps in one hop to the writer's thread: an incremental ingest is ~60 short
        statements, and each await of its own cost ~18 us of CPU (and a wake-up of each thread)
        for the hop alone, more than most of the statements (issue 24). aiosqlite has no public
        call for a function on its thread; its own execute_fetchall uses the same _execute."""
        await conn._execute(_run_steps, conn._conn, steps)

    async def schema_version(self) -> int:
        async with self.reader() as conn:
            async with conn.execute("PRAGMA user_version") as cur:
                return int((await cur.fetchone())[0])


def open_database(settings: Settings, *, readers: int = 3, cache: bool | None = None) -> BaseDatabase:
    """The backend the settings name, not yet opened: PostgreSQL when database_url is set, else SQLite."""
    cache = settings.read_cache if cache is None else cache
    if settings.database_url:
        from .postgres import PostgresDatabase  # noqa: PLC0415 - asyncpg only for who uses it

        return PostgresDatabase(settings.database_url, cache=cache)
    return Database(settings.db_path, readers=readers, cache=cache)
