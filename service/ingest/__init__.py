"""Transcript ingest: parsing (``parser``), processing one file (``processor``), the worker."""

# Bump when a change to parsing or counting must be applied to files already
# processed: the worker's reprocess loop then redoes every file below it.
# 1: the original pipeline (no token counters); 2: status frame counters and activity.
USAGE_PROCESSOR_VERSION = 2
