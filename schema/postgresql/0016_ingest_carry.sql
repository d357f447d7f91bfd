-- 0016: incremental ingest passes (issue 24): the parser's state after each file's last pass and the
-- per-1 MiB block hashes that check a grown file's prefix, as one opaque msgpack value per file. See
-- schema/sqlite/0016_ingest_carry.sql; a file without a row takes a full pass, so nothing is backfilled.
CREATE TABLE ingest_carry (
    file_id BIGINT PRIMARY KEY REFERENCES session_files(id) ON DELETE CASCADE,
    state   BYTEA  NOT NULL
);
