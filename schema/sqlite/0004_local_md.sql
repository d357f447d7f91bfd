-- 0004: the analyst's local CLAUDE.md, as `agnes push` sends it (POST /api/upload/local-md).
CREATE TABLE user_local_md (
    user_id     INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    content     TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
