"""A table file as the `agnes` client downloads it: single byte ranges, preconditions and ETags
with JSON errors, and always the file's own bytes (never a pre-compressed sibling)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDict

from .errors import AppError


def file_response(request: web.Request, path: Path) -> web.StreamResponse:
    """The response for ``path`` (a regular file the caller may read), after its preconditions and Range."""
    st = path.stat()
    answer = _IGNORE if _check_preconditions(request, st) else _range_answer(request, st)
    if isinstance(answer, int):
        raise AppError(416, f"The requested range is outside the file ({answer} bytes).", "range_not_satisfiable",
                       {"Content-Range": f"bytes */{answer}"})
    return RawFileResponse(path, ignore_range=answer == _IGNORE,
                           headers={"Content-Type": "application/octet-stream",
                                    "Content-Disposition": content_disposition(path.name)})


class RawFileResponse(web.FileResponse):
    """aiohttp's FileResponse (Range, ETag, HEAD, sendfile) that always sends the file's own bytes.

    FileResponse would serve a pre-compressed ``<file>.gz`` sibling with Content-Encoding to a
    client that accepts gzip; the agnes client md5-checks the raw bytes, so the request it
    sees has no Accept-Encoding. A Range header RFC 7233 says to ignore is dropped too.
    """

    def __init__(self, path: Path, *, ignore_range: bool, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._ignore_range = ignore_range

    async def prepare(self, request: web.BaseRequest):
        # Only the headers FileResponse reads: clone() re-encodes every header as UTF-8, and any
        # other header carrying bytes that are not (a client's to send) would abort the response.
        keep = _FILE_HEADERS if not self._ignore_range else _FILE_HEADERS - {"range"}
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() in keep and v.isascii())
        return await super().prepare(request.clone(headers=headers))


_FILE_HEADERS = frozenset({"range", "if-range", "if-match", "if-none-match", "if-modified-since",
                           "if-unmodified-since"})


_EMPTY_SUFFIX = re.compile(r"bytes=\s*-0+\s*")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")


_IGNORE, _SERVE = "ignore", "serve"


def _etag(st: os.stat_result) -> str:
    """The file's strong ETag, as FileResponse writes it (a test pins the two together)."""
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _check_preconditions(request: web.Request, st: os.stat_result) -> bool:
    """If-Match and If-Unmodified-Since (RFC 9110 13.1.1, 13.1.4), checked here so that a 412 has
    the JSON shape (FileResponse answers it with an empty body). Returns whether the client's copy
    is current (If-None-Match, If-Modified-Since): FileResponse then answers 304, whatever the Range."""
    current = _etag(st)[1:-1]
    if_match = request.if_match
    if if_match is not None:
        if not any(tag.value in ("*", current) and not tag.is_weak for tag in if_match):
            raise AppError(412, "The file no longer matches If-Match.", "precondition_failed")
    elif (since := request.if_unmodified_since) is not None and st.st_mtime > since.timestamp():
        raise AppError(412, "The file was modified after If-Unmodified-Since.", "precondition_failed")
    if_none_match = request.if_none_match
    if if_none_match is not None:
        return any(tag.value in ("*", current) for tag in if_none_match)  # a weak comparison
    modified_since = request.if_modified_since
    return modified_since is not None and st.st_mtime <= modified_since.timestamp()


def _range_answer(request: web.Request, st: os.stat_result) -> str | int:
    """How to answer the Range header (RFC 9110), checked here so that a 416 has the JSON shape.

    _IGNORE (the whole file, 200): no Range, a unit other than bytes, several ranges, a
    syntactically invalid one, or an If-Range that does not match the file (an entity tag
    other than its strong ETag, a date older than it, or neither). The file's size: the range
    cannot be satisfied (it starts at or past the end, or is the empty suffix "bytes=-0"): 416.
    _SERVE: FileResponse serves the range.
    """
    header = request.headers.get("Range")
    if header is None:
        return _IGNORE
    try:
        rng = request.http_range
    except ValueError:
        return _IGNORE
    if_range = request.headers.get("If-Range")
    if if_range is not None:
        if_range = if_range.strip()
        if if_range.startswith('"'):
            if if_range != _etag(st):
                return _IGNORE
        elif (date := request.if_range) is None or st.st_mtime > date.timestamp():
            return _IGNORE
    if _EMPTY_SUFFIX.fullmatch(header):
        return st.st_size
    start = rng.start
    if start is None:
        return _SERVE
    if start < 0 and rng.stop is None:  # a suffix: the last -start bytes
        start = max(0, start + st.st_size)
    return st.st_size if start >= st.st_size else _SERVE


def content_disposition(name: str) -> str:
    """attachment with the file's name: an ASCII fallback, and the exact name in RFC 6266's
    filename* (quotes, non-ASCII or a control character in a name must not break the header)."""
    fallback = _UNSAFE_NAME.sub("_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
