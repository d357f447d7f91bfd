"""The background ingest worker: a queue of files, retries, the reprocess loop, a heartbeat."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Awaitable, Callable

from .. import ingest
from ..config import Settings
from ..db import BaseDatabase
from ..store import ingest as store
from ..store import sessions, users
from ..store.replicas import only_one
from . import scanner
from .shared import SharedQueue, shutting_down
from .processor import Outcome, Processor

logger = logging.getLogger(__name__)

UPLOAD, WATCH, RETRY, REPROCESS = 0, 1, 2, 3  # queue priorities: lower first
# Priorities are head starts, not absolute: a file is served by the time it was queued plus its
# kind's delay, so a steady stream of uploads cannot starve the watched directory or the
# reprocess loop (a watched file queued 5 s before an upload goes first).
PRIORITY_DELAY = {UPLOAD: 0.0, WATCH: 5.0, RETRY: 10.0, REPROCESS: 30.0}
PRUNE_EVERY = timedelta(hours=1)
# The tick's steps that replicas on one PostgreSQL database take turns at (store/replicas.py's locks).
_JOBS = {"_uploads_step": "uploads", "_scan_step": "scan", "_queue_step": "queue", "_rollup_step": "rollups",
         "_prune_step": "prune"}


def stored_uploads(data_dir: str) -> list[tuple[str, int, int, int]]:
    """(path, user id, size, mtime_ns) of every stored upload, paths as upload_session registers
    them; blocking, so callers run it in a thread."""
    found = []
    sessions = Path(data_dir) / "sessions"  # as upload.user_dir builds them: Path normalises "./x/"
    try:
        with os.scandir(sessions) as entries:
            owners = [e.name for e in entries if e.name.isdigit() and e.is_dir(follow_symlinks=False)]
        for owner in owners:
            with os.scandir(sessions / owner) as files:
                for entry in files:
                    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue  # .upload-*.tmp: an upload in progress, or one a crash left behind
                    st = entry.stat(follow_symlinks=False)
                    found.append((str(sessions / owner / entry.name), int(owner), st.st_size, st.st_mtime_ns))
    except OSError as exc:  # no uploads yet, or an unreadable folder: nothing to recover from there
        if not isinstance(exc, FileNotFoundError):
            logger.warning("could not list stored uploads: %s", exc)
    return found


class FairQueue:
    """The files waiting for the worker, served fairly between users.

    Start-time fair queuing with one file as the unit, decided when a file is taken: the user
    whose next turn comes first goes, and a user who had nothing queued starts at the current
    turn, not behind everything queued so far. So an analyst's upload waits for at most one file
    of each other busy analyst, not for the hundreds another just pushed. Between users with the
    same turn, and among one user's own files, the earlier due time (queued time plus the kind's
    head start) goes first. Retries and reprocessing come from the database without an owner and
    share one turn, as one more "user".
    """

    def __init__(self) -> None:
        self._files: dict[int | None, list[tuple[float, int, int, int]]] = {}  # user -> heap of (due, seq, kind, id)
        self._finish: dict[int | None, int] = {}  # each user's next turn
        self._turn = 0
        self._seq = itertools.count()
        self._size = 0
        self._unfinished = 0
        self._put = asyncio.Event()
        self._all_done = asyncio.Event()
        self._all_done.set()

    def put(self, file_id: int, priority: int, user_id: int | None, due: float) -> None:
        heapq.heappush(self._files.setdefault(user_id, []), (due, next(self._seq), priority, file_id))
        self._size += 1
        self._unfinished += 1
        self._all_done.clear()
        self._put.set()

    def get_nowait(self) -> tuple[int, int, int | None]:
        """The next file: (file id, priority, user id); asyncio.QueueEmpty when there is none."""
        if not self._size:
            raise asyncio.QueueEmpty
        turn, _, user_id = min((max(self._turn, self._finish.get(user, 0)), heap[0][:2], user)
                               for user, heap in self._files.items())
        heap = self._files[user_id]
        _, _, priority, file_id = heapq.heappop(heap)
        if not heap:
            del self._files[user_id]
        self._turn, self._finish[user_id] = turn, turn + 1
        if len(self._finish) > 10_000:  # users whose turn has come need no entry
            self._finish = {u: f for u, f in self._finish.items() if f > self._turn}
        self._size -= 1
        return file_id, priority, user_id

    async def get(self) -> tuple[int, int, int | None]:
        while not self._size:
            self._put.clear()
            await self._put.wait()
        return self.get_nowait()

    def task_done(self) -> None:
        self._unfinished -= 1
        if not self._unfinished:
            self._all_done.set()

    async def join(self) -> None:
        await self._all_done.wait()

    def qsize(self) -> int:
        return self._size


class IngestWorker:
    """Processes queued files with bounded concurrency; ticks every ``scan_interval`` seconds.

    Each tick: heartbeat, scan the watched directory, queue due retries and a batch of files
    below the current processor version (oldest first), rebuild dirty rollup days, prune.
    """

    shared: SharedQueue | None = None

    def __init__(self, db: BaseDatabase, settings: Settings, clock: Callable[[], datetime],
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.processor = Processor(db, workers=settings.parse_workers, clock=clock,
                                   max_failures=settings.max_failures, on_outcome=on_outcome,
                                   retention=timedelta(days=settings.retention_days))
        self.concurrency = max(1, settings.parse_workers)
        self.queue = FairQueue()
        self._pending: dict[int, float] = {}  # queued or in flight -> when it was queued (monotonic)
        self._again: set[int] = set()     # changed again while in flight
        self._tasks: list[asyncio.Task] = []
        self._owners: dict[str, int] = {}
        self.unknown_owners: set[str] = set()
        self._unresolved_this_scan: set[str] = set()
        self.last_beat = time.monotonic()
        self._last_prune: datetime | None = None
        self.ticks = 0
        self.ticked = asyncio.Event()  # set after each completed tick (tests and start-up waits)
        self.quarantined_count = 0
        self._recheck_uploads = False
        # PostgreSQL: the queue lives in the database, shared with every replica (ingest/shared.py).
        self.shared = SharedQueue(db, settings.claim_lease) if db.dialect == "postgresql" else None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self.shared is not None:
            self._tasks = [asyncio.create_task(self.shared.consume(self._process_claimed), name=f"ingest-consumer-{i}")
                           for i in range(self.concurrency)]
            self._tasks.append(asyncio.create_task(self.shared.renew_loop(), name="ingest-claims"))
        else:
            self._tasks = [asyncio.create_task(self._consume(), name=f"ingest-consumer-{i}")
                           for i in range(self.concurrency)]
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="ingest-tick"))

    async def stop(self) -> None:
        """Cancel and await every task: a file mid-transaction is rolled back, never half-written."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.processor.close()

    def health(self) -> str:
        if not self._tasks:
            return "not running"
        dead = [t.get_name() for t in self._tasks if t.done()]
        if dead:
            return f"stopped tasks: {', '.join(dead)}"
        age = time.monotonic() - self.last_beat
        limit = max(60.0, 3 * self.settings.scan_interval)
        if age > limit:
            return f"no heartbeat for {age:.0f}s"
        return "ok" if self.shared is None else self.shared.health()

    # -- queue -------------------------------------------------------------------------

    def enqueue(self, file_id: int, priority: int = UPLOAD, *, again: bool = True, user_id: int | None = None) -> None:
        """Queue a file (of ``user_id``, for fair turns); a file already queued or in flight is processed
        again afterwards, unless ``again`` is False: catch-up work (retries, reprocessing) that the
        pending run covers."""
        if self.shared is not None:
            self.shared.put(file_id, priority, user_id, PRIORITY_DELAY[priority], again)
            return
        if file_id in self._pending:
            if again:
                self._again.add(file_id)
            return
        now = time.monotonic()
        self._pending[file_id] = now
        self.queue.put(file_id, priority, user_id, now + PRIORITY_DELAY[priority])

    @property
    def depth(self) -> int:
        if self.shared is not None:
            return self.shared.backlog[0]
        return self.queue.qsize()

    def lag(self) -> float:
        """Seconds the oldest queued or in-flight change has been waiting."""
        if self.shared is not None:
            return self.shared.backlog[1]
        return time.monotonic() - min(self._pending.values()) if self._pending else 0.0

    async def submit(self, file_id: int, priority: int = UPLOAD, *, user_id: int | None = None) -> None:
        """enqueue(), and on PostgreSQL wait until the file is in the shared queue: an upload is
        answered 200 only once any replica can take it."""
        self.enqueue(file_id, priority, user_id=user_id)
        if self.shared is not None:
            await self.shared.flush()

    async def drain(self) -> None:
        """Wait until everything queued so far has been processed (tests, the CLI); on PostgreSQL,
        until the shared queue is empty (every replica's files)."""
        if self.shared is not None:
            await self.shared.drain()
            return
        await self.queue.join()

    async def _process_claimed(self, file_ids: list[int]) -> dict[int, bool]:
        """Process claimed files, their results in one transaction (a bad one fails alone): for each,
        False when neither its results nor its failure could be stored."""
        try:
            done: list[Outcome] = []
            parsed = []
            for file_id in file_ids:
                prepared = await self.processor.prepare(file_id)
                (done if isinstance(prepared, Outcome) else parsed).append(prepared)
            if parsed:
                done.extend(await self.processor.commit(parsed))
            return {outcome.file_id: outcome.recorded for outcome in done}
        finally:
            self.last_beat = time.monotonic()

    async def _consume(self) -> None:
        while True:
            file_id, priority, user_id = await self.queue.get()
            try:
                await self.processor.process(file_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - e.g. a locked database: log, keep consuming
                shutting_down()
                logger.exception("could not process file", extra={"file_id": file_id})
            finally:
                self._pending.pop(file_id, None)
                self.last_beat = time.monotonic()
                if file_id in self._again:
                    self._again.discard(file_id)
                    self.enqueue(file_id, priority, user_id=user_id)
                self.queue.task_done()

    # -- ticks -------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failing tick is logged and retried next time
                shutting_down()
                logger.exception("ingest tick failed")
            await asyncio.sleep(self.settings.scan_interval)

    async def tick(self) -> None:
        """One round of background work. Each step runs even when an earlier one failed: a rollup
        that cannot be rebuilt must not also stop retries, retention and the quarantine count."""
        self.last_beat = time.monotonic()
        self.ticks += 1
        now = self.clock()
        steps = (self._scan_step, self._queue_step, self._rollup_step, self._quarantine_step, self._prune_step)
        if self.ticks == 1 or self._recheck_uploads:
            self._recheck_uploads = False
            steps = (self._uploads_step, *steps)
        for step in steps:
            await self._step(step, now)
        self.last_beat = time.monotonic()
        self.ticked.set()

    async def _step(self, step: Callable[[datetime], Awaitable[None]], now: datetime) -> None:
        try:
            if self.shared is not None and step.__name__ in _JOBS:
                # One replica at a time runs a periodic job; the others skip it this tick.
                async with only_one(self.db, _JOBS[step.__name__]) as mine:
                    if mine:
                        await step(now)
                return
            await step(now)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged and retried next tick; the other steps still run
            shutting_down()
            logger.exception("ingest tick step %s failed", step.__name__.strip("_"))

    def recheck_uploads(self) -> None:
        """Look for stored uploads the database does not describe at the next tick (an upload whose
        registration failed after its file was put in place)."""
        self._recheck_uploads = True

    async def _uploads_step(self, now: datetime) -> None:
        """At start-up: stored uploads the database does not describe go back in line.

        An upload is answered 200 once its file is in place, and the client never sends it again.
        A stop before the worker got to it (or a database restored from an older backup) would
        otherwise leave the file's new content uncounted for good, since only a scan of the
        watched directory notices changed files later.
        """
        found = await asyncio.to_thread(stored_uploads, self.settings.data_dir)
        root = str(Path(self.settings.data_dir) / "sessions")
        known = await store.files_under(self.db, root)
        queued = 0
        for path, user_id, size, mtime_ns in found:
            seen = known.get(path)
            if seen is None:
                try:
                    file_id = await store.register_file(self.db, user_id, path, "upload", now)
                except Exception:  # noqa: BLE001 - a folder of a user that is gone: keep going
                    logger.warning("stored upload %s has no user %s; left alone", path, user_id)
                    continue
            elif seen.failing or (seen.size, seen.mtime_ns) == (size, mtime_ns):
                continue  # failing (retries on its own schedule), or processed as it is
            else:
                file_id = seen.id
            self.enqueue(file_id, UPLOAD, user_id=user_id)
            queued += 1
        if queued:
            logger.info("queued %d stored upload(s) whose content was not processed yet", queued)

    async def _scan_step(self, now: datetime) -> None:
        if self.settings.session_dir:
            await self.scan()

    async def _queue_step(self, now: datetime) -> None:
        # A file that is queued or in flight already (an upload not yet processed is still below the
        # current version) is not parsed a second time for it.
        for file_id in await store.due_retries(self.db, now, self.settings.reprocess_batch):
            self.enqueue(file_id, RETRY, again=False)
        if self.depth < self.settings.reprocess_batch:
            for file_id in await store.stale_files(self.db, ingest.USAGE_PROCESSOR_VERSION,
                                                   self.settings.reprocess_batch):
                self.enqueue(file_id, REPROCESS, again=False)

    async def _rollup_step(self, now: datetime) -> None:
        await store.rebuild_rollups(self.db)

    async def _quarantine_step(self, now: datetime) -> None:
        self.quarantined_count = await store.quarantined_count(self.db)
        if self.shared is not None:
            await self.shared.refresh()

    async def _prune_step(self, now: datetime) -> None:
        if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            await sessions.prune(self.db, now)
            counts = await store.prune(self.db, now - timedelta(days=self.settings.retention_days))
            if any(counts.values()):
                logger.info("pruned old activity", extra=counts)

    async def _owner(self, name: str) -> int | None:
        if name in self._owners:
            return self._owners[name]
        if name in self._unresolved_this_scan:
            return None  # one lookup per folder and scan, not one per file (20k files: 20k reads)
        user = await users.find_owner(self.db, name)
        if user is None:
            self._unresolved_this_scan.add(name)
            if name not in self.unknown_owners:
                logger.warning("watched directory owner %r matches no user, or several; its files are "
                               "skipped until it names exactly one (a user id, an email, or a local part)", name)
            self.unknown_owners.add(name)
            return None
        self.unknown_owners.discard(name)
        self._owners[name] = user.id
        return user.id

    async def scan(self) -> int:
        """Queue new and changed files of the watched directory; returns how many.

        An owner folder is resolved once and stored: a file already known keeps its user, and a
        new file in a folder with known files goes to the same user, even if the folder's name
        has since become ambiguous (a second user with the same local part). One file that cannot
        be registered never stops the scan of the others.
        """
        self._unresolved_this_scan = set()
        root = os.path.realpath(self.settings.session_dir)
        found = await asyncio.to_thread(scanner.scan, self.settings.session_dir)
        # The scanner reports absolute paths, so the lookup must use the absolute root too.
        known = await store.files_under(self.db, root)
        stored_owner = {os.path.relpath(path, root).split(os.sep, 1)[0]: row.user_id for path, row in known.items()}
        queued = 0
        for item in found:
            seen = known.get(item.path)
            if seen is not None:
                if seen.failing:
                    # Changed since it failed: new content, a new chance (as a new upload gets).
                    if seen.failed_stat == (item.size, item.mtime_ns) or not await store.release_changed(
                            self.db, seen.id):
                        continue
                    logger.info("failing watched file changed; retried now", extra={"file": item.path})
                elif (seen.size, seen.mtime_ns) == (item.size, item.mtime_ns):
                    continue
                self.enqueue(seen.id, WATCH, user_id=seen.user_id)
                queued += 1
                continue
            user_id = stored_owner.get(item.owner) or await self._owner(item.owner)
            if user_id is None:
                continue
            try:
                file_id = await store.register_file(self.db, user_id, item.path, "watch", self.clock())
            except store.FileOwnedElsewhere:
                logger.warning("watched file already belongs to another user; skipped", extra={"file": item.path})
                continue
            except Exception:  # noqa: BLE001 - one file must not stop the scan of every other
                logger.exception("could not register a watched file; skipped", extra={"file": item.path})
                continue
            self.enqueue(file_id, WATCH, user_id=user_id)
            queued += 1
        return queued
