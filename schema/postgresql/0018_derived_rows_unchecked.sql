-- 0018: the per-user rows that ingest derives carry no per-row key check of their user (issue 23).
-- Each row of these tables is computed, in the transaction that writes it, from per-file rows whose
-- own keys are checked (file_id -> session_files -> users) or from the same user's derived rows, under
-- that user's advisory lock (service/store/replicas.py). PostgreSQL ran the check once per row written,
-- ~10 us each: with the file keys, foreign-key checks were over a third of the server's time in a bulk
-- ingest. Deleting a user still takes their rows with it: the cascade is two triggers below, and the
-- events go with the user's files (usage_events keeps its file_id key). SQLite keeps its keys: its
-- checks cost a B-tree lookup (schema/sqlite/0018 changes nothing).
ALTER TABLE usage_events DROP CONSTRAINT usage_events_user_id_fkey;
ALTER TABLE user_messages DROP CONSTRAINT user_messages_user_id_fkey;
ALTER TABLE user_prompts DROP CONSTRAINT user_prompts_user_id_fkey;
ALTER TABLE user_sessions DROP CONSTRAINT user_sessions_user_id_fkey;
ALTER TABLE user_hours DROP CONSTRAINT user_hours_user_id_fkey;
ALTER TABLE admin_session_days DROP CONSTRAINT admin_session_days_user_id_fkey;
ALTER TABLE admin_model_days DROP CONSTRAINT admin_model_days_user_id_fkey;
ALTER TABLE admin_tool_days DROP CONSTRAINT admin_tool_days_user_id_fkey;

-- Before a user's row goes: wait for any write of their rows in progress (it holds the user's lock,
-- 0x61676E66 = USER_LOCK_SPACE), and keep new ones out until this deletion commits. A write that
-- comes after it finds the user's files gone, and fails on their keys or derives nothing.
CREATE FUNCTION users_lock_before_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1634168422, CAST(OLD.id AS integer));
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
