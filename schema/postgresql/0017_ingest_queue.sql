-- 0017: the ingest queue replicas share (issue 23). A file waiting to be processed has a row here;
-- a replica claims the row (SELECT ... FOR UPDATE SKIP LOCKED) for a lease it renews while it works
-- on the file, and deletes the row in the end. A replica killed mid-file leaves its claim to another
-- replica when the lease runs out. again: the file changed while claimed; it is processed once more.
-- Timestamps are the database's own clock (every replica compares against the same one).
CREATE TABLE ingest_queue (
    file_id     BIGINT PRIMARY KEY REFERENCES session_files(id) ON DELETE CASCADE,
    user_id     BIGINT,  -- whose turn it takes (fair turns between users); NULL: retries and reprocessing
    priority    INTEGER NOT NULL,
    due_at      TIMESTAMPTZ NOT NULL,  -- queued at, plus the kind's head start (service/ingest/worker.py)
    claimed_by  TEXT COLLATE "C",
    claim_until TIMESTAMPTZ,
    again       BOOLEAN NOT NULL DEFAULT FALSE);

CREATE INDEX ingest_queue_claimed ON ingest_queue (claimed_by);
