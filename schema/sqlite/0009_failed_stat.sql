-- 0009: the size and mtime a file had when its last failure was recorded (NULL when it
-- could not be stat'ed then: gone, or not reachable). A failing or quarantined file of
-- the watched directory is retried as soon as a scan sees it differ from that stat: its
-- content is new, as for a new upload, which already clears quarantine. Without them a
-- quarantined transcript that went on growing stayed uncounted until an operator acted.
ALTER TABLE session_files ADD COLUMN failed_size INTEGER;
ALTER TABLE session_files ADD COLUMN failed_mtime_ns INTEGER;
