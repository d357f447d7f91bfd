"""The ingest queue of replicas on one PostgreSQL database: files are claimed from the database for a
lease, so each stored file is processed by one replica at a time, and a replica killed mid-file leaves
it to another once the lease runs out (SQL in store/replicas.py).

Contract: a claim is renewed every third of the lease while its replica lives; a replica that cannot
renew (the database is away) keeps working on what it holds, and at worst another replica takes the
file after the lease and finds it processed already (the content hash is unchanged: nothing is
rewritten). The finish (deleting the queue row) comes after the file's results are committed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from ..store import replicas

if TYPE_CHECKING:
    from ..postgres import PostgresDatabase

logger = logging.getLogger(__name__)

POLL_S = 0.25  # an idle consumer looks for other replicas' files this often
# Files a consumer claims at once and commits in one transaction while others wait: a file's
# transaction has a fixed cost on the database (~25 ms of its CPU per file in BENCHMARKS.md), which a
# batch shares, as bulk ingest's batches do. Claimed only while at least twice as many wait, so the
# last files of a backlog still spread over the replicas.
CLAIM_BATCH = 4
BACKOFF_S = 1.0  # after a failed claim (the database restarting)
FINISH_TRIES = 5


def shutting_down() -> None:
    """Raise CancelledError when this task is being cancelled: called where an exception is caught and
    logged, since a clean-up that fails while a cancellation unwinds (a rollback on a connection the
    cancellation closed) raises its own error instead, and a loop that logged it and went on would
    never stop (a shutdown waiting for the worker forever)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class SharedQueue:
    """This replica's side of the shared queue: queueing, claiming, renewing, finishing."""

    def __init__(self, db: PostgresDatabase, lease: float) -> None:
        self.db = db
        self.lease = lease
        # Unique per process start: a restarted replica never mistakes its old claims for its own.
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._puts: set[asyncio.Task] = set()
        self.held: set[int] = set()  # claimed by this replica now
        self.last_renewed = time.monotonic()
        self.processed = 0  # files this replica took from the queue (benchmarks, tests)
        self.backlog = (0, 0.0)  # every replica's waiting files and the oldest's wait, as of the last tick
        self._open = 0  # unclaimed files after this replica's last claim: batches only from a long line

    def put(self, file_id: int, priority: int, user_id: int | None, head_start: float, again: bool) -> None:
        """Queue a file without waiting (the worker's enqueue() is synchronous); flush() waits."""
        task = asyncio.get_running_loop().create_task(self._put(file_id, priority, user_id, head_start, again))
        self._puts.add(task)
        task.add_done_callback(self._puts.discard)

    async def _put(self, file_id: int, priority: int, user_id: int | None, head_start: float, again: bool) -> None:
        for attempt in range(FINISH_TRIES):
            try:
                await replicas.put(self.db, file_id, user_id, priority, head_start, again)
                self._wake.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database restarting: try again shortly
                if attempt == FINISH_TRIES - 1:
                    # Not lost for good: a watched file is found again by the next scan, an upload by
                    # the start-up check of stored uploads.
                    logger.error("could not queue file %s: %s", file_id, exc)
                    raise
                await asyncio.sleep(BACKOFF_S)

    async def flush(self) -> None:
        """Wait until every file queued so far is in the database (raises when one could not be)."""
        if self._puts:
            for result in await asyncio.gather(*self._puts, return_exceptions=True):
                if isinstance(result, Exception):
                    raise result

    async def drain(self) -> None:
        """Wait until the shared queue is empty: every replica's files processed."""
        await asyncio.gather(*self._puts, return_exceptions=True)
        while await replicas.waiting(self.db):
            await asyncio.sleep(0.05)
        self.backlog = (0, 0.0)  # as just seen: nothing waits

    async def consume(self, process: Callable[[list[int]], Awaitable[dict[int, bool]]]) -> None:
        """One consumer: claim, process, finish; forever. Failures are logged, never fatal. A file
        whose processing could store nothing (the database went away mid-file) is not finished: its
        claim runs out and it is taken again, by whichever replica is first."""
        while True:
            try:
                want = CLAIM_BATCH if self._open >= 2 * CLAIM_BATCH else 1
                claims = await replicas.claim_many(self.db, self.replica, self.lease, want)
                self._open = max((c.open for c in claims), default=0) - len(claims)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. the database restarting
                shutting_down()
                logger.warning("could not claim a file: %s", exc)
                await asyncio.sleep(BACKOFF_S)
                continue
            if not claims:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), POLL_S)
                except TimeoutError:
                    pass
                continue
            ids = [c.file_id for c in claims]
            self.held.update(ids)
            stored: dict[int, bool] = {}
            try:
                stored = await process(ids)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the processor records a bad file itself; this is the rest
                shutting_down()
                logger.exception("could not process files %s", ids)
            finally:
                self.held.difference_update(ids)
            for file_id in ids:
                if stored.get(file_id):
                    self.processed += 1
                    await self._finish(file_id)
                else:
                    logger.warning("file %s left to its claim's lease (nothing could be stored)", file_id)

    async def _finish(self, file_id: int) -> None:
        for attempt in range(FINISH_TRIES):
            try:
                await replicas.finish(self.db, file_id, self.replica)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the claim then runs out and another replica looks
                shutting_down()
                logger.warning("could not finish file %s (try %d): %s", file_id, attempt + 1, exc)
                await asyncio.sleep(BACKOFF_S)

    async def renew_loop(self) -> None:
        """Renew this replica's claims every third of the lease."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                if self.held:
                    await replicas.renew(self.db, self.replica, self.lease)
                self.last_renewed = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; health() reports it once claims could lapse
                shutting_down()
                logger.warning("could not renew this replica's claims: %s", exc)

    async def refresh(self) -> None:
        """Read the shared backlog (/metrics and the operators' view show it; each tick refreshes it)."""
        self.backlog = await replicas.backlog(self.db)

    def health(self) -> str:
        """ok, or why this replica's claims may lapse (/readyz)."""
        age = time.monotonic() - self.last_renewed
        return "ok" if age <= self.lease else f"claims not renewed for {age:.0f}s"
