-- 0005: per-user, deduplicated activity maintained at write time, so the 24h / 7d
-- status frame is a few index range sums instead of a GROUP BY over raw rows.
--   user_messages: one row per (user, message id): the earliest timestamp of any copy,
--                  the largest value per token counter across files.
--   user_prompts:  one row per (user, prompt key): the earliest timestamp.
--   user_sessions: one row per (user, session) with activity: its latest activity
--                  and its project (from the earliest-starting file that has one).
-- The per-file activity tables stay the source of truth; ingest recomputes the rows
-- of the keys a file touches in the same transaction. Existing data is backfilled here.
-- Also: one view over the three attribution tables, so events are attributed inside
-- their INSERT ('curated' wins over 'flea'; unlisted is 'builtin').

CREATE VIEW plugin_attribution AS
    SELECT 'skill' AS kind, name, source, ref_id FROM skill_attribution
    UNION ALL
    SELECT 'agent' AS kind, name, source, ref_id FROM agent_attribution
    UNION ALL
    SELECT 'command' AS kind, name, source, ref_id FROM command_attribution;

CREATE INDEX activity_messages_key ON activity_messages(user_id, message_key);
CREATE INDEX activity_prompts_key ON activity_prompts(user_id, prompt_key);

CREATE TABLE user_messages (
    user_id               INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    message_key           TEXT    NOT NULL,
    session_id            TEXT    NOT NULL,
    ts                    TEXT    NOT NULL,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    cache_read_tokens     INTEGER NOT NULL,
    cache_creation_tokens INTEGER NOT NULL,
    PRIMARY KEY (user_id, message_key)
) WITHOUT ROWID;
CREATE INDEX user_messages_window ON user_messages(
    user_id, ts, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens);
CREATE INDEX user_messages_session ON user_messages(user_id, session_id, ts);

CREATE TABLE user_prompts (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    prompt_key  TEXT    NOT NULL,
    session_id  TEXT    NOT NULL,
    ts          TEXT    NOT NULL,
    PRIMARY KEY (user_id, prompt_key)
) WITHOUT ROWID;
CREATE INDEX user_prompts_window ON user_prompts(user_id, ts);
CREATE INDEX user_prompts_session ON user_prompts(user_id, session_id, ts);

CREATE TABLE user_sessions (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_id  TEXT    NOT NULL,
    last_ts     TEXT    NOT NULL,
    project     TEXT,
    PRIMARY KEY (user_id, session_id)
) WITHOUT ROWID;
CREATE INDEX user_sessions_window ON user_sessions(user_id, last_ts, project);

INSERT INTO user_messages
    SELECT user_id, message_key, MIN(session_id), MIN(ts), MAX(input_tokens), MAX(output_tokens),
           MAX(cache_read_tokens), MAX(cache_creation_tokens)
    FROM activity_messages GROUP BY user_id, message_key;
INSERT INTO user_prompts
    SELECT user_id, prompt_key, MIN(session_id), MIN(ts) FROM activity_prompts GROUP BY user_id, prompt_key;
INSERT INTO user_sessions
    SELECT a.user_id, a.session_id, MAX(a.ts),
           (SELECT s.project FROM session_summaries s
            WHERE s.user_id = a.user_id AND s.session_id = a.session_id AND s.project IS NOT NULL
            ORDER BY s.started_at IS NULL, s.started_at LIMIT 1)
    FROM (SELECT user_id, session_id, ts FROM user_messages
          UNION ALL SELECT user_id, session_id, ts FROM user_prompts) a
    GROUP BY a.user_id, a.session_id;

-- Reads of the windows now use the tables above; these indexes only cost writes.
DROP INDEX activity_messages_window;
DROP INDEX activity_prompts_window;
DROP INDEX usage_events_user_ts;
CREATE INDEX activity_messages_ts ON activity_messages(ts);
CREATE INDEX activity_prompts_ts ON activity_prompts(ts);
