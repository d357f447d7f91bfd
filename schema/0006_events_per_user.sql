-- 0006: usage events are unique per user, not globally.
-- The same session uploaded by two analysts yields the same stable event ids; with a
-- global key the later upload took the events over from the first user. The key is now
-- (user_id, event_id); copies within one user still count once. SQLite cannot change a
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
    PRIMARY KEY (user_id, event_id)
);
INSERT INTO usage_events_new SELECT event_id, file_id, user_id, session_id, event_type, tool_name, skill_name,
    subagent_type, command_name, source, ref_id, is_error, ts FROM usage_events;
DROP TABLE usage_events;
ALTER TABLE usage_events_new RENAME TO usage_events;
CREATE INDEX usage_events_file ON usage_events(file_id);
CREATE INDEX usage_events_ts ON usage_events(ts);
