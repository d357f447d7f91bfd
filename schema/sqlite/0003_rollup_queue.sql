-- 0003: days whose usage rollups must be recomputed.
-- Ingest marks the days a file touched in the same transaction as its events;
-- the worker rebuilds those days' rollups in one transaction per tick, so a bulk
-- ingest never rebuilds the same day once per file.
CREATE TABLE rollup_dirty_days (
    day TEXT PRIMARY KEY   -- YYYY-MM-DD, UTC
);
CREATE INDEX session_files_retry ON session_files(next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX usage_events_user_ts ON usage_events(user_id, ts);
