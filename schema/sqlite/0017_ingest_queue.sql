-- 0017: the ingest queue replicas share on PostgreSQL (issue 23; see schema/postgresql/0017). SQLite
-- serves one process, whose worker keeps its queue in memory: the table exists so that both schemas
-- keep one shape (and `agnes-home copy-database` one list of tables); nothing writes it here.
CREATE TABLE ingest_queue (
    file_id     INTEGER PRIMARY KEY REFERENCES session_files(id) ON DELETE CASCADE,
    user_id     INTEGER,
    priority    INTEGER NOT NULL,
    due_at      TEXT NOT NULL,
    claimed_by  TEXT,
    claim_until TEXT,
    again       INTEGER NOT NULL DEFAULT 0);

CREATE INDEX ingest_queue_claimed ON ingest_queue (claimed_by);
