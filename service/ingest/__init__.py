"""Transcript ingest: parsing (``parser``), processing one file (``processor``), the worker."""

# Bump when a change to parsing or counting must be applied to files already
# processed: the worker's reprocess loop then redoes every file below it.
# 1: the original pipeline (no token counters); 2: status frame counters and activity;
# 3: a line without a timestamp after a <synthetic> line takes that line's timestamp;
# 4: activity and events belong to each line's own sessionId (a file can hold several),
#    repeated command tags and id-less tool uses in one line count each, counters past
#    int64 saturate instead of counting 0, primary_model ties go to the model named first;
# 5: FORMAT.md revision 2: resumed sessions' copies belong to the session copied from, enqueue
#    prompts, slash commands of local_command lines and without the slash, subagent messages in
#    agent_progress lines, no whole-line UTF-8 check; messages keep model, speed, cache split.
USAGE_PROCESSOR_VERSION = 5
