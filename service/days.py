"""Analysts' days in their own time zone: validated zone names and the UTC bounds of local days.
Pure computation, neither HTTP nor SQL."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["DEFAULT_ZONE", "RANGES", "day_starts", "local_date", "parse_zone"]

UTC = timezone.utc
DEFAULT_ZONE = "UTC"
RANGES = {"7d": 7, "30d": 30, "90d": 90}
# IANA names only (Area/City, UTC, Etc/GMT+5): never a path, never anything ZoneInfo would read from disk
# outside the zone database.
_ZONE_NAME = re.compile(r"^(?:UTC|[A-Z][A-Za-z_+-]{0,30}(?:/[A-Za-z0-9_+-]{1,40}){1,2})$")


@lru_cache(maxsize=512)
def parse_zone(name: str | None) -> ZoneInfo:
    """The zone named ``name`` (UTC when empty); ValueError for anything that is not an IANA zone."""
    if not name:
        return ZoneInfo(DEFAULT_ZONE)
    if not _ZONE_NAME.match(name) or ".." in name:
        raise ValueError(f"{name!r} is not a time zone name such as Europe/Prague")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known time zone") from None


def local_date(moment: datetime, zone: ZoneInfo) -> date:
    """The analyst's calendar day of an aware moment."""
    return moment.astimezone(zone).date()


def day_starts(now: datetime, days: int, zone: ZoneInfo) -> list[datetime]:
    """The UTC start of each of the last ``days`` local days up to today, then the start of tomorrow:
    ``days + 1`` bounds, so day i is [bounds[i], bounds[i + 1]). Days of 23 or 25 hours (daylight
    saving) and half-hour zones come out right: each bound is a local midnight."""
    today = local_date(now, zone)
    first = today - timedelta(days=days - 1)
    return [datetime.combine(first + timedelta(days=i), time(0), tzinfo=zone).astimezone(UTC)
            for i in range(days + 1)]
