-- 0012: what the `agnes` client tells us about itself and its pulls.
-- client_seen: each analyst's last client version and OS, taken from the User-Agent
-- (`agnes/<version> (<os>)`) of their bearer-authenticated requests, and when it was
-- last seen (to the minute: it is written at most once a minute per analyst and process).
-- pull_outcomes: how the analyst's last `agnes pull` ended, from POST /api/sync/pull-confirm
-- (sent by 0.84.8 and later; 0.54.9 sends none). users.last_pull_at stays the manifest stamp.
-- Both start empty: nothing to backfill.

CREATE TABLE client_seen (
    user_id  INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    version  TEXT    NOT NULL,
    os       TEXT    NOT NULL,
    seen_at  TEXT    NOT NULL
);

CREATE TABLE pull_outcomes (
    user_id     INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    finished_at TEXT    NOT NULL,
    errors      INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL
);
