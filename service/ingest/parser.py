"""Transcript parser: one Claude Code JSONL file in, one ParseResult out (FORMAT.md rules)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import re
import stat
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO

import msgspec
import xxhash
from msgspec import UNSET, UnsetType

from ..timeutil import to_store
from .hashing import BlockHasher
from ..records import EventRow, MessageRow, ParseResult, PromptRow, SessionRow, Summary

__all__ = ["CARRY_VERSION", "MAX_LINE_BYTES", "READ_CHUNK", "open_regular", "parse_file", "parse_grown",
           "parse_stream"]

logger = logging.getLogger(__name__)

# Read at call time, so tests can lower them with monkeypatch.
MAX_LINE_BYTES = 32 * 1024 * 1024
READ_CHUNK = 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_UTC = timezone.utc
_ONE_SECOND = timedelta(seconds=1)
_ACTIVITY_GAP = timedelta(seconds=600)
_INT64_MAX = 2**63 - 1
_SYNTHETIC = "<synthetic>"
_FAST = "fast"
_SUBAGENT_TOOLS = frozenset({"Task", "Agent"})
_HARNESS_MARKERS = (
    "<command-name>",
    "<command-message>",
    "<command-args>",
    "<local-command-stdout>",
    "<local-command-stderr>",
    "<local-command-caveat>",
    "<system-reminder>",
    "<task-notification>",
    "[Request interrupted by user",
    "Caveat: The messages below were generated",
)
_COMMAND_TAG = "<command-name>"
_NEWLINE_RUN = re.compile(rb"\n+")
# The slash is optional: version 1.0.x writes <command-name>init</command-name> (FORMAT.md revision 2).
_COMMAND_RE = re.compile(r"<command-name>/?([A-Za-z][\w:-]*)</command-name>")
_EVENT_SEP = "\x1f"
_SURROGATE = re.compile("[\ud800-\udfff]")
_BLANK = object()  # a line of only white space: not a line at all


# --- Views: only the fields FORMAT.md uses, so msgspec skips the rest (tool output is most of the
# bytes). gc=False because views are short-lived trees with no cycles. A wrong-typed field raises
# ValidationError and sends the line to the tolerant path; values that must never do that
# (usage counters, tool input keys) are typed Any and checked where used.


class _Input(msgspec.Struct, gc=False):
    skill: Any = None
    name: Any = None
    subagent_type: Any = None


class _Block(msgspec.Struct, gc=False):
    type: str | None = None
    id: str | None = None
    name: str | None = None
    input: _Input | None = None
    tool_use_id: str | None = None
    is_error: bool | None = None
    text: str | None = None


class _CacheCreation(msgspec.Struct, gc=False):
    ephemeral_5m_input_tokens: Any = 0
    ephemeral_1h_input_tokens: Any = 0


class _Usage(msgspec.Struct, gc=False):
    input_tokens: Any = 0
    output_tokens: Any = 0
    cache_read_input_tokens: Any = 0
    cache_creation_input_tokens: Any = 0
    cache_creation: _CacheCreation | None = None  # the 5-minute / 1-hour split: cost only
    speed: Any = None  # "fast" in fast mode


class _Message(msgspec.Struct, gc=False):
    id: str | None = None
    model: str | None = None
    content: str | list[_Block] | None = None
    usage: _Usage | None = None


class _Attachment(msgspec.Struct, gc=False):
    type: str | None = None
    prompt: Any = None  # queued_command: the text typed while Claude was working


_NO_DATA = msgspec.Raw()


class _SubLine(msgspec.Struct, gc=False):
    """A subagent's line inside a progress line's data.message (agent_progress)."""

    type: str | None = None
    uuid: str | None = None
    timestamp: str | None = None
    message: _Message | UnsetType = UNSET


class _Progress(msgspec.Struct, gc=False):
    type: str | None = None
    # Raw: decoded only for agent_progress, and a shape we do not know never fails the line.
    message: msgspec.Raw = _NO_DATA


class _Line(msgspec.Struct, gc=False):
    type: str | None = None
    uuid: str | None = None
    sessionId: str | None = None
    timestamp: str | None = None
    cwd: str | None = None
    isSidechain: bool | None = None
    isMeta: bool | None = None
    isCompactSummary: bool | None = None
    # No None here: `"message": null` is "present but not an object" and must skip the line.
    message: _Message | UnsetType = UNSET
    attachment: _Attachment | None = None
    tool_use_id: str | None = None  # top-level tool_use_result lines (older versions)
    is_error: bool | None = None
    subtype: str | None = None  # system lines: local_command
    operation: str | None = None  # queue-operation lines: enqueue
    content: str | None = None  # queue-operation and system lines
    # progress lines: kept undecoded (most are hook and tool progress) until the type says agent_progress
    data: msgspec.Raw = _NO_DATA


class _LooseLine(msgspec.Struct, gc=False):
    """Same keys as _Line, untyped: decoding fails only when the line is not an object."""

    type: Any = None
    uuid: Any = None
    sessionId: Any = None
    timestamp: Any = None
    cwd: Any = None
    isSidechain: Any = None
    isMeta: Any = None
    isCompactSummary: Any = None
    message: Any = UNSET
    attachment: Any = None
    tool_use_id: Any = None
    is_error: Any = None
    subtype: Any = None
    operation: Any = None
    content: Any = None
    data: Any = None


# float_hook: an out-of-range float (1e400) in an untyped field is valid JSON, not a reason to skip.
_decode_strict = msgspec.json.Decoder(_Line, float_hook=float).decode
_decode_loose = msgspec.json.Decoder(_LooseLine, float_hook=float).decode
_decode_progress = msgspec.json.Decoder(_Progress).decode
_decode_sub = msgspec.json.Decoder(_SubLine, float_hook=float).decode


def parse_file(
    path: str | os.PathLike[str], *, file_key: str, received_at: datetime, follow_symlinks: bool = True
) -> ParseResult:
    """Parse one transcript file (plain or gzip, by content); CPU-bound: not on the event loop."""
    with open_regular(path, follow_symlinks=follow_symlinks) as fileobj:
        return parse_stream(
            fileobj, file_key=file_key, fallback_session_id=_fallback_session(path), received_at=received_at
        )


def _fallback_session(path: str | os.PathLike[str]) -> str:
    """The session of a file none of whose lines names one: its name, or its session's folder."""
    parent, name = os.path.split(os.fspath(path))
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".jsonl"):
        name = name[:-6]
    grandparent, folder = os.path.split(parent)
    if folder == "subagents" and os.path.basename(grandparent):
        # <session>/subagents/agent-<id>.jsonl: a subagent file is not a new session (FORMAT.md).
        name = os.path.basename(grandparent)
    return name


def parse_grown(
    path: str | os.PathLike[str], *, file_key: str, received_at: datetime, carry: bytes,
    follow_symlinks: bool = True,
) -> ParseResult | None:
    """An incremental pass (issue 24): parse only what follows the last complete line of the pass
    that left ``carry``, on top of the parser's state then; None when it cannot be one (the file did
    not grow, its prefix changed, a state of another version or file, any doubt): a full pass then.

    The prefix is checked without reading it: the stored size and the hashes of the last full 1 MiB
    block and of the partial one after it (ingest.hashing). The result equals a full parse's numbers;
    its rows are only those that changed (ParseResult.incremental).
    """
    try:
        stored = _decode_stored(carry)
    except msgspec.DecodeError:  # ValidationError included: a state of another shape
        return None
    if stored.version != CARRY_VERSION:
        return None
    with open_regular(path, follow_symlinks=follow_symlinks) as fileobj:
        if os.fstat(fileobj.fileno()).st_size <= stored.size:
            return None
        state = _FileState.thaw(stored, file_key, MAX_LINE_BYTES)
        if state is None:
            return None
        offset = state.bytes_read
        state.fallback_session_id = _fallback_session(path)
        if stored.tail_len and not _same_tail(fileobj, offset, stored):
            return None
        kept = len(stored.blocks) - 1  # the last full block is hashed again: part of the check
        hasher = BlockHasher(stored.blocks[:kept] if kept > 0 else None)
        try:
            state.read(_grown_chunks(fileobj, min(offset, hasher.pos), offset, hasher, stored),
                       at_start=offset == 0)
            return state.finish(state.fallback_session_id, received_at, hasher)
        except _NeedFull as exc:
            logger.debug("full pass instead: %s", exc, extra={"file": file_key})
            return None


class _NeedFull(Exception):
    """An incremental pass cannot give a full pass's numbers: do a full pass."""


def _same_tail(fileobj: BinaryIO, offset: int, stored: _Stored) -> bool:
    """The last line of the previous pass had no newline yet but counted (complete JSON): it must be
    the same line now, with at most white space before its newline."""
    data = os.pread(fileobj.fileno(), stored.tail_len + 4096, offset)
    if xxhash.xxh3_64_digest(data[:stored.tail_len]) != stored.tail_hash:
        return False
    rest = data[stored.tail_len:]
    newline = rest.find(b"\n")
    return newline >= 0 and not rest[:newline].strip()


def _grown_chunks(fileobj: BinaryIO, start: int, offset: int, hasher: BlockHasher,
                  stored: _Stored) -> Iterator[bytes]:
    """The bytes from ``offset`` on, for the parser, reading from ``start``: every byte from
    hasher.pos on is hashed, and when the hash reaches the stored size the prefix must match."""
    fileobj.seek(start)
    pos = start
    check_at = stored.size
    checked = False
    for data in _raw_chunks(fileobj, None):
        n = len(data)
        view = memoryview(data)
        first_hashed = hasher.pos - pos
        if first_hashed < n:
            if not checked and pos + n >= check_at:
                cut = check_at - pos
                hasher.update(view[first_hashed:cut])
                if hasher.blocks != stored.blocks or hasher.tail() != stored.partial:
                    raise _NeedFull("the prefix changed")
                checked = True
                hasher.update(view[cut:])
            else:
                hasher.update(view[first_hashed:])
        first_parsed = offset - pos
        if first_parsed < n:
            yield data if first_parsed <= 0 else data[first_parsed:]  # type: ignore[misc]
        pos += n
    if not checked:
        raise _NeedFull("the file shrank while read")


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> BinaryIO:
    """Open a transcript for reading, unbuffered; only a regular file.

    A FIFO or device would block the parse process forever (O_NONBLOCK makes opening a FIFO
    return at once, then fstat refuses it). Without ``follow_symlinks`` (files of the watched
    directory, which others can write), a path reached through a symlink anywhere is refused: a
    symlink put in place of a registered file or folder could point at another user's upload.
    Checking the path first and opening it after is a race (a folder swapped for a symlink in
    between, RENAME_EXCHANGE in a loop), so every component is opened from the root down,
    relative to its parent's descriptor, with O_NOFOLLOW: what is checked is what is read.
    Watched files are registered by their real path, so no component of it may be a symlink.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if follow_symlinks:
        fd = os.open(path, flags)
    else:
        fd = _open_without_links(os.fspath(path), flags | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{os.fspath(path)} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _open_without_links(path: str, flags: int) -> int:
    """Open an absolute path one component at a time (``dir_fd``), none of them a symlink."""
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        raise ValueError(f"{path} is not an absolute, normalised path")
    *folders, name = path.split(os.sep)[1:]
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    current = os.open(os.sep, dir_flags)
    try:
        for folder in folders:
            try:
                child = os.open(folder, dir_flags, dir_fd=current)
            except OSError as exc:
                # A symlink opened with O_NOFOLLOW | O_DIRECTORY is ENOTDIR (ELOOP on some systems).
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ValueError(f"{path} is reached through a symbolic link") from None
                raise
            os.close(current)
            current = child
        try:
            return os.open(name, flags, dir_fd=current)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ValueError(f"{path} is reached through a symbolic link") from None
            raise
    finally:
        os.close(current)


def parse_stream(
    fileobj: BinaryIO, *, file_key: str, fallback_session_id: str, received_at: datetime
) -> ParseResult:
    """Parse an open binary stream; memory stays bounded by MAX_LINE_BYTES plus the emitted rows."""
    hasher = BlockHasher()
    state = _FileState(file_key, MAX_LINE_BYTES)
    state.fallback_session_id = fallback_session_id
    gzipped: list[bool] = []
    state.read(_content_chunks(fileobj, hasher, file_key, gzipped))
    # A gzip file keeps no state: zlib's cannot be kept, so a grown one takes a full pass.
    return state.finish(fallback_session_id, received_at, hasher, keep=not gzipped)


# --- Reading: raw chunks (hashed as stored), gunzipped when the content says so.


def _raw_chunks(fileobj: BinaryIO, hasher: BlockHasher | None) -> Iterator[bytes]:
    """The stored bytes in READ_CHUNK pieces, each hashed; a full piece is one reused buffer.

    Reading into one buffer instead of a new 1 MB object per read saves the page faults of
    fresh memory (a tenth of a parse in a new worker process). Consumers must be done with a
    piece before they ask for the next one (the line cutter copies what it carries over).
    """
    size = READ_CHUNK
    readinto = getattr(fileobj, "readinto", None)
    if readinto is None:
        read = fileobj.read
        while data := read(size):
            if hasher is not None:
                hasher.update(data)
            yield data
        return
    buf = bytearray(size)
    view = memoryview(buf)
    while True:
        n = readinto(buf)
        if not n:
            return
        data = buf if n == size else bytes(view[:n])
        if hasher is not None:
            hasher.update(data)
        yield data  # type: ignore[misc]


def _content_chunks(fileobj: BinaryIO, hasher: BlockHasher, file_key: str, gzipped: list[bool]) -> Iterator[bytes]:
    raw = _raw_chunks(fileobj, hasher)
    head = b""
    for data in raw:
        head += data
        if len(head) >= len(_GZIP_MAGIC):
            break
    if not head.startswith(_GZIP_MAGIC):
        if head:
            yield head
        yield from raw
        return
    gzipped.append(True)
    yield from _gunzip(itertools.chain((head,), raw), file_key)
    # A corrupt or trailing part stops decompression, but the hash covers every stored byte.
    for _ in raw:
        pass


def _gunzip(raw: Iterable[bytes], file_key: str) -> Iterator[bytes]:
    """Decompress gzip members in bounded pieces; a truncated stream just ends (growing file)."""
    limit = READ_CHUNK
    produced = 0
    d = zlib.decompressobj(_GZIP_WBITS)
    try:
        for data in raw:
            while True:
                if d.eof:
                    # Concatenated members are one valid gzip stream.
                    d = zlib.decompressobj(_GZIP_WBITS)
                # max_length bounds memory even for a decompression bomb.
                out = d.decompress(data, limit)
                if out:
                    produced += len(out)
                    yield out
                data = d.unused_data if d.eof else d.unconsumed_tail
                # A full buffer may leave output inside zlib even when the input is used up.
                if not data and (d.eof or len(out) < limit):
                    break
    except zlib.error as exc:
        # The lines before this point still count; the operator learns which file is damaged.
        logger.warning("gzip content of %s unreadable after %d bytes: %s", file_key, produced, exc,
                       extra={"file": file_key})


# --- Counting.


def _parse_ts(text: str) -> datetime | None:
    """An ISO 8601 text as an aware UTC datetime (naive taken as UTC), or None."""
    try:
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is not _UTC:
            dt = dt.replace(tzinfo=_UTC) if dt.tzinfo is None else dt.astimezone(_UTC)
        return dt
    except (ValueError, OverflowError):
        return None


def _store_text(raw: str) -> str:
    """timeutil.to_store of a parsable timestamp text; cheap for the writer's usual form."""
    # "2026-11-21T07:00:23.400Z": fromisoformat accepted it, so with these separators in place
    # every other character is a digit, and only the microseconds need padding.
    if len(raw) == 24 and raw[4:20:3] == "--T::." and raw[23] == "Z" and raw[0] != "0":
        return raw[:23] + "000Z"
    dt = _parse_ts(raw)
    assert dt is not None  # only texts that parsed are kept
    return to_store(dt)


def _text_digest(text: str) -> str:
    """The hash that keys a queued text (the database, and the state kept between passes, hold no text)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def _is_prompt_text(text: str) -> bool:
    text = text.lstrip()
    return bool(text) and not text.startswith(_HARNESS_MARKERS)


def _counter(value: Any) -> int:
    """A usage counter: 0 unless a non-negative int (bool is an int subclass, which `type() is int`
    keeps out), saturating at SQLite's int64."""
    if type(value) is not int or value < 0:
        return 0
    return value if value <= _INT64_MAX else _INT64_MAX


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _loose_block(raw: dict[str, Any]) -> _Block:
    inp = raw.get("input")
    return _Block(
        type=_str(raw.get("type")),
        id=_str(raw.get("id")),
        name=_str(raw.get("name")),
        input=(
            _Input(inp.get("skill"), inp.get("name"), inp.get("subagent_type"))
            if isinstance(inp, dict)
            else None
        ),
        tool_use_id=_str(raw.get("tool_use_id")),
        is_error=_bool(raw.get("is_error")),
        text=_str(raw.get("text")),
    )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _escape_lone_surrogates(value: Any) -> Any:
    """The decoded line with each lone surrogate spelled as its escape (the six characters
    "\\ud83d"): such a string is valid JSON but not UTF-8, so SQLite cannot store it, and one id
    holding one must not fail the whole file. Distinct surrogates stay distinct keys."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(value) else value
    if isinstance(value, list):
        return [_escape_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_escape_lone_surrogates(k): _escape_lone_surrogates(v) for k, v in value.items()}
    return value


def _loose_line(line: memoryview) -> _Line | None:
    """Tolerant decode for lines the strict view rejects; None when the line must be skipped."""
    try:
        loose = _decode_loose(line)
    except (msgspec.ValidationError, RecursionError):
        return None  # not a JSON object, or nested too deep to read
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec refuses lone surrogate escapes ("\ud83d"), which RFC 8259 allows and Node
        # writes when it cuts a string between the halves of a pair: ask Python's json.
        data = bytes(line)
        if b"\\u" not in data:
            return None
        try:
            obj = _escape_lone_surrogates(json.loads(data, parse_constant=_reject_constant))
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        try:
            loose = msgspec.convert(obj, _LooseLine)
        except RecursionError:
            return None
    raw_msg = loose.message
    message: _Message | UnsetType
    if raw_msg is UNSET:
        message = UNSET
    elif not isinstance(raw_msg, dict):
        return None
    else:
        content = raw_msg.get("content")
        if isinstance(content, list):
            content = [_loose_block(b) for b in content if isinstance(b, dict)]
        elif not isinstance(content, str):
            content = None
        usage = raw_msg.get("usage")
        split = usage.get("cache_creation") if isinstance(usage, dict) else None
        message = _Message(
            id=_str(raw_msg.get("id")),
            model=_str(raw_msg.get("model")),
            content=content,
            usage=(
                _Usage(
                    usage.get("input_tokens", 0),
                    usage.get("output_tokens", 0),
                    usage.get("cache_read_input_tokens", 0),
                    usage.get("cache_creation_input_tokens", 0),
                    _CacheCreation(split.get("ephemeral_5m_input_tokens", 0),
                                   split.get("ephemeral_1h_input_tokens", 0)) if isinstance(split, dict) else None,
                    usage.get("speed"),
                )
                if isinstance(usage, dict)
                else None
            ),
        )
    attachment = loose.attachment
    data = loose.data
    return _Line(
        type=_str(loose.type),
        uuid=_str(loose.uuid),
        sessionId=_str(loose.sessionId),
        timestamp=_str(loose.timestamp),
        cwd=_str(loose.cwd),
        isSidechain=_bool(loose.isSidechain),
        isMeta=_bool(loose.isMeta),
        isCompactSummary=_bool(loose.isCompactSummary),
        message=message,
        attachment=(
            _Attachment(_str(attachment.get("type")), attachment.get("prompt"))
            if isinstance(attachment, dict) else None
        ),
        tool_use_id=_str(loose.tool_use_id),
        is_error=_bool(loose.is_error),
        subtype=_str(loose.subtype),
        operation=_str(loose.operation),
        content=_str(loose.content),
        # Back to JSON, so a progress line takes one path whichever decoder read it.
        data=msgspec.Raw(msgspec.json.encode(data)) if isinstance(data, dict) else _NO_DATA,
    )


# The parser's state between passes (issue 24), stored per file as opaque msgpack. Bump
# CARRY_VERSION whenever its shape or meaning changes: a state of another version is ignored
# (the next pass is a full one), so no migration is ever needed.
CARRY_VERSION = 3


# The keys of what a later line is not expected to name again are kept as 32-bit hashes: a line that
# names one takes a full pass, so a collision costs a needless full pass, never a wrong number.
def _key_hash(key: str) -> int:
    return xxhash.xxh32_intdigest(key.encode("utf-8", "surrogatepass"))


def _event_hash(event_id: str) -> int:
    return int(event_id[:8], 16)


def _pack(hashes: Iterable[int]) -> bytes:
    return array("I", hashes).tobytes()


class _Hashes(bytes):
    """Packed 32-bit hashes (_pack), looked up in place: a pass looks up a few dozen keys, where making
    a set of the thousands of a long session's hashes on every pass (and packing it again) cost more."""

    def __contains__(self, value: object) -> bool:
        needle = _pack((value,))  # type: ignore[arg-type]
        at = self.find(needle)
        while at >= 0:
            if at % len(needle) == 0:  # a whole item, not the end of one and the start of the next
                return True
            at = self.find(needle, at + 1)
        return False

    def plus(self, hashes: Iterable[int]) -> bytes:
        """These and more hashes, packed. The new ones are never among these (a key of an earlier
        pass named again takes a full pass), so nothing is repeated but a 32-bit collision."""
        return self + _pack(set(hashes))


class _State(msgspec.Struct, array_like=True, gc=False):
    """A _FileState after a file's last complete line (see _FileState for what each holds)."""

    file_key: str
    offset: int  # content bytes consumed: the start of the line that had no newline yet
    lineno: int
    lines: int
    skipped: int
    user_messages: int
    session_id: str | None
    project: str | None
    current_session: str | None
    session_projects: list[tuple[str | None, str | None]]
    models_seen: list[str]
    block_starts: list[datetime]
    block_ends: list[datetime]
    last_raw: str | None
    earliest_synthetic: datetime | None
    # Only what a later line may still change is kept whole: the messages of the last pass (a message
    # streamed across the cut), the tool uses without a result yet, the queued texts. Everything else
    # is a 32-bit hash of its key, enough to see a later line come back to it: that line takes a
    # full pass.
    message_keys: list[str]
    messages: list[list[Any]]
    old_messages: bytes  # packed hashes of the other messages' keys
    old_message_count: int
    old_prompts: bytes  # packed hashes of the prompts' keys (queued texts apart)
    old_prompt_count: int
    old_tools: bytes  # packed hashes of answered tool ids
    old_tool_errors: int  # how many of those have an error result
    old_events: bytes  # packed hashes (first 32 bits) of the row ids of events without a tool id
    pending_keys: list[str]
    pending: list[list[list[Any]]]
    session_last: list[tuple[str | None, datetime, str]]
    # Events are not kept (their rows are stored): only the ids of their rows, per tool id for a
    # tool result that comes later, and what the summary counts over them.
    tool_ids: dict[str, str | None]  # tool id -> its event's row id, of tool uses without a result yet
    error_ids: list[str]
    # What the summary sums over every message and event, kept so a pass does not go over them all.
    event_counts: dict[str, int]  # per event type, and "skill"
    tool_names: list[str]
    skill_names: list[str]
    totals: list[int]  # input, output, cache_read, cache_creation over the messages
    model_counts: dict[str, int]  # messages per model


class _Stored(msgspec.Struct, array_like=True, gc=False):
    """What is kept of a file between passes: the parser's state and what the rows stored hold."""

    version: int
    state: bytes  # a _State, encoded
    none_stamp: str  # the stamp rows without a timestamp got
    unstamped: bool  # some stored row has no timestamp of its own
    size: int  # bytes hashed (the file as read)
    blocks: list[bytes]  # xxh3-128 of each full 1 MiB block
    partial: bytes  # and of the partial block after them
    tail_len: int  # > 0: the line without a newline counted (complete JSON): its length
    tail_hash: bytes  # and its xxh3-64


_encode_carry = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(_State).decode
_decode_stored = msgspec.msgpack.Decoder(_Stored).decode


class _Prev(msgspec.Struct, gc=False):
    """What the rows stored by the previous pass hold, to tell which rows change."""

    pending: set[str]  # keys of its prompt rows of queued texts not yet resolved
    error_ids: frozenset[str]
    session_id: str | None
    none_stamp: str
    unstamped: bool


class _FileState:
    """Counters of one file while it streams by; `_count` is the hot path.

    Row timestamps are kept as the line's own timestamp text (None before the first one) and
    formatted once in `finish`, when the earliest timestamp of the file is known.
    """

    def __init__(self, file_key: str, max_line: int) -> None:
        self.file_key = file_key
        self.max_line = max_line
        self.bytes_read = 0
        self.lines = 0
        self.skipped = 0
        self.counted_before = (0, 0, 0)  # bytes, lines, skipped of the passes before this one
        self.user_messages = 0
        self.session_id: str | None = None  # the file's session: its first sessionId
        self.project: str | None = None
        # A line belongs to its own sessionId (a resumed session's file also holds the copied
        # lines of the session it resumed); a line without one, to the nearest earlier line's.
        self.current_session: str | None = None
        # session -> the cwd of its first line that has one (None: lines before any sessionId)
        self.session_projects: dict[str | None, str | None] = {}
        self.models_seen: dict[str, None] = {}  # models in the order the file first names them
        # Activity blocks as sorted parallel lists: O(blocks) memory, not O(lines).
        self.block_starts: list[datetime] = []
        self.block_ends: list[datetime] = []
        # The nearest earlier parsable timestamp, as text (for rows) and parsed.
        self.last_raw: str | None = None
        # The earliest timestamp of a harness-made line (not activity, but "the earliest timestamp
        # in the file" for the lines before the first one).
        self.earliest_synthetic: datetime | None = None
        # key -> [ts text, input, output, cache_read, cache_creation, model, session of its first line,
        #         5-minute cache writes, 1-hour cache writes, speed]
        self.messages: dict[str, list[Any]] = {}
        self.prompts: dict[str, tuple[str | None, str | None]] = {}  # key -> (ts text, session)
        # Queued (enqueue) texts not yet known to be written again: digest of the stripped text ->
        # [(key, ts text, session)] (a digest, not the text: this state is stored between passes). A queued_command attachment or a user line with the same text later in the
        # file is that prompt already; what remains at the end is a prompt of its own.
        self.pending_enqueues: dict[str, list[tuple[str, str | None, str | None]]] = {}
        # session -> (its latest timestamp in the file, as parsed and as text)
        self.session_last: dict[str | None, tuple[datetime, str]] = {}
        # (uuid part, tool id, type, tool name, skill, subagent type, command, ts text, session)
        self.events: list[tuple[Any, ...]] = []
        self.tool_ids: dict[str, str | None] = {}  # tool id -> its event's row id (once given)
        self.other_event_ids: list[str] = []  # row ids of events without a tool id
        self.answered: set[str] = set()  # tool ids with a result
        # Of earlier passes, as hashes (see _State): a later line that names one takes a full pass.
        self.old_messages = self.old_prompts = self.old_tools = self.old_events = _Hashes()
        self.old_message_count = self.old_prompt_count = self.old_tool_errors = 0
        self.error_ids: set[str] = set()
        # Between passes (issue 24): the next line's number, the state after the last complete
        # line (encoded), and the line without a newline after it when it counted (length, hash).
        self.lineno = 1
        self.snapshot: bytes | None = None
        self.records = 0  # decoded lines counted
        self.tail_len = 0
        self.tail_hash = b""
        self.prev: _Prev | None = None  # set when resumed from a stored state
        self.dirty: set[str] = set()  # message keys whose row may have changed since then
        self.before: dict[str, list[Any] | None] = {}  # and their entry then (None: new)
        # Sums over the messages as of the stored state (or none), adjusted by the dirty ones.
        self.base_totals = [0, 0, 0, 0]
        self.base_models: dict[str, int] = {}
        # Event rows: ids so far (None: a repeat), the ids, and the summary's counts over them.
        self.event_ids: list[str | None] = []
        self.ids_session: str | None = None  # the file's session when they were given
        self.fallback_session_id: str | None = None  # the session when no line names one
        self.seen_events: set[str] = set()
        self.event_counts: dict[str, int] = {}
        self.tool_names: set[str] = set()
        self.skill_names: set[str] = set()

    @classmethod
    def thaw(cls, stored: _Stored, file_key: str, max_line: int) -> _FileState | None:
        """The state a previous pass left, or None if it is another file's."""
        try:
            st = _decode_state(stored.state)
        except msgspec.DecodeError:
            return None
        if st.file_key != file_key:
            return None
        self = cls(file_key, max_line)
        self.counted_before = (st.offset, st.lines, st.skipped)
        self.bytes_read = st.offset
        self.lineno = st.lineno
        self.lines = st.lines
        self.skipped = st.skipped
        self.user_messages = st.user_messages
        self.session_id = st.session_id
        self.project = st.project
        self.current_session = st.current_session
        self.session_projects = dict(st.session_projects)
        self.models_seen = dict.fromkeys(st.models_seen)
        self.block_starts = st.block_starts
        self.block_ends = st.block_ends
        self.last_raw = st.last_raw
        self.earliest_synthetic = st.earliest_synthetic
        self.messages = dict(zip(st.message_keys, st.messages))
        self.old_messages = _Hashes(st.old_messages)
        self.old_prompts = _Hashes(st.old_prompts)
        self.old_tools = _Hashes(st.old_tools)
        self.old_events = _Hashes(st.old_events)
        self.old_message_count = st.old_message_count
        self.old_prompt_count = st.old_prompt_count
        self.old_tool_errors = st.old_tool_errors
        self.pending_enqueues = dict(zip(st.pending_keys, st.pending))  # type: ignore[arg-type]
        self.session_last = {session: (ts, raw) for session, ts, raw in st.session_last}
        self.tool_ids = st.tool_ids
        self.error_ids = set(st.error_ids)
        pending = set()
        for queued in self.pending_enqueues.values():
            pending.update(key for key, _, _ in queued)
        self.prev = _Prev(pending, frozenset(st.error_ids), st.session_id,
                          stored.none_stamp, stored.unstamped)
        self.ids_session = st.session_id
        self.seen_events = {e for e in st.tool_ids.values() if e is not None}
        self.event_counts = st.event_counts
        self.tool_names = set(st.tool_names)
        self.skill_names = set(st.skill_names)
        self.base_totals = st.totals
        self.base_models = st.model_counts
        return self

    def _sums(self) -> tuple[list[int], dict[str, int]]:
        """Token totals and messages per model now: the stored sums, adjusted by the changed messages."""
        totals = list(self.base_totals)
        models = dict(self.base_models)
        messages = self.messages
        for key, old in self.before.items():
            new = messages[key]
            if old is not None:
                totals[0] -= old[1]
                totals[1] -= old[2]
                totals[2] -= old[3]
                totals[3] -= old[4]
                if old[5]:
                    models[old[5]] -= 1
            totals[0] += new[1]
            totals[1] += new[2]
            totals[2] += new[3]
            totals[3] += new[4]
            if new[5]:
                models[new[5]] = models.get(new[5], 0) + 1
        return totals, models

    def _event_ids(self, fallback_session_id: str | None) -> None:
        """Give each event not yet seen its row id (None: a repeat) and count it for the summary."""
        event_ids = self.event_ids
        seen = self.seen_events
        counts = self.event_counts
        session_id = self.session_id or fallback_session_id
        self.ids_session = self.session_id
        for uuid_part, tool_id, kind, name, skill, _, command, _, session in itertools.islice(
                self.events, len(event_ids), None):
            ident = _EVENT_SEP.join((session or session_id, uuid_part, tool_id or "", kind, name or "", command or ""))
            event_id = hashlib.blake2b(ident.encode(), digest_size=16).hexdigest()
            if event_id in seen:
                event_ids.append(None)
                continue
            # A tool use's event cannot repeat one of an earlier pass: its tool id would (see _tool_use).
            if not tool_id and self.old_events and _event_hash(event_id) in self.old_events:
                raise _NeedFull("an event of an earlier pass comes again")
            seen.add(event_id)
            event_ids.append(event_id)
            if tool_id:
                self.tool_ids[tool_id] = event_id
            else:
                self.other_event_ids.append(event_id)
            counts[kind] = counts.get(kind, 0) + 1
            if kind != "slash_command":
                if name:
                    self.tool_names.add(name)
                if kind == "tool_use" and name == "Skill":
                    counts["skill"] = counts.get("skill", 0) + 1
                    if skill:
                        self.skill_names.add(skill)

    def freeze(self, offset: int) -> bytes | None:
        """The state as it is now, encoded (a copy: parsing on changes nothing in it); None when it
        cannot be kept (token sums past 64 bits: absurd counters, counted by a full pass each time)."""
        self._event_ids(self.fallback_session_id)
        totals, models = self._sums()
        if max(totals) > _INT64_MAX:
            return None
        # Kept whole: the messages of this pass, the tool uses still waiting for their result.
        recent = self.before
        messages = self.messages
        old_messages = self.old_messages.plus(_key_hash(key) for key in messages if key not in recent)
        old_prompts = self.old_prompts.plus(map(_key_hash, self.prompts))
        answered = self.answered
        open_tools = {tool: event for tool, event in self.tool_ids.items() if tool not in answered}
        done_tools = [tool for tool in self.tool_ids if tool in answered]
        old_events = self.old_events.plus(map(_event_hash, self.other_event_ids))
        return _encode_carry(_State(
            self.file_key, offset, self.lineno, self.lines, self.skipped, self.user_messages, self.session_id,
            self.project, self.current_session, list(self.session_projects.items()), list(self.models_seen),
            self.block_starts, self.block_ends, self.last_raw, self.earliest_synthetic,
            list(recent), [messages[key] for key in recent],
            old_messages, self.old_message_count + len(messages) - len(recent),
            old_prompts, self.old_prompt_count + len(self.prompts),
            self.old_tools.plus(map(_key_hash, done_tools)),
            self.old_tool_errors + sum(1 for tool in done_tools if tool in self.error_ids),
            old_events,
            list(self.pending_enqueues), list(self.pending_enqueues.values()),  # type: ignore[arg-type]
            [(session, ts, raw) for session, (ts, raw) in self.session_last.items()],
            open_tools, list(self.error_ids),
            self.event_counts, list(self.tool_names), list(self.skill_names), totals, models))

    def read(self, chunks: Iterator[bytes], *, at_start: bool = True) -> None:
        """Cut the content into lines (slices of the chunks, not copies); hold at most ~max_line.

        ``at_start``: the chunks start the file (a byte order mark may lead), not a resumed pass.
        Before the last line without a newline, the state is frozen (self.snapshot) for the next pass.
        """
        max_line = self.max_line
        carry = bytearray()  # the start of a line that continues in the next chunk
        dropping = False  # inside an overlong line: discard up to its newline
        lineno = self.lineno
        first = at_start
        for chunk in chunks:
            self.bytes_read += len(chunk)
            if first:
                first = False
                if chunk.startswith(_BOM):  # a UTF-8 byte order mark is not part of the first line
                    chunk = chunk[len(_BOM):]
            last_nl = chunk.rfind(b"\n")
            if last_nl < 0:
                if not dropping:
                    carry += chunk
                    if len(carry) > max_line:
                        carry, dropping = bytearray(), True
                continue
            start = 0
            if dropping or carry:
                first_nl = chunk.find(b"\n")
                if dropping:
                    self.lines += 1
                    self.skipped += 1
                    lineno += 1
                    dropping = False
                else:
                    carry += memoryview(chunk)[:first_nl]
                    lineno = self._region(carry, 0, len(carry), lineno)
                    carry = bytearray()
                start = first_nl + 1
            if start <= last_nl:
                lineno = self._region(chunk, start, last_nl, lineno)
            if len(chunk) - last_nl - 1 > max_line:
                dropping = True
            else:
                carry += memoryview(chunk)[last_nl + 1 :]
        # The last line has no newline: parsed if complete, else skipped (and read whole next time).
        if dropping:  # no state kept: the next pass reads the file whole
            self.lines += 1
            self.skipped += 1
            return
        self.lineno = lineno
        self.snapshot = self.freeze(self.bytes_read - len(carry))
        if carry:
            records = self.records
            self._region(carry, 0, len(carry), lineno)
            if self.records != records:
                self.tail_len = len(carry)
                self.tail_hash = xxhash.xxh3_64_digest(carry)

    def _region(self, buf: bytes | bytearray, start: int, end: int, lineno: int) -> int:
        """Decode the newline-separated lines of buf[start:end]; return the next line number."""
        max_line = self.max_line
        decode = _decode_strict
        view = memoryview(buf)
        # No UTF-8 pass of its own: msgspec checks every string it decodes (a bad byte there fails
        # the line), and bytes inside what it skips are ignored (FORMAT.md revision 2).
        records: list[tuple[int, _Line]] = []
        lines = skipped = 0
        find = buf.find
        pos = start
        while True:
            nl = find(b"\n", pos, end)
            if nl < 0:
                nl = end
            elif nl == pos:
                # A run of empty lines is skipped in one C call (a file of newlines must not cost
                # a Python loop turn per byte).
                run_end = _NEWLINE_RUN.match(buf, pos, end).end()
                lineno += run_end - pos
                pos = run_end
                continue
            if nl > pos:
                line = view[pos:nl]
                rec: Any
                if nl - pos > max_line:
                    rec = None
                else:
                    try:
                        rec = decode(line)
                    except msgspec.DecodeError:  # ValidationError included
                        rec = _BLANK if bytes(line).isspace() else _loose_line(line)
                    except RecursionError:  # nested deeper than the decoder follows: a bad line
                        rec = None
                if rec is None:
                    lines += 1
                    skipped += 1
                elif rec is not _BLANK:
                    lines += 1
                    records.append((lineno, rec))
            lineno += 1
            if nl >= end:
                break
            pos = nl + 1
        self.lines += lines
        self.skipped += skipped
        if records:
            self.records += len(records)
            self._count(records)
        return lineno

    def _count(self, records: list[tuple[int, _Line]]) -> None:
        """Count decoded lines; state lives in locals for the loop and is written back after."""
        file_key = self.file_key
        prompts = self.prompts
        old_prompts = self.old_prompts
        answered = self.answered
        starts = self.block_starts
        ends = self.block_ends
        user_messages = self.user_messages
        last_raw = self.last_raw
        session = self.current_session
        projects = self.session_projects
        session_last = self.session_last
        pending = self.pending_enqueues
        message = self._message
        fromiso = datetime.fromisoformat
        for lineno, rec in records:
            kind = rec.type
            msg = rec.message
            # Harness-made lines count nowhere, not even as activity; their timestamp is still the
            # nearest earlier one for a later line without one (FORMAT.md).
            synthetic = kind == "assistant" and msg is not UNSET and msg.model == _SYNTHETIC

            raw = rec.timestamp
            ts = None
            if raw is not None:
                try:
                    ts = fromiso(raw)
                    if ts.tzinfo is not _UTC:
                        ts = ts.replace(tzinfo=_UTC) if ts.tzinfo is None else ts.astimezone(_UTC)
                except (ValueError, OverflowError):
                    raw = last_raw
                    ts = None
                else:
                    last_raw = raw
                    if synthetic:
                        if self.earliest_synthetic is None or ts < self.earliest_synthetic:
                            self.earliest_synthetic = ts
                        continue
                    if ends and ts >= ends[-1]:
                        if ts - ends[-1] <= _ACTIVITY_GAP:
                            ends[-1] = ts
                        else:
                            starts.append(ts)
                            ends.append(ts)
                    else:
                        _add_activity(starts, ends, ts)
            else:
                raw = last_raw
            if synthetic:
                continue
            sid = rec.sessionId
            if sid and sid != session:
                session = sid
                if sid not in projects:
                    projects[sid] = None
                    if self.session_id is None:
                        self.session_id = sid
            if ts is not None:
                # A session's latest line decides where a resumed session's copies belong.
                latest = session_last.get(session)
                if latest is None or ts > latest[0]:
                    session_last[session] = (ts, raw)
            cwd = rec.cwd
            if cwd and projects.get(session) is None:
                projects[session] = cwd
                if self.project is None:
                    self.project = cwd

            if kind == "assistant":
                if msg is not UNSET:
                    message(msg, rec.uuid, lineno, raw, session)
            elif kind == "user":
                user_messages += 1
                content = None if msg is UNSET else msg.content
                if not content:
                    continue
                quoting = rec.isMeta is True or rec.isCompactSummary is True
                is_prompt = False
                commands = 0  # the line's command tags so far: each is its own event
                if type(content) is str:
                    if not quoting and _COMMAND_TAG in content:
                        self._slash(content, rec.uuid or f"line:{lineno}", 0, raw, session)
                    is_prompt = _is_prompt_text(content)
                    if pending:
                        pending.pop(_text_digest(content.strip()), None)
                else:
                    has_result = False
                    for block in content:
                        btype = block.type
                        if btype == "tool_result":
                            has_result = True
                            if block.tool_use_id:
                                answered.add(block.tool_use_id)
                                if block.is_error is True:
                                    self.error_ids.add(block.tool_use_id)
                        elif btype == "text" and block.text:
                            text = block.text
                            if not quoting and _COMMAND_TAG in text:
                                commands = self._slash(text, rec.uuid or f"line:{lineno}", commands, raw, session)
                            if not is_prompt:
                                is_prompt = _is_prompt_text(text)
                            if pending:
                                pending.pop(_text_digest(text.strip()), None)
                    if has_result:
                        is_prompt = False
                if is_prompt and not quoting and rec.isSidechain is not True:
                    key = rec.uuid or f"line:{file_key}:{lineno}"
                    if key not in prompts:
                        if old_prompts and _key_hash(key) in old_prompts:
                            raise _NeedFull("a prompt of an earlier pass comes again")
                        prompts[key] = (raw, session)
            elif kind == "progress":
                if rec.data:
                    self._progress(rec.data, lineno, raw, session)
            elif kind == "attachment":
                attachment = rec.attachment
                if attachment is not None and attachment.type == "queued_command":
                    key = rec.uuid or f"line:{file_key}:{lineno}"
                    if key not in prompts:
                        if old_prompts and _key_hash(key) in old_prompts:
                            raise _NeedFull("a prompt of an earlier pass comes again")
                        prompts[key] = (raw, session)
                    if pending and type(attachment.prompt) is str:
                        pending.pop(_text_digest(attachment.prompt.strip()), None)
            elif kind == "queue-operation":
                text = rec.content
                if rec.operation == "enqueue" and text is not None and _is_prompt_text(text):
                    text = text.strip()
                    # A command queued mid-turn runs as a command, not a prompt.
                    if not text.startswith("/"):
                        # Keyed by its timestamp and a hash of its text: the database holds no text.
                        digest = _text_digest(text)
                        pending.setdefault(digest, []).append((f"enqueue:{raw or ''}:{digest}", raw, session))
            elif kind == "system":
                text = rec.content
                if rec.subtype == "local_command" and text is not None and _COMMAND_TAG in text:
                    # Commands that run without the model (/model, /cost) are written only here (2.1.x).
                    self._slash(text, rec.uuid or f"line:{lineno}", 0, raw, session)
            elif kind == "tool_use_result":
                if rec.tool_use_id:
                    answered.add(rec.tool_use_id)
                    if rec.is_error is True:
                        self.error_ids.add(rec.tool_use_id)

        self.user_messages = user_messages
        self.last_raw = last_raw
        self.current_session = session

    def _message(self, msg: _Message, uuid: str | None, lineno: int, raw: str | None, session: str | None) -> None:
        """One assistant line (of the file, or of a subagent inside a progress line)."""
        key = msg.id
        if not key:
            key = f"uuid:{uuid}" if uuid else f"line:{self.file_key}:{lineno}"
        usage = msg.usage
        speed = None
        if usage is None:
            i = o = cr = cc = c5 = c1 = 0
        else:
            # A counter that is not a non-negative int counts as 0, and SQLite stores at most
            # int64: a larger counter saturates there (it must not count less than a smaller one).
            i = _counter(usage.input_tokens)
            o = _counter(usage.output_tokens)
            cr = _counter(usage.cache_read_input_tokens)
            cc = _counter(usage.cache_creation_input_tokens)
            split = usage.cache_creation
            if split is None:
                c5 = c1 = 0
            else:
                c5 = _counter(split.ephemeral_5m_input_tokens)
                c1 = _counter(split.ephemeral_1h_input_tokens)
            speed = usage.speed if type(usage.speed) is str else None
        model = msg.model
        if model and model not in self.models_seen:
            self.models_seen[model] = None
        entry = self.messages.get(key)
        if entry is None and self.old_messages and _key_hash(key) in self.old_messages:
            raise _NeedFull("a message of an earlier pass continues")
        if key not in self.dirty:
            self.dirty.add(key)
            self.before[key] = None if entry is None else entry[:]
        if entry is None:
            self.messages[key] = [raw, i, o, cr, cc, model, session, c5, c1, speed]
        else:
            # Streamed copies repeat usage, growing: keep the largest of each counter.
            if i > entry[1]:
                entry[1] = i
            if o > entry[2]:
                entry[2] = o
            if cr > entry[3]:
                entry[3] = cr
            if cc > entry[4]:
                entry[4] = cc
            if entry[5] is None:
                entry[5] = model
            if c5 > entry[7]:
                entry[7] = c5
            if c1 > entry[8]:
                entry[8] = c1
            if speed is not None and entry[9] != _FAST:
                entry[9] = speed
        content = msg.content
        if content and type(content) is list:
            for n, block in enumerate(content):
                if block.type == "tool_use":
                    self._tool_use(block, uuid or f"line:{lineno}", n, raw, session)

    def _progress(self, data: msgspec.Raw, lineno: int, raw: str | None, session: str | None) -> None:
        """A progress line: a running subagent's assistant line inside agent_progress counts as a
        line of the subagent's file (FORMAT.md revision 2); its user lines count nowhere, but their
        tool results still say which of its tool uses failed. A shape we do not know is ignored:
        the progress line itself has counted already."""
        try:
            progress = _decode_progress(data)
            if progress.type != "agent_progress" or not progress.message:
                return
            sub = _decode_sub(progress.message)
        except (msgspec.DecodeError, RecursionError):  # ValidationError included
            return
        msg = sub.message
        if msg is UNSET:
            return
        if sub.type == "assistant":
            if msg.model == _SYNTHETIC:
                return
            stamp = sub.timestamp
            if stamp is None or _parse_ts(stamp) is None:
                stamp = raw
            self._message(msg, sub.uuid, lineno, stamp, session)
        elif sub.type == "user" and type(msg.content) is list:
            for block in msg.content:
                if block.type == "tool_result" and block.tool_use_id:
                    self.answered.add(block.tool_use_id)
                    if block.is_error is True:
                        self.error_ids.add(block.tool_use_id)

    def _tool_use(self, block: _Block, uuid_part: str, index: int, raw: str | None, session: str | None) -> None:
        """One event per tool id in the file; a block without an id is told apart by its place
        in the line (two such blocks in one line are two uses)."""
        tool_id = block.id
        if tool_id:
            if tool_id in self.tool_ids:
                return
            if self.old_tools and _key_hash(tool_id) in self.old_tools:
                raise _NeedFull("a tool use of an earlier pass comes again")
            self.tool_ids[tool_id] = None
        else:
            uuid_part = f"{uuid_part}#{index}"
        name = block.name
        inp = block.input
        skill = subagent = None
        if name in _SUBAGENT_TOOLS:
            kind = "subagent"
            if inp is not None:
                subagent = _str(inp.subagent_type) or None
        elif name is not None and name.startswith("mcp__"):
            kind = "mcp_call"
        else:
            kind = "tool_use"
            if name == "Skill" and inp is not None:
                skill = _str(inp.skill) or _str(inp.name) or None
        self.events.append((uuid_part, tool_id, kind, name, skill, subagent, None, raw, session))

    def _slash(self, text: str, uuid_part: str, seen: int, raw: str | None, session: str | None) -> int:
        """Each command tag is an event, numbered within its line (the same command twice in a
        line is two); returns the line's count of tags so far."""
        for command in _COMMAND_RE.findall(text):
            part = f"{uuid_part}#{seen}" if seen else uuid_part
            self.events.append((part, None, "slash_command", None, None, None, command, raw, session))
            seen += 1
        return seen

    def finish(
        self, fallback_session_id: str, received_at: datetime, hasher: BlockHasher, *, keep: bool = True
    ) -> ParseResult:
        """Resolve inherited timestamps and dedup events; build the rows and the summary.

        Resumed from a stored state (self.prev), only the rows that changed since are built, and
        _NeedFull is raised when rows stored before would change in ways not tracked (their session
        or their inherited timestamp). ``keep``: carry the state for the next pass.
        """
        prev = self.prev
        if prev is not None and prev.session_id is None and self.session_id is not None:
            raise _NeedFull("the file names its session only now")  # its earlier rows took the fallback
        session_id = self.session_id or fallback_session_id
        projects = dict(self.session_projects)
        # Lines before the first sessionId belong to the file's session, and come first in it.
        before = projects.pop(None, None)
        if before is not None or session_id not in projects:
            projects[session_id] = before or projects.get(session_id)
        starts, ends = self.block_starts, self.block_ends
        # Rows of lines before any timestamp: the earliest in the file, else the moment received.
        earliest = [t for t in (starts[0] if starts else None, self.earliest_synthetic) if t is not None]
        none_stamp = to_store(min(earliest) if earliest else received_at)
        if prev is not None and prev.unstamped and none_stamp != prev.none_stamp:
            raise _NeedFull("rows without a timestamp of their own take another one now")
        unstamped = prev is not None and prev.unstamped
        stamps: dict[str | None, str] = {None: none_stamp}

        def stamp(raw: str | None) -> str:
            text = stamps.get(raw)
            if text is None:
                text = stamps[raw] = _store_text(raw)  # type: ignore[arg-type]
            return text

        message_rows = []
        messages = self.messages
        # A full pass: every message (in the order of the file); else those whose row may have changed.
        for key in (messages if prev is None else self.before):
            raw, i, o, cr, cc, model, session, c5, c1, speed = messages[key]
            if raw is None:
                unstamped = True
            message_rows.append(MessageRow(key, session or session_id, stamp(raw), i, o, cr, cc, model, speed,
                                           c5, c1))
        totals, models = self._sums()
        # max() keeps the first of equal counts: in the order the file first names each model,
        # ties go to the model seen first.
        primary_model = (max(self.models_seen, key=lambda m: models.get(m, 0))
                         if any(models.values()) else None)

        # The prompts of this pass (of earlier ones, only their count is kept), then the queued texts
        # still unresolved, each a prompt of its own: rows for those not stored yet, and the rows of
        # those resolved since go.
        prompts = self.prompts
        queued_rows: dict[str, tuple[str | None, str | None]] = {}
        for queued in self.pending_enqueues.values():
            for key, raw, session in queued:
                if key not in prompts and key not in queued_rows:
                    queued_rows[key] = (raw, session)
        prompt_rows = []
        for rows, skip in ((prompts, ()), (queued_rows, () if prev is None else prev.pending)):
            for key, (raw, session) in rows.items():
                if key not in skip:
                    if raw is None:
                        unstamped = True
                    prompt_rows.append(PromptRow(key, session or session_id, stamp(raw)))
        deleted_prompts = ([] if prev is None else
                           [key for key in prev.pending if key not in queued_rows and key not in prompts])
        latest = dict(self.session_last)
        before_last = latest.pop(None, None)
        if before_last is not None and (session_id not in latest or before_last[0] > latest[session_id][0]):
            latest[session_id] = before_last

        # Each event's row id, once: a repeat of an id is no row (None). Ids given before the file
        # named its session (the line without a newline named it first) are given again.
        if self.ids_session is None and self.session_id is not None and self.event_ids:
            self.event_ids, self.seen_events, self.event_counts = [], set(), {}
            self.tool_names, self.skill_names, self.other_event_ids = set(), set(), []
        self._event_ids(fallback_session_id)
        events, event_ids, error_ids = self.events, self.event_ids, self.error_ids
        # Events of earlier passes whose tool result came only now: their stored rows turn is_error.
        flipped_events: list[str] = []
        if prev is not None and (flipped := error_ids - prev.error_ids):
            new_tools = {event[1] for event in events if event[1]}
            for tool_id in flipped:
                if tool_id in new_tools:
                    continue
                event_id = self.tool_ids.get(tool_id)
                if event_id is not None:
                    flipped_events.append(event_id)
                elif self.old_tools and _key_hash(tool_id) in self.old_tools:
                    raise _NeedFull("a tool use of an earlier pass gets its error only now")
        event_rows = []
        for event_id, event in zip(event_ids, events):
            if event_id is None:
                continue
            uuid_part, tool_id, kind, name, skill, subagent, command, raw, session = event
            if raw is None:
                unstamped = True
            event_rows.append(
                EventRow(
                    event_id, kind, session or session_id, stamp(raw), name, skill, subagent, command,
                    tool_id is not None and tool_id in error_ids,
                )
            )
        counts = self.event_counts

        summary = Summary(
            session_id=session_id,
            started_at=starts[0] if starts else None,
            ended_at=ends[-1] if ends else None,
            active_seconds=sum((e - s for s, e in zip(starts, ends)), timedelta()) // _ONE_SECOND,
            wall_seconds=(ends[-1] - starts[0]) // _ONE_SECOND if starts else 0,
            user_messages=self.user_messages,
            assistant_messages=self.old_message_count + len(self.messages),
            tool_calls=counts.get("tool_use", 0),
            # A tool id has one event (tool uses are deduplicated by it), and only tool events have one.
            tool_errors=self.old_tool_errors + len(self.tool_ids.keys() & error_ids),
            skill_invocations=counts.get("skill", 0),
            subagent_dispatches=counts.get("subagent", 0),
            mcp_calls=counts.get("mcp_call", 0),
            slash_commands=counts.get("slash_command", 0),
            distinct_tools=len(self.tool_names),
            distinct_skills=len(self.skill_names),
            primary_model=primary_model,
            prompts=self.old_prompt_count + len(prompts) + len(queued_rows),
            project=self.project,
            skipped_lines=self.skipped,
            # Saturating: two absurd (but int64) counters must not overflow the summary row.
            input_tokens=min(totals[0], _INT64_MAX),
            output_tokens=min(totals[1], _INT64_MAX),
            cache_read_tokens=min(totals[2], _INT64_MAX),
            cache_creation_tokens=min(totals[3], _INT64_MAX),
        )
        carry = None
        if keep and self.snapshot is not None:
            carry = _encode_carry(_Stored(
                CARRY_VERSION, self.snapshot, none_stamp, unstamped, hasher.pos,
                hasher.blocks, hasher.tail(), self.tail_len, self.tail_hash))
        return ParseResult(
            summary=summary,
            messages=message_rows,
            prompts=prompt_rows,
            events=event_rows,
            sessions=[SessionRow(sid, project, stamp(latest[sid][1]) if sid in latest else None)
                      for sid, project in projects.items()],
            lines=self.lines,
            bytes_read=self.bytes_read,
            content_hash=hasher.hexdigest(),
            incremental=prev is not None,
            deleted_prompts=deleted_prompts,
            flipped_events=flipped_events,
            carry=carry,
            from_bytes=self.counted_before[0],
            from_lines=self.counted_before[1],
            from_skipped=self.counted_before[2],
        )


def _add_activity(starts: list[datetime], ends: list[datetime], ts: datetime) -> None:
    """Insert a timestamp that is not after the last block: merge blocks it now bridges."""
    if not ends:
        starts.append(ts)
        ends.append(ts)
        return
    i = bisect_left(ends, ts)  # first block ending at or after ts (one exists: ts < ends[-1])
    if starts[i] <= ts:
        return
    joins_next = starts[i] - ts <= _ACTIVITY_GAP
    joins_prev = i > 0 and ts - ends[i - 1] <= _ACTIVITY_GAP
    if joins_prev and joins_next:
        ends[i - 1] = ends[i]
        del starts[i], ends[i]
    elif joins_next:
        starts[i] = ts
    elif joins_prev:
        ends[i - 1] = ts
    else:
        starts.insert(i, ts)
        ends.insert(i, ts)
