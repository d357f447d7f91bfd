"""What replicas on one PostgreSQL database share: the ingest queue's claims and the periodic jobs' locks.

The queue's statements run on a pooled connection of their own, outside ``db.transaction()``: each is
one atomic statement, and a claim must neither wait behind this process's serialised writes (a file's
results) nor send the commit notification that empties every replica's read cache (nothing read
through the cache depends on the queue).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator, NamedTuple

if TYPE_CHECKING:
    from ..postgres import PostgresDatabase

# pg_try_advisory_lock(LOCK_SPACE, job): the two-key form, apart from the migration lock's one key.
LOCK_SPACE = 0x61676E65  # "agne"
JOBS = {"uploads": 1, "scan": 2, "queue": 3, "rollups": 4, "prune": 5}


class Claim(NamedTuple):
    file_id: int
    priority: int
    user_id: int | None
    open: int = 0  # files no live claim held when this one was claimed (itself included)


# A file already waiting keeps its place (the earlier due time); one claimed now is done once more
# afterwards when ``again`` (it changed while being processed), as the in-memory queue does.
_PUT = """
INSERT INTO ingest_queue (file_id, user_id, priority, due_at)
VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))
ON CONFLICT (file_id) DO UPDATE SET
    again = ingest_queue.again OR (ingest_queue.claimed_by IS NOT NULL AND $5),
    due_at = LEAST(ingest_queue.due_at, excluded.due_at),
    priority = LEAST(ingest_queue.priority, excluded.priority),
    user_id = COALESCE(ingest_queue.user_id, excluded.user_id)
WHERE (ingest_queue.claimed_by IS NOT NULL AND $5 AND NOT ingest_queue.again)
   OR excluded.due_at < ingest_queue.due_at OR excluded.priority < ingest_queue.priority
   OR (ingest_queue.user_id IS NULL AND excluded.user_id IS NOT NULL)
"""
# (The WHERE: a put that changes nothing writes nothing. Every tick puts the reprocess batch again,
# and a row rewritten for nothing is a row a claim's SKIP LOCKED skips meanwhile.)

# The next file no live claim holds, in turns between users as the in-memory FairQueue serves them
# (retries and reprocessing sharing one turn): a user's files being processed count as turns taken,
# so one analyst's hundred files wait behind another's first. Within a turn, the earlier due time.
# (Turns of files finished already are forgotten: an approximation of the FairQueue's virtual time.)
# SKIP LOCKED: replicas claiming at the same moment take different rows instead of waiting.
_CLAIM = """
WITH held AS (
    SELECT user_id, COUNT(*) AS n FROM ingest_queue
    WHERE claimed_by IS NOT NULL AND claim_until >= clock_timestamp() GROUP BY user_id),
open AS (
    SELECT q.file_id, row_number() OVER (PARTITION BY q.user_id ORDER BY q.due_at, q.file_id)
                      + COALESCE(h.n, 0) AS turn
    FROM ingest_queue q LEFT JOIN held h ON h.user_id IS NOT DISTINCT FROM q.user_id
    WHERE q.claimed_by IS NULL OR q.claim_until < clock_timestamp()),
next AS (
    SELECT q.file_id, o.turn FROM ingest_queue q JOIN open o USING (file_id)
    WHERE q.claimed_by IS NULL OR q.claim_until < clock_timestamp()
    ORDER BY o.turn, q.due_at, q.file_id LIMIT $3
    FOR UPDATE OF q SKIP LOCKED)
UPDATE ingest_queue SET claimed_by = $1, claim_until = clock_timestamp() + make_interval(secs => $2),
                        again = FALSE
FROM next WHERE ingest_queue.file_id = next.file_id
RETURNING ingest_queue.file_id, ingest_queue.priority, ingest_queue.user_id, (SELECT COUNT(*) FROM open) AS open
"""

# Done: the row goes, unless the file changed meanwhile (then it waits for its next turn, unclaimed).
_FINISH = """
WITH done AS (
    DELETE FROM ingest_queue WHERE file_id = $1 AND claimed_by = $2 AND NOT again RETURNING file_id)
UPDATE ingest_queue SET claimed_by = NULL, claim_until = NULL, again = FALSE,
                        due_at = clock_timestamp()
WHERE file_id = $1 AND claimed_by = $2 AND again AND NOT EXISTS (SELECT 1 FROM done)
"""


async def put(db: PostgresDatabase, file_id: int, user_id: int | None, priority: int, head_start: float,
              again: bool) -> None:
    """Queue a file (idempotent: a waiting file keeps one row)."""
    async with db.connection() as conn:
        await conn.execute(_PUT, file_id, user_id, priority, head_start, again)


async def claim(db: PostgresDatabase, replica: str, lease: float) -> Claim | None:
    """Claim the next waiting file for ``lease`` seconds, or None when every waiting file is claimed."""
    found = await claim_many(db, replica, lease, 1)
    return found[0] if found else None


async def claim_many(db: PostgresDatabase, replica: str, lease: float, limit: int) -> list[Claim]:
    """Claim up to ``limit`` waiting files (in turn order) for ``lease`` seconds."""
    async with db.connection() as conn:
        rows = await conn.fetch(_CLAIM, replica, lease, limit)
    return sorted((Claim(r[0], r[1], r[2], r[3]) for r in rows), key=lambda c: c.file_id)


async def renew(db: PostgresDatabase, replica: str, lease: float) -> int:
    """Extend every claim this replica holds by ``lease`` seconds from now; returns how many."""
    async with db.connection() as conn:
        status = await conn.execute(
            "UPDATE ingest_queue SET claim_until = clock_timestamp() + make_interval(secs => $2) "
            "WHERE claimed_by = $1", replica, lease)
    return int(status.rsplit(" ", 1)[-1])


async def finish(db: PostgresDatabase, file_id: int, replica: str) -> None:
    """Give up the claim on a processed file (a claim lost to another replica meanwhile is left alone)."""
    async with db.connection() as conn:
        await conn.execute(_FINISH, file_id, replica)


async def backlog(db: PostgresDatabase) -> tuple[int, float]:
    """Files queued or being processed by any replica, and the seconds the oldest has been due."""
    async with db.connection() as conn:
        row = await conn.fetchrow("SELECT COUNT(*), EXTRACT(EPOCH FROM clock_timestamp() - MIN(due_at)) "
                                  "FROM ingest_queue")
    return int(row[0]), max(0.0, float(row[1] or 0.0))


async def waiting(db: PostgresDatabase) -> int:
    """Files queued or being processed, by any replica."""
    async with db.connection() as conn:
        return int(await conn.fetchval("SELECT COUNT(*) FROM ingest_queue"))


@asynccontextmanager
async def only_one(db: PostgresDatabase, job: str) -> AsyncIterator[bool]:
    """True inside when this replica holds the job's advisory lock (no other replica runs the job
    meanwhile); False when another holds it. The lock is a session lock on one pooled connection,
    released at the end, or by the server when the replica dies."""
    async with db.connection() as conn:
        mine = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_SPACE, JOBS[job])
        try:
            yield bool(mine)
        except BaseException:
            # Cancelled (a shutdown) or failed: end the session instead of awaiting an unlock on the
            # way out (the server drops the lock with it). Nothing here may replace the exception:
            # a swallowed CancelledError would keep the worker's tick running through a shutdown.
            if mine:
                _end(conn)
            raise
        if mine:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_SPACE, JOBS[job])
            except Exception:  # noqa: BLE001 - a broken connection: its session (and lock) ends with it
                _end(conn)


def _end(conn) -> None:
    """Close a pooled connection's session at once (the pool opens a new one when it needs it)."""
    try:
        conn.terminate()
    except Exception:  # noqa: BLE001 - released or closed already: its session is gone or going
        pass


# Writers of derived rows on PostgreSQL. A file's results replace per-user rows (delete, then insert
# anew), which two replicas writing files of one user at the same moment would both insert: each
# write holds its users' locks (in id order: no deadlock) and the shared side of WRITE_LOCK; a job
# that rewrites every user's rows (rollups, retention) holds WRITE_LOCK exclusively. Transaction
# locks: released at commit or rollback. SQLite's one writer needs none of it.
WRITE_LOCK = (LOCK_SPACE, 0)
USER_LOCK_SPACE = 0x61676E66  # "agnf": pg_advisory_xact_lock(USER_LOCK_SPACE, user id)


async def lock_users(conn, dialect: str, user_ids: set[int]) -> None:
    """Inside a write transaction: this transaction alone writes these users' derived rows.

    First the users' rows themselves, FOR KEY SHARE (what a foreign-key check takes; the derived rows
    have none since schema 0018): a user's deletion waits for this write to commit, or this write for
    the deletion, before any row of theirs is written. Taken before the advisory locks, so a deletion
    (its trigger takes WRITE_LOCK's shared side) never waits for one while holding the row."""
    if dialect != "postgresql":
        return
    await conn.execute("SELECT id FROM users WHERE id = ANY(CAST(? AS BIGINT[])) ORDER BY id FOR KEY SHARE",
                       (sorted(user_ids),))
    await conn.execute("SELECT pg_advisory_xact_lock_shared(?, ?)", WRITE_LOCK)
    for user_id in sorted(user_ids):
        await conn.execute("SELECT pg_advisory_xact_lock(?, ?)", (USER_LOCK_SPACE, user_id))


async def lock_all_users(conn, dialect: str) -> None:
    """Inside a write transaction: no file's results are written until it ends."""
    if dialect == "postgresql":
        await conn.execute("SELECT pg_advisory_xact_lock(?, ?)", WRITE_LOCK)
