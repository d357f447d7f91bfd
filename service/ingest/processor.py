"""Processing one file: parse it off the event loop, then store everything in one transaction."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import threading
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from .. import ingest
from ..db import BaseDatabase
from ..store import ingest as store
from ..timeutil import from_store
from . import jobs
from .jobs import exit_with_service, hash_job, parse_job, parse_job_packed, stat_file, unpack_result
from ..records import ParseResult

logger = logging.getLogger(__name__)

RETRY_BACKOFF = timedelta(seconds=30)


def _forkserver_preload() -> list[str]:
    """What the forkserver imports once, so each parse process starts as a fork with it loaded.

    The job module, and the command line module: multiprocessing re-runs the parent's main script
    in every child (as __mp_main__), and agnes-home's script imports service.cli, ~0.08 s of CPU
    per parse process unless the forkserver has it already. (Preloading "__main__" itself is a
    no-op on Python 3.11: the forkserver is never told the main script's path.) Not when service.cli
    is the main module itself (`python -m service.cli`): runpy re-runs it by name, and warns when
    it was already imported.
    """
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)
    if main_spec is not None and main_spec.name == "service.cli":
        return [jobs.__name__]
    return [jobs.__name__, "service.cli"]


def _parse_context() -> multiprocessing.context.BaseContext:
    """forkserver: never fork a process that has an event loop and database threads."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_forkserver_preload())
    return ctx


def fork_parse_pool(workers: int) -> ProcessPoolExecutor | None:
    """Parse processes forked now, from a process that runs no other thread yet (the command
    line, before its event loop and database threads start); None when that does not hold.

    A fork starts with everything the parent has loaded and costs no interpreter start: the
    forkserver (a fresh interpreter that imports the parser and the command line module) and
    its resource tracker (another interpreter) took ~0.1-0.3 s of CPU and delayed the first
    parse by the forkserver's imports. Forking is safe only here, with one thread: a fork of
    a process with database or event-loop threads could inherit a lock one of them holds.
    """
    if workers <= 0 or threading.active_count() != 1:
        return None
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=exit_with_service, initargs=(os.getpid(),))
    # With the fork method the pool starts every process at the first submit, before its
    # management thread: that is, now, while this thread is still the only one.
    pool.submit(int)
    return pool


START_TIMEOUT_S = 30


def _start_processes(pool: ProcessPoolExecutor, workers: int) -> None:
    """Have the pool start all its processes: one no-op per process, each awaited."""
    for future in [pool.submit(int) for _ in range(workers)]:
        future.result(timeout=START_TIMEOUT_S)


@dataclass
class Outcome:
    file_id: int
    status: str  # processed | unchanged | failed | quarantined | gone
    lines: int = 0
    skipped: int = 0
    bytes: int = 0
    error: str | None = None
    recorded: bool = True  # False: the failure could not be stored either (the database was away)


class Processor:
    """Parses in an executor and writes through the data layer; one bad file never stops it.

    ``workers`` > 0 parses in that many worker processes (the event loop and the GIL stay
    free for requests); 0 parses in a thread (tests, tiny deployments). Activity older than
    ``retention`` is not stored (the retention setting; None keeps everything). ``executor``:
    parse processes started already (fork_parse_pool); the processor shuts them down on close().
    """

    def __init__(self, db: BaseDatabase, *, workers: int, clock: Callable[[], datetime],
                 max_failures: int = 5, on_outcome: Callable[[Outcome], None] | None = None,
                 retention: timedelta | None = None, executor: Executor | None = None) -> None:
        self.db = db
        self.retention = retention
        self.workers = workers
        self.clock = clock
        self.max_failures = max_failures
        self.on_outcome = on_outcome
        self._executor: Executor | None = executor

    def _pool(self) -> Executor | None:
        if self.workers > 0 and self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=_parse_context(),
                                                 initializer=exit_with_service, initargs=(os.getpid(),))
        return self._executor

    async def start(self) -> None:
        """Start the parse processes now, from a thread, before any file is processed.

        A pool starts its processes at submits, under its own lock: the first one launches the
        forkserver, which imports the parser before it answers (0.1-0.3 s). Left to the first
        upload, that stalled the event loop, and every request in flight, for as long.
        """
        pool = self._pool()
        if isinstance(pool, ProcessPoolExecutor):
            try:
                await asyncio.to_thread(_start_processes, pool, self.workers)
            except TimeoutError:  # a loaded host: serve anyway, the processes come up on their own
                logger.warning("parse processes not up after %s s; serving without waiting", START_TIMEOUT_S)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)

    def close(self) -> None:
        """Stop the parser processes now: a parse in flight is abandoned (nothing was written for it)."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        # ProcessPoolExecutor has no public way to stop a running task; without this, interpreter
        # exit would wait for a long parse to finish and overrun the shutdown timeout.
        processes = list(getattr(executor, "_processes", {}).values()) if isinstance(
            executor, ProcessPoolExecutor) else []
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)

    async def process(self, file_id: int, *, force: bool = False) -> Outcome:
        """Bring one file's stored numbers up to date with its content; never raises for a bad file."""
        prepared = await self.prepare(file_id, force=force)
        if isinstance(prepared, Outcome):
            return prepared
        return (await self.commit([prepared]))[0]

    async def prepare(self, file_id: int, *, force: bool = False) -> store.Parsed | Outcome:
        """Parse a file off the event loop, or say why there is nothing to write (never raises for a bad file)."""
        try:
            return await self._prepare(file_id, force)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the worker
            return await self._failed(file_id, exc)

    async def commit(self, batch: list[store.Parsed]) -> list[Outcome]:
        """Store parsed files in one transaction; if that fails, store them one by one so a bad
        file fails alone."""
        try:
            now = self.clock()
            await store.write_results(self.db, batch, now,
                                      None if self.retention is None else now - self.retention)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the file that broke the batch
            if len(batch) == 1:
                return [await self._failed(batch[0].file_id, exc)]
            return [outcome for p in batch for outcome in await self.commit([p])]
        # What this pass read itself (an incremental pass: the new part only).
        outcomes = [Outcome(p.file_id, "processed", lines=p.result.lines - p.result.from_lines,
                            skipped=p.result.summary.skipped_lines - p.result.from_skipped,
                            bytes=p.result.bytes_read - p.result.from_bytes) for p in batch]
        for outcome in outcomes:
            self._report(outcome)
        return outcomes

    def _report(self, outcome: Outcome) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _failed(self, file_id: int, exc: Exception) -> Outcome:
        # A file that cannot be read (gone, a FIFO, a permission) is explained by its message; other
        # failures are bugs or bad data worth their traceback.
        logger.warning("processing failed: %s", exc, extra={"file_id": file_id},
                       exc_info=not isinstance(exc, OSError))
        try:
            quarantined = await store.record_failure(
                self.db, file_id, f"{type(exc).__name__}: {exc}", self.clock(),
                max_failures=self.max_failures, backoff=RETRY_BACKOFF, stat=await self._stat_of(file_id))
        except Exception:  # noqa: BLE001 - e.g. the database is locked too: the next tick retries
            logger.exception("could not record the failure", extra={"file_id": file_id})
            quarantined = None
        outcome = Outcome(file_id, "quarantined" if quarantined else "failed", error=str(exc),
                          recorded=quarantined is not None)
        self._report(outcome)
        return outcome

    async def _stat_of(self, file_id: int) -> tuple[int, int] | None:
        """(size, mtime_ns) of a file as a scan sees it (a symlink's own), or None."""
        state = await store.get_file(self.db, file_id)
        try:
            st = None if state is None else (stat_file(state.path, follow_symlinks=False) if state.origin == "watch"
                                             else os.stat(state.path, follow_symlinks=False))
        except (OSError, ValueError):  # ValueError: reached through a symlinked folder
            return None
        return None if st is None else (st.st_size, st.st_mtime_ns)

    async def _prepare(self, file_id: int, force: bool) -> store.Parsed | Outcome:
        state = await store.get_file(self.db, file_id)
        if state is None:
            outcome = Outcome(file_id, "gone")
            self._report(outcome)
            return outcome
        version = ingest.USAGE_PROCESSOR_VERSION
        # The watched directory can be written by others: its files are never read (or stat'ed)
        # through a symlink. Uploads are written by the service, and paths given to `ingest` by the
        # operator.
        follow = state.origin != "watch"
        st = stat_file(state.path, follow)
        carry = None
        if not force and state.content_hash and state.processor_version >= version:
            # Processed by this version already: an unchanged size and mtime is an unchanged file
            # (an `agnes-home ingest` run again over an archive); one touched but maybe not
            # changed is hashed, much cheaper than a parse and a rewrite. An upload is always
            # hashed: two uploads within one tick of the file system's clock can share an mtime.
            # A file that grew, with the parser's state of its last pass, is not hashed whole: the
            # parse checks its prefix and goes on from where that pass stopped (issue 24).
            same_stat = state.origin != "upload" and (st.st_size, st.st_mtime_ns) == (state.size, state.mtime_ns)
            if not same_stat and st.st_size > state.size:
                carry = await store.get_carry(self.db, file_id)
            unchanged = same_stat or (carry is None
                                      and await self._run(hash_job, state.path, follow) == state.content_hash)
            if unchanged:
                await store.mark_unchanged(self.db, file_id, st.st_size, st.st_mtime_ns, self.clock())
                outcome = Outcome(file_id, "unchanged", bytes=st.st_size)
                self._report(outcome)
                return outcome
        received_at = from_store(state.received_at)
        if self.workers > 0:
            result: ParseResult = unpack_result(
                await self._run(parse_job_packed, state.path, str(file_id), received_at, follow, carry))
        else:
            result = await self._run(parse_job, state.path, str(file_id), received_at, follow, carry)
        logger.debug("parsed", extra={"file_id": file_id, "file": state.path, "lines": result.lines,
                                      "incremental": result.incremental})
        return store.Parsed(file_id, state.user_id, result, st.st_size, st.st_mtime_ns, version)
