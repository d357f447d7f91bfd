"""POST /api/upload/sessions: stream a transcript to disk with size caps, store it atomically, process it."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import zlib
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from .. import keys
from .base import json, read_body
from .errors import AppError
from ..redact import TokenRedactor
from ..store import ingest as store

logger = logging.getLogger(__name__)

FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 256 * 1024
MULTIPART_OVERHEAD = 64 * 1024
# The client sends one part; a few more are tolerated. Each part costs a header parse whatever its
# size, so their number is capped, not only their bytes (100k empty parts kept the loop busy 13 s).
MAX_PARTS = 16


def valid_file_name(name: str | None) -> bool:
    """The SPEC's name rule, minus the names that mean a directory."""
    return bool(name) and FILE_NAME.fullmatch(name) is not None and name not in (".", "..") \
        and not name.startswith(".")


def remove_stale_uploads(data_dir: str) -> int:
    """Delete temporary upload files a killed process left behind; run before serving (none is in flight)."""
    removed = 0
    for tmp in (Path(data_dir) / "sessions").glob("*/.upload-*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("removed %d stale temporary upload file(s)", removed)
    return removed


def user_dir(data_dir: str, user_id: int) -> Path:
    return Path(data_dir) / "sessions" / str(user_id)


class _Sink:
    """Writes the upload to a temporary file, gunzipping on the fly; both sizes are capped."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.raw = 0
        self.size = 0
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in finish/abort
        self._inflate: zlib._Decompress | None = None
        # The first bytes until there are enough to tell gzip from plain text: the body may arrive
        # a byte at a time, and a gzip taken for text would be stored past the decompressed cap.
        self._start: bytes | None = b""
        self._head = b""  # the first decompressed bytes, to refuse a gzip inside the gzip
        self.redactor = TokenRedactor()  # our own tokens never reach the disk (service/redact.py)

    def write(self, chunk: bytes) -> None:
        self.raw += len(chunk)
        if self.raw > self.cap:
            raise AppError(413, f"Upload exceeds the {self.cap // (1024 * 1024)} MB limit.", "payload_too_large")
        if self._start is not None:
            chunk = self._start + chunk
            if len(chunk) < len(GZIP_MAGIC):
                self._start = chunk
                return
            self._start = None
            if chunk.startswith(GZIP_MAGIC):
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._consume(chunk)

    def _consume(self, chunk: bytes) -> None:
        if self._inflate is None:
            self._emit(chunk)
            return
        try:
            self._gunzip(chunk)
        except zlib.error:
            raise AppError(400, "The gzip upload is corrupt.", "bad_gzip") from None

    def _gunzip(self, data: bytes) -> None:
        """Inflate in bounded steps; concatenated members are one stream, as `gzip -d` reads them."""
        inflate = self._inflate
        assert inflate is not None
        while True:
            if inflate.eof:
                if not data:
                    return
                inflate = self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            # max_length bounds each step, so a gzip bomb never inflates past the cap in memory.
            out = inflate.decompress(data, CHUNK)
            self._emit(out)
            data = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
            # A full step may leave output inside zlib even when the input is used up.
            if not data and (inflate.eof or len(out) < CHUNK):
                return

    def _emit(self, data: bytes) -> None:
        if self._inflate is not None and len(self._head) < len(GZIP_MAGIC):
            self._head += data[: len(GZIP_MAGIC) - len(self._head)]
            if self._head == GZIP_MAGIC:
                # The parser would inflate the stored file again, past every size cap: a few KB
                # of nested gzip would keep the ingest worker busy for minutes.
                raise AppError(400, "A gzip upload must hold a transcript, not another gzip file.", "nested_gzip")
        self.size += len(data)
        if self.size > self.cap:
            raise AppError(413, f"Upload exceeds the {self.cap // (1024 * 1024)} MB limit once decompressed.",
                           "payload_too_large")
        self._fh.write(self.redactor.feed(data))

    def finish(self) -> None:
        if self._start:  # a body shorter than the gzip magic: plain text
            self._consume(self._start)
        self._start = None
        if self._inflate is not None and not self._inflate.eof:
            raise AppError(400, "The gzip upload is truncated or corrupt.", "bad_gzip")
        self._fh.write(self.redactor.close())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        """Remove the temporary file, whatever closing it says: on a full disk close() flushes the
        buffered tail again and raises ENOSPC again, and the file must still go."""
        try:
            self._fh.close()
        except OSError:
            pass
        finally:
            self.path.unlink(missing_ok=True)


class _CappedStream:
    """The request body as the multipart reader reads it: each read first checks the bytes received
    so far against the body cap, so a body with no Content-Length (chunked) is refused once past it
    even while aiohttp is still parsing (a preamble of millions of lines before the first boundary
    is read inside one reader.next())."""

    def __init__(self, stream: StreamReader, others: _OtherParts) -> None:
        self._stream = stream
        self._others = others

    async def readline(self, *args: Any, **kwargs: Any) -> bytes:
        self._others.check_body()
        return await self._stream.readline(*args, **kwargs)

    async def read(self, n: int = -1) -> bytes:
        self._others.check_body()
        return await self._stream.read(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _malformed(exc: Exception) -> AppError:
    return AppError(400, f"Malformed multipart body: {type(exc).__name__}", "bad_multipart")


class _OtherParts:
    """Parts besides 'file' (the client sends none) are read and dropped, within a small budget:
    the size cap counts the file, so unbounded extra parts would be free bytes past it. Every
    part's headers count against the same budget, the parts are at most MAX_PARTS, and the whole
    body (chunked ones too, which announce no length) at most the cap plus that budget."""

    LIMIT = MULTIPART_OVERHEAD

    def __init__(self, request: web.Request, cap: int) -> None:
        self.request = request
        self.left = self.LIMIT
        self.parts = 0
        self.body_cap = cap + self.LIMIT

    def count(self, part: BodyPartReader | MultipartReader | None) -> None:
        """Charge a part just read to the budgets; 413 past any of them."""
        self.check_body()
        if part is None:
            return
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise AppError(413, f"A multipart upload may have at most {MAX_PARTS} parts.", "payload_too_large")
        self.left -= sum(len(k) + len(v) + 4 for k, v in part.headers.items())
        self._check_left()

    def check_body(self) -> None:
        if self.request.content.total_bytes > self.body_cap:
            raise AppError(413, f"Upload exceeds the {self.body_cap // (1024 * 1024)} MB limit.", "payload_too_large")

    def _check_left(self) -> None:
        if self.left < 0:
            raise AppError(413, f"Parts other than 'file', and all part headers, are limited to {self.LIMIT} "
                                "bytes in all.", "payload_too_large")

    async def skip(self, part: BodyPartReader | MultipartReader) -> None:
        if not isinstance(part, BodyPartReader):
            raise AppError(400, "Nested multipart bodies are not accepted.", "bad_multipart")
        while chunk := await read_body(self.request, part.read_chunk(CHUNK)):
            self.left -= len(chunk)
            self._check_left()

    async def expect_closing_boundary(self, reader: MultipartReader) -> None:
        """The body must end with the closing delimiter after the file: a body cut short (a dropped
        connection under chunked encoding) ends the file part early, and storing that would replace
        a good transcript with a truncated one."""
        try:
            while (part := await read_body(self.request, reader.next())) is not None:
                self.count(part)
                await self.skip(part)
        except (ValueError, HttpProcessingError) as exc:
            raise _malformed(exc) from None
        if not reader.at_eof():
            raise AppError(400, "The multipart body ends before its closing boundary: the upload was cut short.",
                           "bad_multipart")


async def upload_session(request: web.Request) -> web.Response:
    """Store one transcript as <data_dir>/sessions/<user id>/<file name>; a re-upload replaces it."""
    settings = request.app[keys.SETTINGS]
    user = request[keys.USER]
    cap = settings.max_upload_bytes
    if request.content_length is not None and request.content_length > cap + MULTIPART_OVERHEAD:
        raise AppError(413, f"Upload exceeds the {settings.max_upload_mb} MB limit.", "payload_too_large")
    if request.content_type != "multipart/form-data":
        raise AppError(400, "Send the transcript as multipart/form-data with a part named 'file'.",
                       "bad_content_type")
    others = _OtherParts(request, cap)
    try:
        reader = await request.multipart()
        # The reader and its part readers read through this (aiohttp keeps the stream as _content).
        reader._content = _CappedStream(reader._content, others)  # type: ignore[assignment]
        part = await read_body(request, reader.next())
        others.count(part)
        while part is not None and (not isinstance(part, BodyPartReader) or part.name != "file"):
            await others.skip(part)
            part = await read_body(request, reader.next())
            others.count(part)
    except (ValueError, HttpProcessingError) as exc:
        raise _malformed(exc) from None
    if part is None:
        raise AppError(400, "The multipart body has no part named 'file'.", "missing_file")
    name = part.filename
    if not valid_file_name(name):
        raise AppError(400, "File name must match ^[A-Za-z0-9._-]{1,200}$ (no leading dot).", "bad_file_name")
    if name.endswith(".gz"):
        name = name[:-3]
        if not valid_file_name(name):
            raise AppError(400, "File name must match ^[A-Za-z0-9._-]{1,200}$ (no leading dot).", "bad_file_name")

    target_dir = user_dir(settings.data_dir, user.id)
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target_dir / f".upload-{secrets.token_hex(8)}.tmp"
    sink = _Sink(tmp, cap)
    try:
        # Inflating, writing and the final fsync are blocking work: off the event loop.
        while chunk := await read_body(request, part.read_chunk(CHUNK)):
            others.check_body()
            await asyncio.to_thread(sink.write, chunk)
        await others.expect_closing_boundary(reader)
        await asyncio.to_thread(sink.finish)
    except BaseException:
        sink.abort()
        raise
    final = target_dir / name
    os.replace(tmp, final)  # atomic: readers see the old file or the new one, never a mix
    request.app[keys.METRICS].redacted_tokens.inc(sink.redactor.count)
    worker = request.app.get(keys.WORKER)
    try:
        file_id = await store.register_file(request.app[keys.DB], user.id, str(final), "upload",
                                            request.app[keys.CLOCK]())
    except Exception:
        # The file is in place but not in the database (a lock, a full disk): the worker's next
        # tick registers it, so it is counted even if the client never sends it again.
        if worker is not None:
            worker.recheck_uploads()
        raise
    if worker is not None:
        await worker.submit(file_id, user_id=user.id)  # PostgreSQL: in the shared queue before the 200
    logger.info("stored upload", extra={"file": name, "bytes": sink.size, "file_id": file_id})
    return json({"status": "ok", "filename": name, "size": sink.size})
