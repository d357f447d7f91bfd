"""Our own personal access tokens out of stored transcripts: a streaming, deterministic redactor.

The `agnes` client redacts JWT-shaped strings before it uploads, not ``agnes_pat_...``: a token an
analyst pasted into a prompt (the install hero shows ``agnes init --token ...``) reached the disk
verbatim. Every ``agnes_pat_`` followed by at least MIN_CHARS token characters (the whole run of
them, as a greedy regular expression would take it) becomes MARKER, whatever the chunking of the
stream: a token cut by a chunk boundary included. So the output depends on the bytes alone, and a
re-sent grown transcript's stored prefix is unchanged (transcripts grow by whole lines).

Memory stays bounded: at most a partial token (MAX_HELD bytes) is held between chunks; a longer run
is still one token, replaced once, its remaining characters dropped as they arrive.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = b"agnes_pat_"  # service.store.users.TOKEN_PREFIX (a test pins the two together)
MARKER = b"[REDACTED-AGNES-TOKEN]"
# Ours are 43 characters after the prefix; a shorter run is prose ("the agnes_pat_ prefix") or the
# 6 characters `tokens list` shows, not a secret.
MIN_CHARS = 8
MAX_HELD = 1024
_TOKEN_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
CHUNK = 256 * 1024


def _run_end(buf: bytes | bytearray, start: int) -> int:
    """The index after the run of token characters starting at ``start``."""
    end, size = start, len(buf)
    while end < size and buf[end] in _TOKEN_CHARS:
        end += 1
    return end


def _partial_prefix(buf: bytes | bytearray, start: int) -> int:
    """How many bytes at the end of ``buf`` (not before ``start``) could begin PREFIX."""
    for n in range(min(len(PREFIX) - 1, len(buf) - start), 0, -1):
        if buf.endswith(PREFIX[:n]):
            return n
    return 0


class TokenRedactor:
    """Feed bytes, get them back with tokens replaced; ``close()`` returns what was held back."""

    def __init__(self) -> None:
        self.count = 0  # tokens replaced so far
        self._held = b""
        self._dropping = False  # inside a token already replaced: drop its remaining characters

    def feed(self, data: bytes) -> bytes:
        return self._process(self._held + data, final=False)

    def close(self) -> bytes:
        """The end of the stream: a token reaching it is complete."""
        held, self._held = self._held, b""
        return self._process(held, final=True)

    def _process(self, buf: bytes, final: bool) -> bytes:
        self._held = b""
        out = bytearray()
        i = 0
        if self._dropping:
            i = _run_end(buf, 0)
            if i == len(buf):
                return b""
            self._dropping = False
        while True:
            k = buf.find(PREFIX, i)
            if k < 0:
                keep = 0 if final else _partial_prefix(buf, i)
                out += buf[i:len(buf) - keep]
                self._held = buf[len(buf) - keep:]
                return bytes(out)
            out += buf[i:k]
            end = _run_end(buf, k + len(PREFIX))
            if end == len(buf) and not final:
                if end - k - len(PREFIX) > MAX_HELD:
                    # Long past any token: replace it now and drop the rest of the run as it arrives.
                    out += MARKER
                    self.count += 1
                    self._dropping = True
                else:
                    self._held = buf[k:]  # the token may go on in the next chunk
                return bytes(out)
            if end - k - len(PREFIX) >= MIN_CHARS:
                out += MARKER
                self.count += 1
            else:
                out += buf[k:end]
            i = end


def redact_bytes(data: bytes) -> tuple[bytes, int]:
    """The whole of ``data`` redacted, and how many tokens were replaced."""
    redactor = TokenRedactor()
    out = redactor.feed(data) + redactor.close()
    return out, redactor.count


def redact_text(text: str) -> tuple[str, int]:
    """``redact_bytes`` for text (tokens are ASCII, so UTF-8 round-trips whatever surrounds them)."""
    out, count = redact_bytes(text.encode())
    return out.decode(), count


@dataclass
class StoredReport:
    files: int = 0
    changed: list[str] = field(default_factory=list)
    tokens: int = 0
    skipped: list[str] = field(default_factory=list)  # replaced by an upload while being read


def redact_stored(data_dir: str) -> StoredReport:
    """Redact the uploads already stored under ``<data_dir>/sessions/<user id>/`` in place (a one-off
    for files stored before uploads were redacted on the way in). Blocking: run it off the event loop.

    Each file is rewritten to a temporary file beside it and moved over it only when it held a token
    and was not replaced meanwhile (an upload arriving now is redacted on its way in). Files of the
    watched directory are the analysts' own and are never touched; the database holds no transcript text.
    """
    report = StoredReport()
    for path in sorted((Path(data_dir) / "sessions").glob("*/*")):
        if path.name.startswith(".") or path.is_symlink() or not path.is_file():
            continue
        report.files += 1
        before = path.stat()
        tmp = path.with_name(f".upload-redact-{secrets.token_hex(8)}.tmp")  # swept by remove_stale_uploads
        redactor = TokenRedactor()
        try:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(redactor.feed(chunk))
                dst.write(redactor.close())
                dst.flush()
                os.fsync(dst.fileno())
            if not redactor.count:
                continue
            now = path.stat()
            if (now.st_ino, now.st_size, now.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
                report.skipped.append(str(path))
                continue
            os.replace(tmp, path)
            report.changed.append(str(path))
            report.tokens += redactor.count
            logger.info("redacted %d token(s) in a stored upload", redactor.count, extra={"file": str(path)})
        finally:
            tmp.unlink(missing_ok=True)
    return report
