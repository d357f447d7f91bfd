-- 0007: per-user hourly totals, so the status frame reads at most one row per hour of its
-- window (25 for 24h, 169 for 7d) plus the raw rows of the window's first, partial hour,
-- however active the analyst is. Before, it summed every deduplicated message in the
-- window: ~170 rows a day for a typical analyst, 1,200 for 7d, and ten times that for a
-- heavy one.
--   user_hours: one row per (user, hour 'YYYY-MM-DDTHH') with activity: the sums of
--               user_messages' counters and the count of user_prompts stamped in it.
-- Ingest recomputes the hours of every message and prompt row it replaces (old and new
-- hour) in the same transaction; retention recomputes the hour it cuts through.
-- Sums use TOTAL, as the window read did, so absurd counters cannot overflow a write.
CREATE TABLE user_hours (
    user_id               INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    hour                  TEXT    NOT NULL,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    prompts               INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, hour)
) WITHOUT ROWID;

INSERT INTO user_hours (user_id, hour, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens)
    SELECT user_id, substr(ts, 1, 13), TOTAL(input_tokens), TOTAL(output_tokens), TOTAL(cache_read_tokens),
           TOTAL(cache_creation_tokens)
    FROM user_messages GROUP BY user_id, substr(ts, 1, 13);
INSERT INTO user_hours (user_id, hour, prompts)
    SELECT user_id, substr(ts, 1, 13), COUNT(*) FROM user_prompts WHERE true GROUP BY user_id, substr(ts, 1, 13)
    ON CONFLICT (user_id, hour) DO UPDATE SET prompts = excluded.prompts;

-- The worker counts quarantined files every tick; without an index that read every file row.
CREATE INDEX session_files_quarantined ON session_files(quarantined_at) WHERE quarantined_at IS NOT NULL;
