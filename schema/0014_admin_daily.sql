-- 0014: the operators' view (/admin, /api/admin/usage) reads aggregates kept at write time per
-- (UTC day, analyst), never the raw rows: 200 analysts x 30 days is 6,000 rows at most, where the
-- deduplicated messages of the same range are millions.
--   admin_session_days: one row per (user, UTC day 'YYYY-MM-DD', session) with activity: that
--       day's deduplicated messages, prompts and token sums of the session, and its active seconds
--       (FORMAT.md active_seconds: consecutive stamps of the session at most 600 s apart, the span
--       cut at UTC midnight). Kept per session because distinct sessions (and analysts) cannot be
--       summed over days: a range counts COUNT(DISTINCT ...) over its rows.
--   admin_model_days: one row per (user, day, model, speed, price_tier) with the token sums a
--       cost needs (cache writes split into the 5-minute and 1-hour parts as FORMAT.md "Cost" does
--       per message); price_tier: how many of the prompt sizes where a price turns (100,000 and
--       200,000 tokens: service/cost.py PRICE_TIERS) the message's prompt (input + cache read +
--       cache write) passed. The cost itself is computed at read time from these sums with the
--       app's price table, so a new price table needs no rewrite.
-- Ingest recomputes the (user, day) pairs of every hour it recomputes in user_hours (and the
-- neighbouring day where an hour touches midnight), in the same transaction; retention drops the
-- days wholly before its cutoff and recomputes the day it cuts through.
CREATE TABLE admin_session_days (
    user_id               INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    day                   TEXT    NOT NULL,
    session_id            TEXT    NOT NULL,
    messages              INTEGER NOT NULL DEFAULT 0,
    prompts               INTEGER NOT NULL DEFAULT 0,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    active_seconds        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, user_id, session_id)  -- day first: a range's rows are one run of the table, in day order
) WITHOUT ROWID;

CREATE TABLE admin_model_days (
    user_id           INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    day               TEXT    NOT NULL,
    model             TEXT    NOT NULL,  -- '' when the message named none
    speed             TEXT    NOT NULL,  -- '' when the message named none
    price_tier        INTEGER NOT NULL,
    messages          INTEGER NOT NULL,
    input_tokens      INTEGER NOT NULL,
    output_tokens     INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_5m_tokens   INTEGER NOT NULL,
    cache_1h_tokens   INTEGER NOT NULL,
    -- day, then the price key: a range's rows in the order its per-day, per-price sums group them
    PRIMARY KEY (day, model, speed, price_tier, user_id)
) WITHOUT ROWID;

INSERT INTO admin_session_days (user_id, day, session_id, messages, input_tokens, output_tokens, cache_read_tokens,
                                cache_creation_tokens)
    SELECT user_id, substr(ts, 1, 10), session_id, COUNT(*), TOTAL(input_tokens), TOTAL(output_tokens),
           TOTAL(cache_read_tokens), TOTAL(cache_creation_tokens)
    FROM user_messages GROUP BY user_id, substr(ts, 1, 10), session_id;
INSERT INTO admin_session_days (user_id, day, session_id, prompts)
    SELECT user_id, substr(ts, 1, 10), session_id, COUNT(*) FROM user_prompts WHERE true
    GROUP BY user_id, substr(ts, 1, 10), session_id
    ON CONFLICT (user_id, day, session_id) DO UPDATE SET prompts = excluded.prompts;
-- Active seconds: each stamp's gap to the session's stamp before it, when at most 600 s, split at
-- the UTC midnight between them.
CREATE TEMP TABLE IF NOT EXISTS day_active (user_id INTEGER NOT NULL, day TEXT NOT NULL, session_id TEXT NOT NULL,
                                             seconds REAL NOT NULL, PRIMARY KEY (user_id, day, session_id)) WITHOUT ROWID;
DELETE FROM temp.day_active;
INSERT INTO temp.day_active (user_id, session_id, day, seconds)
    SELECT user_id, session_id, day, TOTAL(MAX(0, MIN(t, day_end) - MAX(prev, day_start))) FROM (
        SELECT s.user_id, s.session_id, d.value AS day, s.t, s.prev,
               (julianday(d.value) - 2440587.5) * 86400 AS day_start,
               (julianday(d.value) - 2440587.5) * 86400 + 86400 AS day_end
        FROM (SELECT user_id, session_id, t, LAG(t) OVER (PARTITION BY user_id, session_id ORDER BY t) AS prev
              FROM (SELECT user_id, session_id, (julianday(ts) - 2440587.5) * 86400 AS t FROM user_messages
                    UNION ALL SELECT user_id, session_id, (julianday(ts) - 2440587.5) * 86400 FROM user_prompts)) s
        CROSS JOIN json_each(json_array(date(s.prev / 86400 + 2440587.5), date(s.t / 86400 + 2440587.5))) d
        WHERE s.t - s.prev <= 600 AND (d.key = 1 OR d.value <> date(s.t / 86400 + 2440587.5)))
    GROUP BY user_id, session_id, day;
-- A keyed lookup per row: an UPDATE ... FROM (subquery) compares every row with every row.
UPDATE admin_session_days SET active_seconds = COALESCE((
    SELECT CAST(ROUND(a.seconds) AS INTEGER) FROM temp.day_active a WHERE a.user_id = admin_session_days.user_id
    AND a.day = admin_session_days.day AND a.session_id = admin_session_days.session_id), 0);
DROP TABLE temp.day_active;

INSERT INTO admin_model_days
    SELECT user_id, substr(ts, 1, 10), COALESCE(model, ''), COALESCE(speed, ''),
           (input_tokens + cache_read_tokens + cache_creation_tokens > 100000)
           + (input_tokens + cache_read_tokens + cache_creation_tokens > 200000), COUNT(*), TOTAL(input_tokens),
           TOTAL(output_tokens), TOTAL(cache_read_tokens),
           TOTAL(cache_creation_tokens - MIN(COALESCE(cache_1h_tokens, 0), cache_creation_tokens)),
           TOTAL(MIN(COALESCE(cache_1h_tokens, 0), cache_creation_tokens))
    FROM user_messages GROUP BY 1, 2, 3, 4, 5;
