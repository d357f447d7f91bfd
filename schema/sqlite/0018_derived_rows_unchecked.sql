-- 0018: on PostgreSQL, the derived per-user rows lost their per-row key check of the user (see
-- schema/postgresql/0018). SQLite keeps its keys, whose checks cost a B-tree lookup each; the
-- version moves here too, so both backends keep one numbering.
SELECT 1;
