"""Template filters: numbers, times, money and names as the pages show them (and static/home.js
redraws them: its rules mirror these digit for digit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from ..activity import SESSION_SORTS, SessionRow
from ..days import parse_zone
from ..timeutil import from_store

# Number formatting and relative time are mirrored in static/home.js, which redraws
# the cards after a toggle; both sides use integer arithmetic so they agree digit
# for digit (tests/test_browser.py runs the JS against the same cases).
_UNITS = ((10**3, "k"), (10**6, "M"), (10**9, "B"), (10**12, "T"))


def abbreviate(value: int) -> str:
    """12.3k, 4.5M: one decimal below 100 of a unit, none above; rounds half up; exact below 1000."""
    n = int(value)
    if n < 0:
        return "-" + abbreviate(-n)
    if n < 1000:
        return str(n)
    for unit, suffix in _UNITS:
        tenths = (n * 10 + unit // 2) // unit
        if tenths < 1000:
            whole, frac = divmod(tenths, 10)
            return f"{whole}.{frac}{suffix}" if frac else f"{whole}{suffix}"
        whole = (n + unit // 2) // unit
        if whole < 1000 or suffix == "T":
            return f"{whole}{suffix}"
    raise AssertionError("unreachable")


def grouped(value: int) -> str:
    """The exact value with thousands separators (64,504), for titles and the token split."""
    return f"{int(value):,}"


def reltime(value: str | datetime | None, now: datetime) -> str:
    """Relative time: "just now" under a minute, then "3m ago", "5h ago", "2d ago"; "never" without a value."""
    when = from_store(value) if isinstance(value, str) else value
    if when is None:
        return "never"
    seconds = int((now - when).total_seconds())
    if seconds < 60:
        return "just now"  # also a stamp slightly in the future (clock skew between writers)
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def day_label(day: str | None) -> str:
    """'2025-10-03' as '3 Oct 2025' (English month abbreviations, whatever the locale); '' for None."""
    if not day:
        return ""
    year, month, date = day.split("-")
    return f"{int(date)} {_MONTHS[int(month) - 1]} {year}"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def utc_label(value: str | datetime | None) -> str:
    """An exact moment for a title attribute: 2026-11-21 11:57:00 UTC."""
    if isinstance(value, str) and len(value) >= 20 and value[10] == "T" and value.endswith("Z"):
        return f"{value[:10]} {value[11:19]} UTC"  # already UTC (to_api, to_store): no parse
    when = from_store(value) if isinstance(value, str) else value
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when is not None else "No agnes pull yet"


def exact_note(value: int) -> str:
    """What a screen reader hears after an abbreviated number ("12.3k"): its exact value, which
    sighted mouse users get from the title. Empty when nothing was abbreviated."""
    return "" if abbreviate(value) == grouped(value) else f"(exactly {grouped(value)})"


def usd(value: float | None) -> str:
    """$12.34; under a cent "<$0.01"; unknown "—"."""
    if value is None:
        return "—"
    if 0 < value < 0.005:
        return "<$0.01"
    return f"${value:,.2f}"


def duration(seconds: float | None) -> str:
    """3h 05m, 12m, 40s."""
    s = int(seconds or 0)
    if s < 60:
        return f"{s}s"
    hours, minutes = divmod(s // 60, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


def session_span(row: SessionRow) -> str:
    """From a session's first to its last activity."""
    return duration(SESSION_SORTS["duration"](row))


def local_time(value: str | None, zone: str) -> str:
    """An ISO UTC moment as the analyst's wall clock: 2026-11-21 10:00."""
    when = from_store(value)
    return when.astimezone(parse_zone(zone)).strftime("%Y-%m-%d %H:%M") if when else "—"


def project_name(path: str | None) -> str:
    """A project directory by its last part (the whole path is in the cell's title)."""
    if not path:
        return "(unknown)"
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def template_filters() -> dict[str, Callable[..., Any]]:
    return {"abbreviate": abbreviate, "grouped": grouped, "reltime": reltime, "utc_label": utc_label,
            "exact_note": exact_note, "usd": usd, "duration": duration, "session_span": session_span,
            "local_time": local_time, "project_name": project_name}
