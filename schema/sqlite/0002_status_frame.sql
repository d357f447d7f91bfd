-- 0002: the status frame.
-- users.last_pull_at (stamped by GET /api/sync/manifest), the four token
-- counters and the prompt count / project of each session summary, and the
-- per-file timestamped activity the 24h / 7d windows read. Activity is kept
-- per file and deduplicated per user at read time (a message by its id, a
-- prompt by its uuid), so re-processing or replacing one file never disturbs
-- what another file contributed. Existing summaries get zeros here and are
-- backfilled by the reprocess loop (USAGE_PROCESSOR_VERSION 2).

ALTER TABLE users ADD COLUMN last_pull_at TEXT;

ALTER TABLE session_summaries ADD COLUMN input_tokens          INTEGER NOT NULL DEFAULT 0;
ALTER TABLE session_summaries ADD COLUMN output_tokens         INTEGER NOT NULL DEFAULT 0;
ALTER TABLE session_summaries ADD COLUMN cache_read_tokens     INTEGER NOT NULL DEFAULT 0;
ALTER TABLE session_summaries ADD COLUMN cache_creation_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE session_summaries ADD COLUMN prompts               INTEGER NOT NULL DEFAULT 0;
ALTER TABLE session_summaries ADD COLUMN project               TEXT;

CREATE INDEX session_summaries_user_session ON session_summaries(user_id, session_id, started_at);

CREATE TABLE activity_messages (
    file_id         INTEGER NOT NULL REFERENCES session_files(id) ON DELETE CASCADE,
    message_key     TEXT    NOT NULL,
    user_id         INTEGER NOT NULL,
    session_id      TEXT    NOT NULL,
    ts              TEXT    NOT NULL,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (file_id, message_key)
) WITHOUT ROWID;
-- Covering index: a window query reads only this index.
CREATE INDEX activity_messages_window ON activity_messages(
    user_id, ts, message_key, session_id,
    input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens);

CREATE TABLE activity_prompts (
    file_id     INTEGER NOT NULL REFERENCES session_files(id) ON DELETE CASCADE,
    prompt_key  TEXT    NOT NULL,
    user_id     INTEGER NOT NULL,
    session_id  TEXT    NOT NULL,
    ts          TEXT    NOT NULL,
    PRIMARY KEY (file_id, prompt_key)
) WITHOUT ROWID;
CREATE INDEX activity_prompts_window ON activity_prompts(user_id, ts, prompt_key, session_id);
