"""Transcript ingest: parsing (``parser``), processing one file (``processor``), the worker."""

# Bump when a change to parsing or counting must be applied to files already
# processed: the worker's reprocess loop then redoes every file below it.
# 1: the original pipeline (no token counters); 2: status frame counters and activity;
# 3: a line without a timestamp after a <synthetic> line takes that line's timestamp.
USAGE_PROCESSOR_VERSION = 3
