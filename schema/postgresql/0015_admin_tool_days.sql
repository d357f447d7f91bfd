-- 0015: the operators' tools table per (UTC day, analyst, session, kind, name, plugin source); see
-- schema/sqlite/0015_admin_tool_days.sql for what it holds and who keeps it.
CREATE TABLE admin_tool_days (
    day         TEXT COLLATE "C" NOT NULL,
    user_id     BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_id  TEXT COLLATE "C" NOT NULL,
    kind        TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    source      TEXT COLLATE "C" NOT NULL,
    invocations BIGINT NOT NULL,
    errors      BIGINT NOT NULL,
    PRIMARY KEY (day, user_id, session_id, kind, name, source)
);

INSERT INTO admin_tool_days (day, user_id, session_id, kind, name, source, invocations, errors)
    SELECT day, user_id, session_id, kind, name, source, COUNT(*), SUM(is_error)
    FROM (SELECT substr(MIN(ts), 1, 10) AS day, user_id, MIN(session_id) AS session_id, MAX(is_error) AS is_error,
                 MIN(source) AS source,
                 CASE WHEN MIN(skill_name) IS NOT NULL THEN 'skill' ELSE MIN(event_type) END AS kind,
                 COALESCE(MIN(skill_name), CASE MIN(event_type) WHEN 'subagent' THEN MIN(subagent_type)
                          WHEN 'slash_command' THEN '/' || MIN(command_name) END, MIN(tool_name), '(unnamed)') AS name
          FROM usage_events GROUP BY user_id, event_id) AS once
    GROUP BY day, user_id, session_id, kind, name, source;
