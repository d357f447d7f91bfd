-- 0018: the rows ingest writes by the thousand carry no per-row key check (issue 23). PostgreSQL ran
-- each foreign-key check as a query of its own, once per row written (~10 us): over a third of the
-- server's time in a bulk ingest. What the checks guaranteed, the write now guarantees once per batch:
-- - the per-file rows (activity_messages, activity_prompts, usage_events): every write first locks its
--   files' rows in session_files (FOR KEY SHARE, as each check did) and writes none of a file that is
--   gone (service/store/ingest.py, "lock_files"); deleting a file takes its rows with it by the
--   trigger on session_files below, which replaces the cascade;
-- - the per-user rows derived from them (user_messages ... admin_tool_days): each ingest write first
--   locks its users' rows FOR KEY SHARE, as the checks did (lock_users in service/store/replicas.py),
--   so a user's deletion and a write of their rows wait for each other; the rollups and retention
--   hold WRITE_LOCK, whose shared side a deletion takes before the row goes (the trigger below); the
--   deleted user's rows go by the trigger on users below.
-- SQLite keeps its keys: there each check is a B-tree lookup (schema/sqlite/0018 changes nothing).
ALTER TABLE activity_messages DROP CONSTRAINT activity_messages_file_id_fkey;
ALTER TABLE activity_prompts DROP CONSTRAINT activity_prompts_file_id_fkey;
ALTER TABLE usage_events DROP CONSTRAINT usage_events_file_id_fkey;
ALTER TABLE usage_events DROP CONSTRAINT usage_events_user_id_fkey;
ALTER TABLE user_messages DROP CONSTRAINT user_messages_user_id_fkey;
ALTER TABLE user_prompts DROP CONSTRAINT user_prompts_user_id_fkey;
ALTER TABLE user_sessions DROP CONSTRAINT user_sessions_user_id_fkey;
ALTER TABLE user_hours DROP CONSTRAINT user_hours_user_id_fkey;
ALTER TABLE admin_session_days DROP CONSTRAINT admin_session_days_user_id_fkey;
ALTER TABLE admin_model_days DROP CONSTRAINT admin_model_days_user_id_fkey;
ALTER TABLE admin_tool_days DROP CONSTRAINT admin_tool_days_user_id_fkey;

-- The parser's state kept per file (schema 0016: ~5 kB of msgpack) is compressed with lz4 where the
-- server has it: pglz took ~0.1 ms a row to write. A server built without lz4 keeps pglz.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN  -- per-column compression: 14 and later
        EXECUTE 'ALTER TABLE ingest_carry ALTER COLUMN state SET COMPRESSION lz4';
    END IF;
EXCEPTION WHEN feature_not_supported THEN NULL;
END
$$;

-- A file's rows go with it (also when the file goes with its user: the cascade from users fires it).
CREATE FUNCTION session_files_forget_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM activity_messages WHERE file_id IN (SELECT id FROM gone);
    DELETE FROM activity_prompts WHERE file_id IN (SELECT id FROM gone);
    DELETE FROM usage_events WHERE file_id IN (SELECT id FROM gone);
    RETURN NULL;
END
$$;
CREATE TRIGGER session_files_forget_rows AFTER DELETE ON session_files REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION session_files_forget_rows();

-- Before a user's row goes: wait for a rollup or a retention run in progress, and keep new ones out
-- until this deletion commits (they hold WRITE_LOCK, 0x61676E65 = LOCK_SPACE and 0, exclusively, and
-- write derived rows of every user). Ingest writes hold the user's row itself (lock_users).
CREATE FUNCTION users_lock_before_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1634168421, 0);
    RETURN OLD;
END
$$;
CREATE TRIGGER users_lock_before_delete BEFORE DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION users_lock_before_delete();

-- After the statement: the deleted users' derived rows, one statement per table.
CREATE FUNCTION users_forget_derived_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM user_messages WHERE user_id IN (SELECT id FROM gone);
    DELETE FROM user_prompts WHERE user_id IN (SELECT id FROM gone);
    DELETE FROM user_sessions WHERE user_id IN (SELECT id FROM gone);
    DELETE FROM user_hours WHERE user_id IN (SELECT id FROM gone);
    DELETE FROM admin_session_days WHERE user_id IN (SELECT id FROM gone);
    DELETE FROM admin_model_days WHERE user_id IN (SELECT id FROM gone);
    DELETE FROM admin_tool_days WHERE user_id IN (SELECT id FROM gone);
    DELETE FROM usage_events WHERE user_id IN (SELECT id FROM gone);
    RETURN NULL;
END
$$;
CREATE TRIGGER users_forget_derived_rows AFTER DELETE ON users REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION users_forget_derived_rows();
