-- 0016: incremental ingest passes (issue 24). A transcript grows for hours, and each pass over it
-- read, parsed and rewrote the whole file. Now a pass over a grown file whose prefix is unchanged
-- parses only what follows its last complete line, on top of the parser's state after that line,
-- and writes only the rows that changed.
--   ingest_carry: one row per file, the parser's state after its last pass (its open messages and
--       counters, pending tool results and queued texts, sessions, line numbers) and the per-1 MiB
--       block hashes that check a grown file's prefix. Opaque msgpack (service/ingest/parser.py
--       _Stored, with its own version inside: a state of another version is ignored and the pass is
--       a full one), so no later schema change is needed when it changes. No text of a prompt is
--       in it (queued texts are kept as hashes). A file without a row takes a full pass, which
--       writes one: files processed before this script need no backfill.

CREATE TABLE ingest_carry (
    file_id INTEGER PRIMARY KEY REFERENCES session_files(id) ON DELETE CASCADE,
    state   BLOB    NOT NULL
);
