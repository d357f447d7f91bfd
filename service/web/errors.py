"""One error type and one JSON error body for the whole service."""

from __future__ import annotations

import msgspec
from aiohttp import web

_REASON_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 409: "conflict", 411: "length_required",
    413: "payload_too_large", 415: "unsupported_media_type", 416: "range_not_satisfiable",
    422: "unprocessable", 429: "too_many_requests", 500: "internal_error", 503: "unavailable",
}


class ErrorBody(msgspec.Struct):
    detail: str
    code: str


_encoder = msgspec.json.Encoder()


class AppError(Exception):
    """An error the client should see: status, machine code and a message for a person."""

    def __init__(self, status: int, detail: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or code_for(status)
        self.headers = headers or {}


def code_for(status: int) -> str:
    return _REASON_CODES.get(status, "error")


def error_response(status: int, detail: str, code: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """The one JSON error body: {"detail": ..., "code": ...}."""
    return web.Response(status=status, body=_encoder.encode(ErrorBody(detail, code or code_for(status))),
                        content_type="application/json", headers=headers)
