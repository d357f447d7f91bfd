-- 0018: on PostgreSQL, the rows ingest writes by the thousand lost their per-row key checks, which
-- each write's own locks and triggers replace (see schema/postgresql/0018). SQLite keeps its keys,
-- whose checks cost a B-tree lookup each; the version moves here too, so both backends keep one
-- numbering.
SELECT 1;
