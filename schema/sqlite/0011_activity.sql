-- 0011: the analysts' activity pages.
--   users.tz: the analyst's time zone (an IANA name), remembered on the server so that days are
--             theirs on every device; NULL until the page's script or ?tz= sets it (UTC meanwhile).
--   usage_events by (user, session): the session view reads one session's tools, skills,
--             subagents, MCP calls and commands without scanning the user's history.
ALTER TABLE users ADD COLUMN tz TEXT;
CREATE INDEX usage_events_user_session ON usage_events(user_id, session_id, ts);
