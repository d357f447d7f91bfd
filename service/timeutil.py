"""Timestamps: one storage format for every timestamp the service writes.

Stored format: ISO 8601 in UTC with microseconds and a ``Z`` suffix,
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (27 characters, fixed width), so that text
comparison in SQL orders timestamps correctly.
"""

from __future__ import annotations

from datetime import datetime, timezone

UTC = timezone.utc
_STORE_FMT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utcnow() -> datetime:
    """The current moment, timezone-aware UTC."""
    return datetime.now(UTC)


def to_store(dt: datetime) -> str:
    """Format an aware (or naive, taken as UTC) datetime in the storage format."""
    if dt.tzinfo is not UTC:
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    if dt.year >= 1000:  # the common case; isoformat is several times faster than strftime
        return dt.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    # strftime's %Y does not pad years below 1000 on glibc ("999-01-01..."), which would break
    # the fixed width that text ordering relies on; format the year by hand.
    return f"{dt.year:04d}" + dt.strftime(_STORE_FMT.removeprefix("%Y"))


def from_store(value: str | None) -> datetime | None:
    """Parse a stored timestamp (or any ISO 8601 text) into an aware UTC datetime."""
    if not value:
        return None
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def to_api(value: str | datetime | None) -> str | None:
    """ISO 8601 UTC for JSON responses (``2026-11-21T12:00:00Z``), or None."""
    dt = from_store(value) if isinstance(value, str) else value
    if dt is None:
        return None
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    return dt.replace(tzinfo=None).isoformat(timespec="milliseconds" if dt.microsecond else "seconds") + "Z"


class Clock:
    """The app's notion of now; tests pin it (``clock.fixed = ...``) to compute windows at a known moment."""

    def __init__(self) -> None:
        self.fixed: datetime | None = None

    def __call__(self) -> datetime:
        return self.fixed if self.fixed is not None else utcnow()
