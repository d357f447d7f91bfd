"""Structured logging: one line per event, carrying the request id and user id."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time

import msgspec

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
user_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("user_id", default="-")

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class ContextFilter(logging.Filter):
    """Adds request_id and user_id from the current task's context to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.user_id = user_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return self._encoder.encode(event).decode()


# Line breaks and other control characters in logged values (a request path, a file name) would
# let a client forge log lines; in text logs they are written as escapes.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                        text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items()
                          if k not in _STANDARD and not k.startswith("_") and k not in ("request_id", "user_id"))
        line = _escape_controls(
            f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname} {record.name} "
            f"rid={getattr(record, 'request_id', '-')} uid={getattr(record, 'user_id', '-')} "
            f"{record.getMessage()}" + (f" {extras}" if extras else ""))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a header line over 8190 bytes, an unknown method)
    as an ERROR with a traceback, before any middleware runs. That is the client's mistake, not
    the server's: one WARNING line without the traceback, so alerts on ERROR stay meaningful."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # Looked up, not imported: only a process that has loaded aiohttp can hold its exception,
        # and importing aiohttp costs a command-line process ~0.1-0.4 s (its connector module
        # loads the system's CA certificates) that `agnes-home ingest` never needs.
        web_protocol = sys.modules.get("aiohttp.web_protocol") if exc is not None else None
        if web_protocol is not None and isinstance(exc, web_protocol.RequestPayloadError):
            # A body that does not decode, met again when aiohttp drains it after the answer: its
            # cause (ContentEncodingError) says what was wrong with it.
            exc = exc.__cause__
        http_exceptions = sys.modules.get("aiohttp.http_exceptions") if exc is not None else None
        if (http_exceptions is not None and isinstance(exc, http_exceptions.HttpProcessingError)
                and 400 <= (exc.code or 400) < 500):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
            first = (exc.message or "").splitlines()[:1]
            # Bounded: LineTooLong's message quotes the whole over-long line.
            record.msg = "refused a malformed request from %s: %s: %s"
            record.args = (remote, type(exc).__name__, first[0][:160] if first else "")
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Install the one handler; called by the entry point only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())
