-- 0008: the sessions each file holds. A resumed session's file also carries the lines it
-- copied from the session it resumed, under that session's id, so one file can hold
-- several sessions: activity now belongs to each line's own sessionId (processor
-- version 4), and a session's project is the cwd of its first line with one in the
-- earliest-starting file that has it, which a per-file summary cannot say for a second
-- session. session_summaries keep one row per file (its first session).
--   file_sessions: one row per (file, session): the file's start and the session's
--                  project in it. Backfilled from the summaries (one session a file),
--                  which is what files not yet reprocessed hold.
CREATE TABLE file_sessions (
    file_id     INTEGER NOT NULL REFERENCES session_files(id) ON DELETE CASCADE,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_id  TEXT    NOT NULL,
    started_at  TEXT,
    project     TEXT,
    PRIMARY KEY (file_id, session_id)
) WITHOUT ROWID;
CREATE INDEX file_sessions_user_session ON file_sessions(user_id, session_id, started_at);

INSERT INTO file_sessions (file_id, user_id, session_id, started_at, project)
    SELECT file_id, user_id, session_id, started_at, project FROM session_summaries;
