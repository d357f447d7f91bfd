-- 0015: the operators' tools table (/admin, /api/admin/usage) reads an aggregate kept at write time,
-- never the raw usage events: one row per (UTC day, analyst, session, kind, name, plugin source)
-- with its invocations and errors. Kept per session because distinct sessions and analysts cannot
-- be summed over days: a range counts COUNT(DISTINCT ...) over its rows. Each event counts once per
-- analyst (files holding copies of a session share event ids), as the daily rollups count.
-- kind: 'skill' when the event names a skill, else its event type (tool_use, subagent, mcp_call,
-- slash_command); name: the skill, the subagent type, '/' and the command, or the tool.
-- The worker's rollup step keeps it with usage_tool_daily, for the days ingest marks dirty.
CREATE TABLE admin_tool_days (
    day         TEXT    NOT NULL,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_id  TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    invocations INTEGER NOT NULL,
    errors      INTEGER NOT NULL,
    PRIMARY KEY (day, user_id, session_id, kind, name, source)
) WITHOUT ROWID;

INSERT INTO admin_tool_days (day, user_id, session_id, kind, name, source, invocations, errors)
    SELECT day, user_id, session_id, kind, name, source, COUNT(*), SUM(is_error)
    FROM (SELECT substr(MIN(ts), 1, 10) AS day, user_id, MIN(session_id) AS session_id, MAX(is_error) AS is_error,
                 MIN(source) AS source,
                 CASE WHEN MIN(skill_name) IS NOT NULL THEN 'skill' ELSE MIN(event_type) END AS kind,
                 COALESCE(MIN(skill_name), CASE MIN(event_type) WHEN 'subagent' THEN MIN(subagent_type)
                          WHEN 'slash_command' THEN '/' || MIN(command_name) END, MIN(tool_name), '(unnamed)') AS name
          FROM usage_events GROUP BY user_id, event_id)
    GROUP BY day, user_id, session_id, kind, name, source;
