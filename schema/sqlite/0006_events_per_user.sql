-- 0006: usage events are stored per file, like activity, and deduplicated at read time.
-- With a global key on the stable event id, the same session uploaded by two analysts
-- (or twice by one) let the later file take the events over, and rewriting that file
-- then lost events the other file still holds. The key is now (file_id, event_id);
-- rollups count an event once per user by (user_id, event_id). SQLite cannot change a
-- primary key in place, so the table is rebuilt with its rows.
CREATE TABLE usage_events_new (
    event_id      TEXT    NOT NULL,
    file_id       INTEGER NOT NULL REFERENCES session_files(id) ON DELETE CASCADE,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_id    TEXT    NOT NULL,
    event_type    TEXT    NOT NULL,
    tool_name     TEXT,
    skill_name    TEXT,
    subagent_type TEXT,
    command_name  TEXT,
    source        TEXT    NOT NULL DEFAULT 'builtin',
    ref_id        TEXT,
    is_error      INTEGER NOT NULL DEFAULT 0,
    ts            TEXT    NOT NULL,
    PRIMARY KEY (file_id, event_id)
);
INSERT INTO usage_events_new SELECT event_id, file_id, user_id, session_id, event_type, tool_name, skill_name,
    subagent_type, command_name, source, ref_id, is_error, ts FROM usage_events;
DROP TABLE usage_events;
ALTER TABLE usage_events_new RENAME TO usage_events;
CREATE INDEX usage_events_ts ON usage_events(ts);
