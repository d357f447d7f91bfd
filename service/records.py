"""Result types of the transcript parser: plain msgspec Structs, sent across processes as msgpack.

gc=False: they hold only scalars and lists of each other, never a cycle, so the garbage
collector need not track the ~25k of them a 200 MB bulk ingest builds and unpacks."""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = ["EventRow", "MessageRow", "ParseResult", "PromptRow", "SessionRow", "Summary"]


class Summary(msgspec.Struct, gc=False):
    """Per-file counters, with the meaning FORMAT.md gives each of them."""

    session_id: str
    started_at: datetime | None  # aware UTC
    ended_at: datetime | None
    active_seconds: int
    wall_seconds: int
    user_messages: int
    assistant_messages: int
    tool_calls: int
    tool_errors: int
    skill_invocations: int
    subagent_dispatches: int
    mcp_calls: int
    slash_commands: int
    distinct_tools: int
    distinct_skills: int
    primary_model: str | None
    prompts: int
    project: str | None
    skipped_lines: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int


class MessageRow(msgspec.Struct, array_like=True, gc=False):
    """One distinct assistant message of the file, with its largest usage per counter."""

    key: str  # message.id, "uuid:<line uuid>", or "line:<file_key>:<lineno>"
    session_id: str
    ts: str  # storage format; the first line of this message in the file
    input: int
    output: int
    cache_read: int
    cache_creation: int
    model: str | None  # message.model (the first named, of its lines)
    speed: str | None  # usage.speed: "fast" wins over any other value among its lines
    cache_5m: int  # usage.cache_creation's split of cache_creation: 5-minute writes
    cache_1h: int  # and 1-hour writes (cost only; cache_creation stays the flat field)


class PromptRow(msgspec.Struct, array_like=True, gc=False):
    """One prompt typed by the person (FORMAT.md "prompt")."""

    key: str  # line uuid, "line:<file_key>:<lineno>", or "enqueue:<timestamp>:<hash of the text>"
    session_id: str
    ts: str


class EventRow(msgspec.Struct, array_like=True, gc=False):
    """One usage event: a tool use, a subagent dispatch, an MCP call or a slash command."""

    event_id: str  # stable across parses and file names (never includes file_key)
    event_type: str  # "tool_use" | "subagent" | "mcp_call" | "slash_command"
    session_id: str
    ts: str
    tool_name: str | None
    skill_name: str | None
    subagent_type: str | None
    command_name: str | None
    is_error: bool


class SessionRow(msgspec.Struct, array_like=True, gc=False):
    """A session with lines in the file (a resumed session's file holds two or more)."""

    session_id: str
    project: str | None  # the cwd of the first of its lines in this file that has one
    last_ts: str | None  # storage format: its latest parsable timestamp in this file (resumed sessions)


class ParseResult(msgspec.Struct, gc=False):
    """Everything one parse of one file yields."""

    summary: Summary
    messages: list[MessageRow]
    prompts: list[PromptRow]
    events: list[EventRow]
    sessions: list[SessionRow]
    lines: int  # non-blank lines seen, skipped ones included
    bytes_read: int  # bytes of (decompressed) content consumed
    content_hash: str  # ingest.hashing: xxh3-128 of the raw bytes as stored (compressed if gzip), per 1 MiB block
    # An incremental pass (issue 24): summary and sessions are whole, but messages, prompts and events
    # hold only the rows that are new or changed since the pass the carried state came from, and
    # deleted_prompts the keys of prompt rows that are gone (a queued text written again later),
    # flipped_events the ids of stored event rows that become errors.
    incremental: bool = False
    deleted_prompts: list[str] = []
    flipped_events: list[str] = []  # stored events whose tool result (is_error) came in this pass
    # Where this pass began: the bytes, lines and skipped lines of the passes before it (0 for a full
    # pass), so that a pass reports what it read itself (the ingest report, /metrics).
    from_bytes: int = 0
    from_lines: int = 0
    from_skipped: int = 0
    # The parser's state after the file's last complete line, for the next pass (None: gzip, or a
    # last line too long to keep): opaque msgpack, stored as is.
    carry: bytes | None = None
