-- 0010: FORMAT.md revision 2 (processor version 5).
--   Resumed sessions: a copied prompt or message belongs to the session it was copied from,
--   the one whose latest line is earliest (ties to the smaller id), not to the smallest id.
--   file_sessions.last_ts holds each session's latest parsable timestamp in each file; a
--   session's latest line is the largest over the user's files. Backfilled from the
--   activity rows until the background reprocess writes the exact value (it also counts
--   lines that are neither prompts nor messages).
--   Cost and per-model breakdowns: every deduplicated message keeps its model, its
--   usage.speed and the 5-minute / 1-hour split of its cache writes (largest per field
--   across copies), per file and per user. Rows written before this version get NULL / 0
--   until their file is reprocessed, which the version bump starts on its own.
ALTER TABLE file_sessions ADD COLUMN last_ts TEXT;
UPDATE file_sessions SET last_ts = (
    SELECT MAX(ts) FROM (
        SELECT a.ts FROM activity_messages a
        WHERE a.file_id = file_sessions.file_id AND a.session_id = file_sessions.session_id
        UNION ALL
        SELECT p.ts FROM activity_prompts p
        WHERE p.file_id = file_sessions.file_id AND p.session_id = file_sessions.session_id));

ALTER TABLE activity_messages ADD COLUMN model TEXT;
ALTER TABLE activity_messages ADD COLUMN speed TEXT;
ALTER TABLE activity_messages ADD COLUMN cache_5m_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE activity_messages ADD COLUMN cache_1h_tokens INTEGER NOT NULL DEFAULT 0;

ALTER TABLE user_messages ADD COLUMN model TEXT;
ALTER TABLE user_messages ADD COLUMN speed TEXT;
ALTER TABLE user_messages ADD COLUMN cache_5m_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE user_messages ADD COLUMN cache_1h_tokens INTEGER NOT NULL DEFAULT 0;
