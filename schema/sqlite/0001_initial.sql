-- 0001: the schema as it stood before the status frame.
-- Users and their tokens, the audit log, per-file processor state, session
-- summaries (original counters), usage events with plugin attribution, daily
-- rollups, and the registry of data tables the sync manifest distributes.
-- Timestamps are TEXT in UTC, 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (service/timeutil.py).

CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    email       TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL DEFAULT '',
    onboarded   INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT    NOT NULL
);

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash   TEXT    NOT NULL UNIQUE,   -- sha256 hex of the whole token
    prefix       TEXT    NOT NULL,          -- first characters, to recognise a token in listings
    label        TEXT    NOT NULL DEFAULT '',
    created_at   TEXT    NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE INDEX api_tokens_user ON api_tokens(user_id);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER REFERENCES users(id) ON DELETE SET NULL,
    action      TEXT    NOT NULL,
    source      TEXT,
    detail      TEXT,
    created_at  TEXT    NOT NULL
);
CREATE INDEX audit_log_user ON audit_log(user_id, id);

-- Processor state: one row per transcript file the service knows.
CREATE TABLE session_files (
    id                INTEGER PRIMARY KEY,
    user_id           INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    path              TEXT    NOT NULL UNIQUE,
    origin            TEXT    NOT NULL,            -- upload | watch | cli
    size              INTEGER NOT NULL DEFAULT 0,
    mtime_ns          INTEGER NOT NULL DEFAULT 0,
    content_hash      TEXT,
    processor_version INTEGER NOT NULL DEFAULT 0,
    items             INTEGER NOT NULL DEFAULT 0,  -- lines read on the last pass
    last_error        TEXT,
    failure_count     INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TEXT,
    quarantined_at    TEXT,
    received_at       TEXT    NOT NULL,
    processed_at      TEXT
);
CREATE INDEX session_files_user ON session_files(user_id);
CREATE INDEX session_files_version ON session_files(processor_version, processed_at);

CREATE TABLE session_summaries (
    file_id             INTEGER PRIMARY KEY REFERENCES session_files(id) ON DELETE CASCADE,
    user_id             INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_id          TEXT    NOT NULL,
    started_at          TEXT,
    ended_at            TEXT,
    active_seconds      INTEGER NOT NULL DEFAULT 0,
    wall_seconds        INTEGER NOT NULL DEFAULT 0,
    user_messages       INTEGER NOT NULL DEFAULT 0,
    assistant_messages  INTEGER NOT NULL DEFAULT 0,
    tool_calls          INTEGER NOT NULL DEFAULT 0,
    tool_errors         INTEGER NOT NULL DEFAULT 0,
    skill_invocations   INTEGER NOT NULL DEFAULT 0,
    subagent_dispatches INTEGER NOT NULL DEFAULT 0,
    mcp_calls           INTEGER NOT NULL DEFAULT 0,
    slash_commands      INTEGER NOT NULL DEFAULT 0,
    distinct_tools      INTEGER NOT NULL DEFAULT 0,
    distinct_skills     INTEGER NOT NULL DEFAULT 0,
    primary_model       TEXT,
    skipped_lines       INTEGER NOT NULL DEFAULT 0,
    processor_version   INTEGER NOT NULL,
    extracted_at        TEXT    NOT NULL
);

-- Attribution of plugin names to a source: 'curated' wins over 'flea'; unlisted is 'builtin'.
CREATE TABLE skill_attribution (
    name    TEXT NOT NULL,
    source  TEXT NOT NULL CHECK (source IN ('curated', 'flea')),
    ref_id  TEXT NOT NULL,
    PRIMARY KEY (name, source)
);
CREATE TABLE agent_attribution (
    name    TEXT NOT NULL,
    source  TEXT NOT NULL CHECK (source IN ('curated', 'flea')),
    ref_id  TEXT NOT NULL,
    PRIMARY KEY (name, source)
);
CREATE TABLE command_attribution (
    name    TEXT NOT NULL,
    source  TEXT NOT NULL CHECK (source IN ('curated', 'flea')),
    ref_id  TEXT NOT NULL,
    PRIMARY KEY (name, source)
);

CREATE TABLE usage_events (
    event_id      TEXT    PRIMARY KEY,      -- stable hash: re-processing never duplicates
    file_id       INTEGER NOT NULL REFERENCES session_files(id) ON DELETE CASCADE,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_id    TEXT    NOT NULL,
    event_type    TEXT    NOT NULL,         -- tool_use | subagent | mcp_call | slash_command
    tool_name     TEXT,
    skill_name    TEXT,
    subagent_type TEXT,
    command_name  TEXT,
    source        TEXT    NOT NULL DEFAULT 'builtin',
    ref_id        TEXT,
    is_error      INTEGER NOT NULL DEFAULT 0,
    ts            TEXT    NOT NULL
);
CREATE INDEX usage_events_file ON usage_events(file_id);
CREATE INDEX usage_events_ts ON usage_events(ts);

CREATE TABLE usage_tool_daily (
    day               TEXT    NOT NULL,     -- YYYY-MM-DD, UTC
    tool              TEXT    NOT NULL,
    source            TEXT    NOT NULL,
    invocations       INTEGER NOT NULL,
    errors            INTEGER NOT NULL,
    distinct_users    INTEGER NOT NULL,
    distinct_sessions INTEGER NOT NULL,
    PRIMARY KEY (day, tool, source)
);
CREATE TABLE usage_plugin_daily (
    day               TEXT    NOT NULL,
    source            TEXT    NOT NULL,
    ref_id            TEXT    NOT NULL,
    invocations       INTEGER NOT NULL,
    distinct_users    INTEGER NOT NULL,
    distinct_sessions INTEGER NOT NULL,
    PRIMARY KEY (day, source, ref_id)
);

-- Data tables distributed through the sync manifest.
CREATE TABLE data_tables (
    id           TEXT    PRIMARY KEY,
    path         TEXT    NOT NULL,          -- relative to data_dir
    rows         INTEGER,
    query_mode   TEXT    NOT NULL DEFAULT 'local' CHECK (query_mode IN ('local', 'remote')),
    source_type  TEXT    NOT NULL DEFAULT '',
    public       INTEGER NOT NULL DEFAULT 0,
    md5          TEXT,                      -- cached hash of the file at (hash_size, hash_mtime_ns)
    hash_size    INTEGER,
    hash_mtime_ns INTEGER,
    created_at   TEXT    NOT NULL
);
CREATE TABLE data_table_grants (
    table_id  TEXT    NOT NULL REFERENCES data_tables(id) ON DELETE CASCADE,
    user_id   INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (table_id, user_id)
);
